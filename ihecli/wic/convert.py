"""Web-based Image Capture, Image Manager side (RAD-108 with metadata and bulk data): DICOM
JSON/XML metadata plus a JPEG, PNG, MP4 or PDF become a DICOM instance.

- JPEG: VL Photographic Image (or Secondary Capture when the metadata asks), the JPEG kept as
  sent (JPEG Baseline transfer syntax) with the pixel description read from the JPEG itself;
  progressive or CMYK JPEGs are decoded to native pixels.
- PNG: Secondary Capture (or VL Photographic), native pixels.
- MP4 (H.264): Video Photographic Image, the MP4 stream encapsulated as sent.
- PDF: Encapsulated PDF.

Missing UIDs are generated; the study and patient come from the metadata, and an existing
study is matched by Study Instance UID or else Accession Number, whose patient and study
attributes then win. Every value the client sent that is replaced is kept in Original
Attributes Sequence (PS3.3 C.12.1.1.9) and the instance is reported as coerced.

Building the instances is hand-written (the conversions are WIC's own rules); highdicom's
Secondary Capture builder re-encodes pixels, which a photo must not suffer.
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, PYDICOM_IMPLEMENTATION_UID, generate_uid)

from ihecli import __version__
from ihecli.archive.ingest import UID_RE
from ihecli.wic.media import MediaError, read_exif, read_mp4

VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
VIDEO_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
IMAGE_CLASSES = {VL_PHOTO, SECONDARY_CAPTURE}
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile / Level 4.1
MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video

PIXEL_KEYWORDS = ["Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                  "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames"]
PATIENT_KEYWORDS = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"]
STUDY_KEYWORDS = ["StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
                  "StudyDescription"]

# Failure reasons (PS3.18 Table I.2-1)
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
NOT_SUPPORTED = 0x0122


class ConversionError(Exception):
    """Metadata or bulk data that cannot become a DICOM instance; carries the failure reason."""

    def __init__(self, message: str, status: int = CANNOT_UNDERSTAND):
        super().__init__(message)
        self.status = status


@dataclass
class Metadata:
    """One dataset of the request's metadata and its bulk data references (tag -> URI)."""

    ds: Dataset
    bulk: dict[int, str] = field(default_factory=dict)


@dataclass
class Made:
    data: bytes  # Part-10 encoded
    sop_class: str
    sop_uid: str
    study_uid: str
    coerced: bool


def read_metadata(data: bytes, media: str) -> list[Metadata]:
    """The datasets of a DICOM JSON (array or one object) or DICOM XML metadata part."""
    if media == "application/dicom+xml":
        from ihecli.web.xml import from_xml

        try:
            ds, bulk = from_xml(data)
        except ValueError as e:
            raise ConversionError(str(e)) from None
        return [Metadata(ds, bulk)]
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConversionError(f"metadata is not JSON: {type(e).__name__}: {e}"[:300]) from None
    items = obj if isinstance(obj, list) else [obj]
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ConversionError("metadata must be DICOM JSON objects")
        bulk = {}
        plain = {}
        for tag, attr in item.items():
            if isinstance(attr, dict) and "BulkDataURI" in attr:
                try:
                    bulk[int(tag, 16)] = str(attr["BulkDataURI"])
                except ValueError:
                    raise ConversionError(f"bad tag {tag!r} in metadata") from None
            else:
                plain[tag] = attr
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = Dataset.from_json(plain)
        except Exception as e:
            raise ConversionError(f"bad DICOM JSON metadata: {e}") from None
        out.append(Metadata(ds, bulk))
    return out


def _value(ds: Dataset, kw: str):
    try:
        e = ds.get(kw)
        return None if e is None or e == "" else e
    except Exception:
        return None


class Coercions:
    """Values the client sent that the Image Manager replaced."""

    def __init__(self):
        self.original = Dataset()

    def set(self, ds: Dataset, kw: str, value) -> None:
        old = _value(ds, kw)
        new_empty = value is None or value == ""
        if old is not None and not new_empty and str(old) != str(value):
            if kw not in self.original:
                self.original[kw] = copy.deepcopy(ds[kw])  # ds[kw] is changed in place below
        if new_empty:
            if kw in ds:
                ds[kw].value = None if ds[kw].VR != "SQ" else []
            else:
                setattr(ds, kw, None)
        else:
            setattr(ds, kw, value)

    def __bool__(self) -> bool:
        return len(self.original) > 0

    def record(self, ds: Dataset) -> None:
        if not self:
            return
        item = Dataset()
        item.ModifiedAttributesSequence = Sequence([self.original])
        item.AttributeModificationDateTime = datetime.now().strftime("%Y%m%d%H%M%S")
        item.ModifyingSystem = "ihe"
        item.SourceOfPreviousValues = ""
        item.ReasonForTheAttributeModification = "COERCE"
        seq = list(ds.get("OriginalAttributesSequence", None) or [])
        ds.OriginalAttributesSequence = Sequence(seq + [item])


