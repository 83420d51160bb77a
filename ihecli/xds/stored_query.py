"""Registry Stored Query (ITI-18), the responder side: every XDS.b stored query over tables_xds.

Parameters are parsed as ITI TF-2a 3.18.4.1.2.3.5 writes them: quoted strings ('' inside),
lists in parentheses, several Values of one slot as AND of ORs (event and confidentiality
codes), bare numbers for times. Missing required parameters give XDSStoredQueryMissingParam,
a list where one value is allowed XDSStoredQueryParamNumber, an unknown query
XDSUnknownStoredQuery, a malformed value (a patient ID that is not ID^^^&OID&ISO) XDSRegistryError.
"""
from __future__ import annotations

import re
from xml.sax.saxutils import escape

from lxml import etree
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.engine import Connection

from ihecli.archive.tables_pix import linked_cx
from ihecli.archive.tables_xds import xds_objects, xds_values
from ihecli.net.soap.xml import RIM, parse_xml, q
from ihecli.xds import vocabulary as v
from ihecli.xds.messages import RegistryError, XdsError
from ihecli.xds.model import valid_cx

o = xds_objects.c
MAX_RESULTS = 10_000
STATUS = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
_QUOTE = {'"': "&quot;"}
_RIM_DECL = f' xmlns:rim="{RIM}"'
_ITEM = re.compile(r"\s*(?:'((?:[^']|'')*)'|([^,'()\s][^,()]*?))\s*(?:,|$)")


def _patient(pid: str):
    """The patient ID, or one PIX cross-references with it (ihe pix listen)."""
    return or_(o.patient_id == pid, o.patient_id.in_(linked_cx(pid)))


def _bad(code: str, context: str) -> XdsError:
    return XdsError(RegistryError(code, context))


def parse_value(text: str, name: str) -> list[str]:
    """The items of one Value: 'a', ('a','b'), 20240101 or (20240101)."""
    s = (text or "").strip()
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    items, pos = [], 0
    while pos < len(s):
        m = _ITEM.match(s, pos)
        if not m or m.end() == pos:
            raise _bad("XDSRegistryError", f"{name}: malformed value {text!r}")
        if m.group(1) is None and not re.fullmatch(r"-?\d+", m.group(2).strip()):
            raise _bad("XDSRegistryError", f"{name}: {m.group(2).strip()!r} must be in single quotes "
                       "(only numbers go bare)")
        items.append(m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2).strip())
        pos = m.end()
    return items


class Params:
    def __init__(self, aq: etree._Element):
        self.values: dict[str, list[list[str]]] = {}
        for slot in aq.findall(q(RIM, "Slot")):
            name = (slot.get("name") or "").strip()
            vals = [parse_value(x.text or "", name) for x in slot.iter(q(RIM, "Value"))]
            self.values.setdefault(name, []).extend(vals)

    def has(self, name: str) -> bool:
        return name in self.values

    def list(self, name: str, required: bool = False) -> list[str]:
        """All items of a parameter (ORed)."""
        if name not in self.values:
            if required:
                raise _bad("XDSStoredQueryMissingParam", f"required parameter {name} is missing")
            return []
        return [x for group in self.values[name] for x in group]

    def groups(self, name: str) -> list[list[str]]:
        """Values as AND of ORs."""
        return self.values.get(name, [])

    def one(self, name: str, required: bool = False) -> str | None:
        items = self.list(name, required)
        if len(items) > 1:
            raise _bad("XDSStoredQueryParamNumber", f"{name} takes one value, got {len(items)}")
        return items[0] if items else None

    def patient(self, name: str) -> str:
        pid = self.one(name, required=True)
        if not valid_cx(pid or ""):
            raise _bad("XDSRegistryError", f"{name} {pid!r} is not a patient ID of the form ID^^^&OID&ISO")
        return pid

    def statuses(self, name: str) -> list[str]:
        return [v.status_short(x) for x in self.list(name, required=True)]

    def either(self, a: str, b: str) -> tuple[str, list[str]]:
        """Exactly one of two parameters (entryUUID or uniqueId)."""
        if self.has(a) and self.has(b):
            raise _bad("XDSStoredQueryParamNumber", f"give {a} or {b}, not both")
        if not self.has(a) and not self.has(b):
            raise _bad("XDSStoredQueryMissingParam", f"one of {a} or {b} is required")
        return (a, self.list(a)) if self.has(a) else (b, self.list(b))


