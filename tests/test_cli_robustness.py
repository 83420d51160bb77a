"""What users meet when a command is pointed at the wrong peer, the wrong folder or bad values:
one line on stderr, the right exit code, nothing half done. Real peers: DCMTK storescp (a
storage SCP without Query/Retrieve) and `ihe archive serve` run as a user runs it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from helpers import DATA, free_port, run_cli, wait_port

MEDIA = DATA / "pdi" / "charset-media"  # a real CD folder: DICOMDIR and three images


def ihe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ihe ARGS` in its own process, as from a shell: library warnings would reach its stderr."""
    return subprocess.run([sys.executable, "-m", "ihecli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ihe: error: ") and "unexpected" not in lines[0] and "Traceback" not in stderr, stderr
    return lines[0]


def said(r) -> str:
    """stderr with its lines joined (the console wraps long lines)."""
    return " ".join(r.stderr.split())


def _study(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def stores(tmp_path):
    """--db and --storage of a fresh archive folder."""
    return ["--db", f"sqlite:///{tmp_path / 'a.db'}", "--storage", str(tmp_path / "st")]


@pytest.fixture
def served(corpus, storescp, stores):
    """`ihe archive serve` in the background over an archive holding the corpus, with storescp as
    move destination: its AET@host:port."""
    assert run_cli("archive", "import", *map(str, corpus), *stores).code == 0
    port = free_port()
    dest, _ = storescp
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port), "--workers", "1",
                          "--dest", str(dest), *stores], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=60)
        yield f"IHE_ARCHIVE@127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(30)


# -- 1. a peer that does not offer the service -----------------------------------------------------

def test_query_retrieve_against_a_storage_only_peer(storescp, tmp_path):
    node, received = storescp
    out = tmp_path / "got"
    for op, args in (("C-GET", ["get", str(node), "--out", str(out)]),
                     ("C-MOVE", ["move", str(node), "--dest", "ANY"]),
                     ("C-FIND", ["find", str(node)])):
        r = run_cli("dicom", *args, "-k", "StudyInstanceUID=1.2")
        assert r.code == 1, (op, r.stderr)
        line = one_error_line(r.stderr)
        assert f"accepted no {op} presentation context" in line and str(node) in line, line
    assert not out.exists()  # refused before anything arrived: no empty folder
    # MPPS and storage commitment, which storescp does not offer either, are said the same way
    r = run_cli("dicom", "mpps", "create", str(node), "--patient-id", "P1", "--modality", "CT", "--study", "1.2.3")
    assert r.code == 1 and "presentation context" in one_error_line(r.stderr) and "MPPS" in r.stderr, r.stderr
    r = run_cli("dicom", "echo", str(node))  # the same peer does answer what it offers
    assert r.code == 0, r.stderr


# -- 2. a storage folder that cannot be made --------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_a_storage_folder_that_cannot_be_made(tmp_path, workers):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for folder in ("/proc/nope", blocker / "storage"):
        r = ihe("archive", "serve", "--port", "0", "--workers", workers, "--db", f"sqlite:///{tmp_path / 'a.db'}",
                "--storage", folder, timeout=60)
        assert r.returncode == 2, r.stderr
        line = one_error_line(r.stderr)
        assert str(folder) in line and "storage folder" in line, line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_a_taken_hl7_port_says_so_before_listening(tmp_path, workers):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = ihe("archive", "serve", "--port", "0", "--workers", workers, "--hl7-port", str(taken.getsockname()[1]),
                "--db", f"sqlite:///{tmp_path / 'a.db'}", "--storage", tmp_path / "s", timeout=60)
    assert r.returncode == 2, r.stderr
    assert "cannot listen for HL7" in one_error_line(r.stderr) and "listening on" not in r.stderr


def test_serve_starts_with_a_new_storage_folder(tmp_path):
    """The check before starting makes the folder it needs: a usable one is served."""
    port = free_port()
    folder = tmp_path / "new" / "storage"
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port), "--workers", "1",
                          "--db", f"sqlite:///{tmp_path / 'a.db'}", "--storage", str(folder)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        assert run_cli("dicom", "echo", f"IHE_ARCHIVE@127.0.0.1:{port}").code == 0
        assert folder.is_dir() and not [f for f in folder.iterdir() if f.name.startswith(".ihe-probe")]
    finally:
        p.terminate()
        p.wait(30)


# -- 3. DICOMDIR is no object -------------------------------------------------------------------------

