"""IOCM Change Requester: rejection notes (IHE RAD TF-2 4.66, RAD-66 Rejection Note Stored).

A rejection note is a Key Object Selection Document titled 113001 (quality), 113037 (patient
safety), 113038 (incorrect modality worklist entry) or 113039 (data retention policy expired),
with the CID 7011 quality reasons as Document Title Modifiers, referencing every rejected
instance. A note belongs to one study: rejecting instances of several studies makes one note each.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ihecli.errors import UsageError
from ihecli.kos import codes
from ihecli.kos.builder import build_kos

SERIES_DESCRIPTION = "Rejection Note"


def reason_code(text: str) -> Code:
    """The rejection title for a reason word (quality, patient-safety, incorrect-mpps,
    data-retention) or its code (113001, 113037, 113038, 113039)."""
    t = text.strip().lower()
    if t in codes.REJECTION_REASONS:
        return codes.REJECTION_REASONS[t]
    value = t.split(":", 1)[1] if t.startswith("dcm:") else t
    if value in codes.REJECTION_TITLES:
        return codes.REJECTION_TITLES[value]
    raise UsageError(f"unknown rejection reason {text!r}: quality, patient-safety, incorrect-mpps, data-retention "
                     "or 113001, 113037, 113038, 113039")


def quality_reason_code(text: str) -> Code:
    """A CID 7011 quality reason by name (motion-blur) or code (111210); the IOCM ones: 111207-111212."""
    t = text.strip().lower()
    if t in codes.QUALITY_REASONS:
        return codes.QUALITY_REASONS[t]
    for c in codes.QUALITY_REASONS.values():
        if c.value == t.removeprefix("dcm:"):
            return c
    raise UsageError(f"unknown quality reason {text!r}: " + ", ".join(codes.QUALITY_REASONS)
                     + " (or 111207-111212)")


def rejection_notes(selected: Sequence[Dataset], reason: Code, *, quality_reasons: Iterable[Code] = (),
                    description: str | None = None, observer: str | None = None,
                    retrieve_aet: str | None = None) -> list[Dataset]:
    """The rejection notes (one per study) that RAD-66 Rejection Note Stored sends."""
    mods = list(quality_reasons)
    if mods and reason.value != codes.REJECTED_FOR_QUALITY_REASONS.value:
        raise UsageError("quality reasons go with --reason quality only")
    by_study: OrderedDict[str, list[Dataset]] = OrderedDict()
    for ds in selected:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return [build_kos(reason, group, description=description, observer=observer, modifiers=mods,
                      retrieve_aet=retrieve_aet, series_description=SERIES_DESCRIPTION)
            for group in by_study.values()]


def drop_rejection_notes(archive, found: Sequence[Dataset]) -> list[Dataset]:
    """The selection without the rejection notes the archive holds: a study rejected twice does
    not reject its first note."""
    from sqlalchemy import select

    from ihecli.archive.tables_kos import KOS_SOP_CLASS, kos_documents

    kos = [str(ds.SOPInstanceUID) for ds in found if str(ds.get("SOPClassUID", "")) == KOS_SOP_CLASS]
    if not kos:
        return list(found)
    with archive.connect() as conn:
        notes = set(conn.execute(select(kos_documents.c.sop_uid).where(
            kos_documents.c.sop_uid.in_(kos), kos_documents.c.title_scheme == "DCM",
            kos_documents.c.title_value.in_(list(codes.REJECTION_TITLES)))).scalars())
    return [ds for ds in found if str(ds.SOPInstanceUID) not in notes]


def store_rejection_notes(notes: Sequence[Dataset], *, node=None, archive=None, calling_aet: str = "IHE",
                          timeout: float = 30, tls=None) -> None:
    """RAD-66 Rejection Note Stored: C-STORE to the Image Manager ``node``, or into the local ``archive``."""
    from ihecli.kos.send import send_documents, store_documents

    if node is not None:
        send_documents(node, notes, calling_aet=calling_aet, timeout=timeout, tls=tls)
    else:
        store_documents(archive, notes)
