"""Resolving what a user selects (study, series, instance UIDs) into the instances a Key Object
Selection Document references: from the local archive, from a DICOM node (C-FIND at image
level), or from files. Each instance comes back as a dataset with its UIDs, the patient and
study attributes the document inherits, Rows/Columns for images and the Retrieve AE Title.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.dataset import Dataset

from ihecli.errors import IheError, PeerUnreachable, UsageError

# Keys asked for at image level: the references, the inherited attributes and the image size
IMAGE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientName", "PatientID",
              "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "Modality", "SeriesNumber", "InstanceNumber", "Rows", "Columns",
              "RetrieveAETitle")


@dataclass
class Selection:
    """What was asked for, and what it resolved to."""

    studies: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    found: list[Dataset] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # asked-for UIDs nothing was found for

    @property
    def empty(self) -> bool:
        return not (self.studies or self.series or self.instances)

    def check(self, *, allow_missing: bool | None = None, study: str | None = None) -> None:
        """Refuse an empty result, unknown references (unless ``allow_missing``; None: the command
        has no such option) and, with ``study``, instances of another study."""
        if study:
            other = [ds for ds in self.found if str(ds.StudyInstanceUID) != study]
            if other:
                ds = other[0]
                raise IheError(f"instance {ds.SOPInstanceUID} belongs to study {ds.StudyInstanceUID}, "
                               f"not to {study}" + (f" (and {len(other) - 1} more)" if len(other) > 1 else ""))
        if self.missing and not allow_missing:
            more = f" (and {len(self.missing) - 1} more)" if len(self.missing) > 1 else ""
            raise IheError(f"unknown reference {self.missing[0]}{more}: nothing found for it"
                           + (" (--allow-missing leaves it out)" if allow_missing is not None else ""))
        if not self.found:
            raise IheError("the selection matches no instance: nothing to reference")

    def summary(self) -> list[dict]:
        """One row per series: study, series, modality, number of instances."""
        rows: dict[str, dict] = {}
        for ds in self.found:
            se = str(ds.SeriesInstanceUID)
            row = rows.setdefault(se, {"PatientID": str(ds.get("PatientID", "") or ""),
                                       "PatientName": str(ds.get("PatientName", "") or ""),
                                       "StudyInstanceUID": str(ds.StudyInstanceUID),
                                       "SeriesInstanceUID": se, "Modality": str(ds.get("Modality", "") or ""),
                                       "Instances": 0})
            row["Instances"] += 1
        return list(rows.values())


def _identifier(level: str, sel: Selection, keys: Iterable[str] = IMAGE_KEYS) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    for kw in keys:
        setattr(ds, kw, None if kw in ("Rows", "Columns", "SeriesNumber", "InstanceNumber") else "")
    if sel.studies:
        ds.StudyInstanceUID = sel.studies if len(sel.studies) > 1 else sel.studies[0]
    if level in ("SERIES", "IMAGE") and sel.series:
        ds.SeriesInstanceUID = sel.series if len(sel.series) > 1 else sel.series[0]
    if level == "IMAGE":
        ds.SOPInstanceUID = sel.instances if len(sel.instances) > 1 else sel.instances[0]
    return ds


def _level(sel: Selection) -> str:
    if sel.empty:
        raise UsageError("nothing selected: give --study, --series or --instance UIDs")
    return "IMAGE" if sel.instances else "SERIES" if sel.series else "STUDY"


def _missing(sel: Selection, found: Sequence[Dataset]) -> list[str]:
    level = _level(sel)
    if level == "IMAGE":
        have, asked = {str(d.SOPInstanceUID) for d in found}, sel.instances
    elif level == "SERIES":
        have, asked = {str(d.SeriesInstanceUID) for d in found}, sel.series
    else:
        have, asked = {str(d.StudyInstanceUID) for d in found}, sel.studies
    return [u for u in asked if u not in have]


def _chunks(seq: list[str], n: int):
    for k in range(0, len(seq), n):
        yield seq[k:k + n]


def from_archive(archive, sel: Selection) -> Selection:
    """Resolve against the local archive's index (no file is opened)."""
    level = _level(sel)
    found: list[Dataset] = []
    # UID lists in chunks: a long --instance list stays one query per few hundred UIDs
    lists = {"IMAGE": sel.instances, "SERIES": sel.series, "STUDY": sel.studies}[level]
    for chunk in _chunks(lists, 300):
        # below study level the UIDs alone select: an instance of another study is then
        # found and reported as such, rather than as unknown
        part = Selection(chunk if level == "STUDY" else [], chunk if level == "SERIES" else [],
                         chunk if level == "IMAGE" else [])
        found += archive.find(_identifier(level, part))
    sel.found = _dedup(found)
    sel.missing = _missing(sel, sel.found)
    return sel


