"""The DICOMDIR (Basic Directory IOD, PS3.3 F; Media Storage Directory, PS3.10 7.2) of a General
Purpose media profile (PS3.11 Annex D: STD-GEN-CD, STD-GEN-DVD-JPEG, STD-GEN-USB-JPEG), as the
Portable Media Creator writes it (IHE PDI, RAD-47).

The writer is hand-made rather than pydicom's FileSet: FileSet copies record values as they
are (an invalid Study Time in a source makes an invalid record), loads every object again to
write it, and names the files itself. Records here are built from the header values already
read, cleaned to their VRs (ihecli.pdi.values), and the offsets are computed from the encoded
record lengths. Reading them: ihecli.pdi.dirread.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime

from typing import TYPE_CHECKING

from ihecli.pdi import values as v
from ihecli.pdi.objects import MEDIA_STORAGE_DIRECTORY, ObjectInfo
from ihecli.pdi.part10 import encode_element as _element, file_meta, new_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# the elements of the records written from Fields: keyword -> (tag, VR); others are looked up in
# pydicom's dictionary (tests/test_pdi_part10.py checks these against it)
RECORD_ELEMENTS = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "StudyDescription": (0x00081030, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
}

FILE_ID_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")


def conformant_file_id(components: list[str]) -> bool:
    """PS3.10 8.2 / PS3.12: at most 8 components of at most 8 characters A-Z 0-9 _."""
    return 0 < len(components) <= 8 and all(FILE_ID_COMPONENT.match(c) for c in components)


def clean_fileset_id(text: str) -> str:
    """A File-set ID (CS, 16 characters) that is also a valid ISO 9660 volume identifier."""
    s = re.sub(r"[^A-Z0-9_]", "_", (text or "").upper())[:16]
    return s or "IHE_PDI"


def clean_volume_id(text: str) -> str:
    """A --volume-id as written: a File-set ID with room for the _k of a volume of several."""
    return clean_fileset_id(text)[:13].rstrip("_") or "IHE_PDI"


@dataclass
class Entry:
    """One object on the medium: its header values, File ID and transfer syntax as written."""

    info: ObjectInfo
    file_id: list[str]
    transfer_syntax: str


def _charset(info: ObjectInfo):
    cs = info.charset
    if not cs:
        return None
    terms = cs if isinstance(cs, list) else [cs]
    if all(not t or str(t).strip() in ("", "ISO_IR 6") for t in terms):
        return None
    return [str(t).strip() for t in terms] if len(terms) > 1 else str(terms[0]).strip()


# Records are lists of (keyword, value); encoded by hand (ihecli.pdi.dicomdir._encode_fields), which
# for thousands of records costs a fraction of building and writing pydicom datasets
Fields = list


def _with_charset(info: ObjectInfo, r: Fields) -> Fields:
    """The record's Specific Character Set first: the source's, or UTF-8 when a source without one
    holds text outside the default repertoire (as some do)."""
    cs = _charset(info)
    if not cs and any(isinstance(val, str) and not val.isascii() for _, val in r):
        cs = "ISO_IR 192"
    return [("SpecificCharacterSet", cs), *r] if cs else r


def patient_record(info: ObjectInfo, invented_id: str) -> Fields:
    r: Fields = []
    r.append(("PatientName", v.clean_pn(info.patient_name) or ""))
    r.append(("PatientID", v.clean_text(info.patient_id, 64) or invented_id))
    return _with_charset(info, r)


def study_record(info: ObjectInfo, today: str, number: int) -> Fields:
    r: Fields = []
    # Study Date and Time are type 1: when a source has none that is valid, the nearest valid
    # date of the object is used, else the day the medium was made
    r.append(("StudyDate", v.clean_da(info.study_date) or v.clean_da(info.series_date)
              or v.clean_da(info.content_date) or today))
    r.append(("StudyTime", v.clean_tm(info.study_time) or v.clean_tm(info.series_time) or "000000"))
    r.append(("StudyDescription", v.clean_text(info.study_description, 64) or ""))
    r.append(("StudyInstanceUID", info.study_uid))
    r.append(("StudyID", v.clean_text(info.study_id, 16) or str(number)))
    r.append(("AccessionNumber", v.clean_text(info.accession, 16) or ""))
    return _with_charset(info, r)


def series_record(info: ObjectInfo, number: int) -> Fields:
    return [("Modality", v.clean_cs(info.modality) or "OT"), ("SeriesInstanceUID", info.series_uid),
            ("SeriesNumber", v.clean_is(info.series_number) or str(number))]


def _put(ds: Dataset, keyword: str, value) -> None:
    setattr(ds, keyword, value if value is not None else "")


def _concept_mods(seq):
    from pydicom.sequence import Sequence

    items = [it for it in (seq or []) if str(getattr(it, "RelationshipType", "")).upper() == "HAS CONCEPT MOD"]
    return Sequence(items) if items else None


def leaf_record(info: ObjectInfo, number: int, today: str) -> Fields | Dataset:
    """The fourth-level record; type 1 values a source lacks are filled (the record must be valid)."""
    rtype = info.record_type
    inst = v.clean_is(info.instance_number) or str(number)
    if rtype == "IMAGE":
        return [("InstanceNumber", inst)]
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    r = Dataset()
    h = info.header if info.header is not None else Dataset()
    cdate = v.clean_da(info.content_date) or v.clean_da(info.series_date) or v.clean_da(info.study_date) or today
    ctime = v.clean_tm(info.content_time) or v.clean_tm(info.series_time) or "000000"
    cs = _charset(info)
    if cs:
        r.SpecificCharacterSet = cs

    def hv(kw):
        from ihecli.pdi.objects import get

        return get(h, kw)

    if rtype in ("SR DOCUMENT", "KEY OBJECT DOC"):
        r.ContentDate, r.ContentTime = cdate, ctime
        r.InstanceNumber = inst
        if rtype == "SR DOCUMENT":
            r.CompletionFlag = v.clean_cs(hv("CompletionFlag")) or "PARTIAL"
            r.VerificationFlag = v.clean_cs(hv("VerificationFlag")) or "UNVERIFIED"
        concept = hv("ConceptNameCodeSequence")
        if concept:
            r.ConceptNameCodeSequence = Sequence([concept[0]] if isinstance(concept, list) else concept)
        else:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
            r.ConceptNameCodeSequence = Sequence([code])
        mods = _concept_mods(hv("ContentSequence"))
        if mods:
            r.ContentSequence = mods
    elif rtype == "PRESENTATION":
        r.PresentationCreationDate = v.clean_da(hv("PresentationCreationDate")) or cdate
        r.PresentationCreationTime = v.clean_tm(hv("PresentationCreationTime")) or ctime
        r.InstanceNumber = inst
        r.ContentLabel = v.clean_cs(hv("ContentLabel")) or "PRESENTATION"
        _put(r, "ContentDescription", v.clean_text(hv("ContentDescription"), 64))
        _put(r, "ContentCreatorName", v.clean_pn(hv("ContentCreatorName")))
        refs = hv("ReferencedSeriesSequence")
        if refs:
            r.ReferencedSeriesSequence = Sequence(refs)
    elif rtype == "ENCAP DOC":
        _put(r, "ContentDate", v.clean_da(info.content_date))
        _put(r, "ContentTime", v.clean_tm(info.content_time))
        r.InstanceNumber = inst
        _put(r, "DocumentTitle", v.clean_text(hv("DocumentTitle"), 64))
        _put(r, "ConceptNameCodeSequence", None)
        if hv("ConceptNameCodeSequence"):
            r.ConceptNameCodeSequence = Sequence(hv("ConceptNameCodeSequence"))
        r.MIMETypeOfEncapsulatedDocument = v.clean_text(hv("MIMETypeOfEncapsulatedDocument"), 64) or "application/pdf"
    else:
        # the other record types: pydicom knows their keys; values it cannot take are left out
        r = _recorded(rtype, h, inst, cdate, ctime)
        if cs:
            r.SpecificCharacterSet = cs
        for kw in list(r.dir()):
            if kw.endswith("Date"):
                setattr(r, kw, v.clean_da(getattr(r, kw)) or cdate)
            elif kw.endswith("Time"):
                setattr(r, kw, v.clean_tm(getattr(r, kw)) or ctime)
        if "InstanceNumber" in r:
            r.InstanceNumber = inst
    return r


_TYPE1_FILLERS = {"DA": lambda d, t: d, "TM": lambda d, t: t, "DT": lambda d, t: d + t, "IS": lambda d, t: "1",
                  "DS": lambda d, t: "0"}


def _recorded(rtype: str, h: Dataset, inst: str, cdate: str, ctime: str) -> Dataset:
    """The record pydicom's recorder for ``rtype`` makes of the header; a type 1 value the
    source lacks or left empty (a cut or odd object) is filled, as the record must have it: the
    Instance Number given, dates and times the object's, other values UNKNOWN."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.fileset import DIRECTORY_RECORDERS

    src = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in list(h.keys()):  # the top-level elements pydicom can read (an odd one is left out)
            try:
                src.add(h[tag])
            except Exception:
                continue
    if not v.clean_is(src.get("InstanceNumber")):
        src.InstanceNumber = inst
    for _ in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return DIRECTORY_RECORDERS[rtype](src)
        except ValueError as e:  # "The instance's (gggg,eeee) '...' element is missing" / "cannot be empty"
            m = re.search(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)", str(e))
            if not m:
                break
            tag = int(m.group(1) + m.group(2), 16)
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                break
            src[tag] = DataElement(tag, vr, _TYPE1_FILLERS.get(vr, lambda d, t: "UNKNOWN")(cdate, ctime))
        except Exception:
            break
    r = Dataset()
    r.InstanceNumber = inst
    return r