def test_import_skips_dicomdir(tmp_path, stores, corpus):
    r = run_cli("archive", "import", str(MEDIA), *stores)
    assert r.code == 0, r.stderr
    assert "3 stored" in said(r) and "1 DICOMDIR skipped" in said(r) and "0 failed" in said(r)
    # known by its SOP class too, whatever its name
    folder = tmp_path / "usb"
    folder.mkdir()
    shutil.copy(MEDIA / "DICOMDIR", folder / "index.dcm")
    shutil.copy(corpus[0], folder / "IM0001")
    r = run_cli("archive", "import", str(folder), *stores, "--json")
    assert r.code == 0, r.stderr
    assert r.json["dicomdirs"] == 1 and r.json["stored"] == 1 and r.json["failed"] == []
    # a real failure still counts, and the DICOMDIR is no success either: nothing imported, exit 1
    (folder / "IM0001").unlink()
    (folder / "IM0002").write_bytes(corpus[1].read_bytes()[:400])
    r = run_cli("archive", "import", str(folder), *stores, "--json")
    assert r.code == 1 and r.json["dicomdirs"] == 1 and [p for p, _ in r.json["failed"]] == [str(folder / "IM0002")]


def test_store_skips_dicomdir(storescp, tmp_path):
    node, received = storescp
    r = run_cli("dicom", "store", str(node), str(MEDIA))
    assert r.code == 0, r.stderr
    assert "3 sent" in said(r) and "0 failed" in said(r) and "1 DICOMDIR skipped" in said(r)
    assert len(list(received.iterdir())) == 3
    r = run_cli("dicom", "store", str(node), str(MEDIA), "--json")
    assert r.code == 0 and r.json["dicomdirs"] == [str(MEDIA / "DICOMDIR")] and r.json["failed"] == []


# -- 4. nothing sent is nothing done ----------------------------------------------------------------------

def test_store_of_nothing_dicom_fails(storescp, tmp_path, corpus):
    node, received = storescp
    bad = tmp_path / "bad.txt"
    bad.write_text("not DICOM")
    r = run_cli("dicom", "store", str(node), str(bad))
    assert r.code == 1, r.stderr
    assert "1 not DICOM" in said(r) and "nothing sent" in said(r)
    only_dir = tmp_path / "cd"
    only_dir.mkdir()
    shutil.copy(MEDIA / "DICOMDIR", only_dir / "DICOMDIR")
    r = run_cli("dicom", "store", str(node), str(only_dir))
    assert r.code == 1 and "1 DICOMDIR skipped" in said(r)
    assert not list(received.iterdir())
    r = run_cli("dicom", "store", str(node), str(corpus[0]), str(bad))  # all it found: a success
    assert r.code == 0 and "1 sent" in said(r) and "1 not DICOM" in said(r)


# -- 5. patient level, and retrieves that name nothing ----------------------------------------------------

def test_patient_level_takes_the_patient_root(served, storescp, corpus, tmp_path):
    r = run_cli("dicom", "find", served, "-L", "patient", "-k", "PatientID=PID*", "--json")
    assert r.code == 0, r.stderr
    assert sorted(row["PatientID"] for row in r.json) == ["PID000000", "PID000001"]
    r = run_cli("dicom", "find", served, "-L", "patient", "--root", "study", "-k", "PatientID=PID*")
    assert r.code == 2 and "Study Root" in one_error_line(r.stderr)
    r = run_cli("dicom", "find", served, "-L", "study", "--root", "patient", "-k", "PatientID=PID000001", "--json")
    assert r.code == 0 and [row["PatientID"] for row in r.json] == ["PID000001"]

    node, received = storescp
    r = run_cli("dicom", "move", served, "--dest", node.aet, "-L", "patient", "-k", "PatientID=PID000000", "--json")
    assert r.code == 0, r.stderr
    assert r.json["completed"] == 6 and len(list(received.iterdir())) == 6
    out = tmp_path / "got"
    r = run_cli("dicom", "get", served, "--out", str(out), "-L", "patient", "-k", "PatientID=PID000001", "--json")
    assert r.code == 0, r.stderr
    assert r.json["completed"] == 6
    assert {_study(p) for p in out.iterdir()} == {_study(corpus[-1])}


def test_retrieve_without_keys_is_a_usage_error(served, tmp_path):
    r = run_cli("dicom", "move", served, "--dest", "STORESCP")
    assert r.code == 2 and "-k StudyInstanceUID=" in one_error_line(r.stderr)
    r = run_cli("dicom", "move", served, "--dest", "STORESCP", "-L", "patient")
    assert r.code == 2 and "-k PatientID=" in one_error_line(r.stderr)
    out = tmp_path / "got"
    r = run_cli("dicom", "get", served, "--out", str(out), "-L", "series")
    line = one_error_line(r.stderr)
    assert r.code == 2 and "-k StudyInstanceUID=" in line and "-k SeriesInstanceUID=" in line
    assert not out.exists()


