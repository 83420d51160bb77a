"""What the header of an HL7 CDA R2 document says about itself, for its DocumentEntry (ITI TF-3
4.2.3.2 maps the metadata to the CDA header): title, type code, confidentiality, language,
creation and service times, authors, and the patient identifiers of recordTarget.

Read with the safe parser (no DTD, no entities); anything that is not a CDA document gives None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ihecli.net.soap.xml import XmlError, parse_xml

V3 = "urn:hl7-org:v3"
# a DOCTYPE that declares nothing (no internal subset; an external one is never loaded): some CDA
# generators write one, and it must not turn the document into "not CDA" (its checks skipped)
_BARE_DOCTYPE = re.compile(rb"<!DOCTYPE\s+[A-Za-z_:][\w.:-]*(?:\s+(?:SYSTEM|PUBLIC)(?:\s+(?:\"[^\"]*\"|'[^']*')){1,2})?\s*>")


class CdaRefused(ValueError):
    """A CDA document that cannot be read safely (entities declared in its DOCTYPE)."""


@dataclass
class CdaHeader:
    title: str = ""
    type_code: tuple[str, str, str] | None = None  # code, display, code system
    confidentiality: tuple[str, str, str] | None = None
    language: str = ""
    creation_time: str = ""  # XDS DTM, UTC
    service_start: str = ""
    service_stop: str = ""
    authors: list[str] = field(default_factory=list)  # XCN: ^Family^Given
    patient_ids: list[tuple[str, str]] = field(default_factory=list)  # (root OID, extension)


def _v3(path: str) -> str:
    return "/".join(f"{{{V3}}}{p}" for p in path.split("/"))


def utc_dtm(ts: str) -> str:
    """An HL7 V3 TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) as an XDS DTM in UTC; '' when unreadable.
    Without a zone the time is taken as written (as XDS DTM values are UTC, that is a guess)."""
    ts = (ts or "").strip()
    zone = ""
    for sign in ("+", "-"):
        if sign in ts[4:]:
            at = ts.index(sign, 4)
            ts, zone = ts[:at], ts[at:]
    ts = ts.split(".")[0]
    if not ts.isdigit() or len(ts) < 4 or len(ts) % 2:
        return ""
    if not zone or len(ts) < 12:
        return ts
    try:
        t = datetime.strptime(ts[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5] or 0)) * (1 if zone[0] == "+" else -1)
    except ValueError:
        return ""
    return (t - offset).replace(tzinfo=timezone.utc).strftime("%Y%m%d%H%M%S")[:len(ts)]


def read_header(data: bytes) -> CdaHeader | None:
    """The header of a CDA document, or None for anything else."""
    head = data[:2048].lstrip()
    if not head.startswith(b"<") or b"ClinicalDocument" not in data[:4096]:
        return None
    try:
        root = parse_xml(data)
    except XmlError:
        root_at = re.search(rb"<(?:[A-Za-z_][\w.-]*:)?ClinicalDocument\b", data)
        if root_at is None or b"<!DOCTYPE" not in data[:root_at.start()]:
            return None
        bare = _BARE_DOCTYPE.search(data, 0, root_at.start())
        if bare is None:
            raise CdaRefused("a CDA document whose DOCTYPE declares entities (not read here)") from None
        try:
            root = parse_xml(data[:bare.start()] + data[bare.end():])
        except XmlError:
            return None
    if root.tag != f"{{{V3}}}ClinicalDocument":
        return None
    h = CdaHeader()
    h.title = " ".join((root.findtext(_v3("title")) or "").split())
    code = root.find(_v3("code"))
    if code is not None and code.get("code") and code.get("codeSystem"):
        h.type_code = (code.get("code"), code.get("displayName") or "", code.get("codeSystem"))
    conf = root.find(_v3("confidentialityCode"))
    if conf is not None and conf.get("code"):
        h.confidentiality = (conf.get("code"), conf.get("displayName") or "",
                             conf.get("codeSystem") or "2.16.840.1.113883.5.25")
    lang = root.find(_v3("languageCode"))
    h.language = (lang.get("code") or "") if lang is not None else ""
    eff = root.find(_v3("effectiveTime"))
    h.creation_time = utc_dtm(eff.get("value") or "") if eff is not None else ""
    for low, attr in (("low", "service_start"), ("high", "service_stop")):
        el = root.find(_v3(f"documentationOf/serviceEvent/effectiveTime/{low}"))
        if el is not None:
            setattr(h, attr, utc_dtm(el.get("value") or ""))
    for person in root.iterfind(_v3("author/assignedAuthor/assignedPerson/name")):
        family = " ".join((person.findtext(_v3("family")) or "").split())
        given = " ".join((person.findtext(_v3("given")) or "").split())
        if family or given:
            h.authors.append(f"^{family}^{given}")
    for pid in root.iterfind(_v3("recordTarget/patientRole/id")):
        if pid.get("root"):
            h.patient_ids.append((pid.get("root"), pid.get("extension") or ""))
    return h
