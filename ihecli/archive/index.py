"""The index database and its single writer.

Every store goes through one writer that commits what arrives together in one transaction
(group commit): concurrent associations share the cost of a commit, and a caller is answered
only after its row is committed and its file is in place and fsynced. SQLite runs in WAL
mode, so queries never wait for the writer.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import bindparam, create_engine, event, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from ihecli.archive import schema as s
from ihecli.archive import tables_hl7
from ihecli.archive.ingest import Parsed
from ihecli.archive.store import BlobStore
from ihecli.errors import ArchiveError

log = logging.getLogger("ihe.archive")


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    path = (url.split("///", 1)[1] if "///" in url else "").split("?", 1)[0]
    return os.path.expanduser(path) if path and path != ":memory:" else None


def make_engine(url: str, *, writer: bool = False) -> Engine:
    """An engine for the index; SQLite gets WAL, full sync and case-sensitive LIKE.

    ``writer``: the writer's own engine; on SQLite its transactions take the write lock when
    they begin (BEGIN IMMEDIATE), so writers in several processes wait for each other instead
    of failing on a stale read."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        args = {"check_same_thread": False, "timeout": 30}
        if writer:
            args["isolation_level"] = None  # transactions begun below, not by the driver
        engine = create_engine(url, connect_args=args, pool_size=8, max_overflow=16)
        if writer:
            @event.listens_for(engine, "begin")
            def _begin(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a commit that returned is on disk, power loss included
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
    __slots__ = ("parsed", "tmp", "rel", "done", "result", "error", "kept_rel", "differs")

    def __init__(self, parsed: Parsed, tmp: Path | None, rel: str):
        # tmp None: the file was written straight to its place (a new instance)
        self.parsed, self.tmp, self.rel = parsed, tmp, rel
        self.done = threading.Event()
        self.result: StoreOutcome | None = None
        self.error: BaseException | None = None
        self.kept_rel: str | None = None
        self.differs = False  # a duplicate whose file is not byte for byte the kept one


class Writer:
    """Group commit: the first caller to find the writer free commits every job waiting.

    Callers queue their job, then take the writer lock; whoever holds it commits all queued
    jobs in one transaction on the one writing connection. A caller whose job a previous
    holder committed returns at once. One association pays no thread hand-off; many
    associations share each commit.
    """

    def __init__(self, engine: Engine, blobs: BlobStore, duplicates: str = "keep", lock_path: str | None = None):
        self.engine, self.blobs, self.duplicates = engine, blobs, duplicates
        self._lock_path = lock_path  # SQLite: a file beside the database that writers queue on
        self._lock_fd: int | None = None
        self._pending: list[_Job] = []
        self._plock = threading.Lock()
        self._wlock = threading.Lock()
        self._conn = None
        self._fast: _Fast | None = None
        self._compiled: dict = {}
        self._series: dict[str, tuple[int, int]] = {}  # series UID -> (series id, study id)
        # optional check run in the write transaction: (conn, Parsed) -> ArchiveError to refuse
        # the object (rejected instances, IOCM), or None; conn.execute takes a statement built
        # once (module level) and its parameters, and answers first() and scalar()
        self.refuse = None

    def submit(self, parsed: Parsed, tmp: Path | None, rel: str) -> StoreOutcome:
        out = self.submit_many([(parsed, tmp, rel)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def submit_many(self, items: list[tuple[Parsed, Path | None, str]]) -> list[StoreOutcome | ArchiveError]:
        """Commit several objects in one transaction (with whatever else is waiting); returns the
        outcome of each, or the error that refused it (the others are committed all the same)."""
        jobs = [_Job(parsed, tmp, rel) for parsed, tmp, rel in items]
        with self._plock:
            self._pending.extend(jobs)  # all in one commit: another caller takes all or none of them
        with self._wlock:
            if jobs and not jobs[-1].done.is_set():
                with self._process_lock():
                    with self._plock:
                        batch, self._pending = self._pending, []
                    self._commit(batch)
        out = []
        for job in jobs:
            assert job.error is not None or job.result is not None
            out.append(job.error if job.error is not None else job.result)
        return out

    @contextmanager
    def _process_lock(self):
        """Writers of other processes on the same SQLite file queue here, woken as soon as the
        lock is free; SQLite's own busy handler would retry after sleeps of 1, 2, 5... ms."""
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def stop(self) -> None:
        with self._wlock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.engine.dispose()

    def _connection(self):
        if self._conn is None:
            self._conn = self.engine.connect()
            self._fast = None
        return self._conn

    def _commit(self, batch: list[_Job]) -> None:
        try:
            self._apply_retrying(batch)
        except Exception:
            if len(batch) == 1:
                self._fail(batch[0])
                return
            for job in batch:  # one bad job must not fail the others
                try:
                    self._apply_retrying([job])
                except Exception:
                    self._fail(job)

    def _apply_retrying(self, batch: list[_Job], attempts: int = 5) -> None:
        """Apply, again when another process created the same patient, study or series first
        (PostgreSQL: unique violation) or held the database (SQLite: busy)."""
        for attempt in range(attempts):
            try:
                self._apply(batch)
                return
            except (IntegrityError, OperationalError):
                self._reset()
                if attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
            except Exception:
                self._reset()
                raise

    def forget(self) -> None:
        """Drop cached ids (after rows were deleted)."""
        with self._wlock:
            self._series.clear()

    def _reset(self) -> None:
        self._series.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        self._fast = None

    def _fail(self, job: _Job) -> None:
        import sys

        exc = sys.exc_info()[1]
        if job.tmp is not None:
            job.tmp.unlink(missing_ok=True)
        else:
            self.blobs.path(job.rel).unlink(missing_ok=True)
        job.error = ArchiveError(f"index write failed: {exc}", 0xA700)
        job.done.set()

    def _apply(self, batch: list[_Job]) -> None:
        placed: list[_Job] = []
        removed_after: list[str] = []
        conn = self._connection()
        try:
            with conn.begin():
                if self._fast is None:
                    self._fast = _Fast(conn, self._compiled)
                fast = self._fast
                dirs = []
                for job in batch:
                    if self.refuse is not None:
                        job.error = self.refuse(fast, job.parsed)
                        if job.error is not None:
                            continue
                    outcome, old_rel = _upsert(fast, job, self.duplicates, self._series)
                    job.result = outcome
                    if outcome.outcome == "duplicate":
                        job.kept_rel = old_rel
                        continue
                    if job.tmp is not None:
                        dirs.append(self.blobs.place(job.tmp, job.rel))
                    placed.append(job)
                    if old_rel and old_rel != job.rel:
                        removed_after.append(old_rel)
                self.blobs.fsync_dirs(dirs)
        except BaseException:
            for job in placed:
                if job.result and job.result.outcome == "stored":
                    self.blobs.path(job.rel).unlink(missing_ok=True)
                job.result = None
            raise
        for rel in removed_after:
            self.blobs.remove(rel)
        for job in batch:
            if job.error is not None:  # refused: the file written for it goes
                if job.tmp is not None:
                    job.tmp.unlink(missing_ok=True)
                else:
                    self.blobs.path(job.rel).unlink(missing_ok=True)
            if job.result is not None and job.result.outcome == "duplicate":
                if job.differs:
                    self._warn_if_other_content(job)
                if job.tmp is not None:
                    job.tmp.unlink(missing_ok=True)
                elif job.kept_rel != job.rel:  # written to a new place; the kept copy is elsewhere
                    self.blobs.path(job.rel).unlink(missing_ok=True)
            job.done.set()


    def _warn_if_other_content(self, job: _Job) -> None:
        """Say so when a duplicate kept out carries another data set than the kept copy.

        The same object sent over DICOM and imported from its file, or sent by two senders,
        differs in its file meta header only (the archive writes its own for what it receives):
        that is a resend, not other content, so only the data sets are compared."""
        new = job.tmp if job.tmp is not None else self.blobs.path(job.rel)
        try:
            same = data_set_bytes(new.read_bytes()) == data_set_bytes(self.blobs.path(job.kept_rel).read_bytes())
        except (OSError, TypeError):
            same = False
        if not same:
            log.warning("instance %s received again with other content: the first copy is kept (archive."
                        "duplicates = keep)", job.parsed.sop_uid)


def data_set_bytes(data: bytes) -> bytes:
    """A Part-10 file's bytes after its file meta group (all of them when it has none)."""
    if data[128:132] != b"DICM":
        return data
    pos = 132
    while data[pos:pos + 2] == b"\x02\x00":  # group 0002 elements, explicit VR little endian
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            pos += 12 + int.from_bytes(data[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    return data[pos:]


class _Fast:
    """The writer's connection for its one-row statements.

    SQLAlchemy's execute() cost several times what SQLite takes to run the writer's one-row
    statements (cache key, execution context, result proxy: a quarter of the CPU of a C-STORE).
    Each statement (built once, at module level) is compiled on its first use for the
    connection's dialect and then run straight on the DBAPI cursor, its parameters passed
    through the same bind processors SQLAlchemy would apply. The cursor belongs to the same
    connection, so everything stays in the writer's transaction."""

    def __init__(self, conn, compiled: dict):
        self.conn = conn
        self.dialect = conn.dialect
        self.cursor = conn.connection.dbapi_connection.cursor()
        self._compiled = compiled  # (id(stmt), keys) -> (stmt, sql, names or None, processors, literals)

    def execute(self, stmt, params: dict) -> "_Fast":
        key = (id(stmt), tuple(params) if stmt.is_insert else ())
        c = self._compiled.get(key)
        if c is None:
            comp = stmt.compile(dialect=self.dialect, column_keys=list(params) if stmt.is_insert else None)
            procs, fixed = {}, {}
            for name, bp in comp.binds.items():
                proc = bp.type._cached_bind_processor(self.dialect)
                if proc is not None:
                    procs[name] = proc
                if not bp.required:  # a literal of the statement (num_instances + 1)
                    fixed[name] = bp.effective_value
            names = list(comp.positiontup) if self.dialect.positional else None
            c = self._compiled[key] = (stmt, str(comp), names, procs, fixed)
        _stmt, sql, names, procs, fixed = c
        if fixed:
            params = {**fixed, **params}
        if procs:
            params = {k: (procs[k](v) if k in procs else v) for k, v in params.items()}
        self.cursor.execute(sql, [params[n] for n in names] if names is not None else params)
        return self

    def first(self):
        return self.cursor.fetchone()

    def scalar(self):
        row = self.cursor.fetchone()
        return None if row is None else row[0]


# Statements built once: building SQLAlchemy constructs per row costs more than running them.
_b = bindparam
Q_INSTANCE = select(s.instances.c.id, s.instances.c.path, s.instances.c.sha256).where(
    s.instances.c.sop_uid == _b("sop_uid"))
Q_PATIENT = select(s.patients.c.id).where(s.patients.c.pid == _b("pid"), s.patients.c.issuer == _b("issuer"))
Q_RETIRED = (select(s.patients.c.id)
             .join(tables_hl7.hl7_patient_ids, tables_hl7.hl7_patient_ids.c.patient_fk == s.patients.c.id)
             .where(tables_hl7.hl7_patient_ids.c.pid == _b("pid"), tables_hl7.hl7_patient_ids.c.issuer == _b("issuer"))
             .order_by(tables_hl7.hl7_patient_ids.c.id.desc()).limit(1))
Q_STUDY = select(s.studies.c.id).where(s.studies.c.study_uid == _b("study_uid"))
Q_SERIES = select(s.series.c.id, s.series.c.study_fk).where(s.series.c.series_uid == _b("series_uid"))
U_SERIES_ADD = (update(s.series).where(s.series.c.id == _b("sid"))
                .values(num_instances=s.series.c.num_instances + 1))
U_STUDY_ADD = (update(s.studies).where(s.studies.c.id == _b("stid"))
               .values(num_instances=s.studies.c.num_instances + 1, updated=_b("t")))
U_STUDY_SERIES = (update(s.studies).where(s.studies.c.id == _b("stid"))
                  .values(num_series=s.studies.c.num_series + 1))
U_STUDY_TOUCH = update(s.studies).where(s.studies.c.id == _b("stid")).values(updated=_b("t"))
I_INSTANCE = insert(s.instances)
I_PATIENT = insert(s.patients)
I_STUDY = insert(s.studies)
I_SERIES = insert(s.series)


def _series_of(fast: _Fast, p: Parsed, t: datetime, cache: dict) -> tuple[int, int]:
    """(series id, study id) for an instance, creating patient, study and series as needed.

    ``cache`` remembers series seen by this writer; a series removed meanwhile (by another
    process) makes the instance insert fail on its foreign key, and the writer retries with an
    empty cache."""
    hit = cache.get(p.series_uid)
    if hit is not None:
        return hit
    row = fast.execute(Q_SERIES, {"series_uid": p.series_uid}).first()
    if row is not None:
        cache[p.series_uid] = (row[0], row[1])
        return row[0], row[1]
    conn = fast.conn  # a new series: rows with generated keys, through SQLAlchemy
    st = conn.execute(Q_STUDY, {"study_uid": p.study_uid}).first()
    if st is None:
        pat = conn.execute(Q_PATIENT, {"pid": p.patient["pid"], "issuer": p.patient["issuer"]}).first()
        if pat is None:  # an ID that an HL7 merge or ID change retired: the patient it became (PIR)
            pat = conn.execute(Q_RETIRED, {"pid": p.patient["pid"], "issuer": p.patient["issuer"]}).first()
        if pat is None:
            pat_id = conn.execute(I_PATIENT, {**p.patient, "charset": p.charset}).inserted_primary_key[0]
        else:
            pat_id = pat[0]
        st_id = conn.execute(I_STUDY, {"study_uid": p.study_uid, "patient_fk": pat_id, "charset": p.charset,
                                       "received": t, "updated": t, "num_series": 0, "num_instances": 0,
                                       **p.study}).inserted_primary_key[0]
    else:
        st_id = st[0]
    se_id = conn.execute(I_SERIES, {"series_uid": p.series_uid, "study_fk": st_id, "charset": p.charset,
                                    "num_instances": 0, **p.series}).inserted_primary_key[0]
    conn.execute(U_STUDY_SERIES, {"stid": st_id})
    cache[p.series_uid] = (se_id, st_id)
    return se_id, st_id


def _upsert(fast: _Fast, job: _Job, duplicates: str, cache: dict) -> tuple[StoreOutcome, str | None]:
    p = job.parsed
    t = now()
    row = fast.execute(Q_INSTANCE, {"sop_uid": p.sop_uid}).first()
    if row is not None and duplicates == "keep":
        # other bytes: maybe only another file meta header (see _warn_if_other_content)
        job.differs = bool(row[2] and p.sha256 and row[2] != p.sha256)
        return StoreOutcome(p.sop_uid, "duplicate", p.study_uid), row[1]
    se_id, st_id = _series_of(fast, p, t, cache)
    values = dict(series_fk=se_id, sop_class=p.sop_class, transfer_syntax=p.transfer_syntax, path=job.rel,
                  size=p.size, sha256=p.sha256, charset=p.charset, received=t, header=p.header, **p.instance)
    if row is None:
        fast.execute(I_INSTANCE, {"sop_uid": p.sop_uid, **values})
        fast.execute(U_SERIES_ADD, {"sid": se_id})
        fast.execute(U_STUDY_ADD, {"stid": st_id, "t": t})
        return StoreOutcome(p.sop_uid, "stored", p.study_uid), None
    fast.conn.execute(update(s.instances).where(s.instances.c.id == row[0]).values(**values))
    fast.conn.execute(U_STUDY_TOUCH, {"stid": st_id, "t": t})
    return StoreOutcome(p.sop_uid, "overwritten", p.study_uid), row[1]
