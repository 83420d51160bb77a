"""The `ihe` commands as a user runs them: output, --json, exit codes."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from pydicom import dcmread

from helpers import free_port, run_cli


def _study(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_echo_and_unreachable(server):
    r = run_cli("dicom", "echo", server.spec)
    assert r.code == 0 and "success" in r.stdout
    r = run_cli("dicom", "echo", f"NOBODY@127.0.0.1:{free_port()}", "--timeout", "2")
    assert r.code == 4
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ihe: error: cannot reach")
    r = run_cli("dicom", "echo", "not-a-node")
    assert r.code == 2 and "unknown node" in r.stderr
    r = run_cli("dicom", "echo", "no-such-host.invalid:104")
    assert (r.code, r.stderr) == (4, "ihe: error: cannot reach ANY-SCP@no-such-host.invalid:104: host name not found\n")


def test_store_find_move_get(server, storescp, corpus, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    r = run_cli("dicom", "store", server.spec, *map(str, corpus), str(junk), "--json")
    assert r.code == 0, r.stderr
    rep = r.json
    assert rep["sent"] == len(corpus) and rep["failed"] == [] and rep["skipped"] == [str(junk)]

    r = run_cli("dicom", "find", server.spec, "-L", "study", "-k", "PatientName=TEST*", "--json")
    assert r.code == 0
    rows = r.json
    assert len(rows) == 2 and {row["NumberOfStudyRelatedInstances"] for row in rows} == {6}
    assert all(row["ModalitiesInStudy"] == "CT" for row in rows)

    r = run_cli("dicom", "find", server.spec, "-L", "series", "-k", f"StudyInstanceUID={_study(corpus[0])}")
    assert r.code == 0 and r.stdout.count("CT") >= 2 and "2 matches" in r.stderr

    study = _study(corpus[0])
    r = run_cli("dicom", "move", server.spec, "--dest", "STORESCP", "-k", f"StudyInstanceUID={study}", "--json")
    assert r.code == 0 and r.json["completed"] == 6 and r.json["failed"] == 0
    assert len(list(storescp[1].iterdir())) == 6

    r = run_cli("dicom", "move", server.spec, "--dest", "NOWHERE", "-k", f"StudyInstanceUID={study}")
    assert r.code == 1 and "0xA801" in r.stderr and "destination unknown" in r.stderr

    out = tmp_path / "got"
    r = run_cli("dicom", "get", server.spec, "--out", str(out), "-L", "series",
                "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={dcmread(corpus[0]).SeriesInstanceUID}")
    assert r.code == 0, r.stderr
    assert len(list(out.glob("*.dcm"))) == 3
    assert {str(dcmread(p).SOPInstanceUID) for p in out.glob("*.dcm")} == \
        {str(dcmread(p).SOPInstanceUID) for p in corpus[:3]}


def test_archive_import_ls_export_rm_check(corpus, tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    st = str(tmp_path / "st")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 300)
    r = run_cli("archive", "import", str(corpus[0].parent), str(junk), "--db", db, "--storage", st, "--json")
    assert r.code == 0, r.stderr
    assert r.json["stored"] == len(corpus) and r.json["skipped"] == 1
    r = run_cli("archive", "import", str(corpus[0]), "--db", db, "--storage", st)
    assert r.code == 0 and "1 already there" in r.stderr

    r = run_cli("archive", "ls", "--db", db, "--storage", st, "--json")
    assert len(r.json) == 2
    r = run_cli("archive", "ls", "-L", "patient", "--patient", "PID000001", "--db", db, "--storage", st, "--json")
    assert [p["PatientID"] for p in r.json] == ["PID000001"]
    r = run_cli("archive", "ls", "-L", "instance", "--study", _study(corpus[0]), "--db", db, "--storage", st)
    assert r.code == 0 and "6 instances" in r.stderr
    r = run_cli("archive", "ls", "--limit", "1", "--db", db, "--storage", st)  # a cut list says so
    assert r.code == 0 and "1 study (the first 1: --limit; more may match)" in " ".join(r.stderr.split())
    r = run_cli("archive", "ls", "--patient", "NOBODY", "--db", db, "--storage", st)
    assert r.code == 0 and r.stderr.strip() == "no matches"

    out = tmp_path / "export"
    r = run_cli("archive", "export", "--since", "1d", "--out", str(out), "--db", db, "--storage", st, "--json")
    assert r.code == 0 and r.json["instances"] == len(corpus)
    assert len(list(out.rglob("*.dcm"))) == len(corpus)
    r = run_cli("archive", "export", "--since", "2099-01-01", "--out", str(out), "--db", db, "--storage", st, "--json")
    assert r.code == 0 and r.json["instances"] == 0

    r = run_cli("archive", "rm", "--study", _study(corpus[0]), "--db", db, "--storage", st)
    assert r.code == 2 and "--yes" in r.stderr  # no terminal to ask on
    r = run_cli("archive", "rm", "--study", _study(corpus[0]), "--yes", "--db", db, "--storage", st)
    assert r.code == 0 and "removed 6 instances" in r.stderr
    r = run_cli("archive", "ls", "--db", db, "--storage", st, "--json")
    assert len(r.json) == 1

    r = run_cli("archive", "check", "--db", db, "--storage", st, "--json")
    assert r.code == 0 and r.json["instances"] == 6 and r.json["missing_files"] == []
    # break it: a file vanishes, a row vanishes
    con = sqlite3.connect(tmp_path / "a.db")
    path, = con.execute("select path from instances limit 1").fetchone()
    (tmp_path / "st" / path).unlink()
    other, = con.execute("select path from instances where path != ? limit 1", (path,)).fetchone()
    con.execute("delete from instances where path = ?", (other,))
    con.commit()
    con.close()
    r = run_cli("archive", "check", "--db", db, "--storage", st, "--json")
    assert r.code == 1 and len(r.json["missing_files"]) == 1 and r.json["orphan_files"] == [other]
    # and files that are no instance of it: something else, and a second copy of an indexed one
    (tmp_path / "st" / "ab").mkdir(exist_ok=True)
    (tmp_path / "st" / "ab" / "notes.txt").write_text("not DICOM")
    kept, = sqlite3.connect(tmp_path / "a.db").execute("select path from instances where path != ? limit 1",
                                                       (path,)).fetchone()
    shutil.copyfile(tmp_path / "st" / kept, tmp_path / "st" / "ab" / "copy.dcm")
    r = run_cli("archive", "check", "--repair", "--db", db, "--storage", st, "--json")
    assert r.code == 0, r.stderr
    done = dict(r.json["repairs"])
    assert done[other] == "indexed" and done["ab/copy.dcm"].startswith("removed: a copy of instance")
    assert "moved to" in done["ab/notes.txt"]  # never deleted: moved aside
    assert (tmp_path / "st" / ".quarantine" / "ab" / "notes.txt").read_text() == "not DICOM"
    r = run_cli("archive", "check", "--db", db, "--storage", st, "--json")
    assert r.code == 0 and r.json["instances"] == 5 and r.json["orphan_files"] == []


def test_export_to_node(corpus, storescp, tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    st = str(tmp_path / "st")
    assert run_cli("archive", "import", *map(str, corpus), "--db", db, "--storage", st).code == 0
    node, out = storescp
    r = run_cli("archive", "export", "--study", _study(corpus[-1]), "--to", str(node), "--db", db, "--storage", st,
                "--json")
    assert r.code == 0, r.stderr
    assert r.json["instances"] == 6 and len(list(out.iterdir())) == 6


def test_export_goes_on_past_a_lost_file(corpus, storescp, tmp_path):
    """The nightly export: an indexed instance whose file is gone is named and fails alone; the
    rest go to the node or the folder; exit 3."""
    from ihecli.archive import Archive

    db = f"sqlite:///{tmp_path / 'a.db'}"
    st = str(tmp_path / "st")
    assert run_cli("archive", "import", *map(str, corpus), "--db", db, "--storage", st).code == 0
    lost = str(dcmread(corpus[-1]).SOPInstanceUID)
    a = Archive(db, st)
    a.blobs.path(a.blobs.rel_path(lost)).unlink()
    a.close()
    node, folder = storescp
    study = _study(corpus[-1])
    for where in (["--to", str(node)], ["--out", str(tmp_path / "out")]):
        r = run_cli("archive", "export", "--study", study, *where, "--db", db, "--storage", st, "--json")
        assert r.code == 3, (where, r.stderr)
        assert r.json["instances"] == 5 and [lost in f["reason"] for f in r.json["failed"]] == [True], where
    assert len(list(folder.iterdir())) == 5
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 5


def test_usage_errors_exit_2():
    r = run_cli("dicom", "find")
    assert r.code == 2
    r = run_cli("archive", "export", "--since", "yesterday-ish", "--out", "x")
    assert r.code == 2 and "bad --since" in r.stderr


def test_move_and_get_report_failed_sub_operations(server, storescp, corpus, tmp_path):
    from ihecli.archive.ingest import parse

    for p in corpus:
        server.archive.store(p.read_bytes())
    study = _study(corpus[0])
    lost = str(dcmread(corpus[1]).SOPInstanceUID)
    server.archive.blobs.path(server.archive.blobs.rel_path(lost)).unlink()
    assert parse(corpus[1].read_bytes()).sop_uid == lost
    r = run_cli("dicom", "move", server.spec, "--dest", "STORESCP", "-k", f"StudyInstanceUID={study}", "--json")
    assert r.code == 3, r.stderr
    assert r.json["completed"] == 5 and r.json["failed"] == 1 and r.json["failed_uids"] == [lost]
    r = run_cli("dicom", "get", server.spec, "--out", str(tmp_path / "g"), "-k", f"StudyInstanceUID={study}")
    assert r.code == 3 and lost in r.stderr
    assert len(list((tmp_path / "g").glob("*.dcm"))) == 5


def test_retrieve_with_no_key_is_a_failure_not_an_empty_success(server, corpus, tmp_path):
    for p in corpus:
        server.archive.store(p.read_bytes())
    # the command line says which key is needed before asking
    r = run_cli("dicom", "move", server.spec, "--dest", "STORESCP", "-L", "study")
    assert r.code == 2 and "needs -k StudyInstanceUID" in r.stderr
    r = run_cli("dicom", "get", server.spec, "--out", str(tmp_path / "g"), "-L", "study")
    assert r.code == 2 and "needs -k StudyInstanceUID" in r.stderr
    assert r.stdout == "" and not (tmp_path / "g").exists()
    # asked without a key all the same, the archive answers with a failure status, not an empty success
    from pydicom.dataset import Dataset

    from ihecli.dicom import scu
    from ihecli.errors import DimseFailure

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for ask in (lambda: scu.move(server.node, "STORESCP", ident), lambda: scu.get(server.node, ident, tmp_path / "g2")):
        with pytest.raises(DimseFailure) as e:
            ask()
        assert e.value.status not in (0x0000, 0xFF00)
    assert not list((tmp_path / "g2").glob("*.dcm"))


def test_move_converts_to_what_the_destination_accepts(archive, corpus, tmp_path):
    """Stored Explicit VR files sent to a storescp that takes Implicit VR only."""
    import subprocess

    from helpers import DCMTK_ENV, dcmtk, wait_port
    from ihecli.archive.server import DicomServer
    from ihecli.config import Node

    for p in corpus:
        archive.store(p.read_bytes())
    out = tmp_path / "implicit"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "+xi", "-aet", "IMPLICIT", "-od", str(out), str(port)],
                           env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = DicomServer(archive, port=0, destinations={"IMPLICIT": Node("IMPLICIT", "127.0.0.1", port)})
    srv.start()
    try:
        wait_port(port)
        study = _study(corpus[0])
        r = run_cli("dicom", "move", f"IHE_ARCHIVE@127.0.0.1:{srv.port}", "--dest", "IMPLICIT",
                    "-k", f"StudyInstanceUID={study}", "--json")
        assert r.code == 0, r.stderr
        assert r.json["completed"] == 6
        got = sorted(out.iterdir())
        assert len(got) == 6
        for p in got:
            ds = dcmread(p)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
            original = next(c for c in corpus if dcmread(c).SOPInstanceUID == ds.SOPInstanceUID)
            assert ds.PixelData == dcmread(original).PixelData
    finally:
        srv.stop()
        scp.terminate()
        scp.wait(10)


def test_a_compressed_instance_reaches_peers_that_take_only_native_syntaxes(archive, tmp_path):
    """A JPEG-compressed instance, retrieved by DCMTK with its default (uncompressed-only)
    presentation contexts: storescp as C-MOVE destination, getscu over C-GET. Both get it
    decompressed, the same instance (same SOP Instance UID), the same picture size."""
    import subprocess

    from pydicom.data import get_testdata_file

    from helpers import DCMTK_ENV, dcmtk, run_dcmtk, wait_port
    from ihecli.archive.server import DicomServer
    from ihecli.config import Node

    src = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert src.file_meta.TransferSyntaxUID.is_compressed
    assert archive.store(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).read_bytes()).outcome == "stored"
    moved, got = tmp_path / "moved", tmp_path / "got"
    moved.mkdir()
    got.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "PLAIN", "-od", str(moved), str(port)],
                           env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = DicomServer(archive, port=0, destinations={"PLAIN": Node("PLAIN", "127.0.0.1", port)})
    srv.start()
    try:
        wait_port(port)
        r = run_cli("dicom", "move", f"IHE_ARCHIVE@127.0.0.1:{srv.port}", "--dest", "PLAIN",
                    "-k", f"StudyInstanceUID={src.StudyInstanceUID}", "--json")
        assert r.code == 0 and r.json["completed"] == 1, r.stderr
        p = run_dcmtk("getscu", "-aec", "IHE_ARCHIVE", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={src.StudyInstanceUID}", "127.0.0.1", str(srv.port), check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        for folder in (moved, got):
            (f,) = folder.iterdir()
            ds = dcmread(f)
            assert not ds.file_meta.TransferSyntaxUID.is_compressed
            assert ds.SOPInstanceUID == src.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
            assert len(ds.PixelData) == src.Rows * src.Columns * 3
        # dicom store of the file itself to the same peer
        for f in moved.iterdir():
            f.unlink()
        r = run_cli("dicom", "store", f"PLAIN@127.0.0.1:{port}", get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
        assert r.code == 0, r.stderr
        (f,) = moved.iterdir()
        ds = dcmread(f)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed and ds.SOPInstanceUID == src.SOPInstanceUID
    finally:
        srv.stop()
        scp.terminate()
        scp.wait(10)


def test_one_shot_commands_log_only_problems_unless_verbose(corpus, tmp_path):
    """A one-shot command says what it did in its own lines; the library's INFO log (here the
    archive's account of a rejection note) shows with -v only. Servers keep logging at INFO."""
    db = ["--db", f"sqlite:///{tmp_path / 'a.db'}", "--storage", str(tmp_path / "st")]
    assert run_cli("archive", "import", str(corpus[0].parent), *db).code == 0
    r = run_cli("iocm", "reject", "--reason", "quality", "--instance", str(dcmread(corpus[0]).SOPInstanceUID),
                "--store", "--yes", *db)
    assert r.code == 0, r.stderr
    assert "INFO" not in r.stderr and "rejected" in r.stderr.lower()
    r = run_cli("-v", "iocm", "reject", "--reason", "quality", "--instance", str(dcmread(corpus[1]).SOPInstanceUID),
                "--store", "--yes", *db)
    assert r.code == 0, r.stderr
    assert "INFO rejection note" in r.stderr

    from ihecli import cli

    assert cli._words(["-c", "x.toml", "archive", "serve", "--port", "1"]) == ["archive", "serve"]
    assert tuple(cli._words(["--profile", "serve", "xds", "serve"])) in cli.SERVERS
    assert tuple(cli._words(["xds", "query", "serve"])) not in cli.SERVERS


