"""Reading what the index needs out of an encoded DICOM object, without decoding pixel data.

Tolerant of the real world (wrong VRs, bad values): a value that cannot be read is indexed as
empty. Strict where the archive's promises depend on it: an object without SOP Class, SOP
Instance, Study or Series Instance UID is refused.
"""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import uuid
import zlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ihecli.errors import ArchiveError

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Status codes (PS3.4 B.2.3)
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700


def fold(text: str | None) -> str | None:
    """Upper case without accents: the key for case- and accent-insensitive name matching."""
    if text is None:
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _get(ds: Dataset | dict, keyword: str) -> Any:
    if isinstance(ds, dict):  # values already decoded by the fast scan
        return ds.get(keyword)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            elem = ds[keyword] if keyword in ds else None
            if elem is None or elem.value is None:
                return None
            return elem.value
    except Exception:  # a wrong VR or an undecodable value: index it as empty
        return None


def text(ds: Dataset, keyword: str, limit: int = 324) -> str | None:
    v = _get(ds, keyword)
    if v is None:
        return None
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        v = "\\".join(str(x) for x in v)
    s = str(v).strip().replace("\x00", "")
    return s[:limit] if s else None


def integer(ds: Dataset, keyword: str) -> int | None:
    v = _get(ds, keyword)
    try:
        if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
            v = v[0] if v else None
        return int(str(v).strip()) if v is not None and str(v).strip() else None
    except (TypeError, ValueError):
        return None


def date(ds: Dataset, keyword: str) -> str | None:
    """A DA value as YYYYMMDD (older ACR-NEMA 'YYYY.MM.DD' accepted); anything else: None."""
    s = text(ds, keyword)
    if not s:
        return None
    s = s.replace(".", "").replace("-", "")
    return s if re.fullmatch(r"\d{8}", s) else None


def time(ds: Dataset, keyword: str) -> str | None:
    """A TM value as HHMMSS.ffffff padded, so that string order is time order."""
    s = text(ds, keyword)
    return normalize_time(s) if s else None


def normalize_time(s: str) -> str | None:
    s = s.strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", s)
    if not m:
        return None
    hh, mm, ss, frac = m.group(1), m.group(2) or "00", m.group(3) or "00", m.group(4) or ""
    return f"{hh}{mm}{ss}.{frac.ljust(6, '0')}"


def valid_uid(uid: str | None) -> bool:
    return bool(uid) and len(uid) <= 64 and bool(UID_RE.match(uid))


@dataclass
class Parsed:
    """Everything the index stores about one instance."""

    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    charset: str | None
    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)
    header: bytes | None = None
    sha256: str = ""
    size: int = 0


def charset_of(ds: Dataset) -> str | None:
    cs = _get(ds, "SpecificCharacterSet")
    if cs is None:
        return None
    if isinstance(cs, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(x) for x in cs)
    return str(cs) or None


def index_values(ds: Dataset) -> tuple[dict, dict, dict, dict]:
    """Patient, study, series and instance column values of a dataset."""
    name = text(ds, "PatientName")
    ref = text(ds, "ReferringPhysicianName")
    patient = {
        "pid": (text(ds, "PatientID", 64) or ""),
        "issuer": (text(ds, "IssuerOfPatientID", 64) or ""),
        "name": name,
        "name_ci": name.upper() if name else None,
        "name_fold": fold(name),
        "birth_date": date(ds, "PatientBirthDate"),
        "sex": text(ds, "PatientSex", 16),
    }
    study = {
        "study_date": date(ds, "StudyDate"),
        "study_time": time(ds, "StudyTime"),
        "accession": text(ds, "AccessionNumber", 64),
        "study_id": text(ds, "StudyID", 16),
        "ref_physician": ref,
        "ref_physician_ci": ref.upper() if ref else None,
        "ref_physician_fold": fold(ref),
        "description": text(ds, "StudyDescription", 64),
    }
    series = {
        "modality": text(ds, "Modality", 16),
        "series_number": integer(ds, "SeriesNumber"),
        "description": text(ds, "SeriesDescription", 64),
        "body_part": text(ds, "BodyPartExamined", 16),
        "series_date": date(ds, "SeriesDate"),
        "series_time": time(ds, "SeriesTime"),
    }
    instance = {
        "instance_number": integer(ds, "InstanceNumber"),
        "content_date": date(ds, "ContentDate"),
        "content_time": time(ds, "ContentTime"),
    }
    return patient, study, series, instance


def parse(data: bytes, *, expect_sop_uid: str | None = None, expect_sop_class: str | None = None) -> Parsed:
    """Index values of a Part-10 encoded object (preamble and file meta included)."""
    from ihecli.archive.scan import Truncated, scan

    try:
        fast = scan(data)
    except Truncated as e:
        raise ArchiveError(f"truncated DICOM data: {e}", CANNOT_UNDERSTAND) from None
    if fast is not None:
        values, meta, end = fast
        return parsed_from(values, data, end, meta=meta, expect_sop_uid=expect_sop_uid,
                           expect_sop_class=expect_sop_class)
    fp = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            end = fp.tell()
            ds.keys()  # force the lazy reads so truncated data fails here
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, struct_error()) as e:
        raise ArchiveError(f"cannot parse DICOM data: {e}", CANNOT_UNDERSTAND) from None
    except Exception as e:  # pydicom raises many kinds on hostile input
        raise ArchiveError(f"cannot parse DICOM data: {type(e).__name__}: {e}", CANNOT_UNDERSTAND) from None
    return parsed_from(ds, data, end, expect_sop_uid=expect_sop_uid, expect_sop_class=expect_sop_class)


