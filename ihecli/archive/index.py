"""The index database and its single writer.

Every store goes through one writer thread that batches what arrives together into one
transaction (group commit): concurrent associations share the cost of a commit, and a caller
is answered only after its row is committed and its file is in place and fsynced.
SQLite runs in WAL mode, so queries never wait for the writer.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, event, insert, select, update
from sqlalchemy.engine import Engine

from ihecli.archive import schema as s
from ihecli.archive.ingest import Parsed
from ihecli.archive.store import BlobStore
from ihecli.errors import ArchiveError

MAX_BATCH = 256


def make_engine(url: str) -> Engine:
    """An engine for the index; SQLite gets WAL, full sync and case-sensitive LIKE."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=8, max_overflow=16)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a commit that returned is on disk
            cur.execute("PRAGMA case_sensitive_like=ON")  # DICOM matching is case-sensitive
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class StoreOutcome:
    sop_uid: str
    outcome: str  # stored | duplicate | overwritten
    study_uid: str = ""


class _Job:
    __slots__ = ("parsed", "tmp", "rel", "done", "result", "error")

    def __init__(self, parsed: Parsed, tmp: Path, rel: str):
        self.parsed, self.tmp, self.rel = parsed, tmp, rel
        self.done = threading.Event()
        self.result: StoreOutcome | None = None
        self.error: BaseException | None = None


class Writer:
    """The one thread that writes the index (and places files just before committing)."""

    def __init__(self, engine: Engine, blobs: BlobStore, duplicates: str = "keep"):
        self.engine, self.blobs, self.duplicates = engine, blobs, duplicates
        self.q: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, parsed: Parsed, tmp: Path, rel: str) -> StoreOutcome:
        self._ensure_started()
        job = _Job(parsed, tmp, rel)
        self.q.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _ensure_started(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name="ihe-index-writer", daemon=True)
                    self.thread.start()

    def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.q.put(None)
            self.thread.join(timeout=30)
        self.thread = None

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        try:
            self._apply(batch)
        except Exception:
            if len(batch) == 1:
                self._fail(batch[0])
                return
            for job in batch:  # one bad job must not fail the others
                try:
                    self._apply([job])
                except Exception:
                    self._fail(job)

    def _fail(self, job: _Job) -> None:
        import sys

        exc = sys.exc_info()[1]
        job.tmp.unlink(missing_ok=True)
        job.error = ArchiveError(f"index write failed: {exc}", 0xA700)
        job.done.set()

    def _apply(self, batch: list[_Job]) -> None:
        placed: list[tuple[_Job, Path | None]] = []
        removed_after: list[str] = []
        try:
            with self.engine.begin() as conn:
                dirs = []
                for job in batch:
                    outcome, old_rel = _upsert(conn, job, self.duplicates)
                    job.result = outcome
                    if outcome.outcome == "duplicate":
                        placed.append((job, None))
                        continue
                    dirs.append(self.blobs.place(job.tmp, job.rel))
                    placed.append((job, self.blobs.path(job.rel)))
                    if old_rel and old_rel != job.rel:
                        removed_after.append(old_rel)
                self.blobs.fsync_dirs(dirs)
        except BaseException:
            for job, final in placed:
                if final is not None and job.result and job.result.outcome == "stored":
                    final.unlink(missing_ok=True)
                job.result = None
            raise
        for rel in removed_after:
            self.blobs.remove(rel)
        for job, final in placed:
            if final is None:
                job.tmp.unlink(missing_ok=True)
            job.done.set()


def _upsert(conn, job: _Job, duplicates: str) -> tuple[StoreOutcome, str | None]:
    p = job.parsed
    t = now()
    row = conn.execute(select(s.instances.c.id, s.instances.c.path)
                       .where(s.instances.c.sop_uid == p.sop_uid)).first()
    if row is not None and duplicates == "keep":
        return StoreOutcome(p.sop_uid, "duplicate", p.study_uid), None

    pat = conn.execute(select(s.patients.c.id).where(s.patients.c.pid == p.patient["pid"],
                                                     s.patients.c.issuer == p.patient["issuer"])).first()
    if pat is None:
        pat_id = conn.execute(insert(s.patients).values(**p.patient, charset=p.charset)).inserted_primary_key[0]
    else:
        pat_id = pat[0]

    st = conn.execute(select(s.studies.c.id).where(s.studies.c.study_uid == p.study_uid)).first()
    if st is None:
        st_id = conn.execute(insert(s.studies).values(
            study_uid=p.study_uid, patient_fk=pat_id, charset=p.charset, received=t, updated=t,
            num_series=0, num_instances=0, **p.study)).inserted_primary_key[0]
    else:
        st_id = st[0]

    se = conn.execute(select(s.series.c.id).where(s.series.c.series_uid == p.series_uid)).first()
    if se is None:
        se_id = conn.execute(insert(s.series).values(
            series_uid=p.series_uid, study_fk=st_id, charset=p.charset, num_instances=0,
            **p.series)).inserted_primary_key[0]
        conn.execute(update(s.studies).where(s.studies.c.id == st_id)
                     .values(num_series=s.studies.c.num_series + 1))
    else:
        se_id = se[0]

    values = dict(series_fk=se_id, sop_class=p.sop_class, transfer_syntax=p.transfer_syntax, path=job.rel,
                  size=p.size, sha256=p.sha256, charset=p.charset, received=t, header=p.header, **p.instance)
    if row is None:
        conn.execute(insert(s.instances).values(sop_uid=p.sop_uid, **values))
        conn.execute(update(s.series).where(s.series.c.id == se_id)
                     .values(num_instances=s.series.c.num_instances + 1))
        conn.execute(update(s.studies).where(s.studies.c.id == st_id)
                     .values(num_instances=s.studies.c.num_instances + 1, updated=t))
        return StoreOutcome(p.sop_uid, "stored", p.study_uid), None
    conn.execute(update(s.instances).where(s.instances.c.id == row[0]).values(**values))
    conn.execute(update(s.studies).where(s.studies.c.id == st_id).values(updated=t))
    return StoreOutcome(p.sop_uid, "overwritten", p.study_uid), row[1]


def fsync_ok() -> bool:  # pragma: no cover - documentation of the promise
    return hasattr(os, "fsync")
