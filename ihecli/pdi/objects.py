"""What media code needs to know about one DICOM object, read from its header only.

The fast path walks the encoded header with the archive's element walker and hands only the
wanted elements to pydicom (a full pydicom header read costs several times more, and a
2,000-image medium is read in one go); anything unusual is read by pydicom.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from ihecli.archive.scan import Truncated, _element, _Odd, read_meta

WANTED_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "SeriesDate", "ContentDate",
    "StudyTime", "SeriesTime", "ContentTime", "AccessionNumber", "Modality", "InstitutionName",
    "ReferringPhysicianName", "StudyDescription", "SeriesDescription", "PatientName", "PatientID",
    "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "SeriesInstanceUID",
    "StudyID", "SeriesNumber", "InstanceNumber", "PatientOrientation", "Laterality", "ImageLaterality",
    "ViewPosition", "Rows", "Columns", "NumberOfFrames", "PhotometricInterpretation", "BodyPartExamined",
)
WANTED = {int(Tag(k)) for k in WANTED_KEYWORDS}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


class NotDicom(Exception):
    """The bytes are not a DICOM object this code can read."""


class DirectoryFile(NotDicom):
    """A Media Storage Directory (a DICOMDIR under another name): not an object to import."""


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UI", "UC", "UT", "PN"}
_MULTI = {"SpecificCharacterSet", "PatientOrientation"}
_KEYWORDS = {int(Tag(k)): k for k in WANTED_KEYWORDS}
_LAST = max(_KEYWORDS)  # the walk stops past the last wanted element
_TAG = struct.Struct("<HH").unpack_from
_U16 = struct.Struct("<H").unpack_from
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def _fast_values(data: bytes) -> tuple[dict, str] | None:
    """(values by keyword, transfer syntax) of a Part-10 object in little endian, or None."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import convert_raw_data_element

    got = read_meta(data)
    if got is None:
        return None
    meta, pos = got
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    if str(meta.get("MediaStorageSOPClassUID", "") or "") == MEDIA_STORAGE_DIRECTORY:
        raise DirectoryFile("a DICOMDIR (a directory of the medium, not an object)")
    if ts == IMPLICIT_LE:
        implicit = True
    elif ts and ts not in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        implicit = False
    else:
        return None
    out: dict = {}
    raws = []
    n = len(data)
    try:
        while pos + 8 <= n:
            g, e = _TAG(data, pos)
            tag = (g << 16) | e
            if tag > _LAST:
                break
            vr = data[pos + 4:pos + 6]
            if not implicit and vr not in _LONG_VRS and g != 0xFFFE and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                # the common case, inline: an explicit VR with a 2-byte length
                start = pos + 8
                length = _U16(data, pos + 6)[0]
                nxt = start + length
                if nxt > n:
                    raise Truncated("element runs past the end")
            else:
                tag, nxt, (vr, start, length) = _element(data, pos, implicit)
            if tag == 0x00041220:
                raise DirectoryFile("a DICOMDIR (a directory of the medium, not an object)")
            kw = _KEYWORDS.get(tag)
            if kw is not None:
                vrs = dictionary_VR(tag) if (implicit or vr is None) else vr.decode("ascii")
                value = data[start:start + length]
                if vrs in _TEXT_VRS and value.isascii() and b"\x1b" not in value:
                    text = value.decode("ascii").strip("\x00 ")
                    if kw in _MULTI and "\\" in text:
                        out[kw] = [t.strip() for t in text.split("\\")]
                    else:
                        out[kw] = text or None
                elif vrs == "US" and length >= 2:
                    out[kw] = struct.unpack_from("<H", value)[0]
                else:
                    raws.append((kw, RawDataElement(Tag(tag), vrs, length, value, start, implicit, True)))
            pos = nxt
    except (_Odd, Truncated, UnicodeDecodeError, ValueError, struct.error):
        return None
    if raws:  # text in another character set, odd VRs: pydicom decodes them
        cs = out.get("SpecificCharacterSet")
        from pydicom.charset import convert_encodings

        try:
            enc = convert_encodings(cs if isinstance(cs, list) else [cs or ""])
        except Exception:
            enc = ["iso8859"]
        for kw, raw in raws:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    elem = convert_raw_data_element(raw, encoding=enc)
                out[kw] = _plain(elem.value)
            except Exception:
                out[kw] = None
    return out, ts


def read_values(data: bytes) -> tuple[dict, str]:
    """(the wanted values by keyword, transfer syntax); raises NotDicom."""
    try:
        fast = _fast_values(data)
    except DirectoryFile:
        raise
    except Exception:
        fast = None
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, defer_size=4096)
            ds.keys()
    except Exception as e:
        raise NotDicom(f"cannot read the DICOM header: {type(e).__name__}: {e}") from None
    meta = getattr(ds, "file_meta", None)
    if (meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY) \
            or "DirectoryRecordSequence" in ds:
        raise DirectoryFile("a DICOMDIR (a directory of the medium, not an object)")
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if not ts:
        ts = IMPLICIT_LE if getattr(ds, "is_implicit_VR", True) else EXPLICIT_LE
    return {kw: get(ds, kw) for kw in WANTED_KEYWORDS}, ts


