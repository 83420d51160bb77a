"""A small PDQ Supplier for the tests (ITI-47; no HL7 V3 supplier runs here as a package),
speaking the real wire protocol: SOAP 1.2 with WS-Addressing over HTTP (ihecli.net.soap).

It answers from IPF's recorded response (tests/data/pdq/ipf-02_PDQQuery1Response.xml): the
candidates that fit the query's name, birth date, gender and identifier stay, the others are
taken out, and the acknowledgement names the request (targetMessage) and echoes its query. No
candidate left: NF. With initialQuantity, the first that many, and the rest in pages to query
continuations (QUQI_IN000003UV01_Continue). A family name of ``ERROR`` gets an AE answer with an acknowledgementDetail,
``FAULT`` a SOAP fault. Every request is validated against the HL7 V3 schemas first (an invalid
one is a Sender fault); ``requests`` keeps them.
"""
from __future__ import annotations

import copy
from pathlib import Path

from lxml import etree

from ihecli.net.http import HttpServer
from ihecli.net.soap import Reply, SoapFault, SoapService, validate
from ihecli.pdq.messages import CONTINUE_ACTION, NS, QUERY_ACTION, RESPONSE_ACTION, V3

DATA = Path(__file__).parent / "data" / "pdq"
RECORDED = DATA / "ipf-02_PDQQuery1Response.xml"


def _q(tag: str) -> str:
    return f"{{{V3}}}{tag}"


