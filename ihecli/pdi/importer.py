"""Portable Media Importer (IHE PDI, RAD-47; import reconciliation as in IRWF): reads a medium
(ihecli.pdi.media), reconciles patient and order attributes to local values, and stores the
objects in the local archive (through Archive.store, so an object reported stored is fsynced
and indexed) or sends them to a node with C-STORE.

Reconciled objects keep what they said before: the replaced values in Original Attributes
Sequence (0400,0561, reason COERCE) and the medium's patient ID in Other Patient IDs Sequence
(0010,1002). Study, series and SOP Instance UIDs are kept unless the local archive already
holds them for another patient or study; then new UIDs are made, and the old ones kept in
Original Attributes Sequence too. A new UID is derived from the old one and the local patient
(derived_uid), so importing the same medium again gives the same UIDs: the archive finds them
already there, and refuses those rejected since (IOCM).

Reconciliation never merges patients: one --patient-id, or --match-local finding one local
patient, for objects of several patients of the medium is refused before anything is stored.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from ihecli.atna import dicom as audit_dicom
from ihecli.errors import ArchiveError, IheError, UsageError
from ihecli.pdi.media import Found, Medium, Survey, iter_objects

MODIFYING_SYSTEM = "IHE_CLI"
# the namespace of the UUIDs (RFC 9562, version 5) that new UIDs are made of (2.25.<UUID as an integer>)
UID_NAMESPACE = uuid.UUID("3f1c6c1e-5a0b-5d5e-9c1e-4f0a9d2b7e61")


def derived_uid(uid: str, study: str, owner: tuple[str, str]) -> str:
    """The new UID of ``uid`` (of the medium's study ``study``) for the local patient ``owner``
    (Patient ID, issuer): the same on every import, different for another patient or study."""
    name = f"{uid}|{study}|{owner[0]}|{owner[1]}"
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


@dataclass
class Target:
    """Local values the medium's patient (and order) attributes are changed to."""

    patient_id: str
    issuer: str | None = None
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    accession: str | None = None


@dataclass
class MediaPatient:
    """One patient as the medium names it."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    objects: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.patient_id, self.issuer


@dataclass
class Candidate:
    """A local patient that may be the medium's patient."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str
    score: int  # 2 for the same ID, 1 each for the same name and the same birth date
    matches: list[str] = field(default_factory=list)


@dataclass
class ImportedObject:
    path: str
    outcome: str  # stored, duplicate, overwritten, planned, skipped, failed, dangling, refused
    reason: str = ""
    sop_uid: str | None = None
    sop_class: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    new_uids: bool = False


@dataclass
class ImportReport:
    source: str
    kind: str
    destination: str
    dry_run: bool = False
    dicomdirs: list[str] = field(default_factory=list)
    fileset_id: str = ""
    notes: list[str] = field(default_factory=list)
    reconciled: list[dict] = field(default_factory=list)  # {"from": {...}, "to": {...}}
    objects: list[ImportedObject] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    def count(self) -> None:
        c: dict[str, int] = {}
        for o in self.objects:
            c[o.outcome] = c.get(o.outcome, 0) + 1
        c["files_skipped"] = len(self.skipped_files)
        self.counts = c

    @property
    def ok(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("stored", "duplicate", "overwritten", "planned"))

    @property
    def problems(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("failed", "dangling", "refused"))


def media_patients(survey: Survey) -> list[MediaPatient]:
    out: dict[tuple[str, str], MediaPatient] = {}
    for f in survey.objects:
        if f.info is None or f.status != "ok":
            continue
        i = f.info
        key = (i.patient_id or "", i.issuer or "")
        mp = out.get(key)
        if mp is None:
            mp = out[key] = MediaPatient(key[0], key[1], i.patient_name or "", i.birth_date or "")
        mp.objects += 1
    return list(out.values())


def _name_key(name: str) -> str:
    """A person name compared loosely: its first (alphabetic) group, case and accents folded,
    blanks and empty trailing components dropped (DOE^JOHN^^ is Doe^John)."""
    from ihecli.archive.ingest import fold

    parts = [" ".join(c.split()) for c in (name or "").split("=")[0].split("^")]
    while parts and not parts[-1]:
        parts.pop()
    return fold("^".join(parts)) or ""


def source_patients(survey: Survey) -> dict[tuple[str, str], list[str]]:
    """The medium's patients: (Patient ID, issuer) -> the names its objects give that patient
    (one each, compared loosely; an object without a name is taken for any of them)."""
    names: dict[tuple[str, str], dict[str, str]] = {}
    for f in survey.objects:
        if f.info is None or f.status != "ok":
            continue
        i = f.info
        seen = names.setdefault((i.patient_id or "", i.issuer or ""), {})
        if i.patient_name and _name_key(i.patient_name):
            seen.setdefault(_name_key(i.patient_name), i.patient_name)
    return {k: list(v.values()) or [""] for k, v in names.items()}


def _who(key: tuple[str, str], name: str) -> str:
    return f"ID {key[0] or '-'}{' (' + key[1] + ')' if key[1] else ''} {name or 'unnamed'}"


def check_no_merge(sources: dict[tuple[str, str], list[str]], owner: Callable[[tuple[str, str]], tuple | None],
                   how: str) -> None:
    """Refuse (UsageError) reconciling objects of several patients of the medium to one local
    patient: that is a patient merge, not an import. ``owner(key)`` is the local patient (ID,
    issuer) the medium's patient ``key`` would get, or None when it keeps its own."""
    total = sum(len(v) for v in sources.values())
    by_owner: dict[tuple, list[str]] = {}
    for key, names in sources.items():
        o = owner(key)
        if o is not None:
            by_owner.setdefault(tuple(o), []).extend(_who(key, n) for n in names)
    for o, who in by_owner.items():
        if len(who) < 2:
            continue
        shown = "; ".join(who[:4]) + (f"; and {len(who) - 4} more" if len(who) > 4 else "")
        local = f"{o[0]}{' (' + o[1] + ')' if o[1] else ''}"
        them = "them" if len(who) == total else f"{len(who)} of them"
        raise UsageError(f"the medium holds {total} patients ({shown}): {how} would merge {them} into the one "
                         f"local patient {local}; nothing imported (pdi import cannot take one patient of a "
                         "medium): import without --patient-id, each keeping the medium's ID"
                         + ("" if how == "--match-local" else ", or with --match-local"))


def local_candidates(archive, mp: MediaPatient) -> list[Candidate]:
    """Local patients with the medium patient's ID, or name and birth date, best first."""
    from pydicom.dataset import Dataset

    from ihecli.archive.ingest import fold

    rows: dict[tuple[str, str], Dataset] = {}

    def query(**keys):
        ident = Dataset()
        ident.QueryRetrieveLevel = "PATIENT"
        for kw in ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"):
            setattr(ident, kw, keys.get(kw, ""))
        for r in archive.find(ident, "patient"):
            rows[(str(r.get("PatientID", "") or ""), str(r.get("IssuerOfPatientID", "") or ""))] = r

    if mp.patient_id:
        query(PatientID=mp.patient_id)
    if mp.birth_date:
        query(PatientBirthDate=mp.birth_date)
    family = (mp.name.split("^")[0] if mp.name else "").strip()
    if family and "*" not in family and "?" not in family:
        query(PatientName=family + "*")
    out = []
    for (pid, issuer), r in rows.items():
        name, birth = str(r.get("PatientName", "") or ""), str(r.get("PatientBirthDate", "") or "")
        matches = []
        if mp.patient_id and pid == mp.patient_id:
            matches.append("ID")
        if mp.name and fold(name.replace("^", " ").strip()) == fold(mp.name.replace("^", " ").strip()):
            matches.append("name")
        if mp.birth_date and birth == mp.birth_date:
            matches.append("birth date")
        score = 2 * ("ID" in matches) + ("name" in matches) + ("birth date" in matches)
        if score >= 2:
            out.append(Candidate(pid, issuer, name, birth, str(r.get("PatientSex", "") or ""), score, matches))
    out.sort(key=lambda c: (-c.score, c.patient_id))
    return out


def match_local(archive, patients: list[MediaPatient], *, yes: bool,
                choose: Callable[[MediaPatient, list[Candidate]], Candidate | None] | None
                ) -> dict[tuple[str, str], Target]:
    """A local patient for each medium patient (by ID, name and birth date).

    A sole candidate that agrees on all three is taken; otherwise ``choose`` asks the user, or
    with ``yes`` the single best candidate is taken. No candidate, or no single best one with
    ``yes`` and no way to ask, is an error.
    """
    out: dict[tuple[str, str], Target] = {}
    for mp in patients:
        cands = local_candidates(archive, mp)
        who = f"{mp.name or 'unnamed'} (ID {mp.patient_id or '-'}, born {mp.birth_date or '-'})"
        if not cands:
            raise IheError(f"no local patient matches {who}: give --patient-id")
        best = cands[0]
        unique_best = len(cands) == 1 or cands[1].score < best.score
        if len(cands) == 1 and best.score == 4:
            pick = best
        elif yes:
            if not unique_best:
                raise IheError(f"{len(cands)} local patients match {who} equally well: give --patient-id")
            pick = best
        elif choose is not None:
            pick = choose(mp, cands)
            if pick is None:
                raise IheError(f"no local patient chosen for {who}")
        else:
            raise UsageError(f"the match for {who} needs a confirmation: run on a terminal, add --yes, "
                             "or give --patient-id")
        out[mp.key] = Target(pick.patient_id, pick.issuer or None, pick.name or None, pick.birth_date or None,
                             pick.sex or None)
    return out


def _dt_now() -> str:
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")


# a reference to these, inside a study given new UIDs, is to an object of that study: it gets the
# new UID that object gets (whether or not the object was met yet)
_STUDY_MEMBERS = frozenset({"ReferencedSOPInstanceUID", "SeriesInstanceUID"})


def _remap_references(seq, study: str, lookup: Callable[[str, str, str], str | None], seq_keyword: str = "",
                      apply: bool = True) -> bool:
    """Replace, in the items of ``seq`` and their sequences, every UID that ``lookup(study,
    keyword, uid)`` maps (an item's own StudyInstanceUID is the study its references are in).
    Returns whether anything changed (would change, with ``apply`` false)."""
    changed = False
    for item in seq:
        ctx = str(item.get("StudyInstanceUID", "") or "") or study
        for elem in item:
            if elem.VR == "SQ":
                changed |= _remap_references(elem.value, ctx, lookup, elem.keyword, apply)
            elif elem.VR == "UI" and elem.value:
                # a Referenced Study Sequence names a study, which may be another one: only its own map counts
                kw = "" if seq_keyword == "ReferencedStudySequence" else elem.keyword
                values = list(elem.value) if elem.VM > 1 else [elem.value]
                new = [lookup(ctx, kw, str(v)) or str(v) for v in values]
                if new != [str(v) for v in values]:
                    if not apply:
                        return True
                    elem.value = new if elem.VM > 1 else new[0]
                    changed = True
    return changed


def reference_lookup(uid_maps: dict[tuple, dict[str, str]], owner: tuple) -> Callable[[str, str, str], str | None]:
    """The new UID of a referenced object, from the maps of ``owner``'s studies (see _collisions)."""

    def lookup(study: str, keyword: str, uid: str) -> str | None:
        m = uid_maps.get((owner, study))
        if not m:
            return None
        new = m.get(uid)
        if new is None and study in m and keyword in _STUDY_MEMBERS:
            new = m.setdefault(uid, derived_uid(uid, study, owner))
        return new
    return lookup


def reconcile_dataset(ds, target: Target | None, uid_map: dict[str, str], source: str,
                      references: Callable[[str, str, str], str | None] | None = None) -> bool:
    """Coerce a dataset to local values; keep what it said before. Returns whether it changed.

    ``references``: the new UIDs of referenced objects (reference_lookup): a Key Object
    Selection, a presentation state or an image that names an object given new UIDs names its
    new UIDs; the sequences as they were go into the Original Attributes Sequence."""
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    changes: list[tuple[str, object]] = []
    study = str(ds.get("StudyInstanceUID", "") or "")
    if references is not None:
        for elem in list(ds):
            if elem.VR == "SQ" and elem.keyword != "OriginalAttributesSequence" and elem.value \
                    and _remap_references(elem.value, study, references, elem.keyword, apply=False):
                changes.append((elem.keyword, copy.deepcopy(elem.value)))  # as it was
                _remap_references(elem.value, study, references, elem.keyword)

    def coerce(kw: str, new) -> None:
        if new is None:
            return
        old = ds.get(kw)
        old_v = None if old is None else old
        if str(old_v or "") != str(new):
            changes.append((kw, old_v))
            setattr(ds, kw, new)

    old_pid, old_issuer = str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or "")
    if target is not None and _needs_utf8(ds, (target.patient_id, target.issuer, target.name, target.accession)):
        # local values the object's character set cannot write (a Polish name on a medium in
        # Latin-1 or without one): the object moves to UTF-8, its values decoded first, before
        # the new ones are set (a name keeps the character set it was set under)
        old_cs = ds.get("SpecificCharacterSet")
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
        changes.append(("SpecificCharacterSet", old_cs))
    if target is not None:
        coerce("PatientID", target.patient_id)
        if target.issuer is not None or "IssuerOfPatientID" in ds:
            coerce("IssuerOfPatientID", target.issuer or "")
        coerce("PatientName", target.name)
        coerce("PatientBirthDate", target.birth_date)
        coerce("PatientSex", target.sex)
        coerce("AccessionNumber", target.accession)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        old = str(ds.get(kw, "") or "")
        if old in uid_map:
            coerce(kw, uid_map[old])
    if not changes:
        return False
    if any(k == "SOPInstanceUID" for k, _ in changes):
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    modified = Dataset()
    for kw, old in changes:
        setattr(modified, kw, old if old is not None else "")
    item = Dataset()
    item.AttributeModificationDateTime = _dt_now()
    item.ModifiedAttributesSequence = Sequence([modified])
    item.ModifyingSystem = MODIFYING_SYSTEM
    item.ReasonForTheAttributeModification = "COERCE"
    item.SourceOfPreviousValues = source[:64]
    seq = ds.get("OriginalAttributesSequence") or Sequence()
    seq.append(item)
    ds.OriginalAttributesSequence = seq
    if any(k == "PatientID" for k, _ in changes) and old_pid:
        other = Dataset()
        other.PatientID = old_pid
        if old_issuer:
            other.IssuerOfPatientID = old_issuer
        other.TypeOfPatientID = "TEXT"
        seq = ds.get("OtherPatientIDsSequence") or Sequence()
        if not any(str(x.get("PatientID", "")) == old_pid and str(x.get("IssuerOfPatientID", "") or "") == old_issuer
                   for x in seq):
            seq.append(other)
        ds.OtherPatientIDsSequence = seq
    return True


