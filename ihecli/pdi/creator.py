"""Portable Media Creator (IHE PDI, RAD-47 Distribute Imaging Information on Media; DVD, USB and
Web Content options): an ISO 9660 image (Joliet names too, through pycdlib) or a folder tree for
a USB stick, with a DICOMDIR of a General Purpose profile (PS3.11 Annex D), README.TXT,
INDEX.HTM and the IHE_PDI web content. Too much for one medium is split by study over several
volumes, each complete.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from ihecli import __version__
from ihecli.atna import dicom as audit_dicom
from ihecli.errors import IheError, UsageError
from ihecli.files import fsync
from ihecli.pdi import values as v
from ihecli.pdi.dicomdir import Entry, clean_fileset_id, clean_volume_id, encode_dicomdir
from ihecli.pdi.objects import EXPLICIT_LE, NotDicom, ObjectInfo, object_info, sop_class_name
from ihecli.pdi.part10 import looks_like_dicom
from ihecli.pdi.web import (Links, WebObject, WebPatient, home_page, index_page, object_page, series_page, study_page,
                            tree)

JPEG_FAMILY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70"}
J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
HEAD = 256 * 1024
CAPACITY = {"cd": 737_280_000, "dvd": 4_700_000_000, "usb": None}  # bytes: CD-R 80 min, DVD-R
PROFILES = {"cd": "STD-GEN-CD", "dvd": "STD-GEN-DVD-JPEG", "usb": "STD-GEN-USB-JPEG"}


def allowed_syntaxes(media: str) -> set[str]:
    """Transfer syntaxes of the medium's General Purpose profile (PS3.11 D): CD uncompressed
    Explicit VR Little Endian only; DVD and USB the JPEG (and JPEG 2000) profiles."""
    if media == "cd":
        return {EXPLICIT_LE}
    return {EXPLICIT_LE} | JPEG_FAMILY | J2K


@dataclass
class VolumeReport:
    path: str
    fileset_id: str
    objects: int = 0
    files: int = 0
    bytes: int = 0
    studies: list[str] = field(default_factory=list)


@dataclass
class BurnReport:
    media: str
    profile: str
    volumes: list[VolumeReport] = field(default_factory=list)
    objects: int = 0  # DICOM objects written (over all volumes)
    files: int = 0  # every file written, web content included
    bytes: int = 0
    converted: int = 0  # objects re-encoded for the profile (decompressed or made explicit VR)
    rendered: int = 0
    render_seconds: float = 0.0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): not DICOM, duplicates
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why): could not be written
    unrendered: list[tuple[str, str]] = field(default_factory=list)  # images without a web rendering

    @property
    def render_rate(self) -> float:
        return round(self.rendered / self.render_seconds, 1) if self.render_seconds else 0.0


@dataclass
class _Item:
    info: ObjectInfo
    src: str
    convert: bool
    estimate: int
    out_rel: str = ""
    out_path: str | None = None  # the converted or copied file, when not read from src
    ts: str = ""
    image: WebObject | None = None


def _estimate(info: ObjectInfo, convert: bool, web: bool) -> int:
    n = info.size
    if convert and info.rows and info.columns:
        n = max(n, info.rows * info.columns * info.frames * 2 * (3 if (info.photometric or "").startswith(("RGB", "YBR"))
                                                                 else 1) + 65536)
    if web and info.is_image:  # a JPEG of each frame shown
        from ihecli.pdi.render import MAX_FRAMES

        n += (min(info.rows * info.columns, 1024 * 1024) // 3 + 4096) * min(max(info.frames, 1), MAX_FRAMES)
    return n


def _sort_key(i: _Item):
    f = i.info

    def num(x):
        c = v.clean_is(x)
        return int(c) if c is not None else 1 << 40

    return (f.patient_name or "", f.patient_id or "", v.clean_da(f.study_date) or "", f.study_uid,
            num(f.series_number), f.series_uid, num(f.instance_number), f.sop_uid)


def _convert(src: str, dst: Path) -> None:
    """Re-encode in Explicit VR Little Endian, decompressing when needed (STD-GEN-CD)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src, force=True)
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if ts is not None and ts.is_compressed:
            # pylibjpeg, pyjpegls or pydicom's own RLE decoder; the same object in another transfer
            # syntax keeps its SOP Instance UID (PS3.5 8.2), which the DICOMDIR and other objects name
            ds.decompress(generate_instance_uid=False)
        # the file meta of the new file, with its standard VRs (a source may have written them oddly)
        for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
            if kw in ds.file_meta:
                del ds.file_meta[kw]
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst, enforce_file_format=True, implicit_vr=False, little_endian=True)