def test_messages_stay_one_line_in_a_pipe(capsys):
    """stderr that is not a terminal: warnings and notes are not wrapped at 80 columns."""
    from ihecli.cli import output

    long = "a long path " + "/very/deep/folder" * 10
    output.warn(long)
    output.info(long)
    output.error(long)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"ihe: warning: {long}", long, f"ihe: error: {long}"]


def test_a_value_that_is_not_text_in_the_locale_is_a_usage_error():
    """Latin-1 bytes on a UTF-8 command line (Python keeps them as surrogates): one line, exit 2."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ihecli", "pdq", "query", "--family", b"M\xfcller".decode(
        "utf-8", "surrogateescape"), "--supplier", "http://127.0.0.1:1/pdq"], capture_output=True, text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert r.returncode == 2, r.stderr
    assert r.stderr == "ihe: error: 'M\\xfcller' is not text in this system's encoding (utf-8): give the value as " \
                       "the terminal's encoding writes it\n"


def test_ctrl_c_of_a_waiting_command_is_one_line(tmp_path):
    """Ctrl-C while a command waits on a peer (here an NTP server that never answers: the request
    has arrived when the signal is sent) ends with 'interrupted' and exit 130."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ntp:
        ntp.bind(("127.0.0.1", 0))
        ntp.settimeout(30)
        p = subprocess.Popen([sys.executable, "-m", "ihecli", "time", "check", "--server",
                              f"127.0.0.1:{ntp.getsockname()[1]}", "--timeout", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "IHE_CONFIG": str(tmp_path / "none.toml")})
        ntp.recvfrom(512)  # the command now waits for the answer
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=30)
    assert (p.returncode, err) == (130, "ihe: error: interrupted\n")


