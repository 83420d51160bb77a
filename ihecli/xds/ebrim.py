"""XDS metadata objects <-> ebRIM 3.0 XML (ITI TF-3 4.2: the ebRIM representation).

``to_rim(obj)`` gives the elements of one object (a SubmissionSet or Folder RegistryPackage
carries its classification as a child); ``from_rim(list_element)`` reads a RegistryObjectList
(or any element holding registry objects) back, whether it comes from a submission, from a
query response or from the registry's store. Identification schemes are matched with spaces
removed (IPF's sample has one inside a UUID) and, failing that, by the ExternalIdentifier's Name.
"""
from __future__ import annotations

import functools

from lxml import etree

from ihecli.net.soap.xml import RIM, q
from ihecli.xds import vocabulary as v
from ihecli.xds.model import (Association, Author, Code, DocumentEntry, Folder, ObjectRef, RegistryObject,
                              SubmissionSet, new_uuid)

R = lambda local: q(RIM, local)  # noqa: E731

# slot name -> DocumentEntry attribute (single-valued)
_DE_SLOTS = {"creationTime": "creation_time", "serviceStartTime": "service_start_time",
             "serviceStopTime": "service_stop_time", "languageCode": "language_code",
             "sourcePatientId": "source_patient_id", "legalAuthenticator": "legal_authenticator",
             "hash": "hash", "repositoryUniqueId": "repository_unique_id", "URI": "uri"}
_DE_CODES = {v.DE_CLASS: "class_code", v.DE_TYPE: "type_code", v.DE_FORMAT: "format_code",
             v.DE_HCFT: "healthcare_facility_type_code", v.DE_PRACTICE: "practice_setting_code"}
_NAMES = {"XDSDocumentEntry.patientId": v.DE_PATIENT_ID, "XDSDocumentEntry.uniqueId": v.DE_UNIQUE_ID,
          "XDSSubmissionSet.patientId": v.SS_PATIENT_ID, "XDSSubmissionSet.uniqueId": v.SS_UNIQUE_ID,
          "XDSSubmissionSet.sourceId": v.SS_SOURCE_ID, "XDSFolder.patientId": v.FD_PATIENT_ID,
          "XDSFolder.uniqueId": v.FD_UNIQUE_ID}


# -- writing ---------------------------------------------------------------------------------------
def _slot(parent: etree._Element, name: str, values) -> None:
    if isinstance(values, str):
        values = [values]
    values = [x for x in values if x not in (None, "")]
    if not values:
        return
    s = etree.SubElement(parent, R("Slot"), name=name)
    vl = etree.SubElement(s, R("ValueList"))
    for x in values:
        etree.SubElement(vl, R("Value")).text = str(x)


def _localized(parent: etree._Element, tag: str, text: str) -> None:
    if text:
        n = etree.SubElement(parent, R(tag))
        etree.SubElement(n, R("LocalizedString"), value=text)


def _classification(parent, scheme: str, obj_id: str, code: Code | None = None, slots=None) -> etree._Element:
    c = etree.SubElement(parent, R("Classification"), id=new_uuid(), objectType=v.CLASSIFICATION_TYPE,
                         classificationScheme=scheme, classifiedObject=obj_id,
                         nodeRepresentation=code.code if code else "")
    if code:
        _slot(c, "codingScheme", code.scheme)
        _localized(c, "Name", code.display or code.code)
    for k, vals in (slots or {}).items():
        _slot(c, k, vals)
    return c


def _author(parent, scheme: str, obj_id: str, a: Author) -> None:
    _classification(parent, scheme, obj_id, slots={"authorPerson": a.person, "authorInstitution": a.institutions,
                                                    "authorRole": a.roles, "authorSpecialty": a.specialties,
                                                    "authorTelecommunication": a.telecom})


