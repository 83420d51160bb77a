"""The XDS.b message bodies, both ways: RegistryResponse with RegistryErrorList, AdhocQuery
request and response (ITI-18), ProvideAndRegister (ITI-41), RetrieveDocumentSet (ITI-43) and
RemoveObjects (ITI-62). Shared by the Document Source/Consumer/Administrator and the server.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from ihecli.errors import IheError
from ihecli.net.soap.xml import LCM, QUERY, RIM, RS, XDSB, q
from ihecli.xds import vocabulary as v


@dataclass
class RegistryError:
    code: str
    context: str = ""
    location: str = ""
    severity: str = v.SEVERITY_ERROR

    @property
    def is_error(self) -> bool:
        return not self.severity.endswith("Warning")

    def __str__(self) -> str:
        return f"{self.code}: {self.context}" if self.context else self.code


class XdsError(IheError):
    """A registry or repository answered Failure (or a server refuses a request) with error codes."""

    def __init__(self, errors: list[RegistryError] | RegistryError, status: str = v.FAILURE):
        self.errors = errors if isinstance(errors, list) else [errors]
        self.status = status
        super().__init__("; ".join(str(e) for e in self.errors) or "Failure without a RegistryErrorList")


@dataclass
class Result:
    """What a transaction answered: status, errors and warnings, and the objects or documents."""

    status: str
    errors: list[RegistryError] = field(default_factory=list)
    objects: list = field(default_factory=list)
    documents: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == v.SUCCESS

    @property
    def partial(self) -> bool:
        return self.status == v.PARTIAL


# -- RegistryResponse ------------------------------------------------------------------------------
def error_list(parent: etree._Element, errors: list[RegistryError]) -> None:
    if not errors:
        return
    lst = etree.SubElement(parent, q(RS, "RegistryErrorList"))
    worst = v.SEVERITY_ERROR if any(e.is_error for e in errors) else v.SEVERITY_WARNING
    lst.set("highestSeverity", worst)
    for e in errors:
        el = etree.SubElement(lst, q(RS, "RegistryError"), errorCode=e.code, severity=e.severity,
                              codeContext=e.context or e.code)
        if e.location:
            el.set("location", e.location)


def registry_response(status: str, errors: list[RegistryError] | None = None, tag: str | None = None) -> etree._Element:
    el = etree.Element(tag or q(RS, "RegistryResponse"), nsmap={"rs": RS}, status=status)
    error_list(el, errors or [])
    return el


def read_errors(el: etree._Element) -> list[RegistryError]:
    """The errors of a RegistryErrorList, or of the RegistryErrorList of a response (not a walk
    through the whole answer: a query's may hold thousands of objects)."""
    lists = [el] if el.tag == _ERROR_LIST else el.iterchildren(_ERROR_LIST)
    return [RegistryError(code=e.get("errorCode", ""), context=e.get("codeContext", ""),
                          location=e.get("location", ""), severity=e.get("severity", v.SEVERITY_ERROR))
            for lst in lists for e in lst.iterchildren(_ERROR)]


_ERROR_LIST, _ERROR = q(RS, "RegistryErrorList"), q(RS, "RegistryError")


def read_registry_response(el: etree._Element) -> Result:
    """status and errors of a RegistryResponse (or of any response extending it)."""
    rr = el if el.get("status") is not None else el.find(f".//{q(RS, 'RegistryResponse')}")
    if rr is None:
        raise IheError(f"unexpected response element {etree.QName(el).localname} (no RegistryResponse)")
    return Result(status=rr.get("status", ""), errors=read_errors(rr))


# -- ITI-18 ---------------------------------------------------------------------------------------
def quote(value) -> str:
    """A stored-query parameter value: numbers bare, strings in single quotes ('' inside)."""
    s = str(value)
    if re.fullmatch(r"-?\d+", s):
        return s
    return "'" + s.replace("'", "''") + "'"


def adhoc_query_request(query_id: str, params: dict[str, object], *, return_type: str = "LeafClass",
                        home: str = "") -> etree._Element:
    """query:AdhocQueryRequest. A list value becomes ('a','b') (in several Values when one would be
    longer than rim:Value allows); a tuple of lists becomes several Values (AND of ORs, as for
    $XDSDocumentEntryEventCodeList)."""
    req = etree.Element(q(QUERY, "AdhocQueryRequest"), nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, q(QUERY, "ResponseOption"), returnComposedObjects="true", returnType=return_type)
    aq = etree.SubElement(req, q(RIM, "AdhocQuery"), id=query_id)
    if home:
        aq.set("home", home)
    for name, value in params.items():
        if value is None or value == [] or value == "":
            continue
        slot = etree.SubElement(aq, q(RIM, "Slot"), name=name)
        vl = etree.SubElement(slot, q(RIM, "ValueList"))
        if isinstance(value, tuple):  # AND of ORs: one Value per group
            texts = ["(" + ",".join(quote(x) for x in g) + ")" if isinstance(g, list) else quote(g) for g in value]
        elif isinstance(value, list):  # OR: as many Values as it takes to keep each within 256 characters
            texts = _or_values([quote(x) for x in value])
        else:
            texts = [quote(value)]
        for text in texts:
            etree.SubElement(vl, q(RIM, "Value")).text = text
    return req


VALUE_MAX = 256  # rim:Value is a LongName (ebRIM 3.0)


def _or_values(items: list[str]) -> list[str]:
    """('a','b',...) Values, each at most VALUE_MAX characters: several Values of a slot are ORed
    like the items of one (ITI TF-2a 3.18.4.1.2.3.5)."""
    out, cur, size = [], [], 2
    for x in items:
        if cur and size + len(x) + 1 > VALUE_MAX:
            out.append("(" + ",".join(cur) + ")")
            cur, size = [], 2
        cur.append(x)
        size += len(x) + (1 if len(cur) > 1 else 0)
    if cur:
        out.append("(" + ",".join(cur) + ")")
    return out


def adhoc_query_response(status: str, objects: list[etree._Element], errors: list[RegistryError] | None = None):
    el = etree.Element(q(QUERY, "AdhocQueryResponse"), nsmap={"query": QUERY, "rs": RS, "rim": RIM}, status=status)
    error_list(el, errors or [])
    rol = etree.SubElement(el, q(RIM, "RegistryObjectList"))
    rol.extend(objects)
    return el


def adhoc_query_response_xml(status: str, fragments: list[str], errors: list[RegistryError] | None = None) -> bytes:
    """The AdhocQueryResponse serialized (no XML declaration), its RegistryObjectList made of
    ``fragments``: objects already serialized, each one element, which may use the prefix
    ``rim`` (declared by the response) without declaring it."""
    head = etree.tostring(adhoc_query_response(status, [], errors), encoding="unicode")
    empty = "<rim:RegistryObjectList/>"  # the last child, so the last occurrence
    cut = head.rindex(empty)
    return "".join((head[:cut], "<rim:RegistryObjectList>", *fragments, "</rim:RegistryObjectList>",
                    head[cut + len(empty):])).encode("utf-8")


# -- ITI-41 ---------------------------------------------------------------------------------------
def provide_and_register_request(object_list: etree._Element, documents, attachments) -> etree._Element:
    """xdsb:ProvideAndRegisterDocumentSetRequest; ``documents``: (entryUUID, bytes, mime) sent as XOP parts."""
    req = etree.Element(q(XDSB, "ProvideAndRegisterDocumentSetRequest"), nsmap={"xdsb": XDSB, "lcm": LCM, "rim": RIM})
    sor = etree.SubElement(req, q(LCM, "SubmitObjectsRequest"))
    sor.append(object_list)
    for entry_uuid, data, mime in documents:
        d = etree.SubElement(req, q(XDSB, "Document"), id=entry_uuid)
        attachments.include(d, data, mime or "application/octet-stream")
    return req


# -- ITI-43 ---------------------------------------------------------------------------------------
@dataclass
class DocumentRequest:
    repository_unique_id: str
    document_unique_id: str
    home: str = ""


@dataclass
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    data: bytes
    home: str = ""


def retrieve_request(requests: list[DocumentRequest]) -> etree._Element:
    req = etree.Element(q(XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": XDSB})
    for r in requests:
        d = etree.SubElement(req, q(XDSB, "DocumentRequest"))
        if r.home:
            etree.SubElement(d, q(XDSB, "HomeCommunityId")).text = r.home
        etree.SubElement(d, q(XDSB, "RepositoryUniqueId")).text = r.repository_unique_id
        etree.SubElement(d, q(XDSB, "DocumentUniqueId")).text = r.document_unique_id
    return req


def read_retrieve_request(el: etree._Element) -> list[DocumentRequest]:
    out = []
    for d in el.findall(q(XDSB, "DocumentRequest")):
        out.append(DocumentRequest((d.findtext(q(XDSB, "RepositoryUniqueId")) or "").strip(),
                                   (d.findtext(q(XDSB, "DocumentUniqueId")) or "").strip(),
                                   (d.findtext(q(XDSB, "HomeCommunityId")) or "").strip()))
    return out


def read_documents(msg, home: str = "") -> list[RetrievedDocument]:
    """The documents of a RetrieveDocumentSetResponse (``msg``: the received SoapMessage), each
    with its bytes from the MTOM part or inline base64; ``home`` when the answer names none."""
    out = []
    for dr in msg.body.findall(q(XDSB, "DocumentResponse")):
        doc = dr.find(q(XDSB, "Document"))
        out.append(RetrievedDocument(
            repository_unique_id=(dr.findtext(q(XDSB, "RepositoryUniqueId")) or "").strip(),
            document_unique_id=(dr.findtext(q(XDSB, "DocumentUniqueId")) or "").strip(),
            mime_type=(dr.findtext(q(XDSB, "mimeType")) or "").strip(),
            data=msg.binary(doc) if doc is not None else b"",
            home=(dr.findtext(q(XDSB, "HomeCommunityId")) or "").strip() or home))
    return out


def retrieve_response(status: str, errors: list[RegistryError], documents: list[RetrievedDocument], attachments):
    el = etree.Element(q(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB, "rs": RS})
    el.append(registry_response(status, errors))
    for d in documents:
        dr = etree.SubElement(el, q(XDSB, "DocumentResponse"))
        if d.home:
            etree.SubElement(dr, q(XDSB, "HomeCommunityId")).text = d.home
        etree.SubElement(dr, q(XDSB, "RepositoryUniqueId")).text = d.repository_unique_id
        etree.SubElement(dr, q(XDSB, "DocumentUniqueId")).text = d.document_unique_id
        etree.SubElement(dr, q(XDSB, "mimeType")).text = d.mime_type
        attachments.include(etree.SubElement(dr, q(XDSB, "Document")), d.data, d.mime_type)
    return el


# -- ITI-62 ---------------------------------------------------------------------------------------
def remove_objects_request(uuids: list[str]) -> etree._Element:
    req = etree.Element(q(LCM, "RemoveObjectsRequest"), nsmap={"lcm": LCM, "rim": RIM})
    lst = etree.SubElement(req, q(RIM, "ObjectRefList"))
    for u in uuids:
        etree.SubElement(lst, q(RIM, "ObjectRef"), id=u)
    return req