def _volumes(items: list[_Item], capacity: int | None) -> list[list[_Item]]:
    """Studies packed in order onto volumes; a study is never split."""
    if capacity is None:
        return [items] if items else []
    budget = int(capacity * 0.98) - 2_000_000  # ISO 9660 structures, DICOMDIR, pages
    studies: dict[str, list[_Item]] = {}
    for it in items:
        studies.setdefault(it.info.study_uid, []).append(it)
    vols: list[list[_Item]] = []
    used: list[int] = []
    for uid, group in studies.items():
        size = sum(i.estimate for i in group)
        if size > budget:
            mb = size / 1e6
            raise IheError(f"study {uid} ({mb:.0f} MB) does not fit on one medium of {capacity / 1e6:.0f} MB: "
                           "choose a larger medium (--media dvd or usb) or --size")
        if vols and used[-1] + size <= budget:
            vols[-1].extend(group)
            used[-1] += size
        else:
            vols.append(list(group))
            used.append(size)
    return vols


def read_sources(paths: Iterable[str | os.PathLike], media: str, web: bool,
                 progress: Callable[[int], None] | None = None
                 ) -> tuple[list[_Item], list[tuple[str, str]], list[tuple[str, str]]]:
    """Header of every source file: (items, skipped, unreadable). Non-DICOM files and repeated
    SOP Instance UIDs are skipped; files that cannot be read are failures."""
    allowed = allowed_syntaxes(media)
    items: list[_Item] = []
    skipped: list[tuple[str, str]] = []
    unreadable: list[tuple[str, str]] = []
    seen: set[str] = set()
    for p in paths:
        p = str(p)
        try:
            size = os.path.getsize(p)
            with open(p, "rb") as f:
                data = f.read(HEAD)  # the header; the pixel data is copied later, never held
            if not looks_like_dicom(data):
                skipped.append((p, "not DICOM"))
                continue
            try:
                info = object_info(data, p)
            except NotDicom:
                if size <= len(data):
                    raise
                with open(p, "rb") as f:
                    data = f.read()
                info = object_info(data, p)
        except OSError as e:  # a selected object that cannot be read is missing from the medium: a failure
            unreadable.append((p, f"cannot read: {e.strerror or e}"))
            continue
        except NotDicom as e:
            skipped.append((p, str(e)))
            continue
        finally:
            if progress:
                progress(1)
        info.size = size
        if info.record_type != "IMAGE" and size > len(data):
            # the record of a document copies values of its header, which the first HEAD bytes
            # could not give whole (pydicom refuses a cut data set): read it from the file,
            # large values (the waveform, the PDF) left on disk
            info.header = _full_header(p)
        if info.sop_uid in seen:
            skipped.append((p, f"SOP Instance {info.sop_uid} already selected"))
            continue
        if not info.study_uid or not info.series_uid:
            skipped.append((p, "no Study or Series Instance UID"))
            continue
        seen.add(info.sop_uid)
        has_meta = len(data) >= 132 and data[128:132] == b"DICM"
        convert = info.transfer_syntax not in allowed or not has_meta
        items.append(_Item(info, p, convert, _estimate(info, convert, web)))
    items.sort(key=_sort_key)
    return items, skipped, unreadable


