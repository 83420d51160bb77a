"""The local archive (Image Manager / Image Archive core): index database plus file store.

``Archive.open(settings)`` gives one object every actor uses: ``store`` (durable, idempotent),
``finder`` (C-FIND / QIDO matching), ``instances`` (what a retrieve selects), ``ls``, ``remove``,
``check``. A store returns only when the file is fsynced and the index row committed.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.exc import IntegrityError

from ihecli.archive import schema as s
from ihecli.archive import tables_kos
from ihecli.archive.index import StoreOutcome, Writer, data_set_bytes, make_engine, sqlite_path
from ihecli.archive.ingest import ensure_part10, parse, valid_uid
from ihecli.archive.scan import is_dicomdir, meta_uids
from ihecli.archive.query import Finder, InstanceRef, QueryError
from ihecli.archive.store import BlobStore
from ihecli.config import mask_url
from ihecli.errors import ArchiveError, UsageError

__all__ = ["Archive", "StoreOutcome", "InstanceRef", "QueryError", "ImportReport", "CheckReport"]


@dataclass
class ImportReport:
    stored: int = 0
    duplicates: int = 0
    overwritten: int = 0
    skipped: int = 0  # not DICOM
    dicomdirs: int = 0  # media directories (DICOMDIR): they index a medium, they are no objects
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    bytes: int = 0


@dataclass
class CheckReport:
    instances: int = 0
    missing_files: list[str] = field(default_factory=list)  # SOP Instance UIDs whose file is gone
    corrupt: list[str] = field(default_factory=list)  # checksum differs (with --verify)
    orphan_files: list[str] = field(default_factory=list)  # files with no index row
    temp_files: int = 0
    repaired: bool = False
    # what --repair did with each file not indexed: (path, action); nothing is deleted that the
    # archive does not hold the same content of
    repairs: list[tuple[str, str]] = field(default_factory=list)


def sqlite_url(db: str) -> str:
    """A database URL as given, or a plain file path (``--db ./archive.db``) as its SQLite URL."""
    if "://" in db or db.startswith("sqlite:"):
        return db
    return "sqlite:///" + os.path.abspath(os.path.expanduser(db))


def check_named_db(url: str, *, named: bool, existing: bool = False) -> None:
    """A database given by --db or archive.db: its folder must exist (a mistyped path makes no
    new database); with ``existing``, the SQLite file too."""
    path = sqlite_path(url) if named else None
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"no folder {folder} for the archive database {path} "
                         "(a database given by --db or archive.db must be in a folder that exists)")
    if existing and not os.path.isfile(path):
        raise UsageError(f"no archive database {path} (--db or archive.db names a file that is not there)")


class Archive:
    def __init__(self, db_url: str, storage: str | os.PathLike, *, duplicates: str = "keep",
                 fuzzy_names: bool = False, aet: str = "IHE_ARCHIVE"):
        if duplicates not in ("keep", "overwrite"):
            raise UsageError("duplicates policy must be 'keep' or 'overwrite'")
        self.db_url = db_url
        self.blobs = BlobStore(storage)
        self.fuzzy_names = fuzzy_names
        self.aet = aet
        try:
            self.engine = make_engine(db_url)
            s.metadata.create_all(self.engine)
            version = _schema_version(self.engine)
        except Exception as e:
            raise UsageError(f"cannot open the archive database {mask_url(db_url)}: {e}") from None
        if version > s.SCHEMA_VERSION:
            raise UsageError(f"the archive database {mask_url(db_url)} has schema version {version}, newer than "
                             f"this ihe knows ({s.SCHEMA_VERSION}): upgrade ihe")
        try:
            self.blobs.ensure()
        except OSError as e:
            raise UsageError(f"cannot create or write the storage folder {storage}: {e.strerror or e}") from None
        self.blobs.clean_tmp()
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ihe-file")
        sqlite_file = sqlite_path(db_url)
        self.writer = Writer(make_engine(db_url, writer=True) if db_url.startswith("sqlite") else self.engine,
                             self.blobs, duplicates,
                             lock_path=sqlite_file + ".writer-lock" if sqlite_file else None)
        # called as hook(parsed, data, outcome) after each object is stored (duplicates too), e.g.
        # to act on rejection notes; an exception fails the store's reply (the object stays)
        self.after_store: list[Callable] = []

    @classmethod
    def open(cls, settings, *, db: str | None = None, storage: str | None = None,
             existing: bool = False) -> "Archive":
        """The archive a profile (and any --db / --storage override) names. ``existing``: a command
        that only reads or removes refuses a named SQLite file that is not there (a mistyped
        --db), where one that stores makes it."""
        a = settings.archive
        url = sqlite_url(db or a.db_url())
        check_named_db(url, named=bool(db or a.db), existing=existing)
        return cls(url, storage or a.storage_dir(), duplicates=a.duplicates, fuzzy_names=a.fuzzy_names, aet=a.aet)

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self.writer.stop()
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing -----------------------------------------------------------------------------
    def store(self, data: bytes, *, expect_sop_uid: str | None = None,
              expect_sop_class: str | None = None) -> StoreOutcome:
        """Store one Part-10 encoded object. Returns after fsync and commit; raises ArchiveError.

        A new instance is written straight to its place, named by its SOP Instance UID; a file
        already there (a duplicate, or a file never indexed) goes through a temporary file that
        the writer renames or drops. When the caller knows the UID (a C-STORE request), the
        write and fsync run while the header is parsed.
        """
        if expect_sop_uid and valid_uid(expect_sop_uid):
            rel = self.blobs.rel_path(expect_sop_uid)
            writing = self._io.submit(self.blobs.write_new, rel, data)
            try:
                parsed = parse(data, expect_sop_uid=expect_sop_uid, expect_sop_class=expect_sop_class)
            except BaseException:
                try:
                    if writing.result():  # created for an object we refuse: take it back
                        self.blobs.path(rel).unlink(missing_ok=True)
                except OSError:
                    pass
                raise
            try:
                created = writing.result()
            except OSError as e:
                raise ArchiveError(f"cannot write to the storage folder: {e}", 0xA700) from None
        else:
            parsed = parse(data, expect_sop_uid=expect_sop_uid, expect_sop_class=expect_sop_class)
            rel = self.blobs.rel_path(parsed.sop_uid)
            try:
                created = self.blobs.write_new(rel, data)
            except OSError as e:
                raise ArchiveError(f"cannot write to the storage folder: {e}", 0xA700) from None
        try:
            tmp = None if created else self.blobs.write_tmp(data)
        except OSError as e:
            if not self._held_as_is(rel, data):
                raise ArchiveError(f"cannot write to the storage folder: {e}", 0xA700) from None
            tmp = None  # a resend of the very data set the archive holds (full disk): no room is needed for it
        outcome = self.writer.submit(parsed, tmp, rel)
        if parsed.sop_class == tables_kos.KOS_SOP_CLASS and outcome.outcome != "duplicate":
            # Key objects: TCE manifests (RAD-53) are grouped with their instances
            tables_kos.record_kos(self.engine, data, parsed.sop_uid)
        for hook in self.after_store:
            hook(parsed, data, outcome)
        return outcome

    def _held_as_is(self, rel: str, data: bytes) -> bool:
        """The file at ``rel`` carries the same data set as ``data`` (file meta headers aside)."""
        try:
            return data_set_bytes(self.blobs.path(rel).read_bytes()) == data_set_bytes(bytes(data))
        except OSError:
            return False

    def store_many(self, datas: list[bytes]) -> list[StoreOutcome | ArchiveError]:
        """Store several Part-10 encoded objects together: the files are written and fsynced in
        parallel while the headers are parsed, then every index row goes in one transaction.
        Returns when all are fsynced and committed: the outcome of each object, or the
        ArchiveError that refused it (the others are stored all the same).

        For importers that hold many objects at once (a medium, a folder): one commit for the
        lot instead of one for every few objects.
        """
        results: list = [None] * len(datas)
        chunk = max(1, -(-len(datas) // 8))  # the file threads take the writes in 8 shares
        writing = []  # (future, [(index, parsed, rel)]): each share written and fsynced in turn
        share: list = []
        for k, data in enumerate(datas):
            try:
                parsed = parse(data)
            except ArchiveError as e:
                results[k] = e
                continue
            share.append((k, parsed, self.blobs.rel_path(parsed.sop_uid)))
            if len(share) == chunk or k == len(datas) - 1:
                writing.append((self._io.submit(self._write_share, datas, share), share))
                share = []
        if share:
            writing.append((self._io.submit(self._write_share, datas, share), share))
        jobs = []
        for fut, done in writing:
            for (k, parsed, rel), tmp in zip(done, fut.result()):
                if isinstance(tmp, OSError):
                    results[k] = ArchiveError(f"cannot write to the storage folder: {tmp}", 0xA700)
                else:
                    jobs.append((k, parsed, rel, tmp))
        outcomes = self.writer.submit_many([(parsed, tmp, rel) for _k, parsed, rel, tmp in jobs])
        for (k, parsed, _rel, _tmp), outcome in zip(jobs, outcomes):
            results[k] = outcome
            if isinstance(outcome, ArchiveError):
                continue
            try:
                if parsed.sop_class == tables_kos.KOS_SOP_CLASS and outcome.outcome != "duplicate":
                    tables_kos.record_kos(self.engine, datas[k], parsed.sop_uid)
                for hook in self.after_store:
                    hook(parsed, datas[k], outcome)
            except ArchiveError as e:
                results[k] = e
        return results

    def _write_share(self, datas: list[bytes], share: list) -> list:
        """Write and fsync each object's file at its place (None), or, when a file is there
        already, to a temporary file the writer renames or drops (its path); or the OSError."""
        out: list = []
        for k, _parsed, rel in share:
            try:
                out.append(None if self.blobs.write_new(rel, datas[k]) else self.blobs.write_tmp(datas[k]))
            except OSError as e:
                out.append(e)
        return out

    def import_paths(self, paths: Iterable[str | os.PathLike],
                     progress: Callable[[str, str], None] | None = None, *, workers: int = 4) -> ImportReport:
        """Store every DICOM file under the given files and folders (non-DICOM files skipped).

        Several files are stored at once so that they share index commits (group commit).
        """
        from concurrent.futures import ThreadPoolExecutor

        report = ImportReport()
        lock = threading.Lock()

        def one(f: Path) -> None:
            outcome, why, size = self._import_one(f)
            with lock:
                if outcome == "failed":
                    report.failed.append((str(f), why))
                elif outcome == "skipped":
                    report.skipped += 1
                elif outcome == "dicomdir":
                    report.dicomdirs += 1
                else:
                    report.bytes += size
                    if outcome == "stored":
                        report.stored += 1
                    elif outcome == "overwritten":
                        report.overwritten += 1
                    else:
                        report.duplicates += 1
            if progress:
                progress(str(f), outcome)

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ihe-import") as pool:
            # bounded look-ahead: memory stays flat on folders of any size
            pending = []
            for f in iter_files(paths):
                pending.append(pool.submit(one, f))
                if len(pending) >= 4 * workers:
                    pending.pop(0).result()
            for fut in pending:
                fut.result()
        return report

    def _import_one(self, f: Path) -> tuple[str, str, int]:
        """(outcome, reason, size) of storing one file: stored, duplicate, overwritten, skipped (not
        DICOM), dicomdir (a media directory: Media Storage Directory Storage, or a file named
        DICOMDIR, as on every CD and USB stick) or failed."""
        if is_dicomdir(f):
            return "dicomdir", "", 0
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError as e:
            return "failed", e.strerror or str(e), 0
        if not looks_like_dicom(data):
            return "skipped", "", 0
        meta = meta_uids(data)
        if meta is not None and is_dicomdir(f, meta[0].get("MediaStorageSOPClassUID")):
            return "dicomdir", "", 0
        try:
            out = self.store(ensure_part10(data))
        except ArchiveError as e:
            return "failed", str(e), 0
        return out.outcome, "", len(data)

    # -- reading -----------------------------------------------------------------------------
    @contextmanager
    def connect(self):
        with self.engine.connect() as conn:
            yield conn

    def find(self, ident, root: str = "study", limit: int | None = None) -> list:
        with self.connect() as conn:
            return list(Finder(conn, fuzzy=self.fuzzy_names, aet=self.aet).find(ident, root, limit))

    def instances(self, ident, root: str = "study") -> list[InstanceRef]:
        with self.connect() as conn:
            return Finder(conn, fuzzy=self.fuzzy_names, aet=self.aet).instances(ident, root)

    def file_path(self, ref: InstanceRef | str) -> Path:
        return self.blobs.path(ref.path if isinstance(ref, InstanceRef) else ref)

    def with_files(self, refs: list[InstanceRef]) -> tuple[list[tuple[InstanceRef, Path]], list[InstanceRef]]:
        """(each ref with its file, the refs whose file is gone): an instance lost after it was
        indexed fails alone wherever it is sent (``archive check`` finds and repairs it)."""
        present, lost = [], []
        for r in refs:
            p = self.file_path(r)
            if p.is_file():
                present.append((r, p))
            else:
                lost.append(r)
        return present, lost

    def counts(self) -> dict[str, int]:
        with self.connect() as conn:
            return {name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                    for name, t in (("patients", s.patients), ("studies", s.studies),
                                    ("series", s.series), ("instances", s.instances))}

    def studies_since(self, since) -> list[str]:
        with self.connect() as conn:
            q = select(s.studies.c.study_uid).order_by(s.studies.c.id)
            if since is not None:
                q = q.where(s.studies.c.updated >= since)
            return list(conn.execute(q).scalars())

    def uid_owners(self, study_uids: Iterable[str] = (), sop_uids: Iterable[str] = ()
                   ) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str, str]]]:
        """Which patient holds these studies ({study: (pid, issuer)}) and where these instances
        are ({sop: (study, pid, issuer)}); UIDs the archive does not hold are left out."""
        st, p, se, i = s.studies, s.patients, s.series, s.instances
        studies: dict[str, tuple[str, str]] = {}
        sops: dict[str, tuple[str, str, str]] = {}
        with self.connect() as conn:
            for chunk in _chunks(sorted(set(study_uids)), 500):
                q = select(st.c.study_uid, p.c.pid, p.c.issuer).select_from(
                    st.join(p, st.c.patient_fk == p.c.id)).where(st.c.study_uid.in_(chunk))
                studies.update({r[0]: (r[1], r[2]) for r in conn.execute(q)})
            for chunk in _chunks(sorted(set(sop_uids)), 500):
                q = select(i.c.sop_uid, st.c.study_uid, p.c.pid, p.c.issuer).select_from(
                    i.join(se, i.c.series_fk == se.c.id).join(st, se.c.study_fk == st.c.id)
                    .join(p, st.c.patient_fk == p.c.id)).where(i.c.sop_uid.in_(chunk))
                sops.update({r[0]: (r[1], r[2], r[3]) for r in conn.execute(q)})
        return studies, sops

    # -- removing ----------------------------------------------------------------------------
    def remove(self, refs: list[InstanceRef]) -> int:
        """Delete instances from the index, then their files; empty series/studies/patients go too."""
        if not refs:
            return 0
        uids = [r.sop_uid for r in refs]
        with self.engine.begin() as conn:
            series_ids: set[int] = set()
            for chunk in _chunks(uids, 500):
                series_ids.update(conn.execute(select(s.instances.c.series_fk).distinct()
                                               .where(s.instances.c.sop_uid.in_(chunk))).scalars())
                conn.execute(delete(s.instances).where(s.instances.c.sop_uid.in_(chunk)))
            _recount(conn, series_ids)
        self.writer.forget()
        for r in refs:
            self.blobs.remove(r.path)
        return len(refs)

    # -- checking ----------------------------------------------------------------------------
    def check(self, *, repair: bool = False, verify: bool = False,
              progress: Callable[[int], None] | None = None) -> CheckReport:
        """Compare index and files: missing files, orphan files, leftovers; optionally repair."""
        rep = CheckReport()
        rep.temp_files = self.blobs.clean_tmp() if repair else sum(1 for _ in self.blobs.tmp.iterdir())
        known: set[str] = set()
        missing_refs: list[InstanceRef] = []
        with self.connect() as conn:
            for sop, rel, sha in conn.execute(select(s.instances.c.sop_uid, s.instances.c.path,
                                                     s.instances.c.sha256)):
                rep.instances += 1
                known.add(rel)
                p = self.blobs.path(rel)
                if not p.is_file():
                    rep.missing_files.append(sop)
                    missing_refs.append(InstanceRef(sop, "", "", rel, "", ""))
                elif verify:
                    import hashlib

                    h = hashlib.sha256()
                    with open(p, "rb") as fh:
                        for block in iter(lambda: fh.read(1 << 20), b""):
                            h.update(block)
                    if h.hexdigest() != sha:
                        rep.corrupt.append(sop)
                if progress:
                    progress(rep.instances)
        rep.orphan_files = [rel for rel in self.blobs.walk() if rel not in known]
        if repair:
            if missing_refs:
                self.remove(missing_refs)
            for rel in rep.orphan_files:  # a file placed but never committed: re-index it
                rep.repairs.append((rel, self._repair_orphan(rel)))
            rep.repaired = True
        return rep

    def _repair_orphan(self, rel: str) -> str:
        """Index a stored file that has no row; a second copy of an indexed instance goes, other
        content is moved aside to .quarantine/ (never deleted): what was done, said in a few words."""
        p = self.blobs.path(rel)
        try:
            data = p.read_bytes()
            out = self.store(ensure_part10(data))
        except (ArchiveError, OSError) as e:
            return self._quarantine(p, rel, f"not stored ({e})")
        kept = self.blobs.path(self._rel_of(out.sop_uid))
        if kept == p:
            return "indexed"
        try:
            same = kept.read_bytes() == data
        except OSError:
            same = False
        if same:
            p.unlink(missing_ok=True)
            return f"removed: a copy of instance {out.sop_uid}, which the archive holds"
        return self._quarantine(p, rel, f"other content for instance {out.sop_uid}, which the archive holds")

    def _quarantine(self, p: Path, rel: str, why: str) -> str:
        target = self.blobs.root / ".quarantine" / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
        except OSError as e:
            return f"{why}; left in place: cannot move it aside ({e.strerror or e})"
        return f"{why}: moved to {target}"

    def _rel_of(self, sop_uid: str) -> str:
        with self.connect() as conn:
            return conn.execute(select(s.instances.c.path).where(s.instances.c.sop_uid == sop_uid)).scalar_one()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()


def _schema_version(engine) -> int:
    """The index's schema version, recorded when the database is created."""
    with engine.begin() as conn:
        v = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "schema_version")).scalar()
        if v is not None:
            return int(v)
    try:
        with engine.begin() as conn:
            conn.execute(s.meta.insert().values(key="schema_version", value=str(s.SCHEMA_VERSION)))
    except IntegrityError:  # another process created it first
        pass
    return s.SCHEMA_VERSION


