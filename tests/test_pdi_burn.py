"""`ihe pdi burn`: ISO 9660 and USB media with DICOMDIR, README.TXT, INDEX.HTM and IHE_PDI web content,
checked with dicom3tools (dciodvfy, dcentvfy), DCMTK dcmdump, pydicom's FileSet, xorriso and Chromium."""
from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pycdlib
import pydicom
import pytest
from lxml import etree
from pydicom.fileset import FileSet

from helpers import make_corpus, run_cli, run_dcmtk
from ihecli.archive import Archive
from pdi_helpers import (PDI_DATA, dcentvfy_errors, dciodvfy_errors, dump_dom, extract_iso, iso_listing, links,
                         screenshot)

FILE_ID = re.compile(r"^[A-Z0-9_]{1,8}$")
NAME_83 = re.compile(r"^[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?$")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An archive (via the CLI's data dir) holding 2 patients: 2 studies x 2 series x 3 CT images."""
    root = tmp_path_factory.mktemp("pdi-burn")
    files = make_corpus(root / "corpus", studies=2, series=2, images=3)
    data = root / "data"
    a = Archive(f"sqlite:///{data / 'archive.db'}", data / "storage")
    for f in files:
        a.store(f.read_bytes())
    a.close()
    return {"root": root, "files": files, "env": {"IHE_DATA_DIR": str(data), "IHE_CONFIG": str(root / "c.toml")}}


def cli(env, *args):
    return run_cli(*args, env=env["env"])


@pytest.fixture(scope="module")
def cd_iso(env):
    out = env["root"] / "cd" / "patient.iso"
    r = cli(env, "pdi", "burn", "--patient", "PID000000", "--iso", out, "--institution", "Test Hospital", "--json")
    assert r.code == 0, r.stderr
    return out, r.json


def test_cd_iso_summary_and_iso9660(cd_iso):
    iso, summary = cd_iso
    assert summary["objects"] == 6 and summary["rendered"] == 6 and len(summary["volumes"]) == 1
    assert summary["profile"] == "STD-GEN-CD" and summary["bytes"] == iso.stat().st_size
    names = iso_listing(iso)  # xorriso reads it
    assert "/DICOMDIR" in names and "/README.TXT" in names and "/INDEX.HTM" in names
    assert "/IHE_PDI/INDEX.HTM" in names
    dicom = [n for n in names if n.startswith("/DICOM/")]
    assert len(dicom) == 6
    for n in names:
        parts = n.strip("/").split("/")
        assert len(parts) <= 8, n
        assert all(NAME_83.match(p) for p in parts), n
    # the volume identifier is the File-set ID; Joliet names are there too
    p = pycdlib.PyCdlib()
    p.open(str(iso))
    try:
        vol = p.pvd.volume_identifier.decode().strip()
        assert p.has_joliet()
    finally:
        p.close()
    ds = pydicom.dcmread(extract_iso(iso, iso.parent / "x") / "DICOMDIR")
    assert ds.FileSetID == vol


def test_cd_dicomdir_is_valid_and_read_by_others(cd_iso):
    iso, _ = cd_iso
    root = iso.parent / "x"
    dd = root / "DICOMDIR"
    assert dciodvfy_errors(dd) == []
    assert dcentvfy_errors(dd) == []
    dump = run_dcmtk("dcmdump", str(dd)).stdout
    assert dump.count("DirectoryRecordType") == 1 + 1 + 2 + 6  # patient, study, series, images
    fs = FileSet(dd)
    assert len(fs) == 6
    for inst in fs:
        assert all(FILE_ID.match(c) for c in Path(inst.path).relative_to(root).parts)
        assert inst.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert inst.load().PatientID == "PID000000"
    readme = (root / "README.TXT").read_text()
    assert "Test Hospital" in readme and "ihe" in readme and "STD-GEN-CD" in readme and "INDEX.HTM" in readme
    assert "TEST, PATIENT000000" in readme


def test_web_content_is_xhtml_and_mirrors_dicom(cd_iso):
    iso, _ = cd_iso
    root = iso.parent / "x"
    pages = sorted((root / "IHE_PDI").glob("*.HTM")) + [root / "INDEX.HTM"]
    assert len(pages) == 1 + 1 + 2 + 1  # index, study, 2 series, medium home
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    for page in pages:
        doc = etree.parse(str(page), parser)  # well-formed XML
        assert doc.getroot().tag == "{http://www.w3.org/1999/xhtml}html"
        text = page.read_text()
        assert "<script" not in text.lower() and "javascript:" not in text.lower()
        for link in links(text):
            assert (page.parent / link).resolve().exists(), f"{page.name}: {link}"
    jpegs = sorted((root / "IHE_PDI").rglob("*.JPG"))
    assert len(jpegs) == 6
    from PIL import Image

    for j in jpegs:
        assert Image.open(j).format == "JPEG"


def test_usb_opens_and_navigates_in_chromium(env, tmp_path):
    usb = tmp_path / "stick"
    r = cli(env, "pdi", "burn", *env["files"], "--usb", usb)
    assert r.code == 0, r.stderr
    assert "written through to the device" in r.stderr  # flushed before the user is told it is done
    # walk the pages as a browser does, from INDEX.HTM, following every link
    seen, todo = set(), [usb / "INDEX.HTM"]
    first_series = None
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        dom = dump_dom(page.as_uri()) if page.name in ("INDEX.HTM",) and page.parent == usb else page.read_text()
        for link in links(dom):
            target = (page.parent / link).resolve()
            assert target.exists(), f"{page}: {link}"
            if target.suffix == ".HTM":
                todo.append(target)
            if target.name.startswith("SE") and target.suffix == ".HTM" and first_series is None:
                first_series = target
    assert len([p for p in seen if p.parent.name == "IHE_PDI"]) == 1 + 2 + 4
    # the browser's own reading of a series page: it knows the images and draws them
    dom = dump_dom(first_series.as_uri())
    assert dom.count("<img") == 3 and "#1" in dom
    img = np.asarray(screenshot(first_series.as_uri(), tmp_path / "shot.png", size="480,300"))
    dark = (img < 80).mean()  # the CT images are dark; the rest of the page is white
    assert dark > 0.05, f"the images are not drawn ({dark:.3%} dark pixels)"


def test_cd_decompresses_and_dvd_keeps_jpeg(env, tmp_path):
    mg = PDI_DATA / "OutOfBoundsOverlay.dcm"
    r = cli(env, "pdi", "burn", mg, "--iso", tmp_path / "cd.iso", "--no-web", "--json")
    assert r.code == 0, r.stderr
    assert r.json["converted"] == 1
    cd = extract_iso(tmp_path / "cd.iso", tmp_path / "cd")
    fs = FileSet(cd / "DICOMDIR")
    (inst,) = list(fs)
    assert inst.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    ds = inst.load()
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(mg).pixel_array)  # lossless
    assert dciodvfy_errors(cd / "DICOMDIR") == []
    home = (cd / "INDEX.HTM").read_text()  # DICOM only: the home page says what is there, links no web pages
    assert "cilinderbiopsie" in home and "IHE_PDI" not in home and not (cd / "IHE_PDI").exists()
    r = cli(env, "pdi", "burn", mg, "--usb", tmp_path / "usb", "--media", "dvd", "--no-web", "--json")
    assert r.code == 0 and r.json["converted"] == 0 and r.json["profile"] == "STD-GEN-DVD-JPEG"
    (inst,) = list(FileSet(tmp_path / "usb" / "DICOMDIR"))
    assert inst.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"


