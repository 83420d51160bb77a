"""Document Registry: Register Document Set-b (ITI-42, and the registry half of ITI-41) and
Delete Document Set / Remove Metadata (ITI-62), over the archive database (tables_xds).

A submission is checked as a registry must (ITI TF-3 4.1, 4.2; ITI TF-2b 3.42.4.1.3): one
SubmissionSet, required attributes, patient ID form and consistency, uniqueId clashes within
the message and with the registry, association rules (members, RPLC/APND/XFRM targets that
exist, are approved and belong to the same patient). Symbolic ids become urn:uuid ids. A
replacement deprecates its target and joins the target's folders. Errors carry the codes the
NIST list allows for the transaction.
"""
from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass, field

from lxml import etree
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Engine

from ihecli.archive.index import make_engine, now
from ihecli.archive.tables_xds import xds_documents, xds_objects, xds_values
from ihecli.net.soap.xml import RIM, q
from ihecli.xds import ebrim
from ihecli.xds import vocabulary as v
from ihecli.xds.messages import RegistryError, XdsError
from ihecli.xds.model import Association, DocumentEntry, Folder, SubmissionSet, new_uuid, now_dtm, valid_cx

R = lambda local: q(RIM, local)  # noqa: E731
UUID_RE = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_REF_ATTRS = ("id", "classifiedObject", "registryObject", "sourceObject", "targetObject")
_OBJECT_TAGS = {R("ExtrinsicObject"), R("RegistryPackage"), R("Association"), R("Classification"),
                R("ExternalIdentifier")}


def _err(code: str, context: str, location: str = "") -> RegistryError:
    return RegistryError(code, context, location)


@dataclass
class Submission:
    """A normalized submission: objects with their (rewritten) elements, ready to store."""

    ss: SubmissionSet
    ss_el: etree._Element
    docs: list[tuple[DocumentEntry, etree._Element]] = field(default_factory=list)
    folders: list[tuple[Folder, etree._Element]] = field(default_factory=list)
    assocs: list[tuple[Association, etree._Element]] = field(default_factory=list)
    id_map: dict[str, str] = field(default_factory=dict)  # symbolic id -> urn:uuid


