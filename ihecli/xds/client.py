"""XDS.b Document Source, Document Consumer and Document Administrator (client side).

- ``provide_and_register(client, submission)``: Provide and Register Document Set-b (ITI-41), MTOM.
- ``registry_stored_query(client, name, params)``: Registry Stored Query (ITI-18).
- ``retrieve_document_set(client, requests)``: Retrieve Document Set (ITI-43).
- ``remove_metadata(client, uuids)``: Delete Document Set / Remove Metadata (ITI-62).

``client`` is an ``ihecli.net.soap.SoapClient`` for the registry or repository endpoint. Each
transaction records its audit event (ITI-20) when a repository is configured.

Each returns a ``Result`` (status, errors and warnings, objects or documents) and raises
``XdsError`` when the peer answers Failure, ``SoapFault`` for a SOAP fault and
``PeerUnreachable`` when it cannot be reached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from ihecli.errors import IheError
from ihecli.net.soap import Attachments, SoapClient
from ihecli.net.soap.xml import RIM, XDSB, q
from ihecli.xds import audit, ebrim
from ihecli.xds import vocabulary as v
from ihecli.xds.messages import (DocumentRequest, Result, RetrievedDocument, XdsError, adhoc_query_request,
                                 provide_and_register_request, read_errors, read_registry_response,
                                 remove_objects_request, retrieve_request)
from ihecli.xds.model import Association, DocumentEntry, Folder, SubmissionSet, new_uuid


@dataclass
class Submission:
    """What a Document Source sends: a SubmissionSet, documents with their bytes, folders, associations."""

    submission_set: SubmissionSet
    documents: list[tuple[DocumentEntry, bytes]] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    metadata: etree._Element | None = None  # a full RegistryObjectList instead (--metadata)
    metadata_documents: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def object_list(self) -> etree._Element:
        """The RegistryObjectList: objects plus the HasMember associations they need."""
        if self.metadata is not None:
            return self.metadata
        ss = self.submission_set
        objs: list = [ss]
        assocs = list(self.associations)
        for de, _ in self.documents:
            objs.append(de)
            assocs.append(Association(new_uuid(), v.HAS_MEMBER, ss.entry_uuid, de.entry_uuid,
                                      submission_set_status="Original"))
        for fd in self.folders:
            objs.append(fd)
            assocs.append(Association(new_uuid(), v.HAS_MEMBER, ss.entry_uuid, fd.entry_uuid))
        return ebrim.object_list(objs + assocs)


def _check(status_el, what: str) -> Result:
    res = read_registry_response(status_el)
    if res.status == v.FAILURE or (res.status not in (v.SUCCESS, v.PARTIAL)):
        raise XdsError(res.errors or [], status=res.status)
    return res


def provide_and_register(client: SoapClient, sub: Submission) -> Result:
    """Provide and Register Document Set-b (ITI-41), always MTOM/XOP."""
    parts = Attachments()
    if sub.metadata is not None:
        docs = [(i, data, mime) for i, (data, mime) in sub.metadata_documents.items()]
    else:
        docs = [(de.entry_uuid, data, de.mime_type) for de, data in sub.documents]
    object_list = sub.object_list()
    body = provide_and_register_request(object_list, docs, parts)
    ss = sub.submission_set or next((o for o in ebrim.from_rim(object_list) if isinstance(o, SubmissionSet)),
                                    SubmissionSet())
    ok = False
    try:
        msg = client.call(v.ITI41, body, attachments=parts, force_mtom=True)
        res = _check(msg.body, "ITI-41")
        ok = True
        return res
    finally:
        audit.provide(audit.local(), audit.remote_url(client.url), ss.unique_id, ss.patient_id, ok, sender=True)


def registry_stored_query(client: SoapClient, query: str, params: dict, *, object_ref: bool = False,
                          home: str = "") -> Result:
    """Registry Stored Query (ITI-18) by command-line name (find-documents) or query id."""
    qid = v.STORED_QUERIES[query][0] if query in v.STORED_QUERIES else query
    body = adhoc_query_request(qid, params, return_type="ObjectRef" if object_ref else "LeafClass", home=home)
    patient = next((str(val) for k, val in params.items() if k.endswith(("PatientId", "patientId")) and val), "")
    ok = False
    try:
        msg = client.call(v.ITI18, body)
        res = _check(msg.body, "ITI-18")
        ok = True
    finally:
        audit.query(audit.local(), audit.remote_url(client.url), qid, etree.tostring(body), patient, ok)
    rol = msg.body.find(q(RIM, "RegistryObjectList"))
    res.objects = ebrim.from_rim(rol) if rol is not None else []
    return res


def retrieve_document_set(client: SoapClient, requests: list[DocumentRequest]) -> Result:
    """Retrieve Document Set (ITI-43); PartialSuccess keeps the documents that came."""
    res = None
    try:
        msg = client.call(v.ITI43, retrieve_request(requests))
        if msg.body.tag != q(XDSB, "RetrieveDocumentSetResponse"):
            raise IheError(f"unexpected ITI-43 answer {etree.QName(msg.body).localname}")
        res = _check(msg.body, "ITI-43")
        for dr in msg.body.findall(q(XDSB, "DocumentResponse")):
            doc = dr.find(q(XDSB, "Document"))
            res.documents.append(RetrievedDocument(
                repository_unique_id=(dr.findtext(q(XDSB, "RepositoryUniqueId")) or "").strip(),
                document_unique_id=(dr.findtext(q(XDSB, "DocumentUniqueId")) or "").strip(),
                mime_type=(dr.findtext(q(XDSB, "mimeType")) or "").strip(),
                data=msg.binary(doc) if doc is not None else b"",
                home=(dr.findtext(q(XDSB, "HomeCommunityId")) or "").strip()))
    finally:
        docs = [(d.document_unique_id, d.repository_unique_id, d.home) for d in res.documents] if res else []
        audit.retrieve(audit.remote_url(client.url), audit.local(), docs,
                       (True if res.ok else None) if res else False, is_consumer=True)
    return res


def remove_metadata(client: SoapClient, uuids: list[str]) -> Result:
    """Delete Document Set (ITI-62, Remove Metadata): RemoveObjectsRequest with ObjectRefs."""
    ok = False
    try:
        msg = client.call(v.ITI62, remove_objects_request(uuids))
        res = _check(msg.body, "ITI-62")
        ok = True
        return res
    finally:
        audit.delete(audit.local(), audit.remote_url(client.url), uuids, ok)


__all__ = ["Submission", "provide_and_register", "registry_stored_query", "retrieve_document_set",
           "remove_metadata", "read_errors", "DocumentRequest"]