def _external_id(parent, scheme: str, obj_id: str, value: str, name: str) -> None:
    e = etree.SubElement(parent, R("ExternalIdentifier"), id=new_uuid(), objectType=v.EXTERNAL_ID_TYPE,
                         registryObject=obj_id, identificationScheme=scheme, value=value)
    _localized(e, "Name", name)


def _common(el, obj) -> None:
    if getattr(obj, "status", ""):
        el.set("status", obj.status)
    if getattr(obj, "home", ""):
        el.set("home", obj.home)
    if getattr(obj, "lid", ""):
        el.set("lid", obj.lid)


def document_entry(de: DocumentEntry) -> etree._Element:
    el = etree.Element(R("ExtrinsicObject"), id=de.entry_uuid, mimeType=de.mime_type or "application/octet-stream",
                       objectType=de.object_type or v.DE_STABLE)
    _common(el, de)
    for slot, attr in _DE_SLOTS.items():
        _slot(el, slot, getattr(de, attr))
    if de.size is not None:
        _slot(el, "size", str(de.size))
    _slot(el, "sourcePatientInfo", de.source_patient_info)
    for k, vals in de.slots.items():
        _slot(el, k, vals)
    _localized(el, "Name", de.title)
    _localized(el, "Description", de.comments)
    for a in de.authors:
        _author(el, v.DE_AUTHOR, de.entry_uuid, a)
    for scheme, attr in _DE_CODES.items():
        if getattr(de, attr) is not None:
            _classification(el, scheme, de.entry_uuid, getattr(de, attr))
    for c in de.confidentiality_codes:
        _classification(el, v.DE_CONFIDENTIALITY, de.entry_uuid, c)
    for c in de.event_codes:
        _classification(el, v.DE_EVENT, de.entry_uuid, c)
    _external_id(el, v.DE_PATIENT_ID, de.entry_uuid, de.patient_id, "XDSDocumentEntry.patientId")
    _external_id(el, v.DE_UNIQUE_ID, de.entry_uuid, de.unique_id, "XDSDocumentEntry.uniqueId")
    return el


def _package(obj, node: str) -> etree._Element:
    el = etree.Element(R("RegistryPackage"), id=obj.entry_uuid, objectType=v.PACKAGE_TYPE)
    _common(el, obj)
    return el


def submission_set(ss: SubmissionSet) -> etree._Element:
    el = _package(ss, v.SS_NODE)
    _slot(el, "submissionTime", ss.submission_time)
    _slot(el, "intendedRecipient", ss.intended_recipients)
    for k, vals in ss.slots.items():
        _slot(el, k, vals)
    _localized(el, "Name", ss.title)
    _localized(el, "Description", ss.comments)
    for a in ss.authors:
        _author(el, v.SS_AUTHOR, ss.entry_uuid, a)
    if ss.content_type_code:
        _classification(el, v.SS_CONTENT_TYPE, ss.entry_uuid, ss.content_type_code)
    etree.SubElement(el, R("Classification"), id=new_uuid(), objectType=v.CLASSIFICATION_TYPE,
                     classifiedObject=ss.entry_uuid, classificationNode=v.SS_NODE)
    _external_id(el, v.SS_UNIQUE_ID, ss.entry_uuid, ss.unique_id, "XDSSubmissionSet.uniqueId")
    _external_id(el, v.SS_SOURCE_ID, ss.entry_uuid, ss.source_id, "XDSSubmissionSet.sourceId")
    _external_id(el, v.SS_PATIENT_ID, ss.entry_uuid, ss.patient_id, "XDSSubmissionSet.patientId")
    return el