class Registry:
    """The registry over one database; ``lock`` serializes writers of this process."""

    def __init__(self, engine: Engine, db_url: str | None = None):
        self.engine = engine
        url = db_url or str(engine.url)
        self.wengine = make_engine(url, writer=True) if url.startswith("sqlite") else engine
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.wengine is not self.engine:
            self.wengine.dispose()

    # -- ITI-42 / ITI-41 ----------------------------------------------------------------------------
    def normalize(self, sor: etree._Element, *, metadata_error: str = "XDSRegistryMetadataError") -> Submission:
        """Check a SubmitObjectsRequest and rewrite it into a Submission (XdsError if refused).

        The request's elements are changed in place (ids, classifications moved into their objects)."""
        rol = sor.find(R("RegistryObjectList"))
        if rol is None:
            raise XdsError(_err(metadata_error, "SubmitObjectsRequest without a RegistryObjectList"))
        # rewritten in place: the request is this call's own
        id_map: dict[str, str] = {}
        for el in rol.iter():
            if el.tag in _OBJECT_TAGS:
                i = (el.get("id") or "").strip()
                if not i:
                    if el.tag in (R("Classification"), R("ExternalIdentifier")):
                        el.set("id", new_uuid())
                        continue
                    raise XdsError(_err(metadata_error, f"{etree.QName(el).localname} without an id"))
                if not i.startswith("urn:uuid:"):
                    if el.tag in (R("Classification"), R("ExternalIdentifier")):
                        el.set("id", new_uuid())  # nothing refers to these
                        continue
                    if i in id_map:
                        raise XdsError(_err(metadata_error, f"id {i} used twice in the submission"))
                    id_map[i] = new_uuid()
                elif not UUID_RE.match(i):
                    raise XdsError(_err(metadata_error, f"malformed UUID id {i!r}"))
        for el in rol.iter():
            if el.tag in _OBJECT_TAGS:
                for a in _REF_ATTRS:
                    val = el.get(a)
                    if val is not None and val.strip() in id_map:
                        el.set(a, id_map[val.strip()])
        # Classifications given beside their object move into it (before its ExternalIdentifiers)
        by_id = {el.get("id"): el for el in rol if el.tag in (R("ExtrinsicObject"), R("RegistryPackage"))}
        for c in list(rol.findall(R("Classification"))):
            target = by_id.get(c.get("classifiedObject"))
            if target is None:
                raise XdsError(_err(metadata_error, f"Classification {c.get('id')} classifies "
                                    f"{c.get('classifiedObject')!r}, which is not in the submission"))
            rol.remove(c)
            first_ext = target.find(R("ExternalIdentifier"))
            if first_ext is not None:
                first_ext.addprevious(c)
            else:
                target.append(c)
        ss_list, docs, folders, assocs = [], [], [], []
        for el in rol:
            if not isinstance(el.tag, str):
                continue
            if el.tag == R("ExtrinsicObject"):
                docs.append((ebrim.read_document_entry(el), el))
            elif el.tag == R("RegistryPackage"):
                kind = ebrim.package_kind(el)
                if kind == "SS":
                    ss_list.append((ebrim.read_submission_set(el), el))
                elif kind == "FD":
                    folders.append((ebrim.read_folder(el), el))
                else:
                    raise XdsError(_err(metadata_error, f"RegistryPackage {el.get('id')} is neither a "
                                        "SubmissionSet nor a Folder (no classification node)"))
            elif el.tag == R("Association"):
                assocs.append((ebrim.read_association(el), el))
            elif el.tag == R("ObjectRef"):
                continue
            else:
                raise XdsError(_err(metadata_error, f"unexpected {etree.QName(el).localname} in the submission"))
        if len(ss_list) != 1:
            raise XdsError(_err(metadata_error, f"a submission needs exactly one SubmissionSet, this one has "
                                f"{len(ss_list)}"))
        sub = Submission(ss=ss_list[0][0], ss_el=ss_list[0][1], docs=docs, folders=folders, assocs=assocs,
                         id_map=id_map)
        self._check(sub, metadata_error)
        return sub

    def _check(self, sub: Submission, me: str) -> None:
        ss = sub.ss
        errors: list[RegistryError] = []
        need = {"uniqueId": ss.unique_id, "sourceId": ss.source_id, "patientId": ss.patient_id,
                "submissionTime": ss.submission_time, "contentTypeCode": ss.content_type_code}
        errors += [_err(me, f"SubmissionSet has no {k}", ss.entry_uuid) for k, x in need.items() if not x]
        if ss.patient_id and not valid_cx(ss.patient_id):
            errors.append(_err(me, f"SubmissionSet patientId {ss.patient_id!r} is not ID^^^&OID&ISO", ss.entry_uuid))
        seen: dict[str, str] = {ss.unique_id: ss.entry_uuid}
        for de, _el in sub.docs:
            loc = de.unique_id or de.entry_uuid
            need = {"uniqueId": de.unique_id, "patientId": de.patient_id, "mimeType": de.mime_type,
                    "classCode": de.class_code, "typeCode": de.type_code, "formatCode": de.format_code,
                    "healthcareFacilityTypeCode": de.healthcare_facility_type_code,
                    "practiceSettingCode": de.practice_setting_code,
                    "confidentialityCode": de.confidentiality_codes, "creationTime": de.creation_time,
                    "languageCode": de.language_code, "sourcePatientId": de.source_patient_id}
            errors += [_err(me, f"DocumentEntry {loc} has no {k}", loc) for k, x in need.items() if not x]
            if de.patient_id and not valid_cx(de.patient_id):
                errors.append(_err(me, f"DocumentEntry patientId {de.patient_id!r} is not ID^^^&OID&ISO", loc))
            elif de.patient_id and ss.patient_id and de.patient_id != ss.patient_id:
                errors.append(_err("XDSPatientIdDoesNotMatch", f"DocumentEntry {loc} has patient {de.patient_id}, "
                                   f"the SubmissionSet {ss.patient_id}", loc))
            if de.unique_id in seen:
                errors.append(_err("XDSRegistryDuplicateUniqueIdInMessage", f"uniqueId {de.unique_id} twice", loc))
            seen[de.unique_id] = de.entry_uuid
            if de.size is None and "size" in de.slots:
                errors.append(_err(me, f"DocumentEntry {loc}: size is not a number", loc))
        for fd, _el in sub.folders:
            loc = fd.unique_id or fd.entry_uuid
            if not fd.unique_id or not fd.patient_id or not fd.codes:
                errors.append(_err(me, f"Folder {loc} needs uniqueId, patientId and codeList", loc))
            elif fd.patient_id != ss.patient_id:
                errors.append(_err("XDSPatientIdDoesNotMatch", f"Folder {loc} has patient {fd.patient_id}, "
                                   f"the SubmissionSet {ss.patient_id}", loc))
            if fd.unique_id in seen:
                errors.append(_err("XDSRegistryDuplicateUniqueIdInMessage", f"uniqueId {fd.unique_id} twice", loc))
            seen[fd.unique_id] = fd.entry_uuid
        # every DocumentEntry and Folder is a member of the SubmissionSet
        members = {a.target for a, _ in sub.assocs if a.association_type == v.HAS_MEMBER and a.source == ss.entry_uuid}
        for obj, _ in sub.docs + sub.folders:
            if obj.entry_uuid not in members:
                errors.append(_err(me, f"{obj.entry_uuid} is not a member (HasMember) of the SubmissionSet",
                                   obj.unique_id))
        for a, _ in sub.assocs:
            if a.association_type == v.HAS_MEMBER and a.source == ss.entry_uuid and \
                    a.target in {d.entry_uuid for d, _ in sub.docs} and \
                    a.submission_set_status not in ("Original", "Reference"):
                errors.append(_err(me, f"HasMember association {a.entry_uuid} needs SubmissionSetStatus "
                                   "Original or Reference"))
            if not a.source or not a.target or not a.association_type:
                errors.append(_err(me, f"association {a.entry_uuid} needs type, source and target"))
        if errors:
            raise XdsError(errors)

    def register(self, sub: Submission, *, documents: list[dict] | None = None,
                 metadata_error: str = "XDSRegistryMetadataError") -> None:
        """Store a normalized submission in one transaction, with the repository's document rows."""
        t = now()
        with self.lock, self.wengine.begin() as conn:
            self._check_against_registry(conn, sub, metadata_error)
            stamp = now_dtm()
            rows, values = [], []
            ss_el = sub.ss_el
            for obj, el, kind in ([(sub.ss, ss_el, "SS")] + [(d, e, "DE") for d, e in sub.docs]
                                  + [(f, e, "FD") for f, e in sub.folders] + [(a, e, "AS") for a, e in sub.assocs]):
                if kind == "FD":
                    _set_slot(el, "lastUpdateTime", stamp)
                    obj.last_update_time = stamp
                if kind != "AS" and not el.get("lid"):
                    el.set("lid", obj.entry_uuid)
                el.attrib.pop("status", None)
                rows.append(_row(obj, kind, el, t))
                values += _values(obj, kind)
            # replacements deprecate their target; the replacement joins the target's folders
            for a, _ in sub.assocs:
                if a.association_type in v.REPLACING:
                    conn.execute(update(xds_objects).where(xds_objects.c.entry_uuid == a.target)
                                 .values(status="Deprecated"))
                    for (fd_uuid,) in conn.execute(select(xds_objects.c.source).where(
                            xds_objects.c.kind == "AS", xds_objects.c.assoc_type == v.HAS_MEMBER,
                            xds_objects.c.target == a.target)).all():
                        if _kind(conn, fd_uuid) == "FD":
                            fa = Association(new_uuid(), v.HAS_MEMBER, fd_uuid, a.source)
                            rows.append(_row(fa, "AS", ebrim.association(fa), t))
                            conn.execute(update(xds_objects).where(xds_objects.c.entry_uuid == fd_uuid)
                                         .values(last_update_time=stamp))
            # a folder already registered that gets a new member was updated now
            new_ids = {r["entry_uuid"] for r in rows}
            for a, _ in sub.assocs:
                if a.association_type == v.HAS_MEMBER and a.source not in new_ids:
                    conn.execute(update(xds_objects).where(xds_objects.c.entry_uuid == a.source,
                                                           xds_objects.c.kind == "FD")
                                 .values(last_update_time=stamp))
            conn.execute(insert(xds_objects), rows)
            if values:
                conn.execute(insert(xds_values), values)
            if documents:
                conn.execute(insert(xds_documents), [{**d, "stored": t} for d in documents])

    def _check_against_registry(self, conn, sub: Submission, me: str) -> None:
        errors = []
        uids = [sub.ss.unique_id] + [d.unique_id for d, _ in sub.docs] + [f.unique_id for f, _ in sub.folders]
        clash = conn.execute(select(xds_objects.c.unique_id, xds_objects.c.kind, xds_objects.c.hash,
                                    xds_objects.c.size).where(xds_objects.c.unique_id.in_(uids),
                                                              xds_objects.c.kind != "AS")).all()
        new_docs = {d.unique_id: d for d, _ in sub.docs}
        for row in clash:
            u, de = row.unique_id, new_docs.get(row.unique_id)
            if de is None:  # a SubmissionSet or Folder uniqueId
                errors.append(_err("XDSDuplicateUniqueIdInRegistry", f"uniqueId {u} is already in the registry", u))
            elif de.hash and row.hash and de.hash.lower() != row.hash.lower():
                errors.append(_err("XDSNonIdenticalHash", f"document {u} is registered with another hash", u))
            elif de.size is not None and row.size is not None and de.size != row.size:
                errors.append(_err("XDSNonIdenticalSize", f"document {u} is registered with another size", u))
            else:
                errors.append(_err(me, f"document {u} is already registered", u))
        new_ids = [sub.ss.entry_uuid] + [o.entry_uuid for o, _ in sub.docs + sub.folders + sub.assocs]
        taken = conn.execute(select(xds_objects.c.entry_uuid).where(xds_objects.c.entry_uuid.in_(new_ids))).scalars().all()
        for u in taken:
            errors.append(_err(me, f"entryUUID {u} is already in the registry", u))
        local = {o.entry_uuid: o for o, _ in sub.docs + sub.folders + sub.assocs}
        local[sub.ss.entry_uuid] = sub.ss
        for a, _ in sub.assocs:
            for end in (a.source, a.target):
                if end in local:
                    continue
                row = conn.execute(select(xds_objects.c.kind, xds_objects.c.status, xds_objects.c.patient_id)
                                   .where(xds_objects.c.entry_uuid == end)).first()
                if row is None:
                    if a.association_type == v.IS_SNAPSHOT_OF and end == a.target:
                        continue  # on-demand documents are not kept here: the snapshot's source is checked
                    errors.append(_err("XDSRegistryMetadataError" if me == "XDSRegistryMetadataError" else me,
                                       f"association {a.entry_uuid} refers to {end}, unknown to the registry"))
                    continue
                if a.association_type in v.RELATIONSHIPS and end == a.target:
                    if row.kind != "DE":
                        errors.append(_err(me, f"{a.association_type.rsplit(':', 1)[-1]} target {end} is not a "
                                           "DocumentEntry"))
                    elif row.status != "Approved":
                        errors.append(_err("XDSRegistryDeprecatedDocumentError",
                                           f"{a.association_type.rsplit(':', 1)[-1]} target {end} is deprecated"))
                    elif row.patient_id != sub.ss.patient_id:
                        errors.append(_err("XDSPatientIdDoesNotMatch",
                                           f"{a.association_type.rsplit(':', 1)[-1]} target {end} belongs to "
                                           f"patient {row.patient_id}"))
                elif a.association_type == v.HAS_MEMBER and row.kind in ("DE", "FD") and \
                        row.patient_id != sub.ss.patient_id:
                    errors.append(_err("XDSPatientIdDoesNotMatch", f"{end} belongs to patient {row.patient_id}"))
        if errors:
            raise XdsError(errors)

    # -- ITI-62 ------------------------------------------------------------------------------------
    def remove(self, uuids: list[str]) -> None:
        """Delete Document Set (ITI-62): remove the objects, refusing what would break the model."""
        ids = list(dict.fromkeys(u.strip() for u in uuids if u.strip()))
        if not ids:
            raise XdsError(_err("XDSRegistryError", "RemoveObjectsRequest without ObjectRefs"))
        o = xds_objects.c
        with self.lock, self.wengine.begin() as conn:
            rows = {r.entry_uuid: r for r in conn.execute(select(o.entry_uuid, o.kind, o.source, o.target,
                                                                 o.assoc_type).where(o.entry_uuid.in_(ids)))}
            missing = [u for u in ids if u not in rows]
            if missing:
                raise XdsError([_err("UnresolvedReferenceException", f"{u} is not in the registry", u)
                                for u in missing])
            gone = set(ids)
            refs = conn.execute(select(o.entry_uuid, o.source, o.target).where(
                o.kind == "AS", or_(o.source.in_(ids), o.target.in_(ids)))).all()
            left = [r for r in refs if r.entry_uuid not in gone]
            if left:
                raise XdsError([_err("ReferencesExistException",
                                     f"association {r.entry_uuid} ({r.source} -> {r.target}) still refers to "
                                     f"{r.target if r.target in gone else r.source}; remove it too", r.entry_uuid)
                                for r in left])
            # a SubmissionSet left without any member
            sets = {r.source for r in rows.values() if r.kind == "AS" and r.assoc_type == v.HAS_MEMBER}
            for ss in sets - gone:
                if _kind(conn, ss) != "SS":
                    continue
                remaining = conn.execute(select(o.entry_uuid).where(o.kind == "AS", o.source == ss,
                                                                    o.entry_uuid.not_in(ids)).limit(1)).first()
                if remaining is None:
                    raise XdsError(_err("XDSUnreferencedObjectException",
                                        f"SubmissionSet {ss} would be left without members; remove it too", ss))
            conn.execute(delete(xds_values).where(xds_values.c.entry_uuid.in_(ids)))
            conn.execute(delete(xds_objects).where(o.entry_uuid.in_(ids)))


