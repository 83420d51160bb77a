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
from ihecli.xds.messages import (DocumentRequest, Result, XdsError, adhoc_query_request, read_documents,
                                 provide_and_register_request, read_errors, read_registry_response,
                                 remove_objects_request, retrieve_request)
from ihecli.xds.model import Association, DocumentEntry, Folder, ObjectRef, SubmissionSet, new_uuid


@dataclass
class Submission:
    """What a Document Source sends: a SubmissionSet, documents with their bytes, folders, associations."""

    submission_set: SubmissionSet
    documents: list[tuple[DocumentEntry, bytes]] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    metadata: etree._Element | None = None  # a full RegistryObjectList instead (--metadata)
    metadata_documents: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # the files the documents came from, for messages

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


@dataclass
class QueryOptions:
    """What a user asks a stored query for, in the terms of the ITI metadata."""

    patient: str | None = None
    statuses: list[str] = field(default_factory=lambda: ["approved"])
    uuids: list[str] = field(default_factory=list)
    unique_ids: list[str] = field(default_factory=list)
    class_codes: list[str] = field(default_factory=list)
    type_codes: list[str] = field(default_factory=list)
    format_codes: list[str] = field(default_factory=list)
    confidentiality_codes: list[str] = field(default_factory=list)
    event_codes: list[str] = field(default_factory=list)
    practice_codes: list[str] = field(default_factory=list)
    facility_codes: list[str] = field(default_factory=list)
    folder_codes: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    time_from: str | None = None
    time_to: str | None = None
    source_ids: list[str] = field(default_factory=list)
    association_types: list[str] = field(default_factory=list)


PATIENT_QUERIES = ("find-documents", "find-submission-sets", "find-folders", "get-all")
_ONE_OBJECT = ("get-folders-for-document", "get-related-documents", "get-submission-set-and-contents",
               "get-folder-and-contents")


_STATUSES = {"approved": v.APPROVED, "deprecated": v.DEPRECATED, "submitted": v.SUBMITTED}
_DEFERRED = "urn:ihe:iti:2010:StatusType:DeferredCreation"  # On-Demand Documents
_DTM = r"\d{4}(\d{2}){0,5}"
_UUID = r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _query_status(value: str) -> str:
    """A status a stored query asks for, as its urn: approved, deprecated, submitted or a urn."""
    from ihecli.errors import UsageError

    s = (value or "").strip()
    long = {u.lower(): u for u in [*_STATUSES.values(), _DEFERRED]}
    if s.lower() in _STATUSES:
        return _STATUSES[s.lower()]
    if s.lower() in long:
        return long[s.lower()]
    raise UsageError(f"bad --status {value!r}: give approved, deprecated or submitted (or the full urn, "
                     f"{v.APPROVED})")


def _query_time(value: str | None, option: str) -> str | None:
    """A DTM (ITI TF-3 4.2.3.1.2: YYYY[MM[DD[hh[mm[ss]]]]], UTC) whose fields are a real time."""
    import re
    from datetime import datetime

    from ihecli.errors import UsageError

    if value is None or not value.strip():
        return None
    s = value.strip()
    bad = f"bad {option} {value!r}: give a DTM, YYYY[MM[DD[hh[mm[ss]]]]] (UTC), e.g. 20240131 or 20240131235959"
    if not re.fullmatch(_DTM, s):
        raise UsageError(bad)
    parts = [int(s[:4])] + [int(s[i:i + 2]) for i in range(4, len(s), 2)]
    parts += [1, 1, 0, 0, 0][len(parts) - 1:]
    try:
        datetime(*parts)
    except ValueError as e:  # month 13, 30 February, hour 24 ...
        raise UsageError(f"{bad} ({e})") from None
    return s


def _query_uuid(value: str) -> str:
    """An entryUUID: urn:uuid: and a UUID (8-4-4-4-12 hex digits), in lower case as ebRIM keeps them."""
    import re

    from ihecli.errors import UsageError

    s = (value or "").strip().lower()
    if not re.fullmatch(_UUID, s):
        raise UsageError(f"bad --uuid {value!r}: an entryUUID is urn:uuid:<uuid>, "
                         "e.g. urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1")
    return s


