"""Reading media as a Portable Media Importer or Image Display does (IHE PDI, RAD-47): a mounted
folder, an ISO 9660 image read directly with pycdlib (no mount), or a zip.

Every DICOMDIR on the medium is read; its File IDs are resolved case-insensitively with either
slash, and every other file is scanned too, so media without a DICOMDIR, with one in a
sub-folder or with files it does not list are read whole. Viewer and web folders are skipped.
File IDs that would leave the medium (``..``, absolute paths) and links pointing outside it are
refused. Nothing is dropped silently: every file ends up in the survey as an object (with its
status) or as a skipped file with the reason.
"""
from __future__ import annotations

import os
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ihecli.errors import UsageError
from ihecli.pdi.dirread import DicomdirError, Reference, read_dicomdir
from ihecli.pdi.objects import DirectoryFile, NotDicom, ObjectInfo, object_info, sop_class_name
from ihecli.pdi.part10 import looks_like_dicom

# Folders of viewers and web content that media carry next to the DICOM files
SKIP_DIRS = {"IHE_PDI", "VIEWER", "VIEWERS", "JRE", "JAVA", "PLUGINS", "WEASIS", "BIN", "LIB", "AUTORUN",
             "OSIRIX", "DICOMVIEWER", "VIEWER_DATA", "HTML", "WEB", "$RECYCLE.BIN", "SYSTEM VOLUME INFORMATION",
             "__MACOSX", ".SPOTLIGHT-V100", ".TRASHES", ".FSEVENTSD"}
SKIP_EXT = {".EXE", ".DLL", ".INF", ".HTM", ".HTML", ".JPG", ".JPEG", ".PNG", ".GIF", ".CSS", ".JS", ".TXT",
            ".PDF", ".XML", ".JAR", ".CLASS", ".ICO", ".INI", ".BAT", ".SH", ".APP", ".PLIST", ".ZIP"}
HEAD = 256 * 1024  # enough for any header in practice; the whole file is read when it is not


class MediumError(UsageError):
    """The source is not a folder, ISO 9660 image or zip that can be read."""


