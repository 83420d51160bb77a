"""The blob store: one file per instance, STORAGE/<ab>/<SOP Instance UID>.dcm, where ab are
the first two hex digits of the UID's SHA-1 (256 folders, all made when the store is created:
making a folder and syncing its parent for each of the first thousands of instances cost more
than their files).

The place depends on the SOP Instance UID alone, so a C-STORE can start writing before its
header is parsed.

A new file is written and fsynced in its place before its index row is committed; a
replacement goes through STORAGE/.tmp and is renamed by the index writer just before the
commit. So an index row never points to a missing file.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from ihecli.archive.ingest import valid_uid
from ihecli.files import fsync

TMP = ".tmp"


def safe_name(uid: str) -> str:
    """A UID as a file name; anything that is not a plain UID is replaced by its hash."""
    return uid if valid_uid(uid) else "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()[:32]


class BlobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.tmp = self.root / TMP

    def ensure(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        made = False
        for i in range(256):
            d = self.root / f"{i:02x}"
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                made = True
        if made:
            self.fsync_dirs([self.root, self.root.parent])

    def rel_path(self, sop_uid: str) -> str:
        return f"{hashlib.sha1(sop_uid.encode('utf-8', 'replace')).hexdigest()[:2]}/{safe_name(sop_uid)}.dcm"

    def path(self, rel: str) -> Path:
        parts = rel.split("/")
        if rel.startswith("/") or any(x in ("", ".", "..") for x in parts) or "\\" in rel:
            raise ValueError(f"path outside the storage folder: {rel}")
        return self.root.joinpath(*parts)

    def write_new(self, rel: str, data: bytes | memoryview) -> bool:
        """Write and fsync a file at its place if none is there; False if one already is."""
        final = self.path(rel)
        try:
            _write_new_file(final, data)
        except FileNotFoundError:
            self._makedirs(final.parent)
            _write_new_file(final, data)
        except FileExistsError:
            return False
        return True

    def _makedirs(self, d: Path) -> None:
        """Create a folder and fsync the folders whose entries changed."""
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            try:
                m.mkdir()
            except FileExistsError:
                pass
        if missing:
            self.fsync_dirs([m.parent for m in missing])

    def write_tmp(self, data: bytes | memoryview) -> Path:
        """Write and fsync a new temporary file; the caller hands it to ``place``."""
        p = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}.part"
        _write_new_file(p, data)
        return p

    def place(self, tmp: Path, rel: str) -> Path:
        """Rename a temporary file to its place; returns the folder to fsync."""
        final = self.path(rel)
        self._makedirs(final.parent)
        os.replace(tmp, final)
        return final.parent

    @staticmethod
    def fsync_dirs(dirs) -> None:
        fsync(dirs)

    def remove(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def clean_tmp(self) -> int:
        """Remove temporary files of dead processes (never acknowledged). Returns how many."""
        n = 0
        if self.tmp.is_dir():
            for p in self.tmp.iterdir():
                pid = p.name.split("-", 1)[0]
                if pid.isdigit() and _alive(int(pid)):
                    continue
                p.unlink(missing_ok=True)
                n += 1
        return n

    def walk(self):
        """Relative paths of every stored file."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                # only the 256 <ab> folders are ours: .tmp and other actors' folders (xds/) are not
                dirnames[:] = [d for d in dirnames if len(d) == 2]
            for f in filenames:
                yield os.path.relpath(os.path.join(dirpath, f), self.root).replace(os.sep, "/")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_new_file(path: Path, data: bytes | memoryview) -> None:
    """Create (never overwrite) a file, write it whole and fsync it; on ext4 and XFS the fsync
    also commits the new directory entry. Raises FileExistsError / FileNotFoundError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