def _resolve(uri: str, bulk: dict):
    """The request part a BulkDataURI names (by Content-Location or Content-ID)."""
    if uri in bulk:
        return bulk[uri]
    for cand in (uri.removeprefix("cid:"), uri.rsplit("/", 1)[-1]):
        if cand in bulk:
            return bulk[cand]
    for loc, part in bulk.items():
        if loc.endswith("/" + uri) or uri.endswith("/" + loc):
            return part
    return None


def existing_study(archive, study_uid: str | None, accession: str | None) -> Dataset | None:
    """Patient and study attributes of a stored study, found by Study UID or else accession."""
    from ihecli.archive.query import Finder

    for kw, v in (("StudyInstanceUID", study_uid), ("AccessionNumber", accession)):
        if not v:
            continue
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        for k in PATIENT_KEYWORDS + STUDY_KEYWORDS + ["StudyInstanceUID"]:
            setattr(ident, k, None)
        setattr(ident, kw, v)
        with archive.connect() as conn:
            rows = list(Finder(conn, aet=archive.aet).find(ident, "study", 2))
        if len(rows) == 1:
            return rows[0]
        if kw == "StudyInstanceUID":
            return None  # a new study with the UID the client chose
    return None


def instance_from_metadata(archive, meta: Metadata, bulk: dict, url_study: str | None = None,
                           context: dict | None = None) -> Made:
    """One DICOM instance (Part-10 bytes) from metadata and its bulk data part."""
    context = context if context is not None else {}
    ds = Dataset()
    ds.update(meta.ds)
    co = Coercions()
    # bulk data: the referenced part, else the only bulk part of the request
    part = None
    for tag in (0x7FE00010, 0x00420011):
        if tag in meta.bulk:
            part = _resolve(meta.bulk[tag], bulk)
            if part is None:
                raise ConversionError(f"bulk data {meta.bulk[tag]!r} is not a part of the request")
    if part is None and not meta.bulk and len(bulk) == 1:
        part = next(iter(bulk.values()))
    if part is None:
        raise ConversionError("no bulk data (JPEG, PNG, MP4 or PDF part) for the metadata")
    media = part.media
    data = part.read()
    from ihecli.wic.media import kind_of

    sniffed = kind_of(data)
    if media in ("application/octet-stream", "", "image/jpg"):
        media = sniffed or media
    if media not in ("image/jpeg", "image/png", "video/mp4", "application/pdf"):
        raise ConversionError(f"bulk data of type {media or 'unknown'} is not converted", NOT_SUPPORTED)
    if sniffed != media:
        raise ConversionError(f"the {media} bulk data is not {media} (broken or mislabelled)")

    _patient_and_study(archive, ds, co, url_study, context)
    now = datetime.now()
    for kw in ("SOPInstanceUID", "SeriesInstanceUID"):
        v = _value(ds, kw)
        if v is None or not UID_RE.match(str(v)) or len(str(v)) > 64:
            co.set(ds, kw, generate_uid())
    for tag in (0x7FE00010, 0x00420011, 0x00020010):
        if tag in ds:
            del ds[tag]
    if media == "image/jpeg":
        ts = _jpeg(ds, co, data)
    elif media == "image/png":
        ts = _png(ds, co, data)
    elif media == "video/mp4":
        ts = _mp4(ds, co, data)
    else:
        ts = _pdf(ds, co, data)
    _common(ds, co, now)
    co.record(ds)
    return Made(_encode(ds, ts), str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), bool(co))


def _patient_and_study(archive, ds: Dataset, co: Coercions, url_study: str | None, context: dict) -> None:
    pid = _value(ds, "PatientID")
    if not pid or not str(pid).strip():
        raise ConversionError("the metadata names no patient (Patient ID missing)")
    study = _value(ds, "StudyInstanceUID")
    if study is not None and (not UID_RE.match(str(study)) or len(str(study)) > 64):
        raise ConversionError(f"bad Study Instance UID {str(study)[:70]!r} in the metadata")
    if url_study and study and str(study) != url_study:
        raise ConversionError(f"Study Instance UID {study} is not the URL's {url_study}", DOES_NOT_MATCH)
    study = str(study) if study else url_study
    accession = str(_value(ds, "AccessionNumber") or "") or None
    found = existing_study(archive, study, None if study else accession)
    if found is None and not study and accession:
        study = context.get(("accession", accession))  # an earlier instance of this request
    if found is not None:
        if str(found.PatientID or "") != str(pid):
            raise ConversionError(f"study {found.StudyInstanceUID} belongs to patient {found.PatientID}, "
                                  f"not {pid}", DOES_NOT_MATCH)
        study = str(found.StudyInstanceUID)
        for kw in PATIENT_KEYWORDS + STUDY_KEYWORDS:
            v = found.get(kw)
            if v is not None and v != "":
                co.set(ds, kw, v)
    if not study:
        study = generate_uid()
        if accession:
            context[("accession", accession)] = study
    ds.StudyInstanceUID = study


