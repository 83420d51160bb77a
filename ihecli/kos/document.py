"""Reading Key Object Selection Documents: title, modifiers, key text and references.

Depends on pydicom and the code list only, so that the archive can recognise the KOS it
receives (the TCE Receiver of RAD-53, the IOCM rejection notes of RAD-66) with the same reader
the actors use.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ihecli.errors import IheError
from ihecli.kos import codes

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass
class Reference:
    """One instance a KOS references."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    retrieve_aet: str = ""
    value_type: str = "IMAGE"  # IMAGE, COMPOSITE or WAVEFORM


@dataclass
class KosInfo:
    """What a Key Object Selection Document says (the receiver's view)."""

    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    patient_name: str
    title: Code
    modifiers: list[Code] = field(default_factory=list)  # Document Title Modifiers (113011)
    description: str = ""
    observers: list[str] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    other_texts: list[tuple[str, str]] = field(default_factory=list)  # (concept meaning, text)

    @property
    def is_rejection(self) -> bool:
        return codes.is_rejection_title(self.title.value, self.title.scheme_designator)

    @property
    def is_tce(self) -> bool:
        return codes.is_tce_title(self.title.value, self.title.scheme_designator)


def encode(ds: Dataset) -> bytes:
    """The document as a Part-10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- reading -------------------------------------------------------------------------------------
def _code(item: Dataset) -> Code | None:
    try:
        return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.get("CodeMeaning", "")))
    except AttributeError:
        return None


def read_kos(ds: Dataset) -> KosInfo:
    """What a Key Object Selection Document says; raises IheError when ``ds`` is not one.

    Tolerant of real-world manifests: references come from the Current Requested Procedure
    Evidence and the Pertinent Other Evidence sequences, whatever the content tree names them.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read_kos(ds)
    except IheError:
        raise
    except Exception as e:  # values that do not decode: truncated sequences, wrong VRs
        raise IheError(f"unreadable Key Object Selection Document ({type(e).__name__}: {e})") from None


def _read_kos(ds: Dataset) -> KosInfo:
    if str(ds.get("SOPClassUID", "")) != KOS_SOP_CLASS:
        raise IheError(f"not a Key Object Selection Document (SOP Class {ds.get('SOPClassUID', 'missing')})")
    try:
        title = _code(ds.ConceptNameCodeSequence[0])
    except (AttributeError, IndexError):
        title = None
    if title is None:
        raise IheError("Key Object Selection Document without a document title (Concept Name Code Sequence)")
    info = KosInfo(sop_uid=str(ds.get("SOPInstanceUID", "")), series_uid=str(ds.get("SeriesInstanceUID", "")),
                   study_uid=str(ds.get("StudyInstanceUID", "")), patient_id=str(ds.get("PatientID", "") or ""),
                   patient_name=str(ds.get("PatientName", "") or ""), title=title)
    value_types: dict[str, str] = {}
    for item in ds.get("ContentSequence", []):
        vt = str(item.get("ValueType", ""))
        name = _code(item.ConceptNameCodeSequence[0]) if item.get("ConceptNameCodeSequence") else None
        if vt == "TEXT":
            text = str(item.get("TextValue", ""))
            if name is not None and name.value == codes.KEY_OBJECT_DESCRIPTION.value:
                info.description = text if not info.description else info.description + "\n" + text
            else:
                info.other_texts.append((name.meaning if name else "", text))
        elif vt == "CODE" and name is not None and name.value == codes.DOCUMENT_TITLE_MODIFIER.value:
            mod = _code(item.ConceptCodeSequence[0]) if item.get("ConceptCodeSequence") else None
            if mod is not None:
                info.modifiers.append(mod)
        elif vt == "PNAME":
            info.observers.append(str(item.get("PersonName", "")))
        elif vt in ("IMAGE", "COMPOSITE", "WAVEFORM"):
            for r in item.get("ReferencedSOPSequence", []):
                value_types[str(r.get("ReferencedSOPInstanceUID", ""))] = vt
    for kw in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(kw, []):
            for series in study.get("ReferencedSeriesSequence", []):
                aet = str(series.get("RetrieveAETitle", "") or "").split("\\")[0]
                for inst in series.get("ReferencedSOPSequence", []):
                    sop = str(inst.get("ReferencedSOPInstanceUID", ""))
                    info.references.append(Reference(
                        str(study.get("StudyInstanceUID", "")), str(series.get("SeriesInstanceUID", "")), sop,
                        str(inst.get("ReferencedSOPClassUID", "")), aet, value_types.get(sop, "COMPOSITE")))
    return info


def load(source: bytes | str) -> Dataset:
    """A DICOM object from a file path or Part-10 bytes; IheError naming the file otherwise."""
    where = ""
    if not isinstance(source, (bytes, bytearray)):
        where = f"{source}: "
        try:
            with open(source, "rb") as fh:
                source = fh.read()
        except OSError as e:
            raise IheError(f"{where}cannot read it ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(source), force=True)
            ds.SOPClassUID  # noqa: B018 (decodes now: a garbage file fails here)
    except Exception:  # pydicom's many ways of failing on bytes that are not DICOM
        raise IheError(f"{where}not a DICOM file") from None
    return ds