class Medium:
    """Files on a medium by their relative POSIX paths."""

    name: str = ""
    kind: str = ""

    def files(self) -> list[str]:
        raise NotImplementedError

    def read(self, rel: str, limit: int | None = None) -> bytes:
        raise NotImplementedError

    def open(self, rel: str):
        """A seekable binary file object of one file (to read a part of a large object)."""
        raise NotImplementedError

    def refused(self) -> list[tuple[str, str]]:
        """Entries refused while listing (links leaving the medium)."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FolderMedium(Medium):
    kind = "folder"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.real = os.path.realpath(self.root)
        self.name = str(root)
        self._refused: list[tuple[str, str]] = []
        self._files: list[str] | None = None

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def files(self) -> list[str]:
        if self._files is None:
            out = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for d in list(dirnames):
                    full = os.path.join(dirpath, d)
                    if os.path.islink(full):
                        dirnames.remove(d)  # a linked folder is not walked: it could lead anywhere
                        rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                        self._refused.append((rel + "/", "a link to a folder (not followed)"))
                for f in sorted(filenames):
                    full = os.path.join(dirpath, f)
                    rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                    if os.path.islink(full) and not self._inside(full):
                        self._refused.append((rel, "a link pointing outside the medium"))
                        continue
                    out.append(rel)
            self._files = out
        return self._files

    def refused(self) -> list[tuple[str, str]]:
        self.files()
        return self._refused

    def read(self, rel: str, limit: int | None = None) -> bytes:
        with self.open(rel) as f:
            return f.read() if limit is None else f.read(limit)

    def open(self, rel: str):
        full = self.root.joinpath(*rel.split("/"))
        if not self._inside(str(full)):
            raise OSError(f"{rel}: outside the medium")
        return open(full, "rb")


class ZipMedium(Medium):
    kind = "zip"

    def __init__(self, path: Path):
        self.name = str(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise MediumError(f"{path}: not a readable zip: {e}") from None
        self._refused: list[tuple[str, str]] = []
        self._names: dict[str, str] = {}
        for zi in self.zf.infolist():
            if zi.is_dir():
                continue
            n = zi.filename.replace("\\", "/")
            parts = n.split("/")
            if n.startswith("/") or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
                self._refused.append((zi.filename, "a path leaving the medium"))
                continue
            self._names[posixpath.normpath(n)] = zi.filename

    def files(self) -> list[str]:
        return sorted(self._names)

    def refused(self) -> list[tuple[str, str]]:
        return self._refused

    def read(self, rel: str, limit: int | None = None) -> bytes:
        with self.zf.open(self._names[rel]) as f:
            return f.read() if limit is None else f.read(limit)

    def open(self, rel: str):
        return self.zf.open(self._names[rel])

    def close(self) -> None:
        self.zf.close()


class IsoMedium(Medium):
    """An ISO 9660 image, read through its Joliet, Rock Ridge or plain ISO 9660 names."""

    kind = "iso"

    def __init__(self, path: Path):
        import pycdlib
        from pycdlib.pycdlibexception import PyCdlibException

        self.name = str(path)
        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open(str(path))
        except (PyCdlibException, OSError, ValueError, IndexError, KeyError, struct_error()) as e:
            raise MediumError(f"{path}: not a readable ISO 9660 image: {e}") from None
        except Exception as e:
            raise MediumError(f"{path}: not a readable ISO 9660 image: {type(e).__name__}: {e}") from None
        if self.iso.has_joliet():
            self.key = "joliet_path"
        elif self.iso.has_rock_ridge():
            self.key = "rr_path"
        else:
            self.key = "iso_path"
        self.volume_id = ""
        try:
            self.volume_id = self.iso.pvd.volume_identifier.decode("ascii", "replace").strip()
        except Exception:
            pass
        self._map: dict[str, str] = {}
        self._extents: dict[str, tuple[int, int]] = {}  # path on the ISO -> (offset, length) of its data
        try:
            for dirpath, _dirs, files in self.iso.walk(**{self.key: "/"}):
                for f in files:
                    self._map[self._shown(dirpath, f)] = posixpath.join(dirpath, f)
                self._note_extents(dirpath)
        except Exception as e:
            raise MediumError(f"{path}: the ISO 9660 directory tree is damaged: {e}") from None
        self._fd = os.open(path, os.O_RDONLY)

    def _shown(self, dirpath: str, name: str) -> str:
        if self.key == "iso_path":
            name = name.split(";")[0].rstrip(".")
        return posixpath.join(dirpath, name).lstrip("/")

    def _note_extents(self, dirpath: str) -> None:
        """Where the data of the folder's files is: a file in one extent is then read with one
        pread instead of through pycdlib's file object (a path lookup and a few seeks each)."""
        if self.key == "rr_path":
            return  # Rock Ridge names and relocated folders: pycdlib reads those
        encoding = "utf-16_be" if self.key == "joliet_path" else "utf-8"
        block = self.iso.logical_block_size
        try:
            for child in self.iso.list_children(**{self.key: dirpath}):
                if child is None or child.is_dot() or child.is_dotdot() or child.is_dir():
                    continue
                if child.file_flags & 0x80 or child.inode is None:  # several extents, or no data
                    continue
                name = child.file_identifier().decode(encoding)
                self._extents[posixpath.join(dirpath, name)] = (child.extent_location() * block,
                                                                child.get_data_length())
        except Exception:  # anything unusual: pycdlib reads the folder's files
            pass

    def files(self) -> list[str]:
        return sorted(self._map)

    def read(self, rel: str, limit: int | None = None) -> bytes:
        where = self._map[rel]
        extent = self._extents.get(where)
        if extent is None:
            with self.iso.open_file_from_iso(**{self.key: where}) as f:
                return f.read() if limit is None else f.read(limit)
        offset, length = extent
        n = length if limit is None else min(limit, length)
        parts = []
        while n > 0:
            chunk = os.pread(self._fd, min(n, 1 << 30), offset)
            if not chunk:
                break  # the image ends early (truncated): what there is
            parts.append(chunk)
            offset += len(chunk)
            n -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def open(self, rel: str):
        return self.iso.open_file_from_iso(**{self.key: self._map[rel]})

    def close(self) -> None:
        try:
            self.iso.close()
        except Exception:
            pass
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)