def folder(fd: Folder) -> etree._Element:
    el = _package(fd, v.FD_NODE)
    _slot(el, "lastUpdateTime", fd.last_update_time)
    for k, vals in fd.slots.items():
        _slot(el, k, vals)
    _localized(el, "Name", fd.title)
    _localized(el, "Description", fd.comments)
    for c in fd.codes:
        _classification(el, v.FD_CODES, fd.entry_uuid, c)
    etree.SubElement(el, R("Classification"), id=new_uuid(), objectType=v.CLASSIFICATION_TYPE,
                     classifiedObject=fd.entry_uuid, classificationNode=v.FD_NODE)
    _external_id(el, v.FD_PATIENT_ID, fd.entry_uuid, fd.patient_id, "XDSFolder.patientId")
    _external_id(el, v.FD_UNIQUE_ID, fd.entry_uuid, fd.unique_id, "XDSFolder.uniqueId")
    return el


def association(a: Association) -> etree._Element:
    el = etree.Element(R("Association"), id=a.entry_uuid or new_uuid(), objectType=v.ASSOCIATION_TYPE,
                       associationType=a.association_type, sourceObject=a.source, targetObject=a.target)
    if a.status:
        el.set("status", a.status)
    _slot(el, "SubmissionSetStatus", a.submission_set_status)
    for k, vals in a.slots.items():
        _slot(el, k, vals)
    return el


def to_rim(obj: RegistryObject) -> etree._Element:
    if isinstance(obj, DocumentEntry):
        return document_entry(obj)
    if isinstance(obj, SubmissionSet):
        return submission_set(obj)
    if isinstance(obj, Folder):
        return folder(obj)
    if isinstance(obj, Association):
        return association(obj)
    el = etree.Element(R("ObjectRef"), id=obj.entry_uuid)
    if obj.home:
        el.set("home", obj.home)
    return el


def object_list(objs) -> etree._Element:
    rol = etree.Element(R("RegistryObjectList"), nsmap={"rim": RIM})
    for o in objs:
        rol.append(to_rim(o))
    return rol


# -- reading ---------------------------------------------------------------------------------------
# A query answer holds hundreds of objects of some 60 elements each: every object's children are
# read in one pass, and no element is looked at twice.
_SLOT, _VALUE, _LS = R("Slot"), R("Value"), R("LocalizedString")
_NAME, _DESCRIPTION = R("Name"), R("Description")
_CLASSIFICATION, _EXTERNAL_ID = R("Classification"), R("ExternalIdentifier")
_EXTRINSIC, _PACKAGE, _ASSOCIATION, _OBJECT_REF = R("ExtrinsicObject"), R("RegistryPackage"), R("Association"), \
    R("ObjectRef")
_ID_SCHEMES = frozenset(_NAMES.values())


def _values(slot: etree._Element) -> list[str]:
    """Slot/ValueList/Value texts. lxml makes an object for every element it hands out, and an
    iterator costs more than an index: the usual one ValueList with one Value goes by index."""
    if len(slot) == 1:
        vl = slot[0]
        if len(vl) == 1:
            x = vl[0]
            if x.tag == _VALUE:
                return [(x.text or "").strip()]
    return [(x.text or "").strip() for vl in slot for x in vl if x.tag == _VALUE]


def _ls(n: etree._Element) -> str:
    """The value of the first LocalizedString of a Name or Description."""
    if len(n) == 1:
        x = n[0]
        if x.tag == _LS:
            return x.get("value") or ""
    for x in n:
        if x.tag == _LS:
            return x.get("value") or ""
    return ""


def _scan(el: etree._Element):
    """(slots, Name, Description, Classifications, ExternalIdentifiers) of an object, in one pass
    over its children; the first Name and Description count."""
    s: dict[str, list[str]] = {}
    name = desc = None
    cls, ext = [], []
    for c in el:
        t = c.tag
        if t == _SLOT:
            k = c.get("name", "")
            vals = _values(c)
            if k in s:
                s[k].extend(vals)
            else:
                s[k] = vals
        elif t == _CLASSIFICATION:
            cls.append(c)
        elif t == _EXTERNAL_ID:
            ext.append(c)
        elif t == _NAME:
            if name is None:
                name = _ls(c)
        elif t == _DESCRIPTION:
            if desc is None:
                desc = _ls(c)
    return s, name or "", desc or "", cls, ext


