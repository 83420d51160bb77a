"""The HL7 V3 messages of PDQv3 (ITI-47, ITI TF-2b 3.47): the query PRPA_IN201305UV02 and the
response PRPA_IN201306UV02, built and read with lxml.

Both follow the HL7 V3 Normative Edition 2008 schemas, which ship with ``ihe`` (package data of
``ihecli.net.soap``, ``xsd/HL7V3``) and are registered with the SOAP layer's validator here.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lxml import etree

from ihecli.errors import UsageError
from ihecli.net.soap import schemas

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS = {"v3": V3}
QUERY_ACTION = "urn:hl7-org:v3:PRPA_IN201305UV02"
CONTINUE_ACTION = "urn:hl7-org:v3:QUQI_IN000003UV01_Continue"
RESPONSE_ACTION = "urn:hl7-org:v3:PRPA_IN201306UV02"
INTERACTIONS = "2.16.840.1.113883.1.6"  # HL7 interaction and trigger event ids

schemas.register(V3, schemas.XSD_DIR / "HL7V3" / "PDQ.xsd")

OID_RE = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
GENDERS = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "U": "UN", "UN": "UN", "UNKNOWN": "UN"}
ADDRESS_PARTS = {"street": "streetAddressLine", "city": "city", "state": "state", "postal": "postalCode",
                 "zip": "postalCode", "country": "country"}


def _q(tag: str) -> str:
    return f"{{{V3}}}{tag}"


def _el(parent, tag: str, text: str | None = None, **attrs) -> etree._Element:
    e = etree.SubElement(parent, _q(tag), {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        e.text = text
    return e


@dataclass
class PdqQuery:
    """The parameters of a Patient Demographics Query; at least one must be given."""

    family: str = ""
    given: str = ""
    birth_date: str = ""  # YYYYMMDD (or YYYY-MM-DD, YYYY, YYYYMM)
    gender: str = ""  # M, F, U
    id: str = ""  # with id_domain (an OID): livingSubjectId
    id_domain: str = ""
    address: dict[str, str] = field(default_factory=dict)  # street, city, state, postal, country
    target_domains: list[str] = field(default_factory=list)  # OIDs: otherIDsScopingOrganization
    limit: int | None = None  # initialQuantity

    def check(self) -> None:
        """Raise UsageError for parameters ITI-47 cannot carry."""
        if not any((self.family, self.given, self.birth_date, self.gender, self.id, self.address)):
            raise UsageError("say what to look for: --family, --given, --birth-date, --gender, --id or --address")
        if self.birth_date:
            d = self.birth_date.replace("-", "")
            try:
                if not re.fullmatch(r"\d{4}(\d{2}(\d{2})?)?", d):
                    raise ValueError
                datetime.strptime(d, {4: "%Y", 6: "%Y%m", 8: "%Y%m%d"}[len(d)])
            except ValueError:
                raise UsageError(f"bad birth date {self.birth_date!r}: give YYYYMMDD or YYYY-MM-DD") from None
            self.birth_date = d
        if self.gender:
            g = GENDERS.get(self.gender.strip().upper())
            if g is None:
                raise UsageError(f"bad gender {self.gender!r}: M, F or U")
            self.gender = g
        if self.id and not self.id_domain:
            raise UsageError("--id needs the identifier's domain: --domain OID")
        if self.id_domain and not OID_RE.fullmatch(self.id_domain):
            raise UsageError(f"bad domain {self.id_domain!r}: HL7 V3 names an assigning authority by its OID")
        for d in self.target_domains:
            if not OID_RE.fullmatch(d):
                raise UsageError(f"bad target domain {d!r}: give an OID")
        for k in self.address:
            if k not in ADDRESS_PARTS:
                raise UsageError(f"bad address part {k!r}: {', '.join(ADDRESS_PARTS)}")


def _transmission(interaction: str, *, sender: str, receiver: str, receiver_url: str,
                  message_id: str | None) -> etree._Element:
    """The message wrapper (MCCI_MT000100UV01 / MCCI_MT000300UV01) of an interaction."""
    root = etree.Element(_q(interaction), nsmap={None: V3, "xsi": XSI}, ITSVersion="XML_1.0")
    _el(root, "id", root=sender, extension=message_id or uuid.uuid4().hex)
    _el(root, "creationTime", value=datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"))
    _el(root, "interactionId", root=INTERACTIONS, extension=interaction)
    _el(root, "processingCode", code="P")
    _el(root, "processingModeCode", code="T")
    _el(root, "acceptAckCode", code="AL")
    dev = _el(_el(root, "receiver", typeCode="RCV"), "device", classCode="DEV", determinerCode="INSTANCE")
    _el(dev, "id", root=receiver)
    if receiver_url:
        _el(dev, "telecom", value=receiver_url)
    dev = _el(_el(root, "sender", typeCode="SND"), "device", classCode="DEV", determinerCode="INSTANCE")
    _el(dev, "id", root=sender)
    return root


def build_query(p: PdqQuery, *, sender: str, receiver: str, receiver_url: str = "", message_id: str | None = None,
                query_id: str | None = None) -> etree._Element:
    """PRPA_IN201305UV02 for ``p``; ``sender``/``receiver`` are the device OIDs; the queryId is
    ``sender``/``query_id``."""
    p.check()
    root = _transmission("PRPA_IN201305UV02", sender=sender, receiver=receiver, receiver_url=receiver_url,
                         message_id=message_id)
    cap = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(cap, "code", code="PRPA_TE201305UV02", codeSystem=INTERACTIONS)
    qbp = _el(cap, "queryByParameter")
    _el(qbp, "queryId", root=sender, extension=query_id or uuid.uuid4().hex)
    _el(qbp, "statusCode", code="new")
    _el(qbp, "responseModalityCode", code="R")
    _el(qbp, "responsePriorityCode", code="I")
    if p.limit:
        _el(qbp, "initialQuantity", value=str(p.limit))
    params = _el(qbp, "parameterList")

    def param(name: str, semantics: str) -> etree._Element:
        e = _el(params, name)
        return e, semantics

    if p.gender:
        e, s = param("livingSubjectAdministrativeGender", "LivingSubject.administrativeGender")
        _el(e, "value", code=p.gender)
        _el(e, "semanticsText", s)
    if p.birth_date:
        e, s = param("livingSubjectBirthTime", "LivingSubject.birthTime")
        _el(e, "value", value=p.birth_date)
        _el(e, "semanticsText", s)
    if p.id:
        e, s = param("livingSubjectId", "LivingSubject.id")
        _el(e, "value", root=p.id_domain, extension=p.id)
        _el(e, "semanticsText", s)
    if p.family or p.given:
        e, s = param("livingSubjectName", "LivingSubject.name")
        v = _el(e, "value")
        if p.given:
            _el(v, "given", p.given)
        if p.family:
            _el(v, "family", p.family)
        _el(e, "semanticsText", s)
    for d in p.target_domains:
        e, s = param("otherIDsScopingOrganization", "OtherIDs.scopingOrganization.id")
        _el(e, "value", root=d)
        _el(e, "semanticsText", s)
    if p.address:
        e, s = param("patientAddress", "Patient.addr")
        v = _el(e, "value")
        for k in ("street", "city", "state", "postal", "zip", "country"):  # the order of the AD type
            if p.address.get(k):
                _el(v, ADDRESS_PARTS[k], p.address[k])
        _el(e, "semanticsText", s)
    return root


def build_continuation(query_root: str, query_ext: str, quantity: int, *, sender: str, receiver: str,
                       receiver_url: str = "") -> etree._Element:
    """QUQI_IN000003UV01 asking for the next ``quantity`` matches of a query (ITI-47 continuation)."""
    root = _transmission("QUQI_IN000003UV01", sender=sender, receiver=receiver, receiver_url=receiver_url,
                         message_id=None)
    cap = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(cap, "code", code="PRPA_TE000003UV01", codeSystem=INTERACTIONS)
    qc = _el(cap, "queryContinuation")
    _el(qc, "queryId", root=query_root, extension=query_ext)
    _el(qc, "continuationQuantity", value=str(quantity))
    _el(qc, "statusCode", code="waitContinuedQueryResponse")
    return root


# -- the response ----------------------------------------------------------------------------


@dataclass
class PatientId:
    root: str
    extension: str
    organization: str = ""  # scopingOrganization of asOtherIDs (empty for the patient's own ids)

    def __str__(self) -> str:
        return f"{self.extension}^^^&{self.root}&ISO" if self.root else self.extension


@dataclass
class PdqPatient:
    """One match: identifiers, names, gender, birth date, addresses, telecoms, match score."""

    ids: list[PatientId] = field(default_factory=list)
    other_ids: list[PatientId] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # FAMILY^GIVEN^MIDDLE (DICOM PN order)
    gender: str = ""
    birth_date: str = ""
    addresses: list[str] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)
    score: str = ""
    provider: str = ""

    def as_dict(self) -> dict:
        return {"ids": [str(i) for i in self.ids], "other_ids": [str(i) for i in self.other_ids],
                "names": self.names, "gender": self.gender, "birth_date": self.birth_date,
                "addresses": self.addresses, "telecoms": self.telecoms, "score": self.score,
                "provider": self.provider}


@dataclass
class PdqAnswer:
    """A PRPA_IN201306UV02 read: acknowledgement (AA/AE/AR), query response code (OK, NF, AE,
    QE) and the matches."""

    ack: str
    status: str
    patients: list[PdqPatient] = field(default_factory=list)
    total: int | None = None
    remaining: int | None = None
    errors: list[str] = field(default_factory=list)
    message_id: str = ""
    ms: float = 0.0

    def as_dict(self) -> dict:
        return {"ack": self.ack, "status": self.status, "total": self.total, "remaining": self.remaining,
                "errors": self.errors, "patients": [p.as_dict() for p in self.patients]}


def _attr(el, path: str, name: str) -> str:
    found = el.find(path, NS)
    return (found.get(name) or "").strip() if found is not None else ""


def _text(el) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _name(pn) -> str:
    fam = " ".join(_text(f) for f in pn.findall("v3:family", NS))
    given = [_text(g) for g in pn.findall("v3:given", NS)]
    if not fam and not given:
        return _text(pn)
    parts = [fam, given[0] if given else "", " ".join(given[1:])]
    return "^".join(parts).rstrip("^")


def _addr(ad) -> str:
    order = ("streetAddressLine", "houseNumber", "streetName", "postalCode", "city", "state", "country")
    parts = []
    for tag in order:
        for e in ad.findall(f"v3:{tag}", NS):
            if _text(e):
                parts.append(_text(e))
    return ", ".join(parts) or _text(ad)


def _int(el, path: str) -> int | None:
    v = _attr(el, path, "value")
    return int(v) if v.lstrip("-").isdigit() else None


def read_response(body: etree._Element) -> PdqAnswer:
    """Read a PRPA_IN201306UV02 (the SOAP body's element)."""
    from ihecli.errors import IheError

    if etree.QName(body).text != _q("PRPA_IN201306UV02"):
        raise IheError(f"the PDQ Supplier answered {etree.QName(body).localname}, not PRPA_IN201306UV02")
    ack = _attr(body, "v3:acknowledgement/v3:typeCode", "code").upper()
    errors = []
    for det in body.findall("v3:acknowledgement/v3:acknowledgementDetail", NS):
        code = _attr(det, "v3:code", "code")
        text = _text(det.find("v3:text", NS)) or _attr(det, "v3:code", "displayName")
        loc = _text(det.find("v3:location", NS))
        errors.append(" ".join(x for x in (code, text, f"at {loc}" if loc else "") if x))
    cap = body.find("v3:controlActProcess", NS)
    qack = cap.find("v3:queryAck", NS) if cap is not None else None
    status = _attr(qack, "v3:queryResponseCode", "code").upper() if qack is not None else ""
    out = PdqAnswer(ack or "", status or ("AE" if ack in ("AE", "AR") else ""), errors=errors,
                    message_id=_attr(body, "v3:id", "extension"))
    if qack is not None:
        out.total = _int(qack, "v3:resultTotalQuantity")
        out.remaining = _int(qack, "v3:resultRemainingQuantity")
    if cap is None:
        return out
    for pat in cap.findall("v3:subject/v3:registrationEvent/v3:subject1/v3:patient", NS):
        p = PdqPatient()
        for i in pat.findall("v3:id", NS):
            if i.get("extension") or i.get("root"):
                p.ids.append(PatientId(i.get("root", ""), i.get("extension", "")))
        person = pat.find("v3:patientPerson", NS)
        if person is not None:
            p.names = [n for n in (_name(pn) for pn in person.findall("v3:name", NS)) if n]
            p.gender = _attr(person, "v3:administrativeGenderCode", "code")
            p.birth_date = _attr(person, "v3:birthTime", "value")
            p.addresses = [a for a in (_addr(ad) for ad in person.findall("v3:addr", NS)) if a]
            p.telecoms = [t.get("value", "") for t in person.findall("v3:telecom", NS) if t.get("value")]
            for other in person.findall("v3:asOtherIDs", NS):
                org = _attr(other, "v3:scopingOrganization/v3:id", "root")
                for i in other.findall("v3:id", NS):
                    if i.get("extension"):
                        p.other_ids.append(PatientId(i.get("root", ""), i.get("extension", ""), org))
        p.provider = _text(pat.find("v3:providerOrganization/v3:name", NS))
        p.score = _attr(pat, "v3:subjectOf1/v3:queryMatchObservation/v3:value", "value")
        out.patients.append(p)
    if not out.status:
        out.status = "OK" if out.patients else "NF"
    return out