def test_record_values_are_cleaned(env, tmp_path):
    """The KOS says Study Time 13:45:00 (invalid TM): the STUDY record gets 134500, and the
    DICOMDIR of a KOS, an SR, a PDF and their images is valid."""
    files = [PDI_DATA / "xdsi" / "kos022.dcm", PDI_DATA / "xdsi" / "us022.dcm", PDI_DATA / "MarekLatin2.dcm",
             PDI_DATA / "sample-pdf.dcm"]
    r = cli(env, "pdi", "burn", *files, "--usb", tmp_path / "m", "--media", "usb", "--json")
    assert r.code == 0, r.stderr
    dd = tmp_path / "m" / "DICOMDIR"
    assert dciodvfy_errors(dd) == []
    ds = pydicom.dcmread(dd)
    types = [rec.DirectoryRecordType for rec in ds.DirectoryRecordSequence]
    assert {"KEY OBJECT DOC", "SR DOCUMENT", "ENCAP DOC", "IMAGE"} <= set(types)
    times = {rec.StudyInstanceUID: rec.StudyTime for rec in ds.DirectoryRecordSequence if rec.DirectoryRecordType == "STUDY"}
    kos = pydicom.dcmread(files[0])
    assert kos.StudyTime == "13:45:00" and times[kos.StudyInstanceUID] == "134500"
    # non-image objects are listed on the pages, not rendered; the multi-frame US is
    assert r.json["rendered"] == 1


