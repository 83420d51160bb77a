"""The DICOMDIR (Basic Directory IOD, PS3.3 F; Media Storage Directory, PS3.10 7.2): writing one
for a General Purpose media profile (PS3.11 Annex D: STD-GEN-CD, STD-GEN-DVD-JPEG, STD-GEN-USB-JPEG)
and reading those written by others.

The writer is hand-made rather than pydicom's FileSet: FileSet copies record values as they
are (an invalid Study Time in a source makes an invalid record), loads every object again to
write it, and names the files itself. Records here are built from the header values already
read, cleaned to their VRs (ihecli.pdi.values), and the offsets are computed from the encoded
record lengths. The reader is tolerant: it follows the record offsets when they are sound and
falls back to the order of the records when they are not (DICOMDIRs written with wrong offsets
exist), and it never drops a record whose file is missing: the caller decides (pydicom's FileSet
drops those with only a warning).
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ihecli.archive.ingest import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION
from ihecli.pdi import values as v
from ihecli.pdi.objects import MEDIA_STORAGE_DIRECTORY, ObjectInfo

FILE_ID_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")


def conformant_file_id(components: list[str]) -> bool:
    """PS3.10 8.2 / PS3.12: at most 8 components of at most 8 characters A-Z 0-9 _."""
    return 0 < len(components) <= 8 and all(FILE_ID_COMPONENT.match(c) for c in components)


def clean_fileset_id(text: str) -> str:
    """A File-set ID (CS, 16 characters) that is also a valid ISO 9660 volume identifier."""
    s = re.sub(r"[^A-Z0-9_]", "_", (text or "").upper())[:16]
    return s or "IHE_PDI"


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


def _concept_mods(seq) -> Sequence | None:
    items = [it for it in (seq or []) if str(getattr(it, "RelationshipType", "")).upper() == "HAS CONCEPT MOD"]
    return Sequence(items) if items else None


def leaf_record(info: ObjectInfo, number: int, today: str) -> Fields | Dataset:
    """The fourth-level record; type 1 values a source lacks are filled (the record must be valid)."""
    rtype = info.record_type
    inst = v.clean_is(info.instance_number) or str(number)
    if rtype == "IMAGE":
        return [("InstanceNumber", inst)]
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
        from pydicom.fileset import DIRECTORY_RECORDERS

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = DIRECTORY_RECORDERS[rtype](h)
        except Exception:
            r = Dataset()
            r.InstanceNumber = inst
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


_SHORT_LEN_VRS = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL", "SS",
                  "ST", "TM", "UI", "UL", "US"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _SHORT_LEN_VRS:
        return head + struct.pack("<H", len(value)) + value
    return head + b"\x00\x00" + struct.pack("<I", len(value)) + value


def _encode_fields(fields: Fields) -> bytes:
    """Explicit VR little endian encoding of string values (text in the record's character set)."""
    from pydicom.charset import convert_encodings, encode_string
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.valuerep import PersonName

    encodings = None
    out = []
    for kw, val in fields:
        tag = tag_for_keyword(kw)
        vr = dictionary_VR(tag)
        if kw == "SpecificCharacterSet":
            terms = val if isinstance(val, list) else [val]
            encodings = convert_encodings(list(terms))
            raw = "\\".join(terms).encode("ascii")
        elif isinstance(val, (list, tuple)):
            raw = "\\".join(val).encode("ascii")
        elif val.isascii() and "\x1b" not in val:
            raw = val.encode("ascii")
        elif vr == "PN":
            raw = PersonName(val).encode(encodings or ["iso8859"])
        else:
            raw = encode_string(val, encodings or ["iso8859"])
        out.append((tag, _element(tag, vr, raw)))
    out.sort(key=lambda t: t[0])
    return b"".join(b for _, b in out)


def _encode_body(node: _Node) -> bytes:
    if isinstance(node.fields, Dataset):
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

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)

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
    start = len(head.getvalue()) + len(top(0, 0)) + 12  # 12: the sequence's tag, VR, reserved and length
    offsets: dict[int, int] = {}
    pos = start
    for n in order:
        offsets[id(n)] = pos
        pos += len(_record(n, 0, 0))
    out = io.BytesIO()
    out.write(head.getvalue())
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


# -- reading ---------------------------------------------------------------------------------

class DicomdirError(Exception):
    """A DICOMDIR that cannot be read."""


@dataclass
class Reference:
    """A record that references a file, with the values of its patient, study and series records."""

    file_id: list[str]
    record_type: str
    sop_class: str | None = None
    sop_uid: str | None = None
    transfer_syntax: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_uid: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    accession: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    series_number: str | None = None
    instance_number: str | None = None