def pack_header(header: bytes) -> bytes:
    """The header as the index keeps it: zlib-compressed (a CT header shrinks about 4 times)."""
    return zlib.compress(header, 1)


def unpack_header(blob: bytes) -> bytes:
    """The header bytes back; a blob starting with the preamble was stored uncompressed."""
    return zlib.decompress(blob) if blob[:1] == b"\x78" else blob


def struct_error():
    import struct

    return struct.error


def parsed_from(ds: Dataset | dict, data: bytes, end: int, *, meta=None, expect_sop_uid=None,
                expect_sop_class=None) -> Parsed:
    """Index values from a pydicom dataset, or from the fast scan's decoded values."""
    if meta is None:
        meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ts = str(_get(meta, "TransferSyntaxUID") or "")
    sop_uid = text(ds, "SOPInstanceUID", 200) or ""
    sop_class = text(ds, "SOPClassUID", 200) or ""
    study_uid = text(ds, "StudyInstanceUID", 200) or ""
    series_uid = text(ds, "SeriesInstanceUID", 200) or ""
    for label, uid in (("SOP Instance UID", sop_uid), ("SOP Class UID", sop_class),
                       ("Study Instance UID", study_uid), ("Series Instance UID", series_uid)):
        if not uid:
            raise ArchiveError(f"missing {label}", DOES_NOT_MATCH)
        if len(uid) > 64:
            raise ArchiveError(f"{label} longer than 64 characters", DOES_NOT_MATCH)
    if expect_sop_uid and sop_uid != expect_sop_uid:
        raise ArchiveError(f"SOP Instance UID {sop_uid} differs from the request's {expect_sop_uid}",
                           DOES_NOT_MATCH)
    if expect_sop_class and sop_class != expect_sop_class:
        raise ArchiveError(f"SOP Class UID {sop_class} differs from the request's {expect_sop_class}",
                           DOES_NOT_MATCH)
    patient, study, series, instance = index_values(ds)
    header = None if ts == DeflatedExplicitVRLittleEndian else pack_header(data[:end])
    return Parsed(
        sop_uid=sop_uid,
        sop_class=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax=ts or ImplicitVRLittleEndian,
        charset=charset_of(ds),
        patient=patient,
        study=study,
        series=series,
        instance=instance,
        header=header,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


IMPLEMENTATION_VERSION = "IHE_" + __import__("ihecli").__version__.replace(".", "")[:12]
# Our Implementation Class UID: a UUID-derived UID (PS3.5 B.2), fixed for this software
IMPLEMENTATION_UID = "2.25.%d" % uuid.uuid5(uuid.NAMESPACE_URL, "urn:ihecli:implementation").int


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    tag = group_elem.to_bytes(4, "big")
    head = tag[1::-1] + tag[3:1:-1] + vr  # group and element, each little endian
    if vr == b"OB":
        return head + b"\x00\x00" + len(value).to_bytes(4, "little") + value
    return head + len(value).to_bytes(2, "little") + value


def part10(dataset_bytes: bytes, sop_class: str, sop_uid: str, transfer_syntax: str,
           source_aet: str | None = None) -> bytes:
    """Preamble and file meta in front of a received dataset's bytes (what C-STORE carries).

    Encoded by hand: eight elements of fixed form, written for every object received, where
    pydicom's general writer costs a noticeable share of a C-STORE.
    """
    body = b"".join((
        _meta_element(0x00020001, b"OB", b"\x00\x01"),
        _meta_element(0x00020002, b"UI", sop_class.encode("ascii")),
        _meta_element(0x00020003, b"UI", sop_uid.encode("ascii")),
        _meta_element(0x00020010, b"UI", transfer_syntax.encode("ascii")),
        _meta_element(0x00020012, b"UI", IMPLEMENTATION_UID.encode("ascii")),
        _meta_element(0x00020013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
        _meta_element(0x00020016, b"AE", source_aet.encode("ascii", "replace")) if source_aet else b"",
    ))
    group_length = _meta_element(0x00020000, b"UL", b"")[:-2] + b"\x04\x00" + len(body).to_bytes(4, "little")
    return b"\x00" * 128 + b"DICM" + group_length + body + dataset_bytes


def ensure_part10(data: bytes) -> bytes:
    """File bytes with a valid preamble and meta; a bare dataset (no meta) gets one written."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return data
    fp = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
    except Exception as e:
        raise ArchiveError(f"not DICOM: {e}", CANNOT_UNDERSTAND) from None
    meta = getattr(ds, "file_meta", None)
    ts = str(_get(meta, "TransferSyntaxUID") or "") if meta is not None else ""
    if not ts:
        implicit = (getattr(ds, "original_encoding", None) or (True, True))[0]
        ts = ImplicitVRLittleEndian if implicit in (True, None) else ExplicitVRLittleEndian
    sop_class = text(ds, "SOPClassUID", 64)
    sop_uid = text(ds, "SOPInstanceUID", 64)
    if not sop_class or not sop_uid or not len(ds):
        raise ArchiveError("not DICOM (no SOP Class or Instance UID)", CANNOT_UNDERSTAND)
    return part10(data[fp_start(data):], sop_class, sop_uid, ts)


def fp_start(data: bytes) -> int:
    """Where the dataset begins in a file without the DICM prefix (after any group 2 elements)."""
    i = 0
    # Skip group 0002 elements written without a preamble (explicit VR little endian)
    while len(data) >= i + 8 and data[i:i + 2] == b"\x02\x00":
        vr = data[i + 4:i + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
            length = int.from_bytes(data[i + 8:i + 12], "little")
            i += 12 + length
        else:
            length = int.from_bytes(data[i + 6:i + 8], "little")
            i += 8 + length
    return i