@dataclass
class _Node:
    rtype: str
    fields: object  # Fields, or a pydicom Dataset for the rarer leaf records
    children: list["_Node"] = field(default_factory=list)
    entry: Entry | None = None
    body: bytes = b""


def _build_tree(entries: list[Entry], today: str) -> list[_Node]:
    patients: dict[str, _Node] = {}
    studies: dict[str, _Node] = {}
    series: dict[str, _Node] = {}
    invented = 0
    for e in entries:
        i = e.info
        pkey = v.clean_text(i.patient_id, 64) or ""
        pnode = patients.get(pkey)
        if pnode is None:
            invented += 1
            pnode = patients[pkey] = _Node("PATIENT", patient_record(i, f"UNKNOWN{invented}"))
        snode = studies.get(i.study_uid)
        if snode is None:
            snode = studies[i.study_uid] = _Node("STUDY", study_record(i, today, len(pnode.children) + 1))
            pnode.children.append(snode)
        senode = series.get(i.series_uid)
        if senode is None:
            senode = series[i.series_uid] = _Node("SERIES", series_record(i, len(snode.children) + 1))
            snode.children.append(senode)
        leaf = _Node(i.record_type, leaf_record(i, len(senode.children) + 1, today), entry=e)
        senode.children.append(leaf)
    return list(patients.values())