def test_help_examples_are_printed_whole():
    """An example in --help is one line as written (click rewrapped it at a hyphen: 'for-' / 'surgery')."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ihecli", "kin", "create", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, check=True).stdout
    assert "  Example: ihe kin create --study 1.2.3 --instance 1.2.3.4.5 --title for-surgery --description " \
           "'Fracture' --to PACS\n" in out


def test_reading_commands_refuse_a_database_that_is_not_there(tmp_path):
    """A mistyped --db for a command that only reads or removes is a usage error naming it (it made
    an empty database and answered 'no matches'); commands that store make the file."""
    typo = tmp_path / "archvie.db"
    for args in (["archive", "ls"], ["archive", "rejected"], ["archive", "mpps", "ls"], ["archive", "check"],
                 ["archive", "rm", "--study", "1.2.3", "--yes"], ["archive", "export", "--since", "1d", "--out",
                                                                  str(tmp_path / "o")],
                 ["tce", "ls"], ["pix", "ls"], ["hl7", "orders"], ["audit", "query"]):
        r = run_cli(*args, "--db", str(typo))
        assert (r.code, r.stderr) == (2, f"ihe: error: no archive database {typo} (--db or archive.db names a file "
                                         "that is not there)\n"), args
    assert not typo.exists()
    assert run_cli("archive", "import", str(tmp_path), "--db", str(typo), "--storage", str(tmp_path / "st")).code == 1
    assert typo.is_file()  # storing makes it (here: nothing to store in an empty folder)
    assert run_cli("archive", "ls", "--db", str(typo)).code == 0