def _full_header(path: str):
    """The data set of a file before its pixel data, values over 64 KiB read only when used."""
    import pydicom
    from pydicom.dataset import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True, force=True, defer_size=65536)
        except Exception:
            return Dataset()


def _fileset_base(items: list[_Item]) -> str:
    f = items[0].info
    # at most 13 characters: the patient ID's first six and the date, "_2" ... added per volume
    pid = clean_fileset_id(v.clean_text(f.patient_id, 64) or "PDI")[:6].rstrip("_") or "PDI"
    return f"{pid}_{datetime.now():%y%m%d}"


def _readme(report_media: str, volume: str, vol_items: list[_Item], institution: str | None, web: bool,
            profile: str) -> str:
    lines = [
        "PORTABLE DATA FOR IMAGING (IHE PDI)",
        "",
        f"Created on:            {datetime.now():%Y-%m-%d %H:%M}",
        f"Creating institution:  {institution or 'not given'}",
        f"Creating application:  ihe {__version__} (the ihe command line; Portable Media Creator)",
        f"Media:                 {report_media.upper()}, {volume}",
        f"DICOM media profile:   {profile} (DICOMDIR at the root; DICOM files under DICOM/)",
        f"Content:               {'DICOM PLUS WEB' if web else 'DICOM ONLY'}",
        "",
        "CONTENTS",
    ]
    by_study: dict[str, list[_Item]] = {}
    for it in vol_items:
        by_study.setdefault(it.info.study_uid, []).append(it)
    for group in by_study.values():
        f = group[0].info
        mods = "/".join(sorted({i.info.modality or "OT" for i in group}))
        desc = f" {f.study_description}" if f.study_description else ""
        lines.append(f"  {v.person(f.patient_name) or 'Unnamed'} (ID {f.patient_id or '-'}): "
                     f"{v.pretty_date(f.study_date) or 'no date'}{desc} [{mods}], "
                     f"{len(group)} object{'' if len(group) == 1 else 's'}")
    lines += [
        "",
        "HOW TO VIEW",
        "  With a web browser: open INDEX.HTM at the root of this medium" + (
            " and follow the link to the images (IHE_PDI/INDEX.HTM)." if web else "."),
        "  With a DICOM viewer: open the DICOMDIR file at the root of this medium.",
        "  Any operating system with a web browser or a DICOM viewer will do; no software on this",
        "  medium is installed or run automatically.",
        "",
        "The web pages and their JPEG renderings are for viewing only, not for diagnosis.",
        "",
    ]
    return "\r\n".join(lines)


class _Writer:
    """Files of one volume: a folder (USB), or staged and then written as an ISO 9660 image."""

    def __init__(self, root: Path):
        self.root = root
        self.direct: dict[str, str] = {}  # medium path -> source file added as it is (ISO only)
        self.count = 0
        self.bytes = 0

    def put_bytes(self, rel: str, data: bytes) -> None:
        p = self.root.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.count += 1
        self.bytes += len(data)

    def put_file(self, rel: str, src: str, *, iso: bool) -> None:
        size = os.path.getsize(src)
        if iso:
            self.direct[rel] = src
        else:
            p = self.root.joinpath(*rel.split("/"))
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, p)
        self.count += 1
        self.bytes += size

    def staged(self, rel: str) -> Path:
        p = self.root.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def note(self, path: Path) -> None:
        self.count += 1
        self.bytes += path.stat().st_size


