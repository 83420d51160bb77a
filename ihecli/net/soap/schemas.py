"""Validation against local copies of the official schemas (package data in ``xsd/``).

``validate(element)`` checks an element against the schema of its namespace: ebRS 3.0
(rim, rs, lcm, query) and IHE XDS.b. ``rim.xsd`` imports ``http://www.w3.org/2001/xml.xsd`` by
URL; a resolver maps it to the local copy, and the parser may not touch the network at all.
Other profiles add theirs with ``register(namespace, path)`` before the first validation.
"""
from __future__ import annotations

import threading
from pathlib import Path

from lxml import etree

from ihecli.net.soap.xml import LCM, QUERY, RIM, RS, XDSB, XOP, q

XSD_DIR = Path(__file__).parent / "xsd"
_URLS = {"http://www.w3.org/2001/xml.xsd": XSD_DIR / "xml.xsd"}
_SCHEMAS: dict[str, Path] = {
    RIM: XSD_DIR / "ebRS" / "rim.xsd",
    RS: XSD_DIR / "ebRS" / "rs.xsd",
    LCM: XSD_DIR / "ebRS" / "lcm.xsd",
    QUERY: XSD_DIR / "ebRS" / "query.xsd",
    XDSB: XSD_DIR / "IHE" / "XDS.b_DocumentRepository.xsd",
}
_XOP_INCLUDE = q(XOP, "Include")
_lock = threading.Lock()
_compiled: etree.XMLSchema | None = None
# Tests set this: then every message the SOAP client sends and the server answers is validated
STRICT = False


class SchemaError(ValueError):
    """The element does not follow its schema; the message names the first problem."""


class _Local(etree.Resolver):
    def resolve(self, url, pubid, context):
        path = _URLS.get(url)
        if path is not None:
            return self.resolve_filename(str(path), context)
        return None  # a relative import: libxml2 reads the local file; network access stays off


def register(namespace: str, path: str | Path) -> None:
    """Add a schema (its imports resolved relative to it) before the first validation."""
    global _compiled
    with _lock:
        _SCHEMAS[namespace] = Path(path)
        _compiled = None


def schema() -> etree.XMLSchema:
    """One schema importing every registered namespace (compiled once, about 50 ms)."""
    global _compiled
    with _lock:
        if _compiled is None:
            imports = "".join(f'<xs:import namespace="{ns}" schemaLocation="{p.resolve().as_uri()}"/>'
                              for ns, p in _SCHEMAS.items())
            wrapper = (f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                       f'targetNamespace="urn:ihe:cli:schemas">{imports}</xs:schema>')
            parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
            parser.resolvers.add(_Local())
            doc = etree.fromstring(wrapper.encode(), parser, base_url=str(XSD_DIR.resolve().as_uri()) + "/")
            _compiled = etree.XMLSchema(doc)
        return _compiled


def validate(el: etree._Element) -> None:
    """Raise SchemaError unless ``el`` (a document's root or a SOAP body child) is schema-valid.

    An element inside a document is validated in place as if it were the root (lxml validates a
    subtree without copying it). An xop:Include stands for base64 content (the XOP infoset), so
    it is taken out for the validation and put back."""
    s = schema()
    includes = [(inc, inc.getparent(), inc.tail) for inc in el.iter(_XOP_INCLUDE)]
    for inc, parent, _tail in includes:
        parent.remove(inc)
    try:
        with _lock:  # one XMLSchema object is not safe to use from several threads at once
            ok = s.validate(el)
            log = s.error_log
    finally:
        for inc, parent, tail in includes:
            parent.append(inc)
            inc.tail = tail
    if not ok:
        first = log[0] if len(log) else None
        raise SchemaError(f"{etree.QName(el).localname}: {first.message if first else 'invalid'}"
                          + (f" (line {first.line})" if first else ""))