def _plain(val):
    if val is None or val == "":
        return None
    if isinstance(val, pydicom.multival.MultiValue):
        return [str(x) for x in val]
    if isinstance(val, pydicom.valuerep.PersonName):
        return str(val).strip("\x00 =") or None
    if isinstance(val, bytes):
        try:
            return val.decode("ascii").strip("\x00 ") or None
        except UnicodeDecodeError:
            return None
    if isinstance(val, str):
        return val.strip("\x00 ") or None
    return val


def get(ds: Dataset, keyword: str):
    """A value, or None when it is absent or cannot be decoded (wrong VR, bad bytes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if keyword not in ds:
                return None
            v = ds[keyword].value
    except Exception:
        return None
    if v is None or v == "":
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        return list(v)
    if isinstance(v, bytes):
        try:
            return v.decode("ascii").strip("\x00 ")
        except UnicodeDecodeError:
            return None
    if isinstance(v, str):
        v = v.strip("\x00 ")
        return v or None
    if isinstance(v, pydicom.valuerep.PersonName):
        s = str(v).strip("\x00 =")
        return s or None
    return v


def sop_class_name(uid: str) -> str:
    try:
        name = UID(uid).name
    except Exception:
        return uid
    return name if name and name != uid else uid


def is_storage_class(uid: str) -> bool:
    """A Storage SOP Class pydicom knows (the objects a PDI reader can handle)."""
    try:
        u = UID(uid)
        return u.type == "SOP Class" and "Storage" in u.name and uid != MEDIA_STORAGE_DIRECTORY
    except Exception:
        return False


def record_type(sop_class: str, modality: str | None) -> str:
    """The Directory Record Type of a fourth-level object (PS3.3 F.5)."""
    from pydicom import fileset

    if modality in ("RTINTENT", "RTSEGANN", "RTRAD"):
        return "RADIOTHERAPY"
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.104."):
        return "ENCAP DOC"
    if sop_class in ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"):
        return "RT PLAN"
    return fileset._FOUR_LEVEL_SOP_CLASSES.get(sop_class, "IMAGE")  # noqa: SLF001


@dataclass
class ObjectInfo:
    """One object's identity and the header values media code shows and records."""

    sop_uid: str
    sop_class: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    charset: str | list | None = None
    patient_id: str | None = None
    issuer: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_id: str | None = None
    accession: str | None = None
    study_description: str | None = None
    institution: str | None = None
    modality: str | None = None
    series_number: object = None
    series_description: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    content_date: str | None = None
    content_time: str | None = None
    instance_number: object = None
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    laterality: str | None = None
    view: str | None = None
    orientation: list | None = None
    photometric: str | None = None
    record_type: str = "IMAGE"
    size: int = 0
    path: str = ""  # where the object is (a file, or a path on a medium)
    header: Dataset | None = field(default=None, repr=False)  # for non-image records

    @property
    def is_image(self) -> bool:
        return self.record_type == "IMAGE" and bool(self.rows) and bool(self.columns)

    @property
    def supported(self) -> bool:
        return is_storage_class(self.sop_class)


def object_info(data: bytes, path: str = "") -> ObjectInfo:
    """The ObjectInfo of an encoded object (Part 10 or a bare dataset); raises NotDicom."""
    vals, ts = read_values(data)

    def s(kw):
        x = vals.get(kw)
        if isinstance(x, list):
            return "\\".join(str(y) for y in x)
        return None if x is None else str(x)

    def n(kw):
        x = vals.get(kw)
        try:
            return int(x) if x is not None else None
        except (TypeError, ValueError):
            return None

    sop_uid, sop_class = s("SOPInstanceUID"), s("SOPClassUID")
    if not sop_uid or not sop_class:
        raise NotDicom("no SOP Class or SOP Instance UID")
    modality = s("Modality")
    rtype = record_type(sop_class, modality)
    header = None
    if rtype != "IMAGE":
        # leaf records of documents copy sequences and flags: read the whole header with pydicom
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            except Exception:
                header = Dataset()
    cs = vals.get("SpecificCharacterSet")
    orient = vals.get("PatientOrientation")
    if isinstance(orient, str):
        orient = orient.split("\\")
    return ObjectInfo(
        sop_uid=sop_uid, sop_class=sop_class, transfer_syntax=ts,
        study_uid=s("StudyInstanceUID") or "", series_uid=s("SeriesInstanceUID") or "",
        charset=cs, patient_id=s("PatientID"), issuer=s("IssuerOfPatientID"), patient_name=s("PatientName"),
        birth_date=s("PatientBirthDate"), sex=s("PatientSex"), study_date=s("StudyDate"),
        study_time=s("StudyTime"), study_id=s("StudyID"), accession=s("AccessionNumber"),
        study_description=s("StudyDescription"), institution=s("InstitutionName"), modality=modality,
        series_number=s("SeriesNumber"), series_description=s("SeriesDescription"),
        series_date=s("SeriesDate"), series_time=s("SeriesTime"), content_date=s("ContentDate"),
        content_time=s("ContentTime"), instance_number=s("InstanceNumber"),
        rows=n("Rows"), columns=n("Columns"), frames=n("NumberOfFrames") or 1,
        laterality=s("ImageLaterality") or s("Laterality"), view=s("ViewPosition"),
        orientation=[str(x) for x in orient] if orient else None, photometric=s("PhotometricInterpretation"),
        record_type=rtype, size=len(data), path=path, header=header,
    )