def _codes(col, values: list[str]):
    exact = [x for x in values if "^^" in x]
    bare = [x for x in values if "^^" not in x]
    conds = [col.in_(exact)] if exact else []
    conds += [col.like(x.replace("%", r"\%").replace("_", r"\_") + "^^%", escape="\\") for x in bare]
    return or_(*conds)


def _multi(name: str, groups: list[list[str]]):
    conds = []
    for g in groups:
        exact = [x for x in g if "^^" in x]
        bare = [x.split("^", 1)[0] + "^^%" for x in g if "^^" not in x]
        vc = xds_values.c
        inner = or_(vc.value.in_(exact), *[vc.value.like(b) for b in bare])
        conds.append(exists().where(vc.entry_uuid == o.entry_uuid, vc.name == name, inner))
    return and_(*conds)


def _author(groups: list[str], name: str = "author"):
    vc = xds_values.c
    return exists().where(vc.entry_uuid == o.entry_uuid, vc.name == name,
                          or_(*[vc.value.like(p) for p in groups]))


def _range(conds, p: Params, prefix: str, col) -> None:
    lo, hi = p.one(prefix + "From"), p.one(prefix + "To")
    if lo:
        conds.append(col >= lo)
    if hi:
        conds.append(col < hi)  # To is exclusive (ITI TF-2a 3.18.4.1.2.3.6.1)


def _attr(value: str) -> str:
    return escape(value, _QUOTE)


def _fragment(r, home: str, added: str) -> str:
    """One stored object as sent: the XML kept at registration (metadata does not change) with
    the status of its column and the home (``added``) put into its start tag, without parsing
    it. Its declaration of the rim prefix goes: the RegistryObjectList it joins declares it."""
    x = r.xml
    end = x.find(">")
    head = x[:end]
    if (r.kind == "FD" and r.last_update_time) or ' status="' in head or (home and ' home="' in head):
        return _patched(r, home)
    if head.endswith("/"):
        end -= 1
        head = head[:-1]
    return head.replace(_RIM_DECL, "", 1) + added + x[end:]


def _patched(r, home: str) -> str:
    """The general way, through a parsed tree: a Folder's lastUpdateTime is kept current in its
    column; attributes already present are replaced."""
    el = parse_xml(r.xml)
    el.set("status", STATUS + r.status)
    if home:
        el.set("home", home)
    if r.kind == "FD" and r.last_update_time:
        for value in el.xpath("rim:Slot[@name='lastUpdateTime']/rim:ValueList/rim:Value", namespaces={"rim": RIM}):
            value.text = r.last_update_time
    return etree.tostring(el, encoding="unicode")