def _encode_fields(fields: Fields) -> bytes:
    """Explicit VR little endian encoding of string values (text in the record's character set)."""
    encodings = None
    terms = None
    out = []
    for kw, val in fields:
        known = RECORD_ELEMENTS.get(kw)
        if known is not None:
            tag, vr = known
        else:
            from pydicom.datadict import dictionary_VR, tag_for_keyword

            tag = tag_for_keyword(kw)
            vr = dictionary_VR(tag)
        if kw == "SpecificCharacterSet":
            terms = list(val) if isinstance(val, list) else [val]
            raw = "\\".join(terms).encode("ascii")
        elif isinstance(val, (list, tuple)):
            raw = "\\".join(val).encode("ascii")
        elif val.isascii() and "\x1b" not in val:
            raw = val.encode("ascii")
        else:
            # text outside ASCII: pydicom encodes it in the record's character set
            from pydicom.charset import convert_encodings, encode_string
            from pydicom.valuerep import PersonName

            if encodings is None and terms is not None:
                encodings = convert_encodings(terms)
            if vr == "PN":
                raw = PersonName(val).encode(encodings or ["iso8859"])
            else:
                raw = encode_string(val, encodings or ["iso8859"])
        out.append((tag, _element(tag, vr, raw)))
    out.sort(key=lambda t: t[0])
    return b"".join(b for _, b in out)