def _kind(conn, entry_uuid: str) -> str | None:
    return conn.execute(select(xds_objects.c.kind).where(xds_objects.c.entry_uuid == entry_uuid)).scalar()


def _set_slot(el: etree._Element, name: str, value: str) -> None:
    for s in el.findall(R("Slot")):
        if s.get("name") == name:
            el.remove(s)
    s = etree.Element(R("Slot"), name=name)
    etree.SubElement(etree.SubElement(s, R("ValueList")), R("Value")).text = value
    el.insert(0, s)


def _code(c) -> str | None:
    return c.key if c is not None else None


def _row(obj, kind: str, el: etree._Element, t) -> dict:
    base = {c.name: None for c in xds_objects.columns if c.name != "id"}
    # kept as it is answered to queries: a copy declares only the namespaces it uses, not those
    # of the submission around it (SOAP, WS-Addressing, lcm, xdsb)
    base.update(entry_uuid=obj.entry_uuid, kind=kind, status="Approved", registered=t,
                xml=etree.tostring(copy.deepcopy(el), encoding="unicode"))
    if kind == "DE":
        base.update(unique_id=obj.unique_id, lid=el.get("lid"), patient_id=obj.patient_id, title=obj.title,
                    object_type=obj.object_type or v.DE_STABLE, class_code=_code(obj.class_code),
                    type_code=_code(obj.type_code), format_code=_code(obj.format_code),
                    hcft_code=_code(obj.healthcare_facility_type_code),
                    practice_code=_code(obj.practice_setting_code), creation_time=obj.creation_time,
                    service_start=obj.service_start_time or None, service_stop=obj.service_stop_time or None,
                    mime_type=obj.mime_type, repository_uid=obj.repository_unique_id or None,
                    hash=obj.hash or None, size=obj.size)
    elif kind == "SS":
        base.update(unique_id=obj.unique_id, lid=el.get("lid"), patient_id=obj.patient_id, title=obj.title,
                    content_type_code=_code(obj.content_type_code), submission_time=obj.submission_time,
                    source_id=obj.source_id)
    elif kind == "FD":
        base.update(unique_id=obj.unique_id, lid=el.get("lid"), patient_id=obj.patient_id, title=obj.title,
                    last_update_time=obj.last_update_time)
    else:
        base.update(assoc_type=obj.association_type, source=obj.source, target=obj.target)
    return base


def _values(obj, kind: str) -> list[dict]:
    out = []

    def add(name, value):
        if value:
            out.append({"entry_uuid": obj.entry_uuid, "name": name, "value": value})

    if kind == "DE":
        for c in obj.confidentiality_codes:
            add("conf", c.key)
        for c in obj.event_codes:
            add("event", c.key)
        for a in obj.authors:
            add("author", a.person)
    elif kind == "SS":
        for a in obj.authors:
            add("author", a.person)
    elif kind == "FD":
        for c in obj.codes:
            add("fdcode", c.key)
    return out