def struct_error():
    import struct

    return struct.error


def open_medium(source: str | os.PathLike) -> Medium:
    """A folder, an ``.iso`` file or a zip; raises MediumError."""
    p = Path(source)
    if p.is_dir():
        return FolderMedium(p)
    if not p.exists():
        raise MediumError(f"{p}: no such file or folder")
    if zipfile.is_zipfile(p):
        return ZipMedium(p)
    try:
        with open(p, "rb") as f:
            head = f.read(0x8006)
    except OSError as e:
        raise MediumError(f"{p}: cannot read: {e.strerror or e}") from None
    if head[0x8001:0x8006] != b"CD001":  # no ISO 9660 volume descriptor where every image has one
        what = "a DICOM file" if looks_like_dicom(head) else "neither an ISO 9660 image nor a zip file"
        raise MediumError(f"{p}: {what}, not a medium: give the folder of a CD or USB stick, an .iso image or a zip"
                          + (" (files go into the archive with ihe archive import)" if looks_like_dicom(head) else ""))
    return IsoMedium(p)


# -- the survey --------------------------------------------------------------------------------

@dataclass
class Found:
    """One object on the medium (or one a DICOMDIR says is there)."""

    path: str
    status: str  # ok | dangling | refused | unsupported | unreadable
    reason: str = ""
    in_dicomdir: bool = False
    info: ObjectInfo | None = None
    ref: Reference | None = None


@dataclass
class Survey:
    medium: str
    kind: str
    dicomdirs: list[str] = field(default_factory=list)
    fileset_id: str = ""
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not objects
    objects: list[Found] = field(default_factory=list)


def _skipped_dir(rel: str) -> str | None:
    parts = rel.split("/")[:-1]
    for k, d in enumerate(parts):
        if d.upper() in SKIP_DIRS:
            return "/".join(parts[:k + 1]) + "/"
    return None