def test_too_much_for_one_medium_is_split_by_study(env, tmp_path):
    big = make_corpus(tmp_path / "big", studies=3, series=1, images=40)  # ~1.5 MB per study
    r = cli(env, "pdi", "burn", *big, "--iso", tmp_path / "split.iso", "--size", "5.5M", "--no-web", "--json")
    assert r.code == 0, r.stderr
    vols = r.json["volumes"]
    assert len(vols) == 2 and [v["objects"] for v in vols] == [80, 40]
    assert [Path(v["path"]).name for v in vols] == ["split_1.iso", "split_2.iso"]
    studies = []
    for k, v in enumerate(vols, 1):
        assert Path(v["path"]).stat().st_size <= 5_500_000
        root = extract_iso(Path(v["path"]), tmp_path / f"v{k}")
        fs = FileSet(root / "DICOMDIR")  # each volume complete: every reference resolves
        assert len(fs) == v["objects"] and all(Path(i.path).exists() for i in fs)
        assert fs.ID.endswith(f"_{k}")
        studies += v["studies"]
    assert len(studies) == len(set(studies)) == 3
    # a study larger than the medium is refused with a clear message
    r = cli(env, "pdi", "burn", *big, "--iso", tmp_path / "x.iso", "--size", "1M", "--no-web")
    assert r.code == 2 and "too small" in r.stderr
    one = make_corpus(tmp_path / "one", studies=1, series=2, images=60)  # ~4.6 MB in one study
    r = cli(env, "pdi", "burn", *one, "--iso", tmp_path / "x.iso", "--size", "4.5M", "--no-web")
    assert r.code == 1 and "does not fit" in r.stderr and not (tmp_path / "x.iso").exists()


def test_bad_usage(env, tmp_path):
    r = cli(env, "pdi", "burn", "--patient", "PID000000")
    assert r.code == 2 and "--iso" in r.stderr
    r = cli(env, "pdi", "burn", "--iso", tmp_path / "a.iso")
    assert r.code == 2 and "--patient" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = cli(env, "pdi", "burn", "--patient", "PID000000", "--usb", tmp_path / "full")
    assert r.code == 2 and "empty" in r.stderr
    r = cli(env, "pdi", "burn", "--patient", "NOBODY", "--iso", tmp_path / "a.iso")
    assert r.code == 1 and "nothing" in r.stderr
    r = cli(env, "pdi", "burn", "--patient", "PID000000", "--iso", tmp_path / "a.iso", "--media", "floppy")
    assert r.code == 2 and "floppy" in r.stderr
    notdicom = tmp_path / "n.txt"
    notdicom.write_text("hello")
    r = cli(env, "pdi", "burn", notdicom, "--iso", tmp_path / "a.iso")
    assert r.code == 1 and "no DICOM objects" in r.stderr


def test_an_archive_file_that_is_gone_fails_the_burn_partly(tmp_path):
    """An object selected from the archive whose file cannot be read is a failure, not a skip:
    named, the others written, exit 3 (a medium that lacks what was asked for is not a success)."""
    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=3)
    data = tmp_path / "data"
    a = Archive(f"sqlite:///{data / 'archive.db'}", data / "storage")
    for f in files:
        a.store(f.read_bytes())
    lost = pydicom.dcmread(files[1], stop_before_pixels=True).SOPInstanceUID
    a.blobs.path(a.blobs.rel_path(str(lost))).unlink()
    a.close()
    env = {"env": {"IHE_DATA_DIR": str(data), "IHE_CONFIG": str(tmp_path / "c.toml")}}
    r = cli(env, "pdi", "burn", "--patient", "PID000000", "--usb", tmp_path / "stick", "--no-web", "--json")
    assert r.code == 3, r.stderr
    assert r.json["objects"] == 2 and r.json["skipped"] == []
    ((path, why),) = r.json["failed"]
    assert str(lost) in path and "cannot read" in why