def from_node(node, sel: Selection, *, calling_aet: str, timeout: float = 30, tls=None) -> Selection:
    """Resolve by C-FIND (Study Root, image level) on a DICOM node (over TLS with a ``tls`` client context)."""
    from ihecli.dicom import scu

    level = _level(sel)
    found: list[Dataset] = []
    if level == "IMAGE" and not sel.series and not sel.studies:
        # instances alone: a relational query, which many peers (this archive too) answer
        try:
            found = scu.find(node, _identifier("IMAGE", sel), calling_aet=calling_aet, timeout=timeout, tls=tls)
        except PeerUnreachable:
            raise
        except IheError as e:
            raise UsageError(f"{node} does not find instances by SOP Instance UID alone ({e}): "
                             "give their --study or --series too") from None
    elif level == "STUDY" or level == "IMAGE" and not sel.series:
        # hierarchical peers need the upper levels' unique keys: step down study by study
        for st in sel.studies:
            sub = Selection([st], [], sel.instances)
            if level == "STUDY":
                series_q = Dataset()
                series_q.QueryRetrieveLevel = "SERIES"
                series_q.StudyInstanceUID = st
                series_q.SeriesInstanceUID = ""
                for s in scu.find(node, series_q, calling_aet=calling_aet, timeout=timeout, tls=tls):
                    sub.series = [str(s.SeriesInstanceUID)]
                    found += scu.find(node, _identifier("SERIES", sub), calling_aet=calling_aet, timeout=timeout, tls=tls)
            else:
                found += scu.find(node, _identifier("IMAGE", sub), calling_aet=calling_aet, timeout=timeout, tls=tls)
    else:
        for se in sel.series:
            sub = Selection(sel.studies, [se], sel.instances)
            if not sub.studies:
                q = Dataset()
                q.QueryRetrieveLevel = "SERIES"
                q.StudyInstanceUID = ""
                q.SeriesInstanceUID = se
                hits = scu.find(node, q, calling_aet=calling_aet, timeout=timeout, tls=tls)
                sub.studies = sorted({str(h.StudyInstanceUID) for h in hits if h.get("StudyInstanceUID")})
                if not sub.studies:
                    continue
            found += scu.find(node, _identifier(level, sub), calling_aet=calling_aet, timeout=timeout, tls=tls)
    for ds in found:
        if not ds.get("RetrieveAETitle"):
            ds.RetrieveAETitle = node.aet
    sel.found = _dedup(found)
    sel.missing = _missing(sel, sel.found)
    return sel


def from_files(paths: Iterable[str | Path], sel: Selection) -> Selection:
    """Resolve against DICOM files and folders (headers only)."""
    from ihecli.archive import iter_files, looks_like_dicom

    level = _level(sel)
    found = []
    for f in iter_files(paths):
        try:
            with open(f, "rb") as fh:
                head = fh.read(132)
            if not looks_like_dicom(head + b"\0" * 8):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID))
        except Exception:  # not DICOM, or without the UIDs a reference needs
            continue
        st, se, sop, _ = uids
        if {"STUDY": st in sel.studies, "SERIES": se in sel.series, "IMAGE": sop in sel.instances}[level]:
            found.append(ds)
    sel.found = _dedup(found)
    sel.missing = _missing(sel, sel.found)
    return sel


def _dedup(found: Sequence[Dataset]) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for ds in found:
        seen.setdefault(str(ds.SOPInstanceUID), ds)
    return list(seen.values())