def _fill(ds: Dataset, kw: str, value) -> None:
    """Set a value the client did not give (not a coercion)."""
    if _value(ds, kw) is None:
        setattr(ds, kw, value)


def _pixels(ds: Dataset, co: Coercions, values: dict) -> None:
    for kw in PIXEL_KEYWORDS:
        if kw in values:
            co.set(ds, kw, values[kw])
        elif kw in ds:
            co.set(ds, kw, None)
            del ds[kw]


def _image_class(ds: Dataset, co: Coercions, default: str) -> None:
    cls = str(_value(ds, "SOPClassUID") or "")
    co.set(ds, "SOPClassUID", cls if cls in IMAGE_CLASSES else default)
    if str(ds.SOPClassUID) == VL_PHOTO:
        _fill(ds, "Modality", "XC")
        _fill(ds, "ImageType", ["ORIGINAL", "PRIMARY"])
        if "AcquisitionContextSequence" not in ds:
            ds.AcquisitionContextSequence = Sequence([])
    else:
        _fill(ds, "Modality", "OT")
        _fill(ds, "ConversionType", "WSD")


def _exif_times(ds: Dataset, data: bytes) -> None:
    ex = read_exif(data)
    if ex.taken:
        _fill(ds, "AcquisitionDateTime", ex.taken.strftime("%Y%m%d%H%M%S"))
        _fill(ds, "ContentDate", ex.taken.strftime("%Y%m%d"))
        _fill(ds, "ContentTime", ex.taken.strftime("%H%M%S"))
    if ex.make:
        _fill(ds, "Manufacturer", ex.make[:64])
    if ex.model:
        _fill(ds, "ManufacturerModelName", ex.model[:64])