def test_multi_frame_objects_show_every_frame(env, tmp_path):
    """An 8-frame ultrasound: the series page shows frame 1 and links to a page of all 8 frames,
    each its own rendering, in 8.3 names on the CD; `ihe pdi view` of the medium serves the same."""
    us = PDI_DATA / "xdsi" / "us022.dcm"
    ds = pydicom.dcmread(us)
    assert int(ds.NumberOfFrames) == 8
    r = cli(env, "pdi", "burn", us, "--iso", tmp_path / "us.iso", "--json")
    assert r.code == 0, r.stderr
    assert all(all(NAME_83.match(p) for p in n.strip("/").split("/")) for n in iso_listing(tmp_path / "us.iso"))
    root = extract_iso(tmp_path / "us.iso", tmp_path / "x")
    (series,) = (root / "IHE_PDI").glob("SE*.HTM")
    (obj,) = (root / "IHE_PDI").glob("OB*.HTM")
    assert obj.name in links(series.read_text()) and "all 8 frames" in series.read_text()
    etree.parse(str(obj), etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))
    frames = [(obj.parent / link).resolve() for link in links(obj.read_text()) if link.endswith(".JPG")]
    assert len(frames) == 8 and all(f.exists() for f in frames)
    from PIL import Image

    shown = [np.asarray(Image.open(f).convert("L"), dtype=float) for f in frames]
    assert all(s.shape == (120, 128) for s in shown)
    # each is its own frame: closest to the frame of its number, and the cine moves
    for k, s in enumerate(shown):
        err = [np.abs(s - ds.pixel_array[j].astype(float)).mean() for j in range(8)]
        assert int(np.argmin(err)) == k, (k, err)
    dom = dump_dom(obj.as_uri())
    assert dom.count("<img") == 8 and "frame 8 of 8" in dom


def test_an_existing_iso_is_never_overwritten(env, tmp_path):
    """As a non-empty --usb folder is refused, so is an --iso file that exists (or, split over
    several media, one of the volumes' FILE_k.iso): a usage error naming it, before any source is
    read (a non-DICOM source would be exit 1), the file left as it was."""
    old = tmp_path / "old.iso"
    old.write_bytes(b"an earlier medium")
    notdicom = tmp_path / "n.txt"
    notdicom.write_text("hello")
    for src in (notdicom, *env["files"][:2]):
        r = cli(env, "pdi", "burn", src, "--iso", old, "--no-web")
        assert r.code == 2 and f"{old}: exists: remove it or choose another name" in " ".join(r.stderr.split())
    assert old.read_bytes() == b"an earlier medium"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ihe-pdi-")] == []
    big = make_corpus(tmp_path / "big", studies=3, series=1, images=40)  # two volumes of 5.5 MB
    (tmp_path / "split_2.iso").write_bytes(b"volume 2 of an earlier medium")
    r = cli(env, "pdi", "burn", *big, "--iso", tmp_path / "split.iso", "--size", "5.5M", "--no-web")
    assert r.code == 2 and "split_2.iso: exists" in r.stderr
    assert not (tmp_path / "split.iso").exists() and not (tmp_path / "split_1.iso").exists()
    assert (tmp_path / "split_2.iso").read_bytes() == b"volume 2 of an earlier medium"
    r = cli(env, "pdi", "burn", env["files"][0], "--iso", tmp_path / "new.iso", "--no-web")
    assert r.code == 0, r.stderr
    assert (tmp_path / "new.iso").stat().st_size > 0


def test_a_decompressed_object_keeps_its_sop_instance_uid(env, tmp_path):
    """Decompressing for a CD changes the transfer syntax, not the object (PS3.5 8.2): the file on
    the medium keeps its SOP Instance UID, as its file meta and its DICOMDIR record say, so key
    objects and presentation states that refer to it still do, and importing the CD where the
    original is finds it already there. A source whose file meta has its UID as UT (as NIST's XA
    does) gets file meta with the standard VRs."""
    from pydicom.dataelem import DataElement

    mg = tmp_path / "mg.dcm"
    src = pydicom.dcmread(PDI_DATA / "OutOfBoundsOverlay.dcm")
    uid = src.SOPInstanceUID
    src.file_meta[0x00020003] = DataElement(0x00020003, "UT", str(uid))
    src.save_as(mg)
    r = cli(env, "pdi", "burn", mg, "--iso", tmp_path / "cd.iso", "--no-web", "--json")
    assert r.code == 0 and r.json["converted"] == 1, r.stderr
    cd = extract_iso(tmp_path / "cd.iso", tmp_path / "cd")
    (rec,) = [x for x in pydicom.dcmread(cd / "DICOMDIR").DirectoryRecordSequence if x.DirectoryRecordType == "IMAGE"]
    ds = pydicom.dcmread(cd.joinpath(*rec.ReferencedFileID), stop_before_pixels=True)
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == rec.ReferencedSOPInstanceUIDInFile == uid
    assert ds.file_meta["MediaStorageSOPInstanceUID"].VR == "UI"