def _needs_utf8(ds, values) -> bool:
    """Whether text values cannot be written in the data set's Specific Character Set."""
    texts = [str(x) for x in values if x]
    if all(t.isascii() for t in texts):
        return False
    from pydicom.charset import python_encoding

    scs = ds.get("SpecificCharacterSet")
    terms = [str(t).strip() for t in ([scs] if isinstance(scs, str) else list(scs or [])) if t and str(t).strip()]
    if len(terms) != 1:  # the default repertoire, or ISO 2022 code extensions
        return True
    if terms[0] == "ISO_IR 192":
        return False
    codec = python_encoding.get(terms[0])
    try:
        for t in texts:
            t.encode(codec)
    except (TypeError, LookupError, UnicodeError):
        return True
    return False


_LITTLE_ENDIAN_PLAIN = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # syntax -> implicit VR


def _pixel_tail(ds, data: bytes, at: int) -> int | None:
    """Where the top-level pixel data begins in ``data`` when the header read up to it can be
    written again and the rest appended as it is: a little-endian syntax, not deflated, the data
    set encoded as its file meta says; None when the whole object must be read."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if not ts or ts == "1.2.840.10008.1.2.1.99" or ts == "1.2.840.10008.1.2.2":
        return None
    implicit = _LITTLE_ENDIAN_PLAIN.get(ts, False)  # the compressed syntaxes are explicit VR little endian
    enc = getattr(ds, "original_encoding", None)
    if enc is not None and tuple(enc) != (implicit, True):
        return None
    if data[at:at + 4] not in (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00"):
        return None  # no pixel data: the header is the whole object
    return at


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _collisions(archive, batch: list[Found], owner_of: Callable[[Found], tuple[str, str]],
                uid_maps: dict[tuple, dict[str, str]], claimed: tuple[dict, dict]) -> None:
    """New UIDs for studies, with their series and instances, and for instances that the local
    archive holds for another patient or in another study.

    The new UIDs go into ``uid_maps[(owner, study UID on the medium)]``: a medium that gives
    one study UID to two patients keeps it for the first and maps it for the second only. A UID
    mapped once stays mapped, so a study met over several batches keeps one new UID.
    ``claimed`` holds what this import stores ({study: owner}, {SOP instance: (study, owner)},
    final UIDs) and takes the batch's objects in turn: the objects met before count as held
    whether or not their batch is in the archive yet (batches are stored while the next ones are
    read), and so do those met before in the same batch. A new UID is derived_uid's."""
    objs = [f for f in batch if f.info is not None and f.status == "ok"]
    if archive is None or not objs:
        return
    studies, sops = claimed
    study_owner, sop_owner = archive.uid_owners({f.info.study_uid for f in objs if f.info.study_uid not in studies},
                                                {f.info.sop_uid for f in objs if f.info.sop_uid not in sops})
    for f in objs:
        i = f.info
        owner = owner_of(f)
        m = uid_maps.setdefault((owner, i.study_uid), {})
        held = studies.get(i.study_uid) or study_owner.get(i.study_uid)
        if held is not None and held != owner:
            m.setdefault(i.study_uid, derived_uid(i.study_uid, i.study_uid, owner))
        if i.study_uid in m:
            m.setdefault(i.series_uid, derived_uid(i.series_uid, i.study_uid, owner))
            m.setdefault(i.sop_uid, derived_uid(i.sop_uid, i.study_uid, owner))
        else:
            where = sops.get(i.sop_uid) or sop_owner.get(i.sop_uid)
            if where is not None and (where[0] != i.study_uid or where[1:] != owner):
                m.setdefault(i.sop_uid, derived_uid(i.sop_uid, i.study_uid, owner))
        study = m.get(i.study_uid, i.study_uid)
        studies.setdefault(study, owner)
        sops.setdefault(m.get(i.sop_uid, i.sop_uid), (study, *owner))