def slots(el: etree._Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in el.iterchildren(_SLOT):
        out.setdefault(c.get("name", ""), []).extend(_values(c))
    return out


def localized(el: etree._Element, tag: str) -> str:
    n = el.find(R(tag))
    return _ls(n) if n is not None else ""


def code_of(c: etree._Element) -> Code:
    """A coded Classification: nodeRepresentation, the first codingScheme value, the Name."""
    scheme = name = None
    for x in c:
        t = x.tag
        if t == _SLOT:
            if scheme is None and x.get("name") == "codingScheme":
                vals = _values(x)
                if vals:
                    scheme = vals[0]
        elif t == _NAME and name is None:
            name = _ls(x)
    return _code(c.get("nodeRepresentation") or "", scheme or "", name or "")


# Codes are immutable and few: the same classCode comes back in every entry of an answer
_code = functools.lru_cache(maxsize=4096)(Code)


def _nospace(s: str | None) -> str:
    return "".join((s or "").split())


def _external_ids(ext: list[etree._Element]) -> dict[str, str]:
    out = {}
    for e in ext:
        scheme = _nospace(e.get("identificationScheme"))
        if scheme not in _ID_SCHEMES:
            scheme = _NAMES.get(localized(e, "Name"), scheme)
        out[scheme] = (e.get("value") or "").strip()
    return out


def external_ids(el: etree._Element) -> dict[str, str]:
    return _external_ids(el.findall(_EXTERNAL_ID))


def _author_of(c: etree._Element) -> Author:
    s = slots(c)
    return Author(person=(s.get("authorPerson") or [""])[0], institutions=s.get("authorInstitution", []),
                  roles=s.get("authorRole", []), specialties=s.get("authorSpecialty", []),
                  telecom=s.get("authorTelecommunication", []))


def classifications(el: etree._Element, extra: dict[str, list[etree._Element]] | None = None) -> list[etree._Element]:
    """The classifications of an object: its children plus any found elsewhere in the list."""
    out = list(el.iterchildren(_CLASSIFICATION))
    if extra:
        out += extra.get(el.get("id", ""), [])
    return out


def read_document_entry(el: etree._Element, extra=None) -> DocumentEntry:
    s, title, comments, cls, ext = _scan(el)
    if extra:
        cls += extra.get(el.get("id", ""), [])
    get = el.get
    de = DocumentEntry(entry_uuid=get("id", ""), mime_type=get("mimeType", ""), status=get("status", ""),
                       object_type=get("objectType", ""), home=get("home", ""), lid=get("lid", ""),
                       title=title, comments=comments)
    other = {}
    for k, x in s.items():
        attr = _DE_SLOTS.get(k)
        if attr is not None:
            if x:
                setattr(de, attr, x[0])
        elif k == "size":
            if x:
                try:
                    de.size = int(x[0])
                except ValueError:
                    de.size = None
        elif k == "sourcePatientInfo":
            de.source_patient_info = x
        else:
            other[k] = x
    de.slots = other
    for c in cls:
        scheme = c.get("classificationScheme") or ""
        if scheme not in _DE_SCHEMES:
            scheme = _nospace(scheme)
        if scheme in _DE_CODES:
            setattr(de, _DE_CODES[scheme], code_of(c))
        elif scheme == v.DE_AUTHOR:
            de.authors.append(_author_of(c))
        elif scheme == v.DE_CONFIDENTIALITY:
            de.confidentiality_codes.append(code_of(c))
        elif scheme == v.DE_EVENT:
            de.event_codes.append(code_of(c))
    ids = _external_ids(ext)
    de.patient_id, de.unique_id = ids.get(v.DE_PATIENT_ID, ""), ids.get(v.DE_UNIQUE_ID, "")
    return de


_DE_SCHEMES = frozenset(_DE_CODES) | {v.DE_AUTHOR, v.DE_CONFIDENTIALITY, v.DE_EVENT}


def package_kind(el: etree._Element, extra=None) -> str:
    """SS, FD or '' for a RegistryPackage, by its classification node."""
    for c in classifications(el, extra):
        node = _nospace(c.get("classificationNode"))
        if node == v.SS_NODE:
            return "SS"
        if node == v.FD_NODE:
            return "FD"
    return ""


def read_submission_set(el: etree._Element, extra=None) -> SubmissionSet:
    s, title, comments, cls, ext = _scan(el)
    if extra:
        cls += extra.get(el.get("id", ""), [])
    ss = SubmissionSet(entry_uuid=el.get("id", ""), status=el.get("status", ""), home=el.get("home", ""),
                       lid=el.get("lid", ""), title=title, comments=comments,
                       submission_time=(s.get("submissionTime") or [""])[0],
                       intended_recipients=s.get("intendedRecipient", []))
    ss.slots = {k: x for k, x in s.items() if k not in ("submissionTime", "intendedRecipient")}
    for c in cls:
        scheme = _nospace(c.get("classificationScheme"))
        if scheme == v.SS_AUTHOR:
            ss.authors.append(_author_of(c))
        elif scheme == v.SS_CONTENT_TYPE:
            ss.content_type_code = code_of(c)
    ids = _external_ids(ext)
    ss.patient_id, ss.unique_id = ids.get(v.SS_PATIENT_ID, ""), ids.get(v.SS_UNIQUE_ID, "")
    ss.source_id = ids.get(v.SS_SOURCE_ID, "")
    return ss


def read_folder(el: etree._Element, extra=None) -> Folder:
    s, title, comments, cls, ext = _scan(el)
    if extra:
        cls += extra.get(el.get("id", ""), [])
    fd = Folder(entry_uuid=el.get("id", ""), status=el.get("status", ""), home=el.get("home", ""),
                lid=el.get("lid", ""), title=title, comments=comments,
                last_update_time=(s.get("lastUpdateTime") or [""])[0])
    fd.slots = {k: x for k, x in s.items() if k != "lastUpdateTime"}
    for c in cls:
        if _nospace(c.get("classificationScheme")) == v.FD_CODES:
            fd.codes.append(code_of(c))
    ids = _external_ids(ext)
    fd.patient_id, fd.unique_id = ids.get(v.FD_PATIENT_ID, ""), ids.get(v.FD_UNIQUE_ID, "")
    return fd


def read_association(el: etree._Element) -> Association:
    s = slots(el)
    return Association(entry_uuid=el.get("id", ""), association_type=_nospace(el.get("associationType")),
                       source=el.get("sourceObject", ""), target=el.get("targetObject", ""),
                       status=el.get("status", ""), submission_set_status=(s.get("SubmissionSetStatus") or [""])[0],
                       slots={k: x for k, x in s.items() if k != "SubmissionSetStatus"})


def loose_classifications(container: etree._Element) -> dict[str, list[etree._Element]]:
    """Top-level Classifications of a list, by the object they classify."""
    out: dict[str, list[etree._Element]] = {}
    for c in container.iterchildren(_CLASSIFICATION):
        out.setdefault(c.get("classifiedObject", ""), []).append(c)
    return out


def from_rim(container: etree._Element) -> list[RegistryObject]:
    """The registry objects of a RegistryObjectList, in document order."""
    extra = loose_classifications(container)
    out: list[RegistryObject] = []
    for el in container:
        t = el.tag
        if t == _EXTRINSIC:
            out.append(read_document_entry(el, extra))
        elif t == _PACKAGE:
            kind = package_kind(el, extra)
            out.append(read_folder(el, extra) if kind == "FD" else read_submission_set(el, extra))
        elif t == _ASSOCIATION:
            out.append(read_association(el))
        elif t == _OBJECT_REF:
            out.append(ObjectRef(el.get("id", ""), el.get("home", "")))
    return out
