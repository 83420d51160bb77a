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
import struct
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
from ihecli.archive.scan import read_meta

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
    item = _history_item(stored, modifying_system, when)
    fast = _spliced(stored, changed, current, item)
    if fast is not None:
        return fast
    ds = stored.decoded() if hasattr(stored, "decoded") else stored
    texts = [current.name or "", current.pid, current.issuer]
    if not all(x.isascii() for x in texts):
        cs = ds.get("SpecificCharacterSet")
        if cs is None or "ISO_IR 192" not in ([cs] if isinstance(cs, str) else list(cs)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.decode()  # every text value to str in its own character set, before that changes
            ds.SpecificCharacterSet = "ISO_IR 192"  # the values are str now: written again in UTF-8
    original = Dataset()
    for kw, tag, vr, _col in PATIENT_ATTRIBUTES:
        if kw not in changed:
            continue
        if tag in ds:
            original.add(ds[tag])
        else:
            original.add_new(tag, vr, None)
    apply_patient(ds, current, changed)
    item.ModifiedAttributesSequence = Sequence([original])
    seq = ds.get("OriginalAttributesSequence")
    items = list(seq.value) if seq is not None else []
    ds.OriginalAttributesSequence = Sequence([*items, item])
    return ds


def _history_item(stored: Dataset, modifying_system: str, when: datetime | None) -> Dataset:
    """An Original Attributes Sequence item, without its Modified Attributes Sequence yet."""
    item = Dataset()
    item.AttributeModificationDateTime = (when or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S.%f+0000")
    item.ModifyingSystem = modifying_system[:64]
    meta = getattr(stored, "file_meta", None)
    source = str(getattr(meta, "SourceApplicationEntityTitle", "") or "").strip()
    if not source and hasattr(stored, "_path"):  # the index's UIDs stood in for the file meta: read it
        try:
            with open(stored._path, "rb") as fh:
                got = read_meta(fh.read(4096))
            source = str(got[0].get("SourceApplicationEntityTitle", "") or "").strip() if got else ""
        except OSError:
            source = ""
    item.SourceOfPreviousValues = source[:64]
    item.ReasonForTheAttributeModification = "CORRECT"
    return item


ORIGINAL_ATTRIBUTES = 0x04000561


class CoercedDataset(Dataset):
    """A stored instance with its patient attributes rewritten in its encoded bytes: sent as is
    (``encoded_as``) when the presentation context has the file's transfer syntax, decoded
    (``decoded``) otherwise, like ihecli.archive.server.StoredDataset."""

    def __init__(self, meta, body: bytes):
        super().__init__()
        self.file_meta = meta
        self.SOPClassUID = meta.MediaStorageSOPClassUID
        self.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        self._body = body

    def encoded_as(self, implicit: bool, little: bool, deflated: bool) -> bytes | None:
        ts = UID(self.file_meta.TransferSyntaxUID)
        if deflated or ts.is_deflated or (ts.is_implicit_VR, ts.is_little_endian) != (implicit, little):
            return None
        return self._body

    def decoded(self) -> Dataset:
        ts = UID(self.file_meta.TransferSyntaxUID)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(io.BytesIO(self._body), ts.is_implicit_VR, ts.is_little_endian)
        ds.file_meta = self.file_meta
        return ds


def _spliced(stored: Dataset, changed: list[str], current: CurrentPatient, item: Dataset) -> Dataset | None:
    """The coerced object made by rewriting only the patient elements and adding the Original
    Attributes Sequence in the stored bytes (no decoding of the rest); None when that is not
    simple: deflated data, group length elements, an Original Attributes Sequence already there,
    or new values outside the object's character set."""
    from pydicom.charset import convert_encodings
    from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
    from pydicom.tag import BaseTag
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    body = getattr(stored, "_body", None)
    meta = getattr(stored, "file_meta", None)
    ts = UID(str(getattr(meta, "TransferSyntaxUID", "") or "")) if meta is not None else None
    if body is None or not ts or ts.is_deflated:
        return None
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    looks_explicit = len(body) >= 6 and body[4:6].isalpha() and body[4:6].isupper()
    if looks_explicit == implicit:  # encoded otherwise than its transfer syntax says: let pydicom sort it out
        return None
    if not little:
        return None
    from ihecli.archive.scan import _element  # the archive's walker over element lengths (little endian)

    spans: list[tuple[int, int, int]] = []  # (tag, start, end) of the top-level elements before the sequence
    raws: dict[int, RawDataElement] = {}
    pos, n = 0, len(body)
    wanted = {tag for _kw, tag, _vr, _col in PATIENT_ATTRIBUTES} | {0x00080005}
    try:
        while pos + 8 <= n:
            group, elem = struct.unpack_from("<HH", body, pos)
            if (group << 16) | elem >= ORIGINAL_ATTRIBUTES:
                break
            tag, end, (vr, start, length) = _element(body, pos, implicit)
            if elem == 0 and group in (0x0008, 0x0010, 0x0400):
                return None  # a group length would no longer be right
            spans.append((tag, pos, end))
            if tag in wanted:
                raws[tag] = RawDataElement(BaseTag(tag), vr.decode("ascii") if vr else None, length,
                                           body[start:start + length], start, implicit, True)
            pos = end
    except Exception:  # anything odd: the decoding path copes
        return None
    head = body[pos:pos + 4]
    if len(head) == 4:
        group = int.from_bytes(head[:2], "little" if little else "big")
        elem = int.from_bytes(head[2:], "little" if little else "big")
        if (group << 16) | elem == ORIGINAL_ATTRIBUTES:
            return None  # earlier history: the decoding path appends to it
    cs_raw = raws.get(0x00080005)
    charset = None
    if cs_raw is not None:
        cs_elem = convert_raw_data_element(cs_raw)
        charset = cs_elem.value
    encodings = convert_encodings(charset)
    if not all(x.isascii() for x in (current.name or "", current.pid, current.issuer)):
        if not any(e in ("utf_8", "UTF8") for e in encodings):
            return None

    def encode(elem) -> bytes:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = little, implicit
        write_data_element(out, elem, encodings)
        return out.getvalue()

    original = Dataset()
    replace: dict[int, bytes] = {}
    for kw, tag, vr, col in PATIENT_ATTRIBUTES:
        if kw not in changed:
            continue
        if tag in raws:
            original.add(convert_raw_data_element(raws[tag], encoding=encodings))
        else:
            original.add_new(tag, vr, None)
        value = current.column(col)
        if value or tag in raws or kw == "PatientID":
            replace[tag] = encode(DataElement(tag, vr, value or None))
    item.ModifiedAttributesSequence = Sequence([original])
    replace[ORIGINAL_ATTRIBUTES] = encode(DataElement(ORIGINAL_ATTRIBUTES, "SQ", Sequence([item])))
    parts = []
    pending = sorted(replace.items())
    for tag, start, end in spans:
        while pending and pending[0][0] < tag:
            parts.append(pending.pop(0)[1])
        if pending and pending[0][0] == tag:
            parts.append(pending.pop(0)[1])
        else:
            parts.append(body[start:end])
    parts += [b for _t, b in pending]
    parts.append(body[pos:])
    return CoercedDataset(meta, b"".join(parts))


def part10(ds: Dataset) -> bytes:
    """A coerced object as a Part-10 file: the file meta and the data set, as ``coerce`` gave it
    (its encoded bytes when it kept them)."""
    from pydicom.filewriter import dcmwrite

    from ihecli.archive.ingest import part10 as with_meta

    body = getattr(ds, "_body", None)
    if body is not None:
        m = ds.file_meta
        return with_meta(body, str(m.MediaStorageSOPClassUID), str(m.MediaStorageSOPInstanceUID),
                         str(m.TransferSyntaxUID), str(m.get("SourceApplicationEntityTitle", "") or "") or None)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class Reconciler:
    """PIR for one export or retrieve of stored instances: which of their studies' patients HL7
    changed (one query, nothing more when none did), and the instances of those as Part-10
    bytes with the index's patient."""

    def __init__(self, archive, refs, *, modifying_system: str | None = None):
        self.current = reconciled_for(archive, refs)
        self.modifying_system = modifying_system or getattr(archive, "aet", None) or "IHE_ARCHIVE"

    def __bool__(self) -> bool:
        return bool(self.current)

    def part10(self, ref, path) -> bytes | None:
        """The instance with the index's patient, or None when it goes out as stored."""
        cur = self.current.get(ref.study_uid)
        if cur is None:
            return None
        from ihecli.archive.server import StoredDataset

        # an index row gives the file meta; any other reference (a study UID is all PIR needs) reads it
        stored = StoredDataset(path, ref if hasattr(ref, "transfer_syntax") else None)
        ds = coerce(stored, cur, modifying_system=self.modifying_system)
        return None if ds is stored else part10(ds)

    def patient_of(self, ref) -> CurrentPatient | None:
        return self.current.get(ref.study_uid)


def apply_patient(ds: Dataset, current: CurrentPatient, only: list[str] | None = None) -> Dataset:
    """``ds`` with the index's patient values (of the keywords ``only``, else all): an empty one
    set only where the attribute is there (Patient ID always is)."""
    for kw, tag, vr, col in PATIENT_ATTRIBUTES:
        if only is not None and kw not in only:
            continue
        value = current.column(col)
        if value or tag in ds or kw == "PatientID":
            ds.add_new(tag, vr, value or None)
    return ds


def reconciled_copies(archive, refs_paths, into, *, modifying_system: str | None = None) -> dict[str, str]:
    """For an export of stored instances (``refs_paths``: (InstanceRef, file path) pairs), the
    instances whose patient HL7 changed since they were stored, written again into the folder
    ``into`` with the index's patient (as C-MOVE sends them): SOP Instance UID -> the copy's
    path. The others are not in the answer: their files go out as they are."""
    import os

    refs_paths = list(refs_paths)
    rec = Reconciler(archive, [r for r, _ in refs_paths], modifying_system=modifying_system)
    out: dict[str, str] = {}
    if not rec:
        return out
    for ref, path in refs_paths:
        data = rec.part10(ref, path)
        if data is None:
            continue
        target = os.path.join(str(into), f"{len(out):08d}.dcm")
        with open(target, "wb") as fh:
            fh.write(data)
        out[ref.sop_uid] = target
    return out