def _jpeg(ds: Dataset, co: Coercions, data: bytes) -> str:
    from PIL import Image, JpegImagePlugin

    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decodes the whole image: a broken JPEG fails here
    except Exception as e:
        raise ConversionError(f"broken JPEG: {e}") from None
    _image_class(ds, co, VL_PHOTO)
    _exif_times(ds, data)
    progressive = img.info.get("progressive") or img.info.get("progression")
    adobe_rgb = img.info.get("adobe_transform") == 0 and img.mode == "RGB"
    if img.mode == "L":
        pi, spp = "MONOCHROME2", 1
    elif adobe_rgb:
        pi, spp = "RGB", 3
    else:  # JFIF YCbCr: full range, subsampled or not (PS3.5 8.2.1)
        pi = "YBR_FULL" if JpegImagePlugin.get_sampling(img) == 0 else "YBR_FULL_422"
        spp = 3
    # neither VL Photographic nor Secondary Capture lists YBR_FULL (a JPEG without chroma
    # subsampling): such a JPEG is decoded, as progressive ones are
    if img.mode in ("L", "RGB") and not progressive and pi != "YBR_FULL":
        values = {"Rows": img.height, "Columns": img.width, "SamplesPerPixel": spp, "PhotometricInterpretation": pi,
                  "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 0}
        if spp == 3:
            values["PlanarConfiguration"] = 0
        _pixels(ds, co, values)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([data if len(data) % 2 == 0 else data + b"\x00"])
        ds["PixelData"].VR = "OB"
        return JPEGBaseline8Bit
    # progressive, CMYK or other: the decoded pixels, natively (decoding loses nothing more)
    _native(ds, co, img.convert("RGB") if img.mode != "L" else img)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    return ExplicitVRLittleEndian


def _native(ds: Dataset, co: Coercions, img) -> None:
    import numpy as np

    if img.mode in ("I;16", "I;16B", "I"):
        arr = np.asarray(img).astype("<u2")
        values = {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16,
                  "BitsStored": 16, "HighBit": 15}
    elif img.mode in ("L", "LA", "1"):
        arr = np.asarray(img.convert("L"))
        values = {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 8,
                  "BitsStored": 8, "HighBit": 7}
    else:
        arr = np.asarray(img.convert("RGB"))
        values = {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "BitsAllocated": 8, "BitsStored": 8,
                  "HighBit": 7, "PlanarConfiguration": 0}
    values.update({"Rows": img.height, "Columns": img.width, "PixelRepresentation": 0})
    _pixels(ds, co, values)
    raw = arr.tobytes()
    ds.PixelData = raw + (b"\x00" if len(raw) % 2 else b"")
    ds["PixelData"].VR = "OB" if values["BitsAllocated"] == 8 else "OW"


def _png(ds: Dataset, co: Coercions, data: bytes) -> str:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise ConversionError(f"broken PNG: {e}") from None
    _image_class(ds, co, SECONDARY_CAPTURE)
    _exif_times(ds, data)
    _native(ds, co, img)
    if str(ds.SOPClassUID) == VL_PHOTO:
        ds.LossyImageCompression = "00"
    return ExplicitVRLittleEndian


def _mp4(ds: Dataset, co: Coercions, data: bytes) -> str:
    try:
        v = read_mp4(data)
    except MediaError as e:
        raise ConversionError(f"broken MP4: {e}") from None
    if v.codec not in ("avc1", "avc3"):
        raise ConversionError(f"MP4 video coded as {v.codec or 'unknown'}: only H.264 (avc1) is converted",
                              NOT_SUPPORTED)
    if v.level > 42:
        raise ConversionError(f"H.264 level {v.level / 10} is above 4.2: no DICOM transfer syntax", NOT_SUPPORTED)
    co.set(ds, "SOPClassUID", VIDEO_PHOTO)
    if "AnatomicRegionSequence" not in ds:  # type 1C for video: unknown region, the whole body
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "38266002", "SCT", "Entire body"
        ds.AnatomicRegionSequence = Sequence([region])
    _fill(ds, "Modality", "XC")
    _fill(ds, "ImageType", ["ORIGINAL", "PRIMARY"])
    if "AcquisitionContextSequence" not in ds:
        ds.AcquisitionContextSequence = Sequence([])
    _pixels(ds, co, {"Rows": v.height, "Columns": v.width, "SamplesPerPixel": 3,
                     "PhotometricInterpretation": "YBR_PARTIAL_420", "BitsAllocated": 8, "BitsStored": 8,
                     "HighBit": 7, "PixelRepresentation": 0, "PlanarConfiguration": 0, "NumberOfFrames": v.frames})
    ds.FrameTime = f"{v.frame_time_ms:.4f}".rstrip("0").rstrip(".")
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.CineRate = max(1, round(1000.0 / v.frame_time_ms)) if v.frame_time_ms else 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    # the MP4 file is one frame of fragments, each below 4 GiB (PS3.5 8.2.8)
    padded = data if len(data) % 2 == 0 else data + b"\x00"
    n = max(1, -(-len(padded) // (1 << 30)))
    ds.PixelData = encapsulate([padded], fragments_per_frame=n, has_bot=False)
    ds["PixelData"].VR = "OB"
    return MPEG4_HP41 if v.level <= 41 else MPEG4_HP42_2D


def _pdf(ds: Dataset, co: Coercions, data: bytes) -> str:
    if b"%%EOF" not in data[-2048:]:
        raise ConversionError("broken PDF: no %%EOF trailer")
    co.set(ds, "SOPClassUID", ENCAPSULATED_PDF)
    _fill(ds, "Modality", "DOC")
    _fill(ds, "ConversionType", "WSD")
    _fill(ds, "BurnedInAnnotation", "YES")
    _fill(ds, "DocumentTitle", "")
    if "ConceptNameCodeSequence" not in ds:
        ds.ConceptNameCodeSequence = Sequence([])
    _fill(ds, "AcquisitionDateTime", "")
    for kw in PIXEL_KEYWORDS:
        if kw in ds:
            co.set(ds, kw, None)
            del ds[kw]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = data if len(data) % 2 == 0 else data + b"\x00"
    ds.EncapsulatedDocumentLength = len(data)
    return ExplicitVRLittleEndian


def _common(ds: Dataset, co: Coercions, now: datetime) -> None:
    """Type 1 and 2 attributes of the Patient, Study, Series, Equipment and SOP Common modules."""
    for kw in ("PatientName", "PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID",
               "AccessionNumber", "SeriesNumber", "InstanceNumber", "Manufacturer"):
        if kw not in ds:
            setattr(ds, kw, None)
    _fill(ds, "StudyDate", str(ds.get("ContentDate", "") or "") or now.strftime("%Y%m%d"))
    _fill(ds, "StudyTime", str(ds.get("ContentTime", "") or "") or now.strftime("%H%M%S"))
    _fill(ds, "ContentDate", now.strftime("%Y%m%d"))
    _fill(ds, "ContentTime", now.strftime("%H%M%S"))
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    if str(ds.SOPClassUID) in IMAGE_CLASSES | {VIDEO_PHOTO}:
        if "PatientOrientation" not in ds:
            ds.PatientOrientation = None
        if "Laterality" not in ds and "ImageLaterality" not in ds and "AnatomicRegionSequence" not in ds:
            ds.Laterality = None  # type 2C: unknown for a photo of a paired body part
    texts = [str(e.value) for e in ds.iterall() if e.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC")
             and e.value is not None]
    if any(not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet


def _encode(ds: Dataset, ts: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"IHE_{__version__}"[:16]
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

