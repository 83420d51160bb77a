"""Patient Information Reconciliation (PIR, RAD TF-1 4) on retrieve: instances sent by C-MOVE and
C-GET (RAD-16, RAD-17) carry the patient the index holds after HL7 updates and merges (RAD-12),
with the values they were stored with kept in the Original Attributes Sequence (0400,0561;
reason CORRECT).

Stored files are never rewritten. For a retrieve, ``reconciled_patients`` asks the index (one
query) for the patients of the selected studies that HL7 changed; an instance of any other
patient goes out as stored, undecoded. For the others ``coerce`` reads the stored patient
attributes (the header up to group 0010 only) and decodes the whole object only when they
differ from the index.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
from sqlalchemy import select

from ihecli.archive import schema as s
from ihecli.archive import tables_hl7 as t
from ihecli.archive.ingest import index_values

# keyword, tag, VR, index column
PATIENT_ATTRIBUTES = (
    ("PatientName", 0x00100010, "PN", "name"),
    ("PatientID", 0x00100020, "LO", "pid"),
    ("IssuerOfPatientID", 0x00100021, "LO", "issuer"),
    ("PatientBirthDate", 0x00100030, "DA", "birth_date"),
    ("PatientSex", 0x00100040, "CS", "sex"),
)


@dataclass(frozen=True)
class CurrentPatient:
    """The index's patient values (as ihecli.archive.ingest.index_values normalises them)."""

    pid: str
    issuer: str
    name: str | None
    birth_date: str | None
    sex: str | None

    def column(self, col: str):
        return getattr(self, col)


def reconciled_patients(conn, study_uids) -> dict[str, CurrentPatient]:
    """Study Instance UID -> current patient, for the given studies whose patient HL7 changed.
    Empty (and one cheap query) when HL7 changed none of them."""
    uids = sorted(set(study_uids))
    if not uids:
        return {}
    if conn.execute(select(t.hl7_reconciled.c.patient_fk).limit(1)).first() is None:
        return {}
    p, st, r = s.patients, s.studies, t.hl7_reconciled
    out: dict[str, CurrentPatient] = {}
    for k in range(0, len(uids), 500):
        q = (select(st.c.study_uid, p.c.pid, p.c.issuer, p.c.name, p.c.birth_date, p.c.sex)
             .select_from(st.join(p, st.c.patient_fk == p.c.id).join(r, r.c.patient_fk == p.c.id))
             .where(st.c.study_uid.in_(uids[k:k + 500])))
        for row in conn.execute(q):
            out[row.study_uid] = CurrentPatient(row.pid or "", row.issuer or "", row.name, row.birth_date, row.sex)
    return out


def reconciled_for(archive, refs) -> dict[str, CurrentPatient]:
    """``reconciled_patients`` for the InstanceRefs of a retrieve."""
    with archive.connect() as conn:
        return reconciled_patients(conn, (r.study_uid for r in refs))


def _stop_after_patient(tag, vr, length) -> bool:
    return tag > 0x0010FFFF


def stored_patient(stored: Dataset) -> dict:
    """The patient values of a stored object, normalised as the index stores them.

    For a StoredDataset (the file's encoded bytes) only the elements up to group 0010 are read."""
    body = getattr(stored, "_body", None)
    meta = getattr(stored, "file_meta", None)
    ts = UID(str(getattr(meta, "TransferSyntaxUID", "") or "")) if meta is not None else None
    if body is not None and ts and not ts.is_deflated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(io.BytesIO(body), ts.is_implicit_VR, ts.is_little_endian,
                              stop_when=_stop_after_patient)
    else:
        ds = stored.decoded() if hasattr(stored, "decoded") else stored
    return index_values(ds)[0]


def differences(stored_values: dict, current: CurrentPatient) -> list[str]:
    """Keywords of the patient attributes where the stored object and the index disagree."""
    out = []
    for kw, _tag, _vr, col in PATIENT_ATTRIBUTES:
        if (stored_values.get(col) or "") != (current.column(col) or ""):
            out.append(kw)
    return out


def coerce(stored: Dataset, current: CurrentPatient | None, *, modifying_system: str = "IHE_ARCHIVE",
           when: datetime | None = None) -> Dataset:
    """The object to send for a stored one: itself when its patient attributes agree with the
    index (or ``current`` is None), else the decoded object with the index's values and the
    stored ones in a new Original Attributes Sequence item."""
    if current is None:
        return stored
    changed = differences(stored_patient(stored), current)
    if not changed:
        return stored
    ds = stored.decoded() if hasattr(stored, "decoded") else stored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.decode()  # every text value to str in its own character set, before that may change
    original = Dataset()
    for kw, tag, vr, col in PATIENT_ATTRIBUTES:
        if kw not in changed:
            continue
        if tag in ds:
            original.add(ds[tag])
        else:
            original.add_new(tag, vr, None)
        value = current.column(col)
        if value or tag in ds or kw == "PatientID":
            ds.add_new(tag, vr, value or None)
    texts = [current.name or "", current.pid, current.issuer]
    if not all(x.isascii() for x in texts):
        cs = ds.get("SpecificCharacterSet")
        if cs is None or "ISO_IR 192" not in ([cs] if isinstance(cs, str) else list(cs)):
            ds.SpecificCharacterSet = "ISO_IR 192"  # the values are str now: written again in UTF-8
    item = Dataset()
    item.AttributeModificationDateTime = (when or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S.%f+0000")
    item.ModifyingSystem = modifying_system[:64]
    meta = getattr(ds, "file_meta", None)
    item.SourceOfPreviousValues = str(getattr(meta, "SourceApplicationEntityTitle", "") or "").strip()[:64]
    item.ReasonForTheAttributeModification = "CORRECT"
    item.ModifiedAttributesSequence = Sequence([original])
    seq = ds.get("OriginalAttributesSequence")
    items = list(seq.value) if seq is not None else []
    ds.OriginalAttributesSequence = Sequence([*items, item])
    return ds
