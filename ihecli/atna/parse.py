"""Reading received audit messages (the Audit Record Repository side of ITI-20).

Accepts the DICOM PS3.15 A.5.1 format (``csd-code``/``originalText``) and the legacy RFC 3881
format (``code``/``displayName``), with junk before the XML (comments, a BOM, text) and after
it. The XML parser resolves no entities and fetches nothing; a DOCTYPE is refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lxml import etree

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                          remove_comments=True, remove_pis=True)
_START = re.compile(rb"<\?xml|<(?:[A-Za-z_][\w.-]*:)?AuditMessage\b")
_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?AuditMessage\s*>")


class AuditParseError(ValueError):
    pass


@dataclass
class ParsedAudit:
    format: str  # DICOM | RFC3881
    event_id: str = ""
    event_name: str = ""
    action: str = ""
    outcome: int | None = None
    event_time: datetime | None = None
    types: list[tuple[str, str]] = field(default_factory=list)  # (code, display)
    source_id: str = ""
    users: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el, name: str):
    return [c for c in el if _local(c.tag) == name]


def _code(el) -> tuple[str, str, str]:
    """(code, display, format hint) of a coded element in either format."""
    if el is None:
        return "", "", ""
    if el.get("csd-code") is not None:
        return el.get("csd-code", ""), el.get("originalText") or el.get("displayName") or "", "DICOM"
    return el.get("code", ""), el.get("displayName") or el.get("originalText") or "", "RFC3881"


def parse_time(text: str | None) -> datetime | None:
    """EventDateTime (xsd:dateTime) as naive UTC; None when unreadable."""
    if not text:
        return None
    t = text.strip().replace("Z", "+00:00")
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?([+-]\d{2}:\d{2})?$", t)
    if not m:
        return None
    frac = (m.group(2) or "")[:7].ljust(7, "0") if m.group(2) else ""
    try:
        dt = datetime.fromisoformat(m.group(1) + frac + (m.group(3) or "+00:00"))
    except ValueError:
        return None
    return dt.astimezone(timezone.utc).replace(tzinfo=None)


def extract_xml(body: bytes) -> bytes:
    """The AuditMessage document within a syslog MSG (junk before and after removed)."""
    m = _START.search(body)
    if not m:
        raise AuditParseError("no AuditMessage in the message")
    start = m.start()
    end = _END.search(body, start)
    return body[start:end.end()] if end else body[start:]


def parse_audit(body: bytes) -> ParsedAudit:
    """Read an AuditMessage in DICOM or RFC 3881 format; AuditParseError when it is not one.

    A document type declaration is refused, as in every XML the project reads: its internal
    entities would otherwise be expanded into the values stored (lxml expands those in attributes
    even with resolve_entities=False)."""
    xml = extract_xml(body)
    root_at = re.search(rb"<(?:[A-Za-z_][\w.-]*:)?AuditMessage\b", xml)
    if b"<!DOCTYPE" in xml[:root_at.start() if root_at else len(xml)].upper():
        raise AuditParseError("XML with a document type declaration (DOCTYPE) is refused")
    try:
        root = etree.fromstring(xml, _PARSER)
    except etree.XMLSyntaxError as e:
        if xml.startswith(b"<?xml"):
            # a declaration naming an encoding lxml lacks, or junk inside it: try the element alone
            m = re.search(rb"<(?:[A-Za-z_][\w.-]*:)?AuditMessage\b", xml)
            if m:
                try:
                    root = etree.fromstring(xml[m.start():], _PARSER)
                except etree.XMLSyntaxError:
                    raise AuditParseError(f"not well-formed XML: {e}") from None
            else:
                raise AuditParseError(f"not well-formed XML: {e}") from None
        else:
            raise AuditParseError(f"not well-formed XML: {e}") from None
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:  # one the byte check missed (another encoding)
        raise AuditParseError("XML with a document type declaration (DOCTYPE) is refused")
    if _local(root.tag) != "AuditMessage":
        raise AuditParseError(f"root element is {_local(root.tag)!r}, not AuditMessage")
    ident = (_children(root, "EventIdentification") or [None])[0]
    if ident is None:
        raise AuditParseError("AuditMessage without EventIdentification")
    code, name, fmt = _code((_children(ident, "EventID") or [None])[0])
    out = ParsedAudit(format=fmt or "DICOM", event_id=code, event_name=name,
                      action=ident.get("EventActionCode", ""), event_time=parse_time(ident.get("EventDateTime")))
    try:
        out.outcome = int(ident.get("EventOutcomeIndicator", ""))
    except ValueError:
        out.outcome = None
    out.types = [_code(t)[:2] for t in _children(ident, "EventTypeCode")]
    for ap in _children(root, "ActiveParticipant"):
        uid = ap.get("UserID")
        if uid:
            out.users.append(uid)
    src = _children(root, "AuditSourceIdentification")
    if src:
        out.source_id = src[0].get("AuditSourceID", "")
    for po in _children(root, "ParticipantObjectIdentification"):
        if po.get("ParticipantObjectTypeCode") == "1" and po.get("ParticipantObjectTypeCodeRole") == "1":
            pid = po.get("ParticipantObjectID")
            if pid:
                out.patients.append(pid)
    return out