@dataclass
class Directory:
    fileset_id: str
    references: list[Reference]
    bad_file_ids: list[str] = field(default_factory=list)  # File IDs that cannot be a path on the medium
    order_used: str = "offsets"  # or "sequence" when the offsets were unusable


def _s(ds: Dataset, kw: str) -> str | None:
    from ihecli.pdi.objects import get

    val = get(ds, kw)
    if isinstance(val, list):
        return "\\".join(str(x) for x in val)
    return None if val is None else str(val)


def file_id_components(value) -> list[str] | None:
    """A Referenced File ID's components, or None if it is not a path inside the medium."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        parts = [str(p) for p in value]
    else:
        parts = [str(value)]
    out: list[str] = []
    for p in parts:
        # some writers put a whole path in one value
        out += [c for c in re.split(r"[\\/]", p.strip("\x00 "))]
    if not out or any(c.strip() in ("", ".", "..") for c in out) or any(":" in c or "\x00" in c for c in out):
        return None
    first = parts[0].strip()
    if first.startswith(("/", "\\")):
        return None
    return [c.strip() for c in out]


# Record keys read: UL offsets, the in-use flag, and text values (decoded in the record's character set)
_NEXT, _IN_USE, _LOWER, _TYPE, _FILE_ID = 0x00041400, 0x00041410, 0x00041420, 0x00041430, 0x00041500
_TEXT_KEYS = {
    0x00041430: "type", 0x00041500: "file_id", 0x00041510: "sop_class", 0x00041511: "sop_uid",
    0x00041512: "transfer_syntax", 0x00200013: "instance_number", 0x00100020: "patient_id",
    0x00100010: "patient_name", 0x0020000D: "study_uid", 0x00080020: "study_date", 0x00081030: "study_description",
    0x00080050: "accession", 0x0020000E: "series_uid", 0x00080060: "modality", 0x00200011: "series_number",
    0x00080005: "charset",
}
_SEQ_ITEM, _ITEM_END, _SEQ_END, _UNDEFINED = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0xFFFFFFFF


def _decode_text(raw: dict[int, bytes]) -> dict:
    """A record's raw text values as strings; non-ASCII text in the record's character set."""
    out: dict = {}
    encodings = None
    for tag, b in raw.items():
        key = _TEXT_KEYS[tag]
        if b.isascii() and b"\x1b" not in b:
            out[key] = b.decode("ascii").strip("\x00 ") or None
            continue
        if encodings is None:
            from pydicom.charset import convert_encodings

            cs = raw.get(0x00080005, b"").decode("ascii", "replace").strip("\x00 ")
            try:
                encodings = convert_encodings(cs.split("\\") if cs else ["iso8859"])
            except Exception:
                encodings = ["iso8859"]
        try:
            if tag == 0x00100010:
                from pydicom.valuerep import PersonName

                out[key] = str(PersonName(b, encodings)).strip("\x00 =") or None
            else:
                from pydicom.charset import decode_bytes

                out[key] = decode_bytes(b, encodings, set()).strip("\x00 ") or None
        except Exception:
            out[key] = b.decode("latin-1").strip("\x00 ") or None
    return out


def _fast_records(data: bytes):
    """(File-set ID, offset of the first root record, records) of an Explicit VR Little Endian
    DICOMDIR, walking the bytes (pydicom builds an element object for each of the tens of
    thousands of elements of a big DICOMDIR); None for anything else."""
    from ihecli.archive.scan import _element, read_meta

    got = read_meta(data)
    if got is None:
        return None
    meta, pos = got
    if str(meta.get("TransferSyntaxUID", "")) != "1.2.840.10008.1.2.1":
        return None
    n = len(data)
    fsid, first, records = "", 0, []
    u32 = struct.Struct("<I").unpack_from
    tag_of = struct.Struct("<HH").unpack_from
    while pos + 8 <= n:
        tag, nxt, (vr, start, length) = _element(data, pos, False)
        if tag == 0x00041130:
            fsid = data[start:start + length].decode("latin-1").strip("\x00 ")
        elif tag == 0x00041200:
            first = u32(data, start)[0]
        elif tag == 0x00041220:
            p = start
            end = start + length if length != _UNDEFINED else n
            while p + 8 <= end:
                g, e = tag_of(data, p)
                itag, ilen = (g << 16) | e, u32(data, p + 4)[0]
                if itag == _SEQ_END:
                    break
                if itag != _SEQ_ITEM:
                    return None
                rec: dict = {"_offset": p}
                raw: dict[int, bytes] = {}
                q = p + 8
                iend = q + ilen if ilen != _UNDEFINED else None
                while iend is None or q < iend:
                    if q + 8 > n:
                        return None
                    g, e = tag_of(data, q)
                    if (g << 16) | e == _ITEM_END:
                        q += 8
                        break
                    t, qn, (_vr, s2, l2) = _element(data, q, False)
                    if t in (_NEXT, _LOWER) and l2 == 4:
                        rec[t] = u32(data, s2)[0]
                    elif t == _IN_USE and l2 == 2:
                        rec[t] = data[s2] | (data[s2 + 1] << 8)
                    elif t in _TEXT_KEYS:
                        raw[t] = data[s2:s2 + l2]
                    q = qn
                rec.update(_decode_text(raw))
                records.append(rec)
                p = iend if iend is not None else q
        pos = nxt
    return fsid, first, records


def _pydicom_records(data: bytes):
    """The same from pydicom (implicit VR, big endian and other odd DICOMDIRs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            items = list(ds.DirectoryRecordSequence)
    except Exception as e:
        raise DicomdirError(f"{type(e).__name__}: {e}") from None
    records = []
    for it in items:
        rec: dict = {"_offset": getattr(it, "seq_item_tell", None)}
        for tag in (_NEXT, _LOWER, _IN_USE):
            try:
                if tag in it:
                    rec[tag] = int(it[tag].value or 0)
            except Exception:
                pass
        for tag, key in _TEXT_KEYS.items():
            if tag in it:
                try:
                    val = it[tag].value
                except Exception:
                    continue
                if isinstance(val, (list, pydicom.multival.MultiValue)):
                    val = "\\".join(str(x) for x in val)
                rec[key] = None if val is None else (str(val).strip("\x00 =") or None)
        records.append(rec)
    try:
        first = int(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity)
    except Exception:
        first = 0
    return _s(ds, "FileSetID") or "", first, records


def read_dicomdir(data: bytes) -> Directory:
    """The file references of a DICOMDIR; raises DicomdirError when it cannot be read at all."""
    try:
        parsed = _fast_records(data)
    except Exception:
        parsed = None
    if parsed is None:
        parsed = _pydicom_records(data)
    fsid, first, records = parsed
    by_offset = {r["_offset"]: r for r in records if r["_offset"] is not None}
    visited: list[tuple[dict, list[dict]]] = []
    order_used = "offsets"
    try:
        seen: set[int] = set()

        def follow(offset: int, ancestors: list[dict]) -> None:
            while offset:
                if offset in seen or offset not in by_offset:
                    raise KeyError(offset)
                seen.add(offset)
                rec = by_offset[offset]
                visited.append((rec, ancestors))
                lower = rec.get(_LOWER, 0)
                if lower:
                    follow(lower, ancestors + [rec])
                offset = rec.get(_NEXT, 0)

        if not first:
            raise KeyError("no first record")
        follow(first, [])
        if len(seen) != len(records):
            raise KeyError("records not reached")
    except (KeyError, RecursionError):
        # wrong or missing offsets: take the records in their order, by level
        order_used = "sequence"
        visited = []
        stack: dict[str, dict] = {}
        levels = {"PATIENT": 0, "STUDY": 1, "SERIES": 2}
        for rec in records:
            t = (rec.get("type") or "").upper()
            lvl = levels.get(t, 3)
            anc = [stack[k] for k in ("PATIENT", "STUDY", "SERIES")[:lvl] if k in stack]
            visited.append((rec, anc))
            if lvl < 3:
                stack[t] = rec
                for k in list(stack):
                    if levels[k] > lvl:
                        del stack[k]
    refs: list[Reference] = []
    bad: list[str] = []
    context_keys = {"PATIENT": ("patient_id", "patient_name"),
                    "STUDY": ("study_uid", "study_date", "study_description", "accession"),
                    "SERIES": ("series_uid", "modality", "series_number")}
    for rec, anc in visited:
        raw = rec.get("file_id")
        if raw is None or rec.get(_IN_USE, 0xFFFF) == 0:
            continue
        comps = file_id_components(raw.split("\\"))
        if comps is None:
            bad.append(raw)
            continue
        ref = Reference(file_id=comps, record_type=(rec.get("type") or "").upper(), sop_class=rec.get("sop_class"),
                        sop_uid=rec.get("sop_uid"), transfer_syntax=rec.get("transfer_syntax"),
                        instance_number=rec.get("instance_number"))
        for a in anc:
            for k in context_keys.get((a.get("type") or "").upper(), ()):
                setattr(ref, k, a.get(k))
        refs.append(ref)
    return Directory(fsid, refs, bad, order_used)
