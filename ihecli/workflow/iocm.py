"""Imaging Object Change Management on the archive (IHE RAD TF IOCM): Rejection Note Stored (RAD-66).

A Key Object Selection Document titled 113001 (Rejected for Quality Reasons), 113037 (Rejected
for Patient Safety Reasons) or 113038 (Incorrect Modality Worklist Entry) hides the instances it
references: their index rows leave the query tables (so C-FIND, C-MOVE and C-GET no longer see
them and the study counts drop) and their files move to the storage's ``.rejected/`` folder.
113039 (Data Retention Policy Expired) deletes them. Either way each rejected SOP Instance UID is
remembered, and the archive refuses it if it is sent again. The note itself is stored like any
other object and stays queryable. Hiding on 113001 can be turned off (``hide_quality = False``):
the note is then only stored.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass

import pydicom
from sqlalchemy import bindparam, delete, insert, select, update

from ihecli.archive import _chunks, _recount
from ihecli.archive import schema as s
from ihecli.archive.index import now
from ihecli.archive.tables_workflow import rejected
from ihecli.errors import ArchiveError

log = logging.getLogger("ihe.workflow")

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
REJECTED_DIR = ".rejected"
#: C-STORE failure status for an instance a rejection note rejected (in the A7xx "refused" range)
SUBSEQUENT_OCCURRENCE_OF_REJECTED = 0xA771
# ihecli.kos.codes has them all; it is imported only when a note arrives (it builds pydicom's
# code dictionaries, a noticeable part of the archive's start-up)
QUALITY = "113001"  # Rejected for Quality Reasons
RETENTION_EXPIRED = "113039"  # Data Retention Policy Expired


@dataclass
class RejectionReport:
    note_uid: str
    code: str
    hidden: int = 0
    deleted: int = 0
    not_stored: int = 0  # referenced instances the archive never held (refused if they come)


Q_REJECTED = select(rejected.c.code).where(rejected.c.sop_uid == bindparam("sop_uid"))


def refuse_rejected(conn, parsed) -> ArchiveError | None:
    """Writer check (inside the index transaction): refuse an instance a rejection note rejected."""
    code = conn.execute(Q_REJECTED, {"sop_uid": parsed.sop_uid}).scalar()
    if code is None:
        return None
    from ihecli.kos import codes

    meaning = codes.REJECTION_TITLES.get(code)
    return ArchiveError(f"instance {parsed.sop_uid} was rejected ({code} {meaning.meaning if meaning else ''})"
                        .rstrip(), SUBSEQUENT_OCCURRENCE_OF_REJECTED)


def rejection_title(data: bytes) -> tuple[str, object] | None:
    """(code value, dataset) when Part-10 ``data`` is an IOCM rejection note, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            item = ds.ConceptNameCodeSequence[0]
            value, scheme = str(item.CodeValue), str(item.CodingSchemeDesignator)
        except Exception:
            return None
    from ihecli.kos import codes

    if not codes.is_rejection_title(value, scheme):
        return None
    return value, ds


def note_stored(archive, parsed, data: bytes, *, hide_quality: bool = True) -> RejectionReport | None:
    """Act on a stored object if it is a rejection note (RAD-66); None for anything else.

    Idempotent: a note stored again (or after a crash half-way) gives the same end state."""
    if parsed.sop_class != KOS_SOP_CLASS:
        return None
    found = rejection_title(data)
    if found is None:
        return None
    code, ds = found
    if code == QUALITY and not hide_quality:
        return RejectionReport(parsed.sop_uid, code)
    # who sent the note (the C-STORE's calling AE title, kept in the file meta), for the audit trail
    meta = getattr(ds, "file_meta", None)
    sender = str(meta.get("SourceApplicationEntityTitle", "") or "").strip() if meta is not None else ""
    from ihecli.kos.builder import read_kos

    try:
        info = read_kos(ds)
    except Exception as e:
        raise ArchiveError(f"unreadable rejection note: {e}", 0xC000) from None
    targets = {r.sop_uid: r for r in info.references if r.sop_uid and r.sop_uid != parsed.sop_uid}
    return reject(archive, parsed.sop_uid, code, targets, requester=sender)


