"""What DICOM actors tell the audit hook: studies, SOP classes and patients of what moved.

``Tally`` collects, per study, the SOP classes and their counts, accession numbers and patient
ID of the instances a transaction stored, sent or retrieved, as the Instances Transferred and
Begin Transferring events want them (PS3.15 A.5.3.3, A.5.3.4). ``header_keys`` reads those keys
from an encoded object without decoding it all.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

from ihecli.atna import events as ev

_TAGS = ["StudyInstanceUID", "PatientID", "AccessionNumber", "SOPClassUID"]


def header_keys(data: bytes | str, *, implicit: bool | None = None) -> tuple[str, str, str, str]:
    """(Study UID, Patient ID, Accession Number, SOP Class UID) of a Part-10 file (path or bytes),
    or of a bare dataset when ``implicit`` gives its encoding; empty strings for what is missing."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(data, (bytes, bytearray)):
                fh = io.BytesIO(data)
                if implicit is not None and data[128:132] != b"DICM":
                    from pydicom.filereader import read_dataset

                    ds = read_dataset(fh, is_implicit_VR=implicit, is_little_endian=True, stop_when=_stop)
                else:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_TAGS, force=True)
            else:
                ds = pydicom.dcmread(data, stop_before_pixels=True, specific_tags=_TAGS, force=True)
        return tuple(str(ds.get(k, "") or "") for k in _TAGS)  # type: ignore[return-value]
    except Exception:
        return "", "", "", ""


def _stop(tag, vr, length) -> bool:
    return tag.group > 0x0020


def by_patient(studies: dict[str, dict], patient_of: dict[str, str]) -> list[tuple[list[str], dict[str, dict]]]:
    """The studies grouped by their patient (``patient_of``: study UID -> patient ID), as
    ([patient ID] or [], studies) pairs: an audit message names a single patient (PS3.15 A.5.3),
    so a transfer that touched several makes one message each. At least one pair."""
    groups: dict[str, dict[str, dict]] = {}
    for uid, st in studies.items():
        groups.setdefault(patient_of.get(uid, ""), {})[uid] = st
    return [([pid] if pid else [], sts) for pid, sts in groups.items()] or [([], {})]


def study_patients(archive, study_uids) -> dict[str, str]:
    """Study UID -> patient ID for the studies ``archive`` holds (for by_patient); {} without an
    archive or when the index cannot say (an audit message must not fail the transfer it records)."""
    if archive is None:
        return {}
    try:
        owners, _ = archive.uid_owners(list(study_uids)[:1000])
    except Exception:
        return {}
    return {uid: pid for uid, (pid, _issuer) in owners.items() if pid}


@dataclass
class Tally:
    studies: dict[str, dict] = field(default_factory=dict)
    count: int = 0
    patient_of: dict[str, str] = field(default_factory=dict)  # study UID -> patient ID

    def add(self, study_uid: str, patient_id: str = "", accession: str = "", sop_class: str = "") -> None:
        self.count += 1
        st = self.studies.setdefault(study_uid or "unknown", {"sop_classes": {}, "accessions": []})
        if sop_class:
            st["sop_classes"][sop_class] = st["sop_classes"].get(sop_class, 0) + 1
        if accession and accession not in st["accessions"]:
            st["accessions"].append(accession)
        if patient_id:
            self.patient_of.setdefault(study_uid or "unknown", patient_id)

    def per_patient(self) -> list[tuple[list[str], dict[str, dict]]]:
        """(patients, studies) for one audit message per patient (see by_patient)."""
        return by_patient(self.studies, self.patient_of)

    def add_keys(self, keys: tuple[str, str, str, str], sop_class: str = "") -> None:
        study, pid, acc, cls = keys
        self.add(study, pid, acc, sop_class or cls)


def outcome(done: int, failed: int) -> int:
    """Nominal success, minor failure (some failed) or serious failure (all failed)."""
    if not failed:
        return ev.SUCCESS
    return ev.MINOR_FAILURE if done else ev.SERIOUS_FAILURE


def _media_event(export: bool, media: str, media_id: str, objects, failed: int) -> None:
    from ihecli import atna

    if not atna.enabled():
        return
    import os

    media = {"iso": "cd", "folder": "usb", "zip": "uri"}.get(media.lower(), media)  # PDI media kinds
    tally = Tally()
    for study_uid, patient_id, sop_class in objects:
        tally.add(study_uid, patient_id, sop_class=sop_class)
    for patients, studies in tally.per_patient():
        atna.record(ev.media_event(export, media=media, media_id=media_id, user=os.environ.get("USER", "") or "ihe",
                                   studies=studies, patients=patients, outcome=outcome(tally.count, failed)))


def media_exported(media: str, media_id: str, objects, failed: int = 0) -> None:
    """Export (PS3.15 A.5.3.6) of (study UID, patient ID, SOP class) objects to a PDI medium."""
    _media_event(True, media, media_id, objects, failed)


def media_imported(media: str, media_id: str, objects, failed: int = 0) -> None:
    """Import (PS3.15 A.5.3.7) of (study UID, patient ID, SOP class) objects from a PDI medium."""
    _media_event(False, media, media_id, objects, failed)