BATCH = 64  # objects whose UIDs are checked against the archive in one query, stored in one commit
BATCH_BYTES = 4 << 20  # and at most this much of them held at once (3 batches): memory stays flat


def import_media(medium: Medium, *, archive=None, node=None, calling_aet: str = "IHE", timeout: float = 30,
                 patient_id: str | None = None, issuer: str | None = None, name: str | None = None,
                 accession: str | None = None, match: bool = False, yes: bool = False,
                 choose: Callable[[MediaPatient, list[Candidate]], Candidate | None] | None = None,
                 dry_run: bool = False,
                 progress: Callable[[int], None] | None = None, tls=None) -> ImportReport:
    """Import a medium into the local archive, or send it to ``node`` (RAD-47, Importer).

    Objects are read once each and stored a batch at a time (Archive.store_many: the files
    fsynced together, one index commit per batch), each batch while the next one is read;
    ``progress(1)`` per object. With --match-local or --accession the headers are surveyed
    first (the patients and studies must be known before anything is stored).
    """
    t0 = time.perf_counter()
    if node is None and archive is None:
        raise UsageError("nowhere to import to")
    if match and patient_id:
        raise UsageError("give --patient-id or --match-local, not both")
    if (issuer or name) and not patient_id:
        raise UsageError("--issuer and --patient-name go with --patient-id (the local patient the objects are given to)")
    if match and archive is None:
        raise UsageError("--match-local needs the local archive")
    report = ImportReport(medium.name, medium.kind, str(node) if node is not None else "archive", dry_run)
    targets: dict[tuple[str, str], Target] = {}
    default: Target | None = None
    if patient_id:
        default = Target(patient_id, issuer, name, accession=accession)
    if match or accession or patient_id:
        # the patients and studies of the medium are known before anything is stored
        pre = Survey(medium.name, medium.kind)
        for _ in iter_objects(medium, pre):
            pass
        sources = source_patients(pre)
        if default is not None:
            check_no_merge(sources, lambda _key: (default.patient_id, default.issuer or ""),
                           f"--patient-id {default.patient_id}")
        studies = {f.info.study_uid for f in pre.objects if f.info is not None and f.status == "ok"}
        if accession and len(studies) > 1:
            raise UsageError(f"--accession applies to one study; the medium holds {len(studies)}")
        patients = media_patients(pre)
        if match:
            targets = match_local(archive, patients, yes=yes, choose=choose)
            check_no_merge(sources, lambda key: (targets[key].patient_id, targets[key].issuer or "")
                           if key in targets else None, "--match-local")
        elif not patient_id:
            targets = {mp.key: Target(mp.patient_id, mp.issuer or None) for mp in patients}
        for t in targets.values():
            t.accession = accession
    seen_patients: set[tuple[str, str]] = set()

    def owner_of(f: Found) -> tuple[str, str]:
        t = targets.get((f.info.patient_id or "", f.info.issuer or "")) or default
        if t is not None:
            return t.patient_id, t.issuer or ""
        return f.info.patient_id or "", f.info.issuer or ""

    def note_patient(f: Found) -> None:
        i = f.info
        key = (i.patient_id or "", i.issuer or "")
        if key in seen_patients:
            return
        seen_patients.add(key)
        t = targets.get(key) or default
        if t is not None:
            report.reconciled.append({"from": {"PatientID": i.patient_id or "", "IssuerOfPatientID": i.issuer or "",
                                               "PatientName": i.patient_name, "PatientBirthDate": i.birth_date},
                                      "to": {"PatientID": t.patient_id, "IssuerOfPatientID": t.issuer or "",
                                             "PatientName": t.name, "PatientBirthDate": t.birth_date,
                                             "AccessionNumber": t.accession}})

    survey = Survey(medium.name, medium.kind)
    uid_maps: dict[tuple, dict[str, str]] = {}  # (owner, study UID on the medium) -> {old UID: new UID}
    remapped: set[tuple] = set()  # the owners some of whose UIDs are mapped
    lock = threading.Lock()
    staging = tempfile.mkdtemp(prefix="ihe-pdi-import-") if node is not None and not dry_run else None
    to_send: list[tuple[str, ImportedObject]] = []
    results: list[ImportedObject] = []

    from ihecli.archive.ingest import ensure_part10

    rewritten: set[int] = set()  # the objects reconciliation re-encoded (ids of their ImportedObject)

    def prepare(f: Found, data: bytes) -> tuple[ImportedObject, bytes | None]:
        i = f.info
        o = ImportedObject(f.path, "planned", f.reason, i.sop_uid, i.sop_class, i.patient_id, i.study_uid)
        target = targets.get((i.patient_id or "", i.issuer or "")) or default
        owner = owner_of(f)
        uid_map = uid_maps.get((owner, i.study_uid), {})
        remapping = owner in remapped  # some of the owner's UIDs are new: references to them may be here
        needs = target is not None or remapping or i.sop_uid in uid_map or i.study_uid in uid_map
        try:
            data = ensure_part10(data)
        except ArchiveError as e:
            o.outcome, o.reason = "failed", str(e)
            return o, None
        if needs:
            import pydicom

            try:
                fp = io.BytesIO(data)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
                tail = _pixel_tail(ds, data, fp.tell())
                if tail is None:  # the whole object through pydicom
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds = pydicom.dcmread(io.BytesIO(data), force=True)
                if reconcile_dataset(ds, target, uid_map, source,
                                     reference_lookup(uid_maps, owner) if remapping else None):
                    # the new header, and the pixel data as it was (never decoded nor copied twice:
                    # objects of gigabytes exist)
                    data = _encode(ds) if tail is None else b"".join((_encode(ds), memoryview(data)[tail:]))
                    rewritten.add(id(o))
                    o.patient_id = str(ds.get("PatientID", "") or "")
                    o.new_uids = str(ds.SOPInstanceUID) != i.sop_uid or str(ds.StudyInstanceUID) != i.study_uid
                    o.sop_uid, o.study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
            except Exception as e:
                o.outcome, o.reason = "failed", f"cannot reconcile: {type(e).__name__}: {e}"
                return o, None
        return o, data

    def store_batch(objs: list[tuple[ImportedObject, bytes]]) -> None:
        # the files written and fsynced together, the index rows committed in one transaction
        from ihecli.workflow.iocm import SUBSEQUENT_OCCURRENCE_OF_REJECTED

        outcomes = archive.store_many([data for _o, data in objs]) if objs else []
        for (o, data), out in zip(objs, outcomes):
            if isinstance(out, ArchiveError):
                # an instance rejected (IOCM) is refused; it stays rejected however often it comes
                o.outcome = "refused" if out.status == SUBSEQUENT_OCCURRENCE_OF_REJECTED else "failed"
                o.reason = str(out)
            else:
                o.outcome = out.outcome
                with lock:
                    report.bytes += len(data)
            if progress:
                progress(1)

    source = f"{os.path.basename(str(medium.name).rstrip('/')) or 'media'} (media)"
    # two batches are stored at a time (one parses while the other waits for its fsyncs and
    # commit) while the next is read from the medium
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ihe-pdi-import") \
        if (archive is not None and node is None and not dry_run) else None
    storing: list = []  # the futures of the batches being stored, oldest first
    claimed: tuple[dict, dict] = ({}, {})

    def handle(batch: list[tuple[Found, bytes | None]]) -> None:
        _collisions(archive, [f for f, _ in batch], owner_of, uid_maps, claimed)
        remapped.update(k[0] for k, m in uid_maps.items() if m)
        to_store: list[tuple[ImportedObject, bytes]] = []
        planned: list[ImportedObject] = []
        for f, data in batch:
            if f.status != "ok" or f.info is None or data is None:
                outcome = {"dangling": "dangling", "refused": "refused", "unsupported": "skipped",
                           "directory": "skipped"}.get(f.status, "failed")
                ref = f.ref
                results.append(ImportedObject(
                    f.path, outcome, f.reason, f.info.sop_uid if f.info else (ref.sop_uid if ref else None),
                    f.info.sop_class if f.info else (ref.sop_class if ref else None),
                    f.info.patient_id if f.info else (ref.patient_id if ref else None),
                    f.info.study_uid if f.info else (ref.study_uid if ref else None)))
                if progress:
                    progress(1)
                continue
            note_patient(f)
            o, encoded = prepare(f, data)
            results.append(o)
            if encoded is None:
                if progress:
                    progress(1)
            elif dry_run:
                planned.append(o)
                if progress:
                    progress(1)
            elif node is not None:
                p = os.path.join(staging, f"{len(to_send):08d}.dcm")
                with open(p, "wb") as fh:
                    fh.write(encoded)
                to_send.append((p, o))
            else:
                to_store.append((o, encoded))
        if planned and archive is not None:  # by the UIDs they would be stored with (new ones too)
            from sqlalchemy import select

            from ihecli.archive.tables_workflow import rejected

            uids = {o.sop_uid for o in planned if o.sop_uid}
            _, known = archive.uid_owners((), uids)
            with archive.connect() as conn:  # a batch's UIDs: one query
                gone = {r[0] for r in conn.execute(select(rejected.c.sop_uid).where(rejected.c.sop_uid.in_(uids)))}
            for o in planned:  # counted as what storing them would come to
                why = "already in the archive" if o.sop_uid in known else \
                    "rejected in the archive (IOCM): would be refused" if o.sop_uid in gone else ""
                if why:
                    o.outcome = "duplicate" if o.sop_uid in known else "refused"
                    o.reason = (o.reason + "; " if o.reason else "") + why
        if to_store and archive.writer.duplicates == "keep":
            # a reconciled object differs from the copy an earlier import of the medium stored (the
            # time of the modification, at least): the archive would keep that copy and warn of a
            # conflict for each; it is simply already there
            mine = {o.sop_uid for o, _ in to_store if id(o) in rewritten}
            _, known = archive.uid_owners((), mine) if mine else ((), {})
            for o, _ in to_store:
                if id(o) in rewritten and o.sop_uid in known:
                    o.outcome = "duplicate"
                    if progress:
                        progress(1)
            to_store = [(o, d) for o, d in to_store if o.outcome != "duplicate"]
        if to_store:
            while len(storing) >= 2:  # bounded: memory stays flat
                storing.pop(0).result()
            storing.append(pool.submit(store_batch, to_store))

    try:
        batch: list[tuple[Found, bytes | None]] = []
        held = 0
        for item in iter_objects(medium, survey, whole=True):
            batch.append(item)
            held += len(item[1] or b"")
            if len(batch) >= BATCH or held >= BATCH_BYTES:
                handle(batch)
                batch, held = [], 0
        handle(batch)
        while storing:
            storing.pop(0).result()
        if node is not None and to_send:
            _send(node, to_send, calling_aet, timeout, report, progress, tls)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    report.dicomdirs, report.fileset_id, report.notes = survey.dicomdirs, survey.fileset_id, survey.notes
    report.skipped_files = survey.skipped
    new = sum(1 for o in results if o.new_uids)
    if new:
        report.notes.append(f"{new} object{'' if new == 1 else 's'} got new UIDs"
                            f" (the same on every import of them for this patient): the "
                            "local archive, or other objects of the medium, hold their UIDs for other data")
    report.objects = results
    report.count()
    report.seconds = round(time.perf_counter() - t0, 3)
    if not dry_run:  # Import (ITI-20 audit trail)
        audit_dicom.media_imported(medium.kind, report.fileset_id or medium.name,
                                   ((o.study_uid or "", o.patient_id or "", o.sop_class or "") for o in results
                                    if o.outcome in ("stored", "duplicate", "overwritten", "sent")), failed=report.problems)
    return report


def _send(node, to_send: list[tuple[str, ImportedObject]], calling_aet: str, timeout: float,
          report: ImportReport, progress, tls=None) -> None:
    from ihecli.dicom import scu

    by_path = {p: o for p, o in to_send}
    failed: dict[str, str] = {}

    def step(path: str, outcome: str) -> None:
        if progress:
            progress(1)

    rep = scu.store(node, [p for p, _ in to_send], calling_aet=calling_aet, timeout=timeout, progress=step,
                    tls=tls)
    for ff in rep.failed:
        failed[ff.path] = ff.reason + (f" (status 0x{ff.status:04X})" if ff.status is not None else "")
    for p, o in by_path.items():
        if p in failed:
            o.outcome, o.reason = "failed", failed[p]
        else:
            o.outcome = "sent"
            report.bytes += os.path.getsize(p)