def reject(archive, note_uid: str, code: str, targets: dict, *, requester: str = "") -> RejectionReport:
    """Hide (or, for 113039, delete) the instances ``targets`` names (SOP Instance UID -> reference
    with study_uid, series_uid, sop_class) and remember them as rejected. With an audit repository,
    each study that lost instances gets its audit event (``requester``: who sent the note)."""
    from ihecli import atna

    rep = RejectionReport(note_uid, code)
    delete_files = code == RETENTION_EXPIRED
    i = s.instances
    uids = sorted(targets)
    rows: dict[str, tuple] = {}
    earlier: dict[str, str | None] = {}
    audit = atna.enabled()
    affected: dict[str, tuple] = {}  # SOP Instance UID -> (study id, Study UID, patient ID), for the audit
    with archive.connect() as conn:
        for chunk in _chunks(uids, 500):
            for r in conn.execute(select(i.c.sop_uid, i.c.sop_class, i.c.path, i.c.series_fk)
                                  .where(i.c.sop_uid.in_(chunk))):
                rows[r.sop_uid] = (r.sop_class, r.path, r.series_fk)
            earlier.update((r.sop_uid, r.path) for r in conn.execute(
                select(rejected.c.sop_uid, rejected.c.path).where(rejected.c.sop_uid.in_(chunk))))
            if audit:
                affected.update(_studies_of(conn, chunk))
    # files of hidden instances move aside first: a crash before the commit leaves rows whose file
    # is gone, which `ihe archive check --repair` drops (the instances stay hidden either way)
    moved: list[tuple[str, str]] = []
    if not delete_files:
        try:
            for uid, (_cls, rel, _se) in rows.items():
                dest = f"{REJECTED_DIR}/{rel}"
                src_p, dst_p = archive.blobs.path(rel), archive.blobs.path(dest)
                dst_p.parent.mkdir(parents=True, exist_ok=True)
                if src_p.exists():
                    os.replace(src_p, dst_p)
                moved.append((rel, dest))
        except OSError as e:
            _move_back(archive, moved)
            raise ArchiveError(f"cannot move rejected files aside: {e}", 0xA700) from None
    t = now()
    try:
        with archive.engine.begin() as conn:
            series_ids = {se for (_c, _p, se) in rows.values()}
            for chunk in _chunks(sorted(rows), 500):
                conn.execute(delete(i).where(i.c.sop_uid.in_(chunk)))
            if series_ids:
                _recount(conn, series_ids)
            for uid in uids:
                ref = targets[uid]
                row = rows.get(uid)
                path = None if delete_files or row is None else f"{REJECTED_DIR}/{row[1]}"
                if uid in earlier:
                    values = {"code": code, "note_uid": note_uid}
                    if row is not None or delete_files:
                        values["path"] = path
                    conn.execute(update(rejected).where(rejected.c.sop_uid == uid).values(**values))
                else:
                    conn.execute(insert(rejected).values(
                        sop_uid=uid, sop_class=(row[0] if row else ref.sop_class)[:64] or None,
                        study_uid=ref.study_uid[:64] or None, series_uid=ref.series_uid[:64] or None,
                        code=code, note_uid=note_uid, path=path, rejected=t))
    except BaseException:
        _move_back(archive, moved)
        raise
    archive.writer.forget()
    if delete_files:
        for uid, (_c, rel, _se) in rows.items():
            archive.blobs.remove(rel)
        for uid, old in earlier.items():  # files kept by an earlier rejection go now
            if old:
                archive.blobs.remove(old)
        rep.deleted = len(rows)
    else:
        rep.hidden = len(rows)
    rep.not_stored = len([u for u in uids if u not in rows and u not in earlier])
    log.info("rejection note %s (%s): %d hidden, %d deleted, %d not stored", note_uid, code, rep.hidden,
             rep.deleted, rep.not_stored)
    if audit and rows:
        _audit(archive, code, rows, affected, requester=requester, erased=delete_files)
    return rep


def _studies_of(conn, uids) -> dict[str, tuple]:
    i, se, st, pa = s.instances, s.series, s.studies, s.patients
    q = (select(i.c.sop_uid, st.c.id, st.c.study_uid, pa.c.pid)
         .select_from(i.join(se, i.c.series_fk == se.c.id).join(st, se.c.study_fk == st.c.id)
                      .join(pa, st.c.patient_fk == pa.c.id)).where(i.c.sop_uid.in_(uids)))
    return {r.sop_uid: (r.id, r.study_uid, r.pid) for r in conn.execute(q)}


def _audit(archive, code: str, rows: dict, affected: dict, *, requester: str, erased: bool) -> None:
    """One audit event per study the note took instances from (RAD-66): DICOM Study Deleted when
    nothing but rejection notes is left of it, else DICOM Instances Accessed (delete)."""
    from sqlalchemy import func

    from ihecli import atna
    from ihecli.atna import events as ev
    from ihecli.kos import codes

    title = codes.REJECTION_TITLES.get(code)
    reason = ev.dcm(code, title.meaning if title else "Rejected")
    by_study: dict[int, dict] = {}
    for uid, (sop_class, _path, _se) in rows.items():
        where = affected.get(uid)
        if where is None:
            continue
        st = by_study.setdefault(where[0], {"uid": where[1], "pid": where[2], "classes": {}})
        st["classes"][sop_class] = st["classes"].get(sop_class, 0) + 1
    i, se = s.instances, s.series
    try:
        with archive.connect() as conn:
            for study_id, st in by_study.items():
                left = conn.execute(select(func.count()).select_from(i.join(se, i.c.series_fk == se.c.id))
                                    .where(se.c.study_fk == study_id, i.c.sop_class != KOS_SOP_CLASS)).scalar()
                atna.record(ev.instances_rejected(
                    requester=ev.Peer(requester or "unknown"), archive=ev.Peer.local(archive.aet),
                    study_uid=st["uid"], sop_classes=st["classes"], patient_id=st["pid"], reason=reason,
                    whole_study=not left, erased=erased))
    except Exception as e:  # the rejection is done; its audit event must not fail the store
        log.warning("rejection note: audit event not recorded: %s", e)


def _move_back(archive, moved: list[tuple[str, str]]) -> None:
    for rel, dest in moved:
        try:
            os.replace(archive.blobs.path(dest), archive.blobs.path(rel))
        except OSError:
            pass


def rejected_paths(conn) -> list[str]:
    """Files kept for hidden instances (relative to the storage folder)."""
    return list(conn.execute(select(rejected.c.path).where(rejected.c.path.isnot(None))).scalars())


def list_rejected(engine, limit: int | None = None) -> list[dict]:
    q = select(rejected).order_by(rejected.c.rejected.desc())
    if limit:
        q = q.limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