def _encode_body(node: _Node) -> bytes:
    if not isinstance(node.fields, list):  # a pydicom Dataset
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, node.fields)
        return fp.getvalue()
    return _encode_fields(node.fields)


def _record(node: _Node, next_offset: int, lower_offset: int) -> bytes:
    """One Directory Record Sequence item: the record keys of group 0004, then the record's values."""
    parts = [_element(0x00041400, "UL", struct.pack("<I", next_offset)),
             _element(0x00041410, "US", struct.pack("<H", 0xFFFF)),
             _element(0x00041420, "UL", struct.pack("<I", lower_offset)),
             _element(0x00041430, "CS", node.rtype.encode("ascii"))]
    if node.entry is not None:
        e = node.entry
        parts += [_element(0x00041500, "CS", "\\".join(e.file_id).encode("ascii")),
                  _element(0x00041510, "UI", e.info.sop_class.encode("ascii")),
                  _element(0x00041511, "UI", e.info.sop_uid.encode("ascii")),
                  _element(0x00041512, "UI", e.transfer_syntax.encode("ascii"))]
    body = b"".join(parts) + node.body
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body


def encode_dicomdir(fileset_id: str, entries: list[Entry], *, today: str | None = None) -> bytes:
    """The encoded DICOMDIR of the entries (in their order: patient, study, series as met)."""
    today = today or datetime.now().strftime("%Y%m%d")
    roots = _build_tree(entries, today)

    head = file_meta(MEDIA_STORAGE_DIRECTORY, new_uid())

    def top(first: int, last: int) -> bytes:
        return (_element(0x00041130, "CS", clean_fileset_id(fileset_id).encode("ascii"))
                + _element(0x00041200, "UL", struct.pack("<I", first))
                + _element(0x00041202, "UL", struct.pack("<I", last))
                + _element(0x00041212, "US", struct.pack("<H", 0)))

    # the records in depth-first order, each knowing its next sibling and first child
    order: list[_Node] = []
    nxt: dict[int, _Node | None] = {}

    def walk(nodes: list[_Node]) -> None:
        for k, n in enumerate(nodes):
            order.append(n)
            nxt[id(n)] = nodes[k + 1] if k + 1 < len(nodes) else None
            walk(n.children)

    walk(roots)
    for n in order:
        n.body = _encode_body(n)
    # offsets are UL values of fixed size: a record's length does not depend on them
    start = len(head) + len(top(0, 0)) + 12  # 12: the sequence's tag, VR, reserved and length
    offsets: dict[int, int] = {}
    pos = start
    for n in order:
        offsets[id(n)] = pos
        pos += len(_record(n, 0, 0))
    out = io.BytesIO()
    out.write(head)
    out.write(top(offsets[id(roots[0])], offsets[id(roots[-1])]) if roots else top(0, 0))
    out.write(b"\x04\x00\x20\x12SQ\x00\x00\xff\xff\xff\xff")
    for n in order:
        sib = nxt[id(n)]
        item = _record(n, offsets[id(sib)] if sib else 0, offsets[id(n.children[0])] if n.children else 0)
        if out.tell() != offsets[id(n)]:
            raise RuntimeError("directory record offsets out of step")
        out.write(item)
    out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    return out.getvalue()