def test_records_of_large_documents_have_their_values(env, tmp_path):
    """Non-image objects larger than the header read (a 291 KB ECG, a 400 KB PDF) get their
    records from their own values: the WAVEFORM record its type 1 Content Date and Time, the
    ENCAP DOC record its Document Title (were left empty: the partial read was thrown away)."""
    ecg = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
    pdf = pydicom.dcmread(PDI_DATA / "sample-pdf.dcm")
    pdf.DocumentTitle = "Consent form"
    pdf.EncapsulatedDocument = bytes(pdf.EncapsulatedDocument) + b"\n%" + b" " * 400_000 + b"\n"
    pdf.save_as(tmp_path / "big-pdf.dcm")
    assert ecg.stat().st_size > 256 * 1024 and (tmp_path / "big-pdf.dcm").stat().st_size > 256 * 1024
    r = cli(env, "pdi", "burn", ecg, tmp_path / "big-pdf.dcm", "--usb", tmp_path / "m", "--no-web", "--json")
    assert r.code == 0, r.stderr
    dd = tmp_path / "m" / "DICOMDIR"
    recs = {x.DirectoryRecordType: x for x in pydicom.dcmread(dd).DirectoryRecordSequence}
    assert (recs["WAVEFORM"].ContentDate, recs["WAVEFORM"].ContentTime) == ("20130125", "105919")
    assert recs["ENCAP DOC"].DocumentTitle == "Consent form"
    assert dciodvfy_errors(dd) == []


def _ihe_limited(args, limit: int | None = None) -> subprocess.Popen:
    """`ihe ARGS` in a process of its own; with ``limit``, files it writes cannot grow past that
    many bytes (RLIMIT_FSIZE: a write beyond fails with EFBIG, as on a full stick)."""
    def child():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.Popen([sys.executable, "-c", "import sys; from ihecli.cli import main; sys.exit(main())",
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=child, cwd=Path(__file__).parent.parent)


def test_a_medium_that_cannot_be_written_leaves_nothing(env, tmp_path):
    """A stick or a disk that fills up: one line naming the target and why, exit 1, and nothing
    half-written left (no folder of files without a DICOMDIR that looks like a medium, no partial
    ISO); a target in a place that is not a folder is a usage error before anything is read."""
    for target in (["--usb", tmp_path / "stick"], ["--iso", tmp_path / "p.iso"]):
        p = _ihe_limited(["pdi", "burn", *env["files"], *target, "--no-web"], limit=30_000)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1, err
        assert f"cannot write {target[1]}: File too large; nothing of the medium is left there" in " ".join(err.split())
        assert len(err.strip().splitlines()) == 1, err
        assert sorted(x.name for x in tmp_path.iterdir()) == []
    (tmp_path / "a-file").write_text("x")
    r = cli(env, "pdi", "burn", *env["files"], "--usb", tmp_path / "a-file" / "stick")
    assert r.code == 2 and "is not a folder" in r.stderr, r.stderr


def test_an_interrupted_burn_leaves_nothing(env, tmp_path):
    """Ctrl-C halfway through writing a USB folder: the files written so far are removed (the
    folder was empty: it stays, empty), the interruption is said, exit 130."""
    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=300)
    stick = tmp_path / "stick"
    stick.mkdir()
    p = _ihe_limited(["pdi", "burn", *files, "--usb", stick])
    while p.poll() is None and not any((stick / "DICOM").rglob("IMG*")):  # halfway: some objects written
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert f"interrupted: nothing of the medium is left at {stick}" in " ".join(err.split())
    assert list(stick.iterdir()) == []


RENDER_MEMORY = r"""
import re, sys
from ihecli.pdi.render import render_to
dst, size, w, h, err, frames = render_to((sys.argv[1], sys.argv[2], sys.argv[3]))
assert not err, err
# the peak of this process (ru_maxrss would count the test process it was forked from)
print(len(frames), re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read()).group(1))
"""


