"""What media code needs to know about one DICOM object, read from its header only.

The fast path walks the encoded header (ihecli.pdi.part10) and decodes the wanted elements
itself; pydicom is imported only for what is unusual (text in other character sets, odd VRs,
non-image records, headers the walk does not handle), so writing a medium of ordinary images
does without it.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ihecli.pdi.part10 import EXPLICIT_LE, IMPLICIT_LE, SHORT_VRS, Odd, Truncated, element, meta_uids

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# the wanted elements: tag -> (keyword, VR); tests/test_pdi_part10.py checks them against pydicom's dictionary
WANTED = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080021: ("SeriesDate", "DA"),
    0x00080023: ("ContentDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080031: ("SeriesTime", "TM"),
    0x00080033: ("ContentTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080080: ("InstitutionName", "LO"),
    0x00080090: ("ReferringPhysicianName", "PN"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100021: ("IssuerOfPatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x00185101: ("ViewPosition", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200010: ("StudyID", "SH"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200020: ("PatientOrientation", "CS"),
    0x00200060: ("Laterality", "CS"),
    0x00200062: ("ImageLaterality", "CS"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
}
WANTED_KEYWORDS = tuple(kw for kw, _vr in WANTED.values())
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# image storage classes of every day: their record is IMAGE (PS3.3 F.5) and they are storage
# classes, known without pydicom's tables (tests/test_pdi_part10.py checks both against pydicom)
IMAGE_CLASSES = frozenset("1.2.840.10008.5.1.4.1.1." + c for c in (
    "1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1", "2", "2.1", "4", "4.1", "6.1", "3.1", "7", "7.1", "7.2",
    "7.3", "7.4", "12.1", "12.1.1", "12.2", "12.2.1", "13.1.3", "20", "128", "130", "77.1.1", "77.1.4"))


class NotDicom(Exception):
    """The bytes are not a DICOM object this code can read."""


class DirectoryFile(NotDicom):
    """A Media Storage Directory (a DICOMDIR under another name): not an object to import."""


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UI", "UC", "UT", "PN"}
_MULTI = {"SpecificCharacterSet", "PatientOrientation"}
_LAST = max(WANTED)  # the walk stops past the last wanted element
_HEAD = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 2-byte length


def _fast_values(data: bytes) -> tuple[dict, str] | None:
    """(values by keyword, transfer syntax) of a Part-10 object in little endian, or None."""
    got = meta_uids(data)
    if got is None:
        return None
    meta, pos = got
    ts = meta.get("TransferSyntaxUID", "")
    if meta.get("MediaStorageSOPClassUID", "") == MEDIA_STORAGE_DIRECTORY:
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
    head, wanted, short, last = _HEAD, WANTED, SHORT_VRS, _LAST
    try:
        while True:
            # a CT header has a few hundred elements before the last wanted one, and this loop is
            # most of a medium's header reading: the common element (explicit VR, 2-byte length,
            # not wanted) costs one unpack and two lookups
            try:
                g, e, vr, length = head(data, pos)
            except struct.error:
                break  # fewer than 8 bytes left
            tag = (g << 16) | e
            if not implicit and vr in short:
                hit = wanted.get(tag)
                if hit is None:
                    if tag > last:
                        break
                    pos += 8 + length
                    continue
                start = pos + 8
                nxt = start + length
            else:
                if tag > last:
                    break
                tag, nxt, (vr, start, length) = element(data, pos, implicit)
                hit = wanted.get(tag)
                if hit is None:
                    if tag == 0x00041220:
                        raise DirectoryFile("a DICOMDIR (a directory of the medium, not an object)")
                    pos = nxt
                    continue
            if nxt > n:
                raise Truncated("element runs past the end")
            kw = hit[0]
            vrs = hit[1] if (implicit or vr is None) else vr.decode("ascii")
            value = data[start:nxt]
            if vrs in _TEXT_VRS and value.isascii() and b"\x1b" not in value:
                text = value.decode("ascii").strip("\x00 ")
                if kw in _MULTI and "\\" in text:
                    out[kw] = [t.strip() for t in text.split("\\")]
                else:
                    out[kw] = text or None
            elif vrs == "US" and length >= 2:
                out[kw] = struct.unpack_from("<H", value)[0]
            else:
                raws.append((kw, tag, vrs, length, value, start))
            pos = nxt
        if pos > n:
            raise Truncated("element runs past the end")
    except (Odd, Truncated, UnicodeDecodeError, ValueError, struct.error):
        return None
    if raws:  # text in another character set, odd VRs: pydicom decodes them
        from pydicom.charset import convert_encodings
        from pydicom.dataelem import RawDataElement, convert_raw_data_element
        from pydicom.tag import Tag

        cs = out.get("SpecificCharacterSet")
        try:
            enc = convert_encodings(cs if isinstance(cs, list) else [cs or ""])
        except Exception:
            enc = ["iso8859"]
        for kw, tag, vrs, length, value, start in raws:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    elem = convert_raw_data_element(RawDataElement(Tag(tag), vrs, length, value, start, implicit,
                                                                   True), encoding=enc)
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
    import pydicom

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
    import pydicom

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
    import pydicom

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
    from pydicom.uid import UID

    try:
        name = UID(uid).name
    except Exception:
        return uid
    return name if name and name != uid else uid


def is_storage_class(uid: str) -> bool:
    """A Storage SOP Class pydicom knows (the objects a PDI reader can handle)."""
    if uid in IMAGE_CLASSES:
        return True
    from pydicom.uid import UID

    try:
        u = UID(uid)
        return u.type == "SOP Class" and "Storage" in u.name and uid != MEDIA_STORAGE_DIRECTORY
    except Exception:
        return False


def record_type(sop_class: str, modality: str | None) -> str:
    """The Directory Record Type of a fourth-level object (PS3.3 F.5)."""
    if modality in ("RTINTENT", "RTSEGANN", "RTRAD"):
        return "RADIOTHERAPY"
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.104."):
        return "ENCAP DOC"
    if sop_class in ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"):
        return "RT PLAN"
    if sop_class in IMAGE_CLASSES:
        return "IMAGE"
    from pydicom import fileset

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
        import pydicom
        from pydicom.dataset import Dataset

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
