"""The one Key Object Selection builder and reader (TID 2010, PS3.3 A.35.4), on highdicom.

Used by the Key Image Note creator (RAD-29), the IOCM Change Requester (RAD-66), the TCE
Receiver (RAD-53) and the XDS-I manifest. ``build_kos`` takes the selected instances as
datasets (the attributes an archive index or a C-FIND response carries) and returns a
complete Key Object Selection Document; ``read_kos`` returns what a receiver needs to know.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Iterable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ihecli.errors import IheError, UsageError
from ihecli.kos import codes
from ihecli.kos.document import KOS_SOP_CLASS, KosInfo, Reference, encode, load, read_kos  # noqa: F401

__all__ = ["KOS_SOP_CLASS", "KosInfo", "Reference", "build_kos", "encode", "evidence_dataset", "load", "read_kos"]

MANUFACTURER = "ihe"

# Attributes the document inherits from the first selected instance (Patient, General Study)
_INHERITED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
              "StudyDate", "StudyTime", "ReferringPhysicianName")


def evidence_dataset(ref: Reference, patient_study: Dataset | None = None, *, has_pixels: bool = True) -> Dataset:
    """A minimal dataset for one selected instance, as ``build_kos`` takes it."""
    ds = Dataset()
    for kw in _INHERITED:
        v = patient_study.get(kw) if patient_study is not None else None
        setattr(ds, kw, v if v is not None else "")
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = ref.series_uid
    ds.SOPInstanceUID = ref.sop_uid
    ds.SOPClassUID = ref.sop_class
    if ref.retrieve_aet:
        ds.RetrieveAETitle = ref.retrieve_aet
    if has_pixels and ref.value_type == "IMAGE":
        ds.Rows, ds.Columns = 1, 1  # only their presence counts: highdicom then writes an IMAGE item
    return ds


def build_kos(title: Code, selected: Sequence[Dataset], *, description: str | None = None,
              observer: str | None = None, modifiers: Iterable[Code] = (), retrieve_aet: str | None = None,
              retrieve_location_uid: str | None = None, series_uid: str | None = None, series_number: int = 9001,
              series_description: str | None = None, sop_uid: str | None = None, instance_number: int = 1,
              identical_documents: Sequence[tuple[str, str, str]] = (), institution: str | None = None) -> Dataset:
    """A Key Object Selection Document (TID 2010) selecting ``selected``, ready to write or send.

    ``selected``: one dataset per instance with its UIDs (SOP Class/Instance, Study, Series),
    the patient and study attributes the document inherits, Rows/Columns for images, and
    optionally RetrieveAETitle. All must be of one study (a KOS belongs to the study it
    references). ``modifiers`` become Document Title Modifier items (the IOCM quality reasons).
    References are grouped per series in the Current Requested Procedure Evidence Sequence with
    the series' Retrieve AE Title (its own, else ``retrieve_aet``). ``identical_documents``:
    (study, series, SOP Instance UID) of copies of this document stored elsewhere.
    """
    import highdicom as hd

    modifiers = list(modifiers)
    if not selected:
        raise UsageError("nothing selected: a Key Object Selection Document needs at least one reference")
    studies = OrderedDict((str(ds.StudyInstanceUID), None) for ds in selected)
    if len(studies) > 1:
        raise IheError(f"the selection spans {len(studies)} studies ({', '.join(studies)}); "
                       "a Key Object Selection Document references instances of one study")
    seen: dict[str, Dataset] = {}
    for ds in selected:
        seen.setdefault(str(ds.SOPInstanceUID), ds)
    selected = list(seen.values())
    evidence = []
    for ds in selected:
        e = Dataset()
        for kw in _INHERITED:
            v = ds.get(kw)
            setattr(e, kw, v if v not in (None, "") else None)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            setattr(e, kw, str(ds[kw].value))
        if "Rows" in ds and "Columns" in ds:
            e.Rows, e.Columns = ds.Rows, ds.Columns
        evidence.append(e)
    person = None
    if observer:
        person = hd.sr.ObserverContext(
            observer_type=pydicom.sr.codedict.codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=observer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        content = hd.ko.KeyObjectSelection(document_title=title, referenced_objects=evidence,
                                           observer_person_context=person, description=description or None)
        root = content[0]
        # Document Title Modifiers (TID 2010 row 2) come before the observer context
        for i, mod in enumerate(modifiers):
            root.ContentSequence.insert(i, hd.sr.CodeContentItem(
                name=codes.DOCUMENT_TITLE_MODIFIER, value=mod,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD))
        doc = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence, content=content, series_instance_uid=series_uid or generate_uid(),
            series_number=series_number, sop_instance_uid=sop_uid or generate_uid(),
            instance_number=instance_number, manufacturer=MANUFACTURER, institution_name=institution,
            specific_character_set=_charset(evidence[0], description, observer, institution))
    ds = doc
    _fill_retrieve(ds, selected, retrieve_aet, retrieve_location_uid)
    if codes.TCE_SCHEME in {title.scheme_designator, *(m.scheme_designator for m in modifiers)}:
        # a coding scheme outside DICOM's registry is identified in the document (PS3.3 C.12.1.1.4)
        scheme = Dataset()
        scheme.CodingSchemeDesignator = codes.TCE_SCHEME
        scheme.CodingSchemeName = "IHE Radiology Technical Framework"
        scheme.CodingSchemeResponsibleOrganization = "IHE"
        ds.CodingSchemeIdentificationSequence = [scheme]
    if series_description:
        ds.SeriesDescription = series_description
    if identical_documents:
        ds.IdenticalDocumentsSequence = [_study_item(st, se, sop) for st, se, sop in identical_documents]
    return ds


def _charset(first: Dataset, *texts: str | None) -> str | None:
    """UTF-8 (ISO_IR 192) when any text the document carries is not ASCII, else the default."""
    values = [str(first.get(kw) or "") for kw in _INHERITED] + [t or "" for t in texts]
    return None if all(v.isascii() for v in values) else "ISO_IR 192"


def _study_item(study: str, series: str, sop: str) -> Dataset:
    inst = Dataset()
    inst.ReferencedSOPClassUID = KOS_SOP_CLASS
    inst.ReferencedSOPInstanceUID = sop
    se = Dataset()
    se.SeriesInstanceUID = series
    se.ReferencedSOPSequence = [inst]
    st = Dataset()
    st.StudyInstanceUID = study
    st.ReferencedSeriesSequence = [se]
    return st


def _fill_retrieve(ds: Dataset, selected: Sequence[Dataset], default_aet: str | None,
                   location_uid: str | None) -> None:
    """Retrieve AE Title (and Location UID) on each series of the evidence sequence."""
    aet_of: dict[str, str] = {}
    for s in selected:
        aet = str(s.get("RetrieveAETitle") or "").split("\\")[0].strip()
        if aet:
            aet_of.setdefault(str(s.SeriesInstanceUID), aet)
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            aet = aet_of.get(str(series.SeriesInstanceUID)) or default_aet
            if aet:
                series.RetrieveAETitle = aet
            if location_uid:
                series.RetrieveLocationUID = location_uid