def _recount(conn, series_ids: set[int]) -> None:
    """Refresh the counters of the given series and their studies; drop what became empty."""
    i, se, st, p = s.instances, s.series, s.studies, s.patients
    study_ids: set[int] = set()
    patient_ids: set[int] = set()
    for chunk in _chunks(sorted(series_ids), 500):
        conn.execute(update(se).where(se.c.id.in_(chunk)).values(
            num_instances=select(func.count()).where(i.c.series_fk == se.c.id).scalar_subquery()))
        study_ids.update(conn.execute(select(se.c.study_fk).where(se.c.id.in_(chunk))).scalars())
        conn.execute(delete(se).where(se.c.id.in_(chunk), se.c.num_instances == 0))
    for chunk in _chunks(sorted(study_ids), 500):
        conn.execute(update(st).where(st.c.id.in_(chunk)).values(
            num_series=select(func.count()).where(se.c.study_fk == st.c.id).scalar_subquery(),
            num_instances=select(func.coalesce(func.sum(se.c.num_instances), 0)).where(se.c.study_fk == st.c.id)
            .scalar_subquery()))
        patient_ids.update(conn.execute(select(st.c.patient_fk).where(st.c.id.in_(chunk))).scalars())
        conn.execute(delete(st).where(st.c.id.in_(chunk), st.c.num_series == 0))
    for chunk in _chunks(sorted(patient_ids), 500):
        conn.execute(delete(p).where(p.c.id.in_(chunk), ~select(st.c.id).where(st.c.patient_fk == p.c.id).exists()))


def _chunks(seq, n):
    for k in range(0, len(seq), n):
        yield seq[k:k + n]


def looks_like_dicom(data: bytes) -> bool:
    """Part-10 files, and bare datasets starting with a group 0002/0008 element."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[0:2] in (b"\x02\x00", b"\x08\x00") and data[1] == 0


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for f in sorted(filenames):
                    yield Path(dirpath) / f
        elif p.exists():
            yield p
        else:
            raise UsageError(f"{p}: no such file or folder")