def iter_objects(medium: Medium, survey: Survey, *, whole: bool = False
                 ) -> Iterator[tuple[Found, bytes | None]]:
    """Every object of the medium as (Found, bytes), in DICOMDIR order, then those found by scanning.

    Found objects are also appended to survey.objects, skipped files to survey.skipped. With
    whole=False only the head of each file is read (enough for its header), and None is given
    for the bytes; with whole=True the whole file is read and given.
    """
    files = medium.files()
    refused = {r.rstrip("/").upper(): why for r, why in medium.refused()}
    survey.skipped.extend(medium.refused())
    index: dict[str, str] = {}
    for rel in files:
        index.setdefault(rel.upper(), rel)
    skipped_dirs: dict[str, int] = {}
    candidates: list[str] = []
    dicomdirs: list[str] = []
    for rel in files:
        d = _skipped_dir(rel)
        if d is not None:
            skipped_dirs[d] = skipped_dirs.get(d, 0) + 1
            continue
        if posixpath.basename(rel).upper() == "DICOMDIR":
            dicomdirs.append(rel)
        else:
            candidates.append(rel)
    dicomdirs.sort(key=lambda r: (r.count("/"), r))
    for d, n in sorted(skipped_dirs.items()):
        survey.skipped.append((d, f"viewer or web content folder ({n} files)"))
    survey.dicomdirs = dicomdirs
    done: set[str] = set()

    def load(rel: str, found: Found) -> tuple[Found, bytes | None]:
        try:
            data = medium.read(rel) if whole else medium.read(rel, HEAD)
        except (OSError, KeyError, Exception) as e:  # a damaged medium: say so and go on
            found.status, found.reason = "unreadable", f"cannot read: {e}"
            return found, None
        if not looks_like_dicom(data):
            found.status, found.reason = "unreadable", "not a DICOM file"
            return found, None
        try:
            try:
                found.info = object_info(data, rel)
            except NotDicom:
                if whole or len(data) < HEAD:
                    raise
                data = medium.read(rel)
                found.info = object_info(data, rel)
        except DirectoryFile as e:
            found.status, found.reason = "directory", str(e)
            return found, None
        except NotDicom as e:
            found.status, found.reason = "unreadable", str(e)
            return found, None
        found.info.size = len(data) if whole else found.info.size
        if not found.info.supported:
            found.status = "unsupported"
            found.reason = f"SOP Class {sop_class_name(found.info.sop_class)} is not supported"
        elif found.ref is not None and found.ref.sop_uid and found.ref.sop_uid != found.info.sop_uid:
            found.reason = "the DICOMDIR names another SOP Instance UID for this file"
        return found, (data if whole else None)

    for dd in dicomdirs:
        base = posixpath.dirname(dd)
        try:
            directory = read_dicomdir(medium.read(dd))
        except (DicomdirError, OSError) as e:
            survey.notes.append(f"{dd}: unreadable DICOMDIR ({e}); every file is scanned instead")
            survey.skipped.append((dd, "unreadable DICOMDIR"))
            continue
        if not survey.fileset_id:
            survey.fileset_id = directory.fileset_id
        if directory.order_used != "offsets":
            survey.notes.append(f"{dd}: record offsets are wrong; records read in their order")
        for bad in directory.bad_file_ids:
            f = Found(path=bad, status="refused", reason="File ID leaves the medium (.. or an absolute path)",
                      in_dicomdir=True)
            survey.objects.append(f)
            yield f, None
        for ref in directory.references:
            rel_id = posixpath.join(base, *ref.file_id) if base else "/".join(ref.file_id)
            actual = index.get(rel_id.upper())
            if actual is None:
                # some writers add the ISO 9660 version or a trailing dot to the names
                actual = index.get(rel_id.upper() + ".") or index.get(rel_id.upper() + ";1")
            if actual is None and (rel_id.upper() in refused or any(rel_id.upper().startswith(r + "/")
                                                                    for r in refused)):
                f = Found(path=rel_id, status="refused", reason=f"File ID names {refused.get(rel_id.upper(), 'a link')}",
                          in_dicomdir=True, ref=ref)
                survey.objects.append(f)
                yield f, None
                continue
            if actual is None:
                f = Found(path=rel_id, status="dangling", reason="referenced by the DICOMDIR but not on the medium",
                          in_dicomdir=True, ref=ref)
                survey.objects.append(f)
                yield f, None
                continue
            if actual in done:
                continue
            done.add(actual)
            f, data = load(actual, Found(path=actual, status="ok", in_dicomdir=True, ref=ref))
            survey.objects.append(f)
            yield f, data
    for rel in candidates:
        if rel in done:
            continue
        ext = posixpath.splitext(rel)[1].upper()
        if ext in SKIP_EXT:
            survey.skipped.append((rel, "not DICOM (viewer or document file)"))
            continue
        try:
            head = medium.read(rel, 132)
        except Exception as e:
            survey.skipped.append((rel, f"cannot read: {e}"))
            continue
        if not looks_like_dicom(head if len(head) >= 132 else head + b"\x00" * 0):
            survey.skipped.append((rel, "not DICOM"))
            continue
        f, data = load(rel, Found(path=rel, status="ok",
                                  reason="not in the DICOMDIR" if dicomdirs else ""))
        if f.status == "unreadable" and f.reason == "not a DICOM file":
            survey.skipped.append((rel, "not DICOM"))
            continue
        if f.status == "directory":
            survey.skipped.append((rel, f.reason))
            continue
        survey.objects.append(f)
        yield f, data


def survey_medium(medium: Medium) -> Survey:
    """What is on a medium, reading only the headers."""
    s = Survey(medium.name, medium.kind)
    for _ in iter_objects(medium, s):
        pass
    return s
