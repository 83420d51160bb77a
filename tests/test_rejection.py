"""Rejection notes on the archive (IOCM, RAD-66): a KOS titled 113001/113037/113038 hides the
instances it references from C-FIND, C-MOVE and C-GET, 113039 deletes them, a rejected instance
sent again is refused, and the note stays queryable. Driven with DCMTK storescu, findscu, movescu
and getscu; the notes are written by the project's one KOS builder (highdicom)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.sr.coding import Code

from helpers import DCMTK_ENV, dcmtk, make_corpus, run_cli, run_dcmtk
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.kos import builder, codes
from ihecli.workflow import iocm
from ihecli.workflow.service import WorkflowConfig, WorkflowServices

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def findscu(port: int, tmp: Path, *keys: str) -> list:
    """DCMTK findscu (Study Root): the responses, as datasets."""
    out = Path(tmp) / f"rsp-{time.monotonic_ns()}"
    out.mkdir()
    args = [dcmtk("findscu"), "-S", "-aec", "IHE_ARCHIVE", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    p = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, env=DCMTK_ENV, timeout=60, text=True)
    assert p.returncode == 0, p.stderr
    return [dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]


def storescu(port: int, *files) -> subprocess.CompletedProcess:
    return run_dcmtk("storescu", "-aec", "IHE_ARCHIVE", "127.0.0.1", str(port), *map(str, files), check=False)


def note(title: Code, files, tmp: Path) -> Path:
    """A rejection note for the instances of ``files``, as a file."""
    doc = builder.build_kos(title, [dcmread(f, stop_before_pixels=True) for f in files],
                            series_description="Rejection note")
    p = tmp / f"note-{title.value}-{time.monotonic_ns()}.dcm"
    p.write_bytes(builder.encode(doc))
    return p


def uids(files) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


@pytest.fixture
def world(archive, storescp, tmp_path):
    """The archive with its workflow services, a study of 2 series x 2 images stored by storescu."""
    dest, _ = storescp
    files = make_corpus(tmp_path / "study", studies=1, series=2, images=2)
    srv = DicomServer(archive, port=0, destinations={"STORESCP": dest}, services=[WorkflowServices(archive)])
    srv.start()
    assert storescu(srv.port, *files).returncode == 0
    yield srv, files, storescp[1]
    srv.stop()


def test_rejected_instances_are_hidden_and_refused(world, tmp_path):
    srv, files, received = world
    port, archive = srv.port, srv.archive
    study = str(dcmread(files[0]).StudyInstanceUID)
    rejected, kept = files[:2], files[2:]  # the first series
    n = note(codes.REJECTED_FOR_PATIENT_SAFETY_REASONS, rejected, tmp_path)
    note_uid = str(dcmread(n).SOPInstanceUID)
    assert storescu(port, n).returncode == 0

    # C-FIND: the rejected instances are gone at every level; the note is there
    images = findscu(port, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID",
                     "SOPClassUID")
    assert {str(r.SOPInstanceUID) for r in images} == uids(kept) | {note_uid}
    assert {str(r.SOPClassUID) for r in images if str(r.SOPInstanceUID) == note_uid} == {KOS}
    st = findscu(port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                 "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries")
    assert (int(st[0].NumberOfStudyRelatedInstances), int(st[0].NumberOfStudyRelatedSeries)) == (3, 2)
    series_uid = str(dcmread(rejected[0]).SeriesInstanceUID)
    assert findscu(port, tmp_path, "QueryRetrieveLevel=SERIES", f"SeriesInstanceUID={series_uid}") == []

    # C-MOVE of the study sends what is left and the note, not the rejected instances
    p = run_dcmtk("movescu", "-S", "-aec", "IHE_ARCHIVE", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port))
    assert p.returncode == 0
    moved = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received.iterdir()}
    assert moved == uids(kept) | {note_uid}
    # a C-MOVE naming a rejected instance moves nothing
    one = str(dcmread(rejected[0]).SOPInstanceUID)
    p = run_dcmtk("movescu", "-S", "-aec", "IHE_ARCHIVE", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=IMAGE",
                  "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series_uid}",
                  "-k", f"SOPInstanceUID={one}", "127.0.0.1", str(port), check=False)
    assert one not in {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received.iterdir()}
    # C-GET likewise
    got = tmp_path / "got"
    got.mkdir()
    p = run_dcmtk("getscu", "-S", "-aec", "IHE_ARCHIVE", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port), check=False)
    assert {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in got.iterdir()} == uids(kept) | {note_uid}

    # sent again: refused, still hidden
    assert storescu(port, rejected[0]).returncode != 0  # storescu: the C-STORE failed
    images = findscu(port, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID")
    assert uids(rejected).isdisjoint({str(r.SOPInstanceUID) for r in images})

    # the files are kept aside, and the archive's check does not take them for strays
    rows = {r["sop_uid"]: r for r in iocm.list_rejected(archive.engine)}
    assert set(rows) == uids(rejected)
    assert all(r["code"] == "113037" and r["note_uid"] == note_uid for r in rows.values())
    assert all(archive.blobs.path(r["path"]).is_file() for r in rows.values())
    rep = archive.check()
    assert not rep.orphan_files and not rep.missing_files


def test_data_retention_expired_deletes(world, tmp_path):
    srv, files, _ = world
    port, archive = srv.port, srv.archive
    study = str(dcmread(files[0]).StudyInstanceUID)
    # a quality rejection first (files kept), then retention expiry of everything
    assert storescu(port, note(codes.REJECTED_FOR_QUALITY_REASONS, files[:1], tmp_path)).returncode == 0
    kept_path = archive.blobs.path(iocm.list_rejected(archive.engine)[0]["path"])
    assert kept_path.is_file()
    n = note(codes.DATA_RETENTION_POLICY_EXPIRED, files, tmp_path)
    assert storescu(port, n).returncode == 0
    images = findscu(port, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID")
    notes = {str(r.SOPInstanceUID) for r in images}
    assert uids(files).isdisjoint(notes) and len(notes) == 2  # the two notes stay
    rows = iocm.list_rejected(archive.engine)
    assert len(rows) == 4 and all(r["path"] is None and r["code"] == "113039" for r in rows)
    assert not kept_path.exists()
    stored = {p.name for p in archive.blobs.root.rglob("*.dcm")}
    assert all(f"{u}.dcm" not in stored for u in uids(files))
    assert storescu(port, files[3]).returncode != 0  # refused
    assert uids(files[3:]).isdisjoint(
        {str(r.SOPInstanceUID) for r in findscu(port, tmp_path, "QueryRetrieveLevel=IMAGE",
                                                f"StudyInstanceUID={study}", "SOPInstanceUID")})


def test_quality_rejection_can_be_turned_off(tmp_path):
    files = make_corpus(tmp_path / "study", studies=1, series=1, images=2)
    archive = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "storage")
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, WorkflowConfig(hide_quality=False))])
    srv.start()
    try:
        assert storescu(srv.port, *files).returncode == 0
        assert storescu(srv.port, note(codes.REJECTED_FOR_QUALITY_REASONS, files[:1], tmp_path)).returncode == 0
        study = str(dcmread(files[0]).StudyInstanceUID)
        images = findscu(srv.port, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID")
        assert uids(files) <= {str(r.SOPInstanceUID) for r in images}
        # other reasons still hide
        assert storescu(srv.port, note(codes.INCORRECT_MODALITY_WORKLIST_ENTRY, files[:1], tmp_path)).returncode == 0
        images = findscu(srv.port, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID")
        assert uids(files[:1]).isdisjoint({str(r.SOPInstanceUID) for r in images})
    finally:
        srv.stop()
        archive.close()


def test_note_before_instances_and_import(tmp_path):
    """A note that arrives first (here by `ihe archive import`) makes the instances refused later."""
    files = make_corpus(tmp_path / "study", studies=1, series=1, images=2)
    n = note(codes.INCORRECT_MODALITY_WORKLIST_ENTRY, files[:1], tmp_path)
    db, storage = f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "storage"
    r = run_cli("archive", "import", "--db", db, "--storage", storage, n)
    assert r.code == 0, r.stderr
    r = run_cli("archive", "import", "--db", db, "--storage", storage, *files)
    assert r.code == 3  # one refused
    assert "rejected (113038" in r.stderr
    r = run_cli("archive", "ls", "-L", "instance", "--db", db, "--storage", storage, "--json")
    assert {x["SOPInstanceUID"] for x in r.json} == uids(files[1:]) | uids([n])
    r = run_cli("archive", "rejected", "--db", db, "--storage", storage, "--json")
    assert r.code == 0 and [x["sop_uid"] for x in r.json] == sorted(uids(files[:1]))