def write_iso(out: Path, staging: Path, direct: dict[str, str], volume_id: str,
              progress: Callable[[int, int], None] | None = None) -> None:
    """An ISO 9660 image (interchange level 1: 8.3 names, 8 levels) with Joliet names, of the
    staged folder and of the files added as they are."""
    import pycdlib

    files: dict[str, str] = dict(direct)
    for dirpath, _dirs, names in os.walk(staging):
        for n in names:
            full = os.path.join(dirpath, n)
            files[os.path.relpath(full, staging).replace(os.sep, "/")] = full
    dirs = sorted({"/".join(r.split("/")[:k]) for r in files for k in range(1, r.count("/") + 1)},
                  key=lambda d: (d.count("/"), d))
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, joliet=3, vol_ident=volume_id, sys_ident="", app_ident_str=f"IHE {__version__}")
    for d in dirs:
        iso.add_directory("/" + d.upper(), joliet_path="/" + d)
    for rel in sorted(files):
        name = rel.upper()
        iso_name = "/" + name + (";1" if "." in name.split("/")[-1] else ".;1")
        iso.add_file(files[rel], iso_path=iso_name, joliet_path="/" + rel)
    tmp = out.with_name(out.name + ".part")
    try:
        if progress:
            iso.write(str(tmp), progress_cb=lambda done, total, _o: progress(done, total))
        else:
            iso.write(str(tmp))
        iso.close()
        fsync([tmp])  # an image said to be written is on disk, power loss included
        os.replace(tmp, out)
        fsync([out.parent])
    finally:
        tmp.unlink(missing_ok=True)


# what a freshly formatted or plugged-in stick holds before anything is written to it (file
# systems, Windows, macOS): a folder holding only these is empty for a medium, and they are kept
STICK_SYSTEM_ENTRIES = frozenset({"lost+found", "System Volume Information", "$RECYCLE.BIN", ".Trashes",
                                  ".fseventsd", ".Spotlight-V100", ".DS_Store", ".TemporaryItems"})


def _medium_entries(usb) -> list[Path]:
    return [c for c in Path(usb).iterdir() if c.name not in STICK_SYSTEM_ENTRIES]


