"""A small PDQ Supplier for the tests (ITI-47; no HL7 V3 supplier runs here as a package),
speaking the real wire protocol: SOAP 1.2 with WS-Addressing over HTTP (ihecli.net.soap).

It answers from IPF's recorded response (tests/data/pdq/ipf-02_PDQQuery1Response.xml): the
candidates that fit the query's name, birth date, gender and identifier stay, the others are
taken out, and the acknowledgement names the request (targetMessage) and echoes its query. No
candidate left: NF. A family name of ``ERROR`` gets an AE answer with an acknowledgementDetail,
``FAULT`` a SOAP fault. Every request is validated against the HL7 V3 schemas first (an invalid
one is a Sender fault); ``requests`` keeps them.
"""
from __future__ import annotations

import copy
from pathlib import Path

from lxml import etree

from ihecli.net.http import HttpServer
from ihecli.net.soap import Reply, SoapFault, SoapService, validate
from ihecli.pdq.messages import NS, QUERY_ACTION, RESPONSE_ACTION, V3

DATA = Path(__file__).parent / "data" / "pdq"
RECORDED = DATA / "ipf-02_PDQQuery1Response.xml"


def _q(tag: str) -> str:
    return f"{{{V3}}}{tag}"


class PdqSupplier:
    """Controller: start() returns the port, stop() is idempotent; ``url`` is the endpoint."""

    def __init__(self, recorded: Path = RECORDED):
        self.template = etree.parse(str(recorded)).getroot()
        self.requests: list[etree._Element] = []
        self.http = HttpServer(SoapService({QUERY_ACTION: self.handle}), port=0, name="pdq")

    def start(self) -> int:
        return self.http.start()

    def stop(self) -> None:
        self.http.stop()

    @property
    def url(self) -> str:
        return self.http.url + "/pdq"

    def handle(self, msg) -> Reply:
        req = msg.body
        try:
            validate(req)
        except Exception as e:
            raise SoapFault(f"invalid PRPA_IN201305UV02: {e}") from None
        self.requests.append(req)
        params = req.find("v3:controlActProcess/v3:queryByParameter/v3:parameterList", NS)
        family = (params.findtext("v3:livingSubjectName/v3:value/v3:family", namespaces=NS) or "").strip()
        if family.upper() == "FAULT":
            raise SoapFault("the supplier is broken today", code="Receiver")
        out = copy.deepcopy(self.template)
        out.find("v3:acknowledgement/v3:targetMessage/v3:id", NS).attrib.update(req.find("v3:id", NS).attrib)
        cap = out.find("v3:controlActProcess", NS)
        qack = cap.find("v3:queryAck", NS)
        qbp = cap.find("v3:queryByParameter", NS)
        qbp.getparent().replace(qbp, copy.deepcopy(req.find("v3:controlActProcess/v3:queryByParameter", NS)))
        qack.find("v3:queryId", NS).attrib.update(req.find(".//v3:queryByParameter/v3:queryId", NS).attrib)
        for tag in ("resultCurrentQuantity", "resultRemainingQuantity"):
            e = qack.find(f"v3:{tag}", NS)
            if e is not None:
                qack.remove(e)
        if family.upper() == "ERROR":
            for s in cap.findall("v3:subject", NS):
                cap.remove(s)
            ack = out.find("v3:acknowledgement", NS)
            ack.find("v3:typeCode", NS).set("code", "AE")
            det = etree.SubElement(ack, _q("acknowledgementDetail"), typeCode="E")
            etree.SubElement(det, _q("code"), code="VALIDATION", codeSystem="2.16.840.1.113883.5.1100")
            etree.SubElement(det, _q("text")).text = "livingSubjectName: ERROR is not a name"
            qack.find("v3:queryResponseCode", NS).set("code", "AE")
            qack.find("v3:resultTotalQuantity", NS).set("value", "0")
            return Reply(out, RESPONSE_ACTION)
        kept = 0
        for s in cap.findall("v3:subject", NS):
            if self._fits(s.find("v3:registrationEvent/v3:subject1/v3:patient", NS), params):
                kept += 1
            else:
                cap.remove(s)
        qack.find("v3:queryResponseCode", NS).set("code", "OK" if kept else "NF")
        qack.find("v3:resultTotalQuantity", NS).set("value", str(kept))
        return Reply(out, RESPONSE_ACTION)

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
