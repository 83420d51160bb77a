"""Namespaces and the one safe XML parser every SOAP message goes through.

The parser never resolves entities, never loads a DTD and never fetches anything; a document
with a DOCTYPE is refused outright (SOAP 1.2 Part 1 section 5: "A SOAP message MUST NOT contain
a Document Type Declaration"), which also rules out XXE and entity-expansion payloads.
"""
from __future__ import annotations

import re
import threading

from lxml import etree

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
XOP = "http://www.w3.org/2004/08/xop/include"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"

NS = {"soap": SOAP12, "wsa": WSA, "xop": XOP, "rim": RIM, "rs": RS, "lcm": LCM, "query": QUERY, "xdsb": XDSB}

_local = threading.local()
_ROOT = re.compile(rb"<(?![?!])")  # where the root element starts (not a PI, comment or DOCTYPE)


class XmlError(ValueError):
    """A document that is not well-formed, or that the safe parser refuses."""


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe: one per thread
    p = getattr(_local, "parser", None)
    if p is None:
        p = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                            huge_tree=False, remove_blank_text=False, collect_ids=False)
        _local.parser = p
    return p


def parse_xml(data: bytes | str) -> etree._Element:
    """Parse a document with the safe parser; XmlError if malformed or if it has a DOCTYPE."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    root_at = _ROOT.search(data)
    if b"<!DOCTYPE" in data[:root_at.start() if root_at else len(data)].upper():
        raise XmlError("XML with a document type declaration (DOCTYPE) is refused")
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as e:
        raise XmlError(f"not well-formed XML: {e}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlError("XML with a document type declaration (DOCTYPE) is refused")
    return tree.getroot()


def q(ns: str, local: str) -> str:
    """Clark notation: {ns}local."""
    return f"{{{ns}}}{local}"


def tostring(el: etree._Element, *, declaration: bool = True) -> bytes:
    return etree.tostring(el, xml_declaration=declaration, encoding="UTF-8")