def check_target(iso, usb) -> None:
    """An --iso file is never overwritten, a --usb folder never written into unless empty; the
    place must be one we can write to (said before anything is read)."""
    if iso is not None and os.path.lexists(iso):
        raise UsageError(f"{iso}: exists: remove it or choose another name")
    if usb is not None and os.path.exists(usb) and (not os.path.isdir(usb) or _medium_entries(usb)):
        raise UsageError(f"{usb}: the USB folder must be new or empty")
    target = iso if iso is not None else usb
    if target is None:
        return
    # the folder that will hold it: the USB folder itself, or the nearest folder that exists
    place = Path(os.path.abspath(usb if usb is not None and os.path.isdir(usb) else os.path.dirname(
        os.path.abspath(target))))
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise UsageError(f"{target}: {place} is not a folder")
    if not os.access(place, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(place) else "permission denied"
        raise UsageError(f"{target}: cannot write in {place} ({why})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# a write that fails for one of these fails the medium, not one object
TARGET_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _remove_written(usb: Path | None, isos: list[Path], usb_existed: bool) -> None:
    """What a burn that did not finish wrote: the files of the USB folder (new or empty when it
    began; the folder itself goes when this burn made it) and the ISO images it wrote."""
    for p in isos:
        p.unlink(missing_ok=True)
    if usb is None or not usb.is_dir():
        return
    if usb_existed:
        for child in _medium_entries(usb):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        shutil.rmtree(usb, ignore_errors=True)


def burn(paths: Iterable[str | os.PathLike], *, iso: Path | None = None, usb: Path | None = None,
         media: str | None = None, web: bool = True, size: int | None = None, institution: str | None = None,
         fileset_id: str | None = None, workers: int | None = None,
         progress: Callable[[int], None] | None = None) -> BurnReport:
    """Write the DICOM files to one or more media (RAD-47, Portable Media Creator).

    ``progress(n)`` is called as work is done: one unit per source file read, per object
    written and (with web content) per image rendered.
    """
    t0 = time.perf_counter()
    if (iso is None) == (usb is None):
        raise UsageError("give exactly one of --iso FILE or --usb DIR")
    media = (media or ("usb" if usb else "cd")).lower()
    if media not in CAPACITY:
        raise UsageError(f"bad --media {media!r}: cd, dvd or usb")
    check_target(iso, usb)
    capacity = size if size is not None else CAPACITY[media]
    report = BurnReport(media, PROFILES[media])
    items, report.skipped, unreadable = read_sources(paths, media, web, progress)
    report.failed.extend(unreadable)
    if not items:
        raise IheError("no DICOM objects to write")
    vols = _volumes(items, capacity)
    iso = Path(iso) if iso is not None else None
    if iso is not None and len(vols) > 1:
        for k in range(1, len(vols) + 1):
            check_target(_iso_volume(iso, k), None)
    if usb is not None:
        usb = Path(usb)
    base = clean_volume_id(fileset_id) if fileset_id else _fileset_base(items)
    pool = None
    usb_existed = usb is not None and usb.is_dir()
    isos_written: list[Path] = []
    try:
        if web:
            from concurrent.futures import ProcessPoolExecutor

            n = workers or min(os.cpu_count() or 1, 4)
            pool = ProcessPoolExecutor(max_workers=n)
        for k, vol in enumerate(vols, 1):
            fsid = base if len(vols) == 1 else f"{base}_{k}"
            volume = f"volume {k} of {len(vols)}"
            if usb is not None:
                root = usb if len(vols) == 1 else usb / f"VOLUME{k}"
                root.mkdir(parents=True, exist_ok=True)
                out_path = root
            else:
                out_path = iso if len(vols) == 1 else _iso_volume(iso, k)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                root = Path(tempfile.mkdtemp(prefix=".ihe-pdi-", dir=out_path.parent))
            try:
                vr = _write_volume(vol, root, fsid, media, volume, web, institution, iso is not None, pool, report,
                                   progress)
                if iso is not None:
                    isos_written.append(out_path)
                    write_iso(out_path, root, vr.direct, fsid)
                    size_written = out_path.stat().st_size
                else:
                    size_written = vr.bytes
            finally:
                if iso is not None:
                    shutil.rmtree(root, ignore_errors=True)
            if capacity is not None and size_written > capacity:
                raise IheError(f"{out_path}: {size_written} bytes, more than the medium holds ({capacity})")
            written = [i for i in vol if i.ts]
            report.volumes.append(VolumeReport(str(out_path), fsid, len(written), vr.count, size_written,
                                               sorted({i.info.study_uid for i in written})))
            report.objects += len(written)
            report.files += vr.count
            report.bytes += size_written
    except BaseException as e:
        # a medium is complete or not there: nothing half-written is left (interrupted, disk full)
        if pool is not None:  # no rendering still being written into it
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        _remove_written(usb, isos_written, usb_existed)
        if isinstance(e, OSError):
            where = usb if usb is not None else iso
            raise IheError(f"cannot write {where}: {e.strerror or e}; nothing of the medium is left there") from None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if usb is not None:
        # a stick may be pulled as soon as the command says it is done: what is written is on it
        # by then, not in the page cache
        os.sync()
    report.seconds = round(time.perf_counter() - t0, 3)
    report.render_seconds = round(report.render_seconds, 3)
    # Export (ITI-20 audit trail)
    audit_dicom.media_exported(media, ", ".join(v.fileset_id for v in report.volumes),
                               ((i.info.study_uid, i.info.patient_id or "", i.info.sop_class) for i in items if i.ts),
                               failed=len(report.failed))
    return report


def _iso_volume(iso: Path, k: int) -> Path:
    """The image of volume ``k`` of several: FILE_k.iso."""
    return iso.with_name(f"{iso.stem}_{k}{iso.suffix or '.iso'}")


def _write_volume(vol: list[_Item], root: Path, fsid: str, media: str, volume: str, web: bool,
                  institution: str | None, to_iso: bool, pool, report: BurnReport,
                  progress: Callable[[int], None] | None) -> _Writer:
    w = _Writer(root)
    # File IDs: DICOM/PATnnnnn/STUnnnnn/SERnnnnn/IMGnnnnn (5 components of 8 characters)
    pat_n: dict[str, int] = {}
    st_n: dict[str, int] = {}
    se_n: dict[str, int] = {}
    im_n: dict[str, int] = {}
    entries: list[Entry] = []
    for it in vol:
        f = it.info
        pk = v.clean_text(f.patient_id, 64) or ""
        p = pat_n.setdefault(pk, len(pat_n) + 1)
        s = st_n.setdefault(f.study_uid, len([x for x in st_n]) + 1)
        e = se_n.setdefault(f.series_uid, len(se_n) + 1)
        im_n[f.series_uid] = im_n.get(f.series_uid, 0) + 1
        file_id = ["DICOM", f"PAT{p:05d}", f"STU{s:05d}", f"SER{e:05d}", f"IMG{im_n[f.series_uid]:05d}"]
        rel = "/".join(file_id)
        try:
            if it.convert:
                dst = w.staged(rel)
                _convert(it.src, dst)
                it.out_path = str(dst)
                w.note(dst)
                report.converted += 1
                it.ts = EXPLICIT_LE
            else:
                w.put_file(rel, it.src, iso=to_iso)
                it.out_path = it.src if to_iso else str(root.joinpath(*file_id))
                it.ts = f.transfer_syntax
        except Exception as ex:  # a decoder missing or failing: this object cannot go on this medium
            if isinstance(ex, OSError) and ex.errno in TARGET_ERRNOS:
                raise  # the medium cannot be written: no object can
            msg = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            report.failed.append((it.src, f"cannot write as {PROFILES[media]}: {msg}"))
            it.ts = ""
            if progress:
                progress(1)
            continue
        it.out_rel = rel
        entries.append(Entry(f, file_id, it.ts))
        if progress:
            progress(1)
    written = [i for i in vol if i.ts]
    # web content
    web_objects = [WebObject(i.info) for i in written]
    if web:
        jobs = []
        series_dir: dict[str, str] = {}
        counters: dict[str, int] = {}
        for wo, it in zip(web_objects, written):
            if not it.info.is_image:
                wo.note = "not an image"
                continue
            d = series_dir.setdefault(it.info.series_uid, f"SE{len(series_dir) + 1:06d}")
            counters[d] = counters.get(d, 0) + 1
            rel = f"IHE_PDI/{d}/IM{counters[d]:06d}.JPG"
            dst = w.staged(rel)
            # the other frames of a multi-frame object in a folder of its own, IHE_PDI/SEnnnnnn/IMnnnnnn/
            frames = str(w.staged(rel[:-4] + "/F").parent) if it.info.frames > 1 else None
            jobs.append((wo, rel, (it.out_path if it.convert else it.src, str(dst), frames)))
        t = time.perf_counter()
        results = pool.map(_render_job, [j[2] for j in jobs], chunksize=16) if jobs else []
        for (wo, rel, _job), (dst, nbytes, width, height, err, frames) in zip(jobs, results):
            if err:
                wo.note = f"no rendering: {err}"
                report.unrendered.append((wo.info.path, err))
                Path(dst).unlink(missing_ok=True)
            else:
                wo.image, wo.width, wo.height = rel, width, height
                wo.frames = [(number, f"{rel[:-4]}/{name}", fw, fh) for number, name, _n, fw, fh in frames]
                w.count += 1 + len(frames)
                w.bytes += nbytes + sum(f[2] for f in frames)
                report.rendered += 1
            if progress:
                progress(1)
        report.render_seconds += time.perf_counter() - t
        for it in vol:
            if not it.ts and it.info.is_image and progress:
                progress(1)
    patients = tree(web_objects)
    if len(patients) == 1:
        title = f"Images of {v.person(patients[0].first.patient_name) or 'the patient'}"
    else:
        title = f"Images of {len(patients)} patients"
    if web and written:
        _write_web(w, patients, title)
    w.put_bytes("INDEX.HTM", home_page(
        patients, web_index="IHE_PDI/INDEX.HTM" if web else None,
        study_link=(lambda st: f"IHE_PDI/ST{st.key}.HTM") if web else None,
        title=title, volume=f"Portable medium {fsid}, {volume}, "
                            f"{'DICOM plus web' if web else 'DICOM only'}").encode("utf-8"))
    w.put_bytes("README.TXT", _readme(media, volume, written, institution, web, PROFILES[media]).encode("utf-8"))
    w.put_bytes("DICOMDIR", encode_dicomdir(fsid, entries))
    return w


def _render_job(job: tuple[str, str]):
    from ihecli.pdi.render import render_to

    return render_to(job)


def _write_web(w: _Writer, patients: list[WebPatient], title: str) -> None:
    # pages sit together in IHE_PDI/, renderings in IHE_PDI/SEnnnnnn/ (all 8.3 names)
    def rel_image(link):
        return link[len("IHE_PDI/"):] if link else None

    multi = 0
    for p in patients:
        for st in p.studies:
            for se in st.series:
                for o in se.objects:
                    o.image = rel_image(o.image)
                    o.frames = [(number, rel_image(link), fw, fh) for number, link, fw, fh in o.frames]
                    if o.frames:
                        multi += 1
                        o.key = f"{multi:06d}"
    links = Links(index=lambda: "INDEX.HTM", study=lambda st: f"ST{st.key}.HTM", series=lambda se: f"SE{se.key}.HTM",
                  home="../INDEX.HTM", object=lambda o: f"OB{o.key}.HTM")
    w.put_bytes("IHE_PDI/INDEX.HTM", index_page(patients, links, title).encode("utf-8"))
    for p in patients:
        for st in p.studies:
            w.put_bytes(f"IHE_PDI/ST{st.key}.HTM", study_page(p, st, links).encode("utf-8"))
            for se in st.series:
                w.put_bytes(f"IHE_PDI/SE{se.key}.HTM", series_page(p, st, se, links).encode("utf-8"))
                for o in se.objects:
                    if o.frames:
                        w.put_bytes(f"IHE_PDI/OB{o.key}.HTM", object_page(p, st, se, o, links).encode("utf-8"))


def select_from_archive(archive, *, patient: str | None = None, study: list[str] | None = None,
                        accession: str | None = None, reconcile_into: Path | None = None) -> list[Path]:
    """Files of the archive's instances of a patient, studies or an accession number. With
    ``reconcile_into``, an instance whose patient HL7 changed since it was stored is given as a
    copy in that folder carrying the index's patient (PIR, as C-MOVE sends it)."""
    from pydicom.dataset import Dataset

    if not (patient or study or accession):
        raise UsageError("say what to write: --patient, --study or --accession, or files")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = list(study) if study else ""
    if patient:
        ident.PatientID = patient
    if accession:
        ident.AccessionNumber = accession
    refs = archive.instances(ident)
    if not refs:
        raise IheError("nothing in the archive matches the selection")
    paths = [archive.file_path(r) for r in refs]
    if reconcile_into is not None:
        from ihecli.workflow.pir import reconciled_copies

        have = [(r, p) for r, p in zip(refs, paths) if p.exists()]  # a lost file fails later, named
        copies = reconciled_copies(archive, have, reconcile_into)
        paths = [Path(copies[r.sop_uid]) if r.sop_uid in copies else p for r, p in zip(refs, paths)]
    return paths


__all__ = ["burn", "BurnReport", "VolumeReport", "select_from_archive", "write_iso", "allowed_syntaxes",
           "sop_class_name"]
