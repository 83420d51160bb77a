"""Reading DICOMDIRs written by others (Basic Directory IOD, PS3.3 F; PS3.10 7.2), as a Portable
Media Importer or Image Display does (IHE PDI, RAD-47).

Tolerant: the record offsets are followed when they are sound, else the records are taken in
their order (DICOMDIRs written with wrong offsets exist). A record whose file is missing is never
dropped: the caller reports it (pydicom's FileSet drops those with only a warning). File IDs that
would leave the medium are set apart. DICOMDIRs in Explicit VR Little Endian (nearly all) are read
by walking their bytes; pydicom reads the others.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from collections import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

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
    if isinstance(value, abc.Sequence) and not isinstance(value, (str, bytes)):  # list, pydicom's MultiValue
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
    import pydicom

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