class PdqSupplier:
    """Controller: start() returns the port, stop() is idempotent; ``url`` is the endpoint."""

    def __init__(self, recorded: Path = RECORDED):
        self.template = etree.parse(str(recorded)).getroot()
        self.requests: list[etree._Element] = []
        self.pending: dict[str, tuple] = {}  # queryId extension -> (queryByParameter, matches left, total)
        self.continuations = 0
        self.http = HttpServer(SoapService({QUERY_ACTION: self.handle, CONTINUE_ACTION: self.handle_continue}),
                               port=0, name="pdq")

    def start(self) -> int:
        return self.http.start()

    def stop(self) -> None:
        self.http.stop()

    @property
    def url(self) -> str:
        return self.http.url + "/pdq"

    def handle(self, msg) -> Reply:
        req = self._valid(msg)
        params = req.find("v3:controlActProcess/v3:queryByParameter/v3:parameterList", NS)
        family = (params.findtext("v3:livingSubjectName/v3:value/v3:family", namespaces=NS) or "").strip()
        if family.upper() == "FAULT":
            raise SoapFault("the supplier is broken today", code="Receiver")
        qbp = copy.deepcopy(req.find("v3:controlActProcess/v3:queryByParameter", NS))
        if family.upper() == "ERROR":
            out = self._page(req, qbp, [], total=0, remaining=0)
            ack = out.find("v3:acknowledgement", NS)
            ack.find("v3:typeCode", NS).set("code", "AE")
            det = etree.SubElement(ack, _q("acknowledgementDetail"), typeCode="E")
            etree.SubElement(det, _q("code"), code="VALIDATION", codeSystem="2.16.840.1.113883.5.1100")
            etree.SubElement(det, _q("text")).text = "livingSubjectName: ERROR is not a name"
            out.find(".//v3:queryAck/v3:queryResponseCode", NS).set("code", "AE")
            return Reply(out, RESPONSE_ACTION)
        matches = [copy.deepcopy(s) for s in self.template.findall("v3:controlActProcess/v3:subject", NS)
                   if self._fits(s.find("v3:registrationEvent/v3:subject1/v3:patient", NS), params)]
        first = qbp.find("v3:initialQuantity", NS)
        n = int(first.get("value")) if first is not None else len(matches)
        self.pending[qbp.find("v3:queryId", NS).get("extension")] = (qbp, matches[n:], len(matches))
        return Reply(self._page(req, qbp, matches[:n], total=len(matches), remaining=len(matches[n:])),
                     RESPONSE_ACTION)

    def handle_continue(self, msg) -> Reply:
        """QUQI_IN000003UV01: the next continuationQuantity matches of a query."""
        req = self._valid(msg)
        qc = req.find("v3:controlActProcess/v3:queryContinuation", NS)
        key = qc.find("v3:queryId", NS).get("extension")
        if key not in self.pending:
            raise SoapFault(f"no query {key} to continue")
        qbp, rest, total = self.pending[key]
        k = int(qc.find("v3:continuationQuantity", NS).get("value"))
        self.pending[key] = (qbp, rest[k:], total)
        self.continuations += 1
        return Reply(self._page(req, qbp, rest[:k], total=total, remaining=len(rest[k:])), RESPONSE_ACTION)

    def _valid(self, msg) -> etree._Element:
        try:
            validate(msg.body)
        except Exception as e:
            raise SoapFault(f"invalid {etree.QName(msg.body).localname}: {e}") from None
        self.requests.append(msg.body)
        return msg.body

    def _page(self, req, qbp, subjects, *, total: int, remaining: int) -> etree._Element:
        """The recorded response with these subjects, naming the request and echoing the query."""
        out = copy.deepcopy(self.template)
        out.find("v3:acknowledgement/v3:targetMessage/v3:id", NS).attrib.update(req.find("v3:id", NS).attrib)
        cap = out.find("v3:controlActProcess", NS)
        for s in cap.findall("v3:subject", NS):
            cap.remove(s)
        qack = cap.find("v3:queryAck", NS)
        at = cap.index(qack)
        for i, s in enumerate(subjects):
            cap.insert(at + i, copy.deepcopy(s))
        old = cap.find("v3:queryByParameter", NS)
        cap.replace(old, copy.deepcopy(qbp))
        qack.find("v3:queryId", NS).attrib.update(qbp.find("v3:queryId", NS).attrib)
        qack.find("v3:queryResponseCode", NS).set("code", "OK" if total else "NF")
        qack.find("v3:resultTotalQuantity", NS).set("value", str(total))
        qack.find("v3:resultCurrentQuantity", NS).set("value", str(len(subjects)))
        qack.find("v3:resultRemainingQuantity", NS).set("value", str(remaining))
        return out

    @staticmethod
    def _fits(patient, params) -> bool:
        person = patient.find("v3:patientPerson", NS)

        def want(path: str, attr: str | None = None) -> str:
            e = params.find(path, NS)
            if e is None:
                return ""
            return (e.get(attr) if attr else e.text or "").strip()

        family, given = want("v3:livingSubjectName/v3:value/v3:family"), want("v3:livingSubjectName/v3:value/v3:given")
        names = person.findall("v3:name", NS)
        if family and not any((n.findtext("v3:family", namespaces=NS) or "").lower().startswith(family.lower())
                              for n in names):
            return False
        if given and not any((g.text or "").lower().startswith(given.lower()) for n in names
                             for g in n.findall("v3:given", NS)):
            return False
        birth = want("v3:livingSubjectBirthTime/v3:value", "value")
        if birth and not (person.find("v3:birthTime", NS).get("value", "")).startswith(birth):
            return False
        gender = want("v3:livingSubjectAdministrativeGender/v3:value", "code")
        if gender and person.find("v3:administrativeGenderCode", NS).get("code") != gender:
            return False
        ext = want("v3:livingSubjectId/v3:value", "extension")
        if ext:
            root = want("v3:livingSubjectId/v3:value", "root")
            ids = patient.findall("v3:id", NS) + person.findall("v3:asOtherIDs/v3:id", NS)
            if not any(i.get("extension") == ext and i.get("root") == root for i in ids):
                return False
        city = want("v3:patientAddress/v3:value/v3:city")
        cities = [a.findtext("v3:city", namespaces=NS) or "" for a in person.findall("v3:addr", NS)]
        if city and city not in cities:
            return False
        return True