def test_a_huge_multi_frame_object_is_rendered_a_frame_at_a_time(tmp_path):
    """A 240 MB cine loop (600 frames of 640 x 640): its web renderings (500 frames shown) are
    made reading one frame at a time; the rendering process stays far smaller than the object
    (it held the object and its decoded array: more than twice its size)."""
    ds = pydicom.dcmread(PDI_DATA / "xdsi" / "us022.dcm")
    n, rows, cols = 600, 640, 640
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ramp = (np.add.outer(np.arange(rows), np.arange(cols)) % 256).astype(np.uint8)
    ds.PixelData = b"".join(np.roll(ramp, k, axis=1).tobytes() for k in range(n))
    src = tmp_path / "cine.dcm"
    ds.save_as(src)
    del ds
    size_kib = src.stat().st_size // 1024
    p = subprocess.run([sys.executable, "-c", RENDER_MEMORY, str(src), str(tmp_path / "IM.JPG"), str(tmp_path / "F")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    shown, maxrss_kib = map(int, p.stdout.split())
    assert shown == 499 and len(list((tmp_path / "F").glob("F*.JPG"))) == 499
    assert maxrss_kib < size_kib // 2, f"{maxrss_kib} KiB to render a {size_kib} KiB object"


def test_a_stick_as_it_comes_is_empty(env, tmp_path):
    """A stick formatted elsewhere holds 'System Volume Information' (Windows) or 'lost+found'
    (ext4): it is empty for a medium (was refused as not empty); those entries are kept, also by
    a burn that fails and removes what it wrote; anything else still makes the folder not empty."""
    stick = tmp_path / "stick"
    (stick / "System Volume Information").mkdir(parents=True)
    (stick / "System Volume Information" / "IndexerVolumeGuid").write_text("{1234}")
    (stick / "lost+found").mkdir()
    p = _ihe_limited(["pdi", "burn", *env["files"], "--usb", stick, "--no-web"], limit=30_000)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "nothing of the medium is left there" in " ".join(err.split()), err
    assert sorted(x.name for x in stick.iterdir()) == ["System Volume Information", "lost+found"]
    r = cli(env, "pdi", "burn", *env["files"], "--usb", stick, "--no-web", "--json")
    assert r.code == 0, r.stderr
    assert (stick / "DICOMDIR").exists() and (stick / "System Volume Information" / "IndexerVolumeGuid").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "holiday.jpg").write_bytes(b"x")
    r = cli(env, "pdi", "burn", *env["files"], "--usb", tmp_path / "used", "--no-web")
    assert r.code == 2 and "must be new or empty" in r.stderr


def test_records_of_odd_rt_objects_keep_their_values(env, tmp_path):
    """pydicom's RT dose with an empty Instance Number (badVR.dcm) and its cut RT plan: their
    records get the source's Dose Summation Type and RT Plan Label, and an Instance Number (they
    had the Instance Number alone: type 1 values missing, the DICOMDIR invalid)."""
    files = [Path(pydicom.data.get_testdata_file(n)) for n in ("badVR.dcm", "rtplan_truncated.dcm")]
    r = cli(env, "pdi", "burn", *files, "--usb", tmp_path / "m", "--no-web", "--json")
    assert r.code == 0 and r.json["objects"] == 2, r.stderr
    dd = tmp_path / "m" / "DICOMDIR"
    recs = {x.DirectoryRecordType: x for x in pydicom.dcmread(dd).DirectoryRecordSequence}
    assert recs["RT DOSE"].DoseSummationType == "BEAM" and recs["RT DOSE"].InstanceNumber == 1
    assert recs["RT PLAN"].RTPlanLabel == "Plan1"
    assert [e for e in dciodvfy_errors(dd) if "Illegal root for UID" not in e] == []  # pydicom's made-up UIDs


def test_a_volume_id_that_must_change_is_said(env, tmp_path):
    r = cli(env, "pdi", "burn", *env["files"][:1], "--iso", tmp_path / "v.iso", "--volume-id", "Smith-2024/CT scan")
    assert r.code == 0, r.stderr
    assert "--volume-id 'Smith-2024/CT scan' is written as SMITH_2024_CT" in r.stderr
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "v.iso"))
    assert iso.pvd.volume_identifier.decode().strip() == "SMITH_2024_CT"
    iso.close()
    r = cli(env, "pdi", "burn", *env["files"][:1], "--iso", tmp_path / "w.iso", "--volume-id", "GOOD_ID")
    assert r.code == 0 and "--volume-id" not in r.stderr