# -- 6. exporting studies the archive does not hold ------------------------------------------------------

def test_export_of_unknown_studies(corpus, storescp, stores, tmp_path):
    assert run_cli("archive", "import", *map(str, corpus), *stores).code == 0
    out = tmp_path / "out"
    r = run_cli("archive", "export", "--study", "1.2.3", "--out", str(out), *stores)
    assert r.code == 1
    assert one_error_line(r.stderr) == "ihe: error: no such study in the archive: 1.2.3"
    assert not out.exists()
    node, received = storescp
    r = run_cli("archive", "export", "--study", "1.2.3", "--study", "1.2.4", "--to", str(node), *stores)
    assert r.code == 1 and "1.2.3, 1.2.4" in one_error_line(r.stderr)
    assert not list(received.iterdir())

    known = _study(corpus[0])
    r = run_cli("archive", "export", "--study", "1.2.3", "--study", known, "--out", str(out), *stores)
    assert r.code == 3, r.stderr
    assert "no such study in the archive: 1.2.3" in said(r) and "exported 6 instances of 1 study" in said(r)
    assert {_study(p) for p in out.rglob("*.dcm")} == {known} and len(list(out.rglob("*.dcm"))) == 6
    r = run_cli("archive", "export", "--study", known, "--study", "1.2.3", "--to", str(node), *stores, "--json")
    assert r.code == 3 and r.json["unknown"] == ["1.2.3"] and r.json["instances"] == 6
    assert len(list(received.iterdir())) == 6


# -- 7. malformed values ----------------------------------------------------------------------------------

def test_malformed_values_are_usage_errors(corpus, stores, served):
    for args, what in ((["--date", "foo"], "--date"), (["--date", "2026-"], "--date"),
                       (["--date", "20261301"], "--date"), (["--study", "not a uid"], "--study"),
                       (["--series", "1.2.*"], "--series"), (["--modality", "C-T"], "--modality"),
                       (["--accession", "A" * 17], "--accession")):
        r = ihe("archive", "ls", *args, *stores)
        assert r.returncode == 2, (args, r.stderr)
        assert what in one_error_line(r.stderr) and "Warning" not in r.stderr, r.stderr
    r = ihe("dicom", "find", served, "-k", "StudyInstanceUID=not a uid")
    assert r.returncode == 2 and "StudyInstanceUID" in one_error_line(r.stderr) and "Warning" not in r.stderr
    r = ihe("dicom", "find", served, "-k", "StudyDate=yesterday")
    assert r.returncode == 2 and "StudyDate" in one_error_line(r.stderr)
    # VRs checked by the library: its word, in one line
    for key, what in (("PatientAge=03?Y", "PatientAge"), ("AccessionNumber=" + "A" * 17, "maximum length of 16")):
        r = ihe("dicom", "find", served, "-k", key)
        assert r.returncode == 2 and what in one_error_line(r.stderr) and "Warning" not in r.stderr, r.stderr


def test_well_formed_values_match(corpus, stores, served):
    """Ranges, UID lists and lower-case modalities (upper-cased: CS values are upper case) still find."""
    r = ihe("archive", "ls", "--modality", "ct", "--date", "20260101-20260131", *stores, "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rows = json.loads(r.stdout)
    assert [row["StudyInstanceUID"] for row in rows] == [_study(corpus[0])]
    r = ihe("archive", "ls", "--study", _study(corpus[0]), "--study", _study(corpus[-1]), "--modality", "xa", *stores,
            "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [] and r.stderr == ""
    r = ihe("dicom", "find", served, "-L", "series", "-k", "Modality=ct",
            "-k", f"StudyInstanceUID={_study(corpus[0])}\\{_study(corpus[-1])}", "--json")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert len(json.loads(r.stdout)) == 4 and {row["Modality"] for row in json.loads(r.stdout)} == {"CT"}


def test_a_database_in_a_folder_that_does_not_exist_is_not_made(tmp_path):
    """A mistyped --db is said, not answered with 'no matches' from a new empty database."""
    missing = tmp_path / "no-such-folder" / "x.db"
    r = run_cli("archive", "ls", "--db", f"sqlite:///{missing}", "--storage", tmp_path / "s")
    assert r.code == 2 and "no folder" in one_error_line(r.stderr)
    assert not missing.parent.exists()


def test_import_of_nothing_dicom_fails(tmp_path, stores):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not DICOM")
    r = run_cli("archive", "import", tmp_path / "notes", *stores)
    assert r.code == 1 and "ihe: error: nothing imported: no DICOM object found" in r.stderr, r.stderr