def stored_query_params(name: str, o: QueryOptions) -> dict:
    """The $parameters of stored query ``name`` (find-documents, ...) for the options given.
    Statuses, times (DTM) and entryUUIDs are checked (UsageError) before anything is sent: a
    registry answers a wrong value with no matches, which would read as "nothing there".

    Repeated confidentiality and event codes are ORed in one Value (ITI TF-2a 3.18.4.1.2.3.7.2)."""
    from ihecli.errors import UsageError

    if name not in v.STORED_QUERIES:
        raise UsageError(f"unknown stored query {name!r}: one of {', '.join(v.STORED_QUERIES)}")
    if name in PATIENT_QUERIES and not o.patient:
        raise UsageError(f"{name} needs a patient ID (ID^^^&OID&ISO)")
    statuses = list(dict.fromkeys(_query_status(s) for s in o.statuses or ["approved"]))
    time_from, time_to = _query_time(o.time_from, "--time-from"), _query_time(o.time_to, "--time-to")
    ids, uids = list(dict.fromkeys(_query_uuid(u) for u in o.uuids)), o.unique_ids
    lst = lambda xs: list(xs) or None  # noqa: E731

    def one_of(prefix: str) -> dict:
        if ids and uids:
            raise UsageError(f"{name} takes entryUUIDs or uniqueIds, not both: give --uuid or --unique-id")
        if not ids and not uids:
            raise UsageError(f"{name} needs entryUUIDs (--uuid urn:uuid:...) or uniqueIds (--unique-id)")
        if name in _ONE_OBJECT and len(ids or uids) > 1:
            raise UsageError(f"{name} takes one entryUUID or uniqueId")
        return {prefix + "EntryUUID": ids} if ids else {prefix + "UniqueId": uids}

    de = "$XDSDocumentEntry"
    p: dict = {}
    if name == "find-documents":
        p = {de + "PatientId": o.patient, de + "Status": statuses, de + "ClassCode": lst(o.class_codes),
             de + "TypeCode": lst(o.type_codes), de + "FormatCode": lst(o.format_codes),
             de + "PracticeSettingCode": lst(o.practice_codes),
             de + "HealthcareFacilityTypeCode": lst(o.facility_codes), de + "CreationTimeFrom": time_from,
             de + "CreationTimeTo": time_to, de + "AuthorPerson": lst(o.authors),
             de + "ConfidentialityCode": lst(o.confidentiality_codes), de + "EventCodeList": lst(o.event_codes)}
    elif name == "find-submission-sets":
        p = {"$XDSSubmissionSetPatientId": o.patient, "$XDSSubmissionSetStatus": statuses,
             "$XDSSubmissionSetSourceId": lst(o.source_ids), "$XDSSubmissionSetSubmissionTimeFrom": time_from,
             "$XDSSubmissionSetSubmissionTimeTo": time_to, "$XDSSubmissionSetAuthorPerson": lst(o.authors),
             "$XDSSubmissionSetContentType": lst(o.content_types)}
    elif name == "find-folders":
        p = {"$XDSFolderPatientId": o.patient, "$XDSFolderStatus": statuses,
             "$XDSFolderLastUpdateTimeFrom": time_from, "$XDSFolderLastUpdateTimeTo": time_to,
             "$XDSFolderCodeList": lst(o.folder_codes)}
    elif name == "get-all":
        p = {"$patientId": o.patient, de + "Status": statuses, "$XDSSubmissionSetStatus": statuses,
             "$XDSFolderStatus": statuses}
    elif name in ("get-documents", "get-documents-and-associations", "get-folders-for-document",
                  "get-related-documents"):
        p = one_of(de)
        if name == "get-related-documents":
            p["$AssociationTypes"] = [v.ASSOCIATION_NAMES.get(t, t) for t in
                                      (o.association_types or ["RPLC", "APND", "XFRM", "XFRM_RPLC", "signs"])]
    elif name in ("get-folders", "get-folder-and-contents"):
        p = one_of("$XDSFolder")
    elif name == "get-submission-set-and-contents":
        p = one_of("$XDSSubmissionSet")
    elif name in ("get-associations", "get-submission-sets"):
        if not ids:
            raise UsageError(f"{name} needs entryUUIDs (--uuid urn:uuid:...)")
        p = {"$uuid": ids}
    if name in ("get-all", "get-submission-set-and-contents", "get-folder-and-contents"):
        p[de + "FormatCode"] = lst(o.format_codes)
        p[de + "ConfidentialityCode"] = lst(o.confidentiality_codes)
    return {k: val for k, val in p.items() if val not in (None, [], "")}


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
        res.documents = read_documents(msg)
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


def removal_plan(cli: SoapClient, uuids: list[str]) -> list:
    """The objects named (a submission set with the document entries and folders it submitted),
    the associations referring to them (to any depth) and the submission sets that would be left
    without members, as registry objects (ObjectRefs for ids no stored query finds)."""
    named = list(dict.fromkeys(uuids))
    objs = {o.entry_uuid: o for o in registry_stored_query(cli, "get-documents",
                                                             {"$XDSDocumentEntryEntryUUID": named}).objects}
    rest = [u for u in named if u not in objs]
    if rest:
        objs.update({o.entry_uuid: o for o in registry_stored_query(cli, "get-folders",
                                                                      {"$XDSFolderEntryUUID": rest}).objects})
    rest = [u for u in named if u not in objs]
    if rest:
        for u in rest:
            got = registry_stored_query(cli, "get-submission-set-and-contents",
                                           {"$XDSSubmissionSetEntryUUID": [u]}).objects
            if any(o.entry_uuid == u for o in got):  # the set and what it submitted
                objs.update({o.entry_uuid: o for o in got if not isinstance(o, Association)})
                named += [o.entry_uuid for o in got if o.entry_uuid != u and not isinstance(o, Association)
                          and o.entry_uuid not in named]
    plan = {u: objs.get(u) or ObjectRef(u) for u in named}
    frontier = list(named)
    while frontier:
        found = registry_stored_query(cli, "get-associations", {"$uuid": frontier}).objects
        frontier = []
        for a in found:
            if a.entry_uuid not in plan:
                plan[a.entry_uuid] = a
                frontier.append(a.entry_uuid)
    members = [u for u, o in plan.items() if not isinstance(o, (Association, SubmissionSet))]
    if members:
        got = registry_stored_query(cli, "get-submission-sets", {"$uuid": members}).objects
        for ss in [o for o in got if isinstance(o, SubmissionSet) and o.entry_uuid not in plan]:
            own = registry_stored_query(cli, "get-associations", {"$uuid": [ss.entry_uuid]}).objects
            if all(a.entry_uuid in plan for a in own if isinstance(a, Association) and a.source == ss.entry_uuid):
                plan[ss.entry_uuid] = ss
    return list(plan.values())


__all__ = ["Submission", "provide_and_register", "registry_stored_query", "retrieve_document_set",
           "remove_metadata", "removal_plan", "stored_query_params", "QueryOptions", "read_errors", "DocumentRequest"]