class StoredQuery:
    """Runs one AdhocQuery over one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def run(self, query_id: str, p: Params, object_ref: bool, home: str = "") -> list[str]:
        """The matching objects, each serialized with its status and, given ``home``, its
        homeCommunityId: XML fragments for ``messages.adhoc_query_response_xml`` (the rim
        prefix they use is declared by the response)."""
        entry = v.QUERY_BY_ID.get(query_id.strip())
        if entry is None:
            raise _bad("XDSUnknownStoredQuery", f"unknown stored query id {query_id}")
        name = entry[1]
        rows = getattr(self, "q_" + name)(p)
        if len(rows) > MAX_RESULTS:
            raise _bad("XDSTooManyResults", f"{len(rows)} results; narrow the query")
        extra = f' home="{_attr(home)}"' if home else ""
        if object_ref:
            return [f'<rim:ObjectRef id="{_attr(r.entry_uuid)}"{extra}/>' for r in rows]
        added: dict[str, str] = {}  # status -> the attributes added to the start tag
        for r in rows:
            if r.status not in added:
                added[r.status] = f' status="{STATUS}{_attr(r.status)}"{extra}'
        return [_fragment(r, home, added[r.status]) for r in rows]

    # -- helpers -----------------------------------------------------------------------------------
    def _select(self, *conds):
        return self.conn.execute(select(o.entry_uuid, o.kind, o.status, o.xml, o.target, o.source, o.last_update_time)
                                 .where(*conds).order_by(o.id)).all()

    def _docs(self, p: Params, *conds):
        fmt = p.list("$XDSDocumentEntryFormatCode")
        conf = p.groups("$XDSDocumentEntryConfidentialityCode")
        c = [o.kind == "DE", *conds]
        if fmt:
            c.append(_codes(o.format_code, fmt))
        if conf:
            c.append(_multi("conf", conf))
        return self._select(*c)

    def _by_ids(self, kind: str, p: Params, uuid_param: str, uid_param: str):
        which, ids = p.either(uuid_param, uid_param)
        col = o.entry_uuid if which == uuid_param else o.unique_id
        return self._select(o.kind == kind, col.in_(ids))

    def _assocs_between(self, ids: set[str], *, from_ids: set[str] | None = None):
        if not ids:
            return []
        src = from_ids if from_ids is not None else ids
        return [r for r in self._select(o.kind == "AS", o.source.in_(list(src)), o.target.in_(list(ids)))]

    # -- the queries -------------------------------------------------------------------------------
    def q_FindDocuments(self, p: Params):
        pid = p.patient("$XDSDocumentEntryPatientId")
        conds = [o.kind == "DE", _patient(pid), o.status.in_(p.statuses("$XDSDocumentEntryStatus"))]
        for param, col in (("ClassCode", o.class_code), ("TypeCode", o.type_code),
                           ("PracticeSettingCode", o.practice_code), ("HealthcareFacilityTypeCode", o.hcft_code),
                           ("FormatCode", o.format_code)):
            vals = p.list("$XDSDocumentEntry" + param)
            if vals:
                conds.append(_codes(col, vals))
        _range(conds, p, "$XDSDocumentEntryCreationTime", o.creation_time)
        _range(conds, p, "$XDSDocumentEntryServiceStartTime", o.service_start)
        _range(conds, p, "$XDSDocumentEntryServiceStopTime", o.service_stop)
        if p.has("$XDSDocumentEntryEventCodeList"):
            conds.append(_multi("event", p.groups("$XDSDocumentEntryEventCodeList")))
        if p.has("$XDSDocumentEntryConfidentialityCode"):
            conds.append(_multi("conf", p.groups("$XDSDocumentEntryConfidentialityCode")))
        if p.has("$XDSDocumentEntryAuthorPerson"):
            conds.append(_author(p.list("$XDSDocumentEntryAuthorPerson")))
        types = p.list("$XDSDocumentEntryType") or [v.DE_STABLE]
        conds.append(o.object_type.in_(types))
        return self._select(*conds)

    def q_FindSubmissionSets(self, p: Params):
        pid = p.patient("$XDSSubmissionSetPatientId")
        conds = [o.kind == "SS", _patient(pid), o.status.in_(p.statuses("$XDSSubmissionSetStatus"))]
        if p.has("$XDSSubmissionSetSourceId"):
            conds.append(o.source_id.in_(p.list("$XDSSubmissionSetSourceId")))
        _range(conds, p, "$XDSSubmissionSetSubmissionTime", o.submission_time)
        if p.has("$XDSSubmissionSetAuthorPerson"):
            conds.append(_author(p.list("$XDSSubmissionSetAuthorPerson")))
        if p.has("$XDSSubmissionSetContentType"):
            conds.append(_codes(o.content_type_code, p.list("$XDSSubmissionSetContentType")))
        return self._select(*conds)

    def q_FindFolders(self, p: Params):
        pid = p.patient("$XDSFolderPatientId")
        conds = [o.kind == "FD", _patient(pid), o.status.in_(p.statuses("$XDSFolderStatus"))]
        _range(conds, p, "$XDSFolderLastUpdateTime", o.last_update_time)
        if p.has("$XDSFolderCodeList"):
            conds.append(_multi("fdcode", p.groups("$XDSFolderCodeList")))
        return self._select(*conds)

    def q_GetAll(self, p: Params):
        pid = p.patient("$patientId")
        docs = self._docs(p, _patient(pid), o.status.in_(p.statuses("$XDSDocumentEntryStatus")))
        sets = self._select(o.kind == "SS", _patient(pid), o.status.in_(p.statuses("$XDSSubmissionSetStatus")))
        fols = self._select(o.kind == "FD", _patient(pid), o.status.in_(p.statuses("$XDSFolderStatus")))
        ids = {r.entry_uuid for r in docs + sets + fols}
        assocs = self._assocs_between(ids)
        # SubmissionSet -> (Folder -> DocumentEntry) associations too
        more = self._assocs_between({r.entry_uuid for r in assocs}, from_ids={r.entry_uuid for r in sets})
        return docs + sets + fols + assocs + more

    def q_GetDocuments(self, p: Params):
        return self._by_ids("DE", p, "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId")

    def q_GetFolders(self, p: Params):
        return self._by_ids("FD", p, "$XDSFolderEntryUUID", "$XDSFolderUniqueId")

    def q_GetAssociations(self, p: Params):
        ids = p.list("$uuid", required=True)
        return self._select(o.kind == "AS", or_(o.source.in_(ids), o.target.in_(ids)))

    def q_GetDocumentsAndAssociations(self, p: Params):
        docs = self.q_GetDocuments(p)
        ids = [r.entry_uuid for r in docs]
        assocs = self._select(o.kind == "AS", or_(o.source.in_(ids), o.target.in_(ids))) if ids else []
        return docs + assocs

    def q_GetSubmissionSets(self, p: Params):
        ids = p.list("$uuid", required=True)
        assocs = [r for r in self._select(o.kind == "AS", o.assoc_type == v.HAS_MEMBER, o.target.in_(ids))]
        sets = self._select(o.kind == "SS", o.entry_uuid.in_([r.source for r in assocs])) if assocs else []
        set_ids = {r.entry_uuid for r in sets}
        return sets + [r for r in assocs if r.source in set_ids]

    def q_GetSubmissionSetAndContents(self, p: Params):
        sets = self._by_ids("SS", p, "$XDSSubmissionSetEntryUUID", "$XDSSubmissionSetUniqueId")
        if not sets:
            return []
        ss = sets[0].entry_uuid
        members = self._select(o.kind == "AS", o.source == ss)
        targets = [r.target for r in members]
        docs = self._docs(p, o.entry_uuid.in_(targets))
        fols = self._select(o.kind == "FD", o.entry_uuid.in_(targets))
        keep = {r.entry_uuid for r in docs + fols}
        fd_de = self._assocs_between({r.entry_uuid for r in docs}, from_ids={r.entry_uuid for r in fols})
        keep |= {r.entry_uuid for r in fd_de}
        assocs = [r for r in members if r.target in keep]
        fd_de = [r for r in fd_de if r.entry_uuid in {m.target for m in members}]
        return sets + docs + fols + assocs + fd_de

    def q_GetFolderAndContents(self, p: Params):
        fols = self._by_ids("FD", p, "$XDSFolderEntryUUID", "$XDSFolderUniqueId")
        if not fols:
            return []
        fd = fols[0].entry_uuid
        members = self._select(o.kind == "AS", o.assoc_type == v.HAS_MEMBER, o.source == fd)
        docs = self._docs(p, o.entry_uuid.in_([r.target for r in members]))
        ids = {r.entry_uuid for r in docs}
        return fols + docs + [r for r in members if r.target in ids]

    def _document(self, p: Params) -> str | None:
        which, ids = p.either("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId")
        if len(ids) != 1:
            raise _bad("XDSStoredQueryParamNumber", f"{which} takes one value")
        col = o.entry_uuid if which == "$XDSDocumentEntryEntryUUID" else o.unique_id
        return self.conn.execute(select(o.entry_uuid).where(o.kind == "DE", col == ids[0])).scalar()

    def q_GetFoldersForDocument(self, p: Params):
        de = self._document(p)
        if de is None:
            return []
        srcs = [r.source for r in self._select(o.kind == "AS", o.assoc_type == v.HAS_MEMBER, o.target == de)]
        return self._select(o.kind == "FD", o.entry_uuid.in_(srcs)) if srcs else []

    def q_GetRelatedDocuments(self, p: Params):
        de = self._document(p)
        types = [v.ASSOCIATION_NAMES.get(t, t) for t in p.list("$AssociationTypes", required=True)]
        if de is None:
            return []
        assocs = self._select(o.kind == "AS", o.assoc_type.in_(types), or_(o.source == de, o.target == de))
        if not assocs:
            return []
        others = {r.target if r.source == de else r.source for r in assocs} | {de}
        docs = self._select(o.kind == "DE", o.entry_uuid.in_(list(others)))
        return docs + assocs
