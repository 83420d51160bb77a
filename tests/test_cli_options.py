"""Options mean one thing everywhere, and --json means JSON on stdout and nothing else.

A long option name used by several commands must have the same help text and the same type in
each (the way options defined once in ihecli/cli/options.py and reused do), and an option defined
in ihecli/cli/options.py must not be redefined differently by a command under the same name.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, get_origin
import uuid

import pytest
from pydicom import dcmread

from helpers import free_port, make_corpus, run_cli

ROOT = Path(__file__).resolve().parent.parent


def _load_gen():
    if "gen_docs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_docs"] = module
        spec.loader.exec_module(module)
    return sys.modules["gen_docs"]


gen = _load_gen()
TREE = gen.command_tree()
COMMANDS = list(TREE.walk())


def _uses(option_name: str, commands=COMMANDS) -> list[tuple[str, object]]:
    """(command, option) for every command that has option_name."""
    return [(c.name, o) for c in commands for o in c.options if option_name in o.names]


def _meanings(option_name: str, commands=COMMANDS) -> dict[tuple[str, str], list[str]]:
    """(help text, type) -> the commands where option_name has that meaning.

    Whether an option may be repeated is not part of its meaning: `archive serve --dest` takes
    several destinations, `dicom move --dest` one, and both are a C-MOVE destination.
    """
    meanings = defaultdict(list)
    for cmd, o in _uses(option_name, commands):
        type_name = o.type_name[5:-1] if o.type_name.startswith("list[") else o.type_name
        meanings[(o.help, type_name)].append(cmd)
    return dict(meanings)


LONG_NAMES = sorted({n for c in COMMANDS for o in c.options for n in o.long_names})
SHORT_NAMES = sorted({n for c in COMMANDS for o in c.options for n in o.names if not n.startswith("--")})


def _shared_options() -> dict[str, str]:
    """Long option name -> help text, for the options defined once in ihecli/cli/options.py."""
    from ihecli.cli import options

    shared = {}
    for attr, value in sorted(vars(options).items()):
        if get_origin(value) is not Annotated:
            continue
        for info in value.__metadata__:
            if type(info).__name__ != "OptionInfo":
                continue
            decls = [d for d in (info.default, *info.param_decls) if isinstance(d, str) and d.startswith("--")]
            for d in decls:
                shared[d] = " ".join((info.help or "").split())
    return shared


SHARED = _shared_options()


def test_the_tree_and_the_shared_options_are_read():
    assert {"--json", "--db", "--timeout", "--calling-aet", "--level"} <= set(LONG_NAMES)
    assert SHARED["--json"].startswith("Print machine-readable JSON")
    assert len(_uses("--json")) > 3 and len(_uses("--db")) > 3


@pytest.mark.parametrize("name", LONG_NAMES)
def test_long_option_has_one_meaning(name):
    meanings = _meanings(name)
    assert len(meanings) == 1, f"{name} means different things:\n" + "\n".join(
        f"  {t:10} {h!r}: {', '.join(cmds)}" for (h, t), cmds in sorted(meanings.items()))


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_option_is_not_redefined(name):
    """A command that has an option of options.py's name uses options.py's definition."""
    different = [f"  {cmd}: {o.help!r}" for cmd, o in _uses(name) if o.help != SHARED[name]]
    assert not different, (f"ihecli/cli/options.py defines {name} as {SHARED[name]!r}, but these commands "
                           f"define their own:\n" + "\n".join(different))


@pytest.mark.parametrize("name", SHORT_NAMES)
def test_short_option_stands_for_one_long_option(name):
    longs = defaultdict(list)
    for cmd, o in _uses(name):
        longs[tuple(o.long_names)].append(cmd)
    assert len(longs) == 1, f"{name} stands for different options:\n" + "\n".join(
        f"  {'/'.join(k)}: {', '.join(v)}" for k, v in sorted(longs.items()))


def test_conflict_check_sees_a_conflict():
    """The check above on a made-up tree where --out means two things."""
    a = gen.Opt(["-o", "--out"], True, False, False, "DIR", "Folder for the instances.", "Path",
                gen.Completion("file"))
    b = gen.Opt(["--out"], True, False, False, "FILE", "Write the report here.", "str", gen.Completion())
    tree = gen.Cmd(("ihe",), "", [], [], [gen.Cmd(("ihe", "x"), "", [a], []), gen.Cmd(("ihe", "y"), "", [b], [])])
    commands = list(tree.walk())
    assert sorted(_meanings("--out", commands).values()) == [["ihe x"], ["ihe y"]]
    same = gen.Cmd(("ihe",), "", [], [], [gen.Cmd(("ihe", "x"), "", [a], []), gen.Cmd(("ihe", "y"), "", [a], [])])
    assert list(_meanings("--out", list(same.walk())).values()) == [["ihe x", "ihe y"]]


# -- --json ----------------------------------------------------------------------------------------

JSON_COMMANDS = sorted(c.name for c in COMMANDS if any("--json" in o.names for o in c.options))


class World:
    """A small corpus on disk, and, on first use, a DICOM peer holding it with a move destination."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.files = tmp / "corpus"
        make_corpus(self.files, studies=1, series=1, images=2)
        first = dcmread(next(self.files.iterdir()), stop_before_pixels=True)
        self.study = str(first.StudyInstanceUID)
        self.xds_patient = f"{first.PatientID}^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"  # the study's own patient
        self._closers = []
        self._peer = None

    @property
    def peer(self) -> str:
        if self._peer is None:
            from ihecli.archive import Archive
            from ihecli.archive.server import DicomServer
            from ihecli.config import Node

            dest_archive = Archive(f"sqlite:///{self.tmp / 'dest.db'}", self.tmp / "dest")
            dest = DicomServer(dest_archive, aet="DEST", port=0)
            dest.start()
            self._closers += [dest_archive.close, dest.stop]
            archive = Archive(f"sqlite:///{self.tmp / 'peer.db'}", self.tmp / "peer")
            archive.import_paths([self.files])
            server = DicomServer(archive, aet="PEER", port=0,
                                 destinations={"DEST": Node("DEST", "127.0.0.1", dest.port)})
            server.start()
            self._closers += [archive.close, server.stop]
            self._peer = f"PEER@127.0.0.1:{server.port}"
        return self._peer

    def close(self):
        for close in reversed(self._closers):
            close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def _with_data(w: World) -> None:
    r = run_cli("archive", "import", str(w.files))
    assert r.code == 0, r.stderr


def _with_tce_case(w: World) -> None:
    """The corpus and a teaching file manifest for it (a key object titled TCE001) in the archive."""
    _with_data(w)
    r = run_cli("kin", "create", "--study", w.study, "--series", _series(w), "--title", "TCE001", "--store")
    assert r.code == 0, r.stderr


def _series(w: World) -> str:
    return str(dcmread(next(w.files.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


def _with_audit_event(w: World) -> None:
    """One audit message received by a repository on the archive database of the data dir."""
    from ihecli.atna.repository import AuditRepository
    from ihecli.config import load

    repo = AuditRepository(load().archive.db_url(), tls_port=None, udp_port=0)
    repo.start()
    try:
        r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{repo.udp_port}", "--event", "login")
        assert r.code == 0 and repo.wait_stored(1), r.stderr
    finally:
        repo.stop()


def _with_time_server(w: World) -> None:
    """chronyd serving NTP on a loopback port (never touching the clock: -x)."""
    import subprocess
    import time

    port = free_port()
    (w.tmp / "chrony.conf").write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 10\n"
                                       f"cmdport 0\npidfile {w.tmp}/chronyd.pid\n")
    p = subprocess.Popen(["/usr/sbin/chronyd", "-f", str(w.tmp / "chrony.conf"), "-d", "-x"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w._closers.append(lambda: (p.terminate(), p.wait(10)))
    w.time_server = f"127.0.0.1:{port}"
    for _ in range(100):
        if run_cli("time", "check", "--server", w.time_server, "--timeout", "0.2").code == 0:
            return
        time.sleep(0.05)



def _with_hl7_feed(w: World) -> None:
    """The data dir's archive receiving HL7 over MLLP on a free port, and an order file for it."""
    from ihecli.archive import Archive
    from ihecli.config import load
    from ihecli.net.mllp import MllpServer
    from ihecli.workflow.hl7 import Hl7Feed

    st = load().archive
    archive = Archive(st.db_url(), st.storage_dir())
    srv = MllpServer(Hl7Feed(archive), port=0)
    srv.start()
    w._closers += [archive.close, srv.stop]
    w.hl7 = f"127.0.0.1:{srv.port}"
    (w.tmp / "orm.hl7").write_bytes(b"MSH|^~\\&|RIS|H|PACS|R|20240101||ORM^O01|1|P|2.3.1\rPID|1||P1\r"
                                     b"ORC|NW|PL1|FL1\rOBR|1|PL1|FL1|CT1^CT HEAD\r")
    assert run_cli("hl7", "send", w.hl7, str(w.tmp / "orm.hl7")).code == 0


def _with_dicomweb(w: World) -> None:
    """The data dir's archive served over DICOMweb on a free port, and a photo to upload."""
    from PIL import Image

    from ihecli.archive import Archive
    from ihecli.config import load
    from ihecli.web import DicomWebServer

    st = load().archive
    archive = Archive(st.db_url(), st.storage_dir())
    web = DicomWebServer(archive)
    web.start()
    w._closers += [archive.close, web.stop]
    w.web = web.base_url
    Image.new("RGB", (8, 8)).save(w.tmp / "photo.jpg")

XDS_PID = "PID1^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"


def _with_xds(w: World) -> None:
    """A Document Registry and Repository on the data dir's archive, holding one document."""
    from ihecli.archive import Archive
    from ihecli.config import load
    from ihecli.xds.server import XdsServer

    st = load()
    archive = Archive(st.archive.db_url(), st.archive.storage_dir())
    srv = XdsServer(archive, repository_unique_id=st.xds.repository_unique_id)
    srv.start()
    w._closers += [archive.close, srv.stop]
    w.xds = srv.url
    (w.tmp / "note.txt").write_text("note")
    r = run_cli("xds", "submit", str(w.tmp / "note.txt"), "--patient", XDS_PID, "--repository", w.xds, "--json")
    assert r.code == 0, r.stderr
    w.xds_doc = json.loads(r.stdout)[0]

def _with_xca(w: World) -> None:
    """_with_xds, and a Responding Gateway over the same archive (w.xca: HOME=URL)."""
    from ihecli.archive import Archive
    from ihecli.config import load
    from ihecli.xca.responding import XcaServer

    _with_xds(w)
    st = load()
    archive = Archive(st.archive.db_url(), st.archive.storage_dir())
    srv = XcaServer(archive, home="urn:oid:1.2.3.99", repository_unique_id=st.xds.repository_unique_id)
    srv.start()
    w._closers += [archive.close, srv.stop]
    w.xca = f"urn:oid:1.2.3.99={srv.url}"


def _with_xdsi(w: World) -> None:
    """The corpus published as an XDS-I manifest (w.manifest) to _with_xds's repository, and the
    archive answering RAD-69 (w.xdsi)."""
    from ihecli.archive import Archive
    from ihecli.config import load
    from ihecli.web import DicomWebServer
    from ihecli.xdsi.manifest import default_repository_uid

    if getattr(w, "manifest", None):
        return
    _with_data(w)
    _with_xds(w)
    st = load().archive
    archive = Archive(st.db_url(), st.storage_dir())
    web = DicomWebServer(archive, imaging_source_uid=default_repository_uid(st.aet))
    web.start()
    w._closers += [archive.close, web.stop]
    w.xdsi = web.url + "/xdsi"
    r = run_cli("xdsi", "publish", "--study", w.study, "--patient", w.xds_patient, "--repository", w.xds, "--json")
    assert r.code == 0, r.stderr
    w.manifest = json.loads(r.stdout)[0]["uniqueId"]


def _with_pix_manager(w: World) -> None:
    """The test PIX Manager (tests/pixmgr.py) on a free port."""
    from pixmgr import PixManager

    m = PixManager()
    m.start()
    w._closers.append(m.stop)
    w.pix = m.peer


def _with_pix_links(w: World) -> None:
    """The IPF A31 cross-references in the data dir's archive database."""
    from pixmgr import A31_FILES

    from ihecli.archive import Archive
    from ihecli.config import load
    from ihecli.pix import UpdateNotificationReceiver

    st = load().archive
    with Archive(st.db_url(), st.storage_dir()) as archive:
        receiver = UpdateNotificationReceiver(archive)
        for p in A31_FILES:
            assert b"MSA|AA" in receiver(p.read_bytes())


def _with_pdq_supplier(w: World) -> None:
    """The test PDQ Supplier (tests/pdqsupplier.py) on a free port."""
    from pdqsupplier import PdqSupplier

    s = PdqSupplier()
    s.start()
    w._closers.append(s.stop)
    w.pdq = s.url


# command -> (set-up, arguments); each a cheap invocation that succeeds
def _with_workflow(w: World) -> None:
    """The data dir's archive served with its workflow services (storage commitment, MPPS) and the
    corpus in it; one step created (w.mpps_uid)."""
    if getattr(w, "wf", None):
        return
    from ihecli.archive import Archive
    from ihecli.archive.server import DicomServer
    from ihecli.config import load
    from ihecli.workflow.service import WorkflowServices

    _with_data(w)
    archive = Archive.open(load())
    server = DicomServer(archive, port=0, services=[WorkflowServices(archive)])
    server.start()
    w._closers += [archive.close, server.stop]
    w.wf = f"IHE_ARCHIVE@127.0.0.1:{server.port}"
    r = run_cli("dicom", "mpps", "create", w.wf, "--patient-id", "P1", "--modality", "CT", "--json")
    assert r.code == 0, r.stderr
    w.mpps_uid = json.loads(r.stdout)["sop_uid"]


def _with_rejection(w: World) -> None:
    _with_data(w)
    r = run_cli("iocm", "reject", "--reason", "quality", "--study", w.study, "--store", "--yes")
    assert r.code == 0, r.stderr


JSON_RUNS = {
    "ihe dicom commit": (_with_workflow, lambda w: ["dicom", "commit", w.wf, str(w.files)]),
    "ihe dicom mpps create": (_with_workflow, lambda w: ["dicom", "mpps", "create", w.wf, "--patient-id", "P2"]),
    "ihe dicom mpps set": (_with_workflow, lambda w: ["dicom", "mpps", "set", w.wf, w.mpps_uid, "--state",
                                                      "DISCONTINUED", "--series-from", str(w.files)]),
    "ihe archive mpps ls": (_with_workflow, lambda w: ["archive", "mpps", "ls"]),
    "ihe archive rejected": (_with_rejection, lambda w: ["archive", "rejected"]),
    "ihe config show": (None, lambda w: ["config", "show"]),
    "ihe archive import": (None, lambda w: ["archive", "import", str(w.files)]),
    "ihe archive ls": (_with_data, lambda w: ["archive", "ls", "-L", "series"]),
    "ihe archive rm": (_with_data, lambda w: ["archive", "rm", "--study", w.study, "--yes"]),
    "ihe archive export": (_with_data, lambda w: ["archive", "export", "--since", "1d", "--out", str(w.tmp / "out")]),
    "ihe archive check": (_with_data, lambda w: ["archive", "check"]),
    "ihe archive copy-db": (_with_data, lambda w: ["archive", "copy-db", str(w.tmp / f"copy-{uuid.uuid4().hex}.db")]),
    "ihe dicom echo": (None, lambda w: ["dicom", "echo", w.peer]),
    "ihe dicom store": (None, lambda w: ["dicom", "store", w.peer, str(w.files)]),
    "ihe dicom find": (None, lambda w: ["dicom", "find", w.peer, "-k", "PatientID=*"]),
    "ihe dicom move": (None, lambda w: ["dicom", "move", w.peer, "--dest", "DEST", "-k",
                                        f"StudyInstanceUID={w.study}"]),
    "ihe dicom get": (None, lambda w: ["dicom", "get", w.peer, "--out", str(w.tmp / "got"), "-k",
                                       f"StudyInstanceUID={w.study}"]),
    "ihe kin create": (_with_data, lambda w: ["kin", "create", "--study", w.study, "--series", _series(w),
                                              "--out", str(w.tmp / "kin")]),
    "ihe kin show": (None, lambda w: ["kin", "show", str(ROOT / "tests" / "data" / "kos" / "IDS-DEPT022-a-kos.dcm")]),
    "ihe iocm reject": (_with_data, lambda w: ["iocm", "reject", "--reason", "quality", "--study", w.study,
                                               "--store", "--yes"]),
    "ihe tce ls": (_with_tce_case, lambda w: ["tce", "ls"]),
    "ihe tce show": (_with_tce_case, lambda w: ["tce", "show", "1"]),
    "ihe tce export": (_with_tce_case, lambda w: ["tce", "export", "1", "--out", str(w.tmp / "case")]),
    "ihe audit send": (None, lambda w: ["audit", "send", "--arr", f"udp://127.0.0.1:{free_port()}", "--event",
                                        "start"]),
    "ihe audit query": (_with_audit_event, lambda w: ["audit", "query"]),
    "ihe time check": (_with_time_server, lambda w: ["time", "check", "--server", w.time_server]),
    "ihe wic upload": (_with_dicomweb, lambda w: ["wic", "upload", str(w.tmp / "photo.jpg"), "--patient", "P1",
                                                  "--url", w.web]),
    "ihe pdi burn": (None, lambda w: ["pdi", "burn", str(w.files), "--usb", str(w.tmp / "pdi-usb"), "--no-web"]),
    "ihe pdi import": (None, lambda w: ["pdi", "import", str(w.files)]),
    "ihe pdi view": (None, lambda w: ["pdi", "view", str(w.files)]),
    "ihe hl7 send": (_with_hl7_feed, lambda w: ["hl7", "send", w.hl7, str(w.tmp / "orm.hl7")]),
    "ihe hl7 orders": (_with_hl7_feed, lambda w: ["hl7", "orders"]),
    "ihe pix query": (_with_pix_manager, lambda w: ["pix", "query", "13278", "--domain", "HIMSS2005", "--manager",
                                                    w.pix]),
    "ihe pix ls": (_with_pix_links, lambda w: ["pix", "ls"]),
    "ihe pdq query": (_with_pdq_supplier, lambda w: ["pdq", "query", "--family", "Jones", "--supplier", w.pdq]),
    "ihe xds submit": (_with_xds, lambda w: ["xds", "submit", str(w.tmp / "note.txt"), "--patient", XDS_PID,
                                             "--repository", w.xds]),
    "ihe xds query": (_with_xds, lambda w: ["xds", "query", "find-documents", "--patient", XDS_PID,
                                            "--registry", w.xds]),
    "ihe xds retrieve": (_with_xds, lambda w: ["xds", "retrieve", w.xds_doc["uniqueId"], "--out",
                                               str(w.tmp / "docs"), "--repository", w.xds]),
    "ihe xds delete": (_with_xds, lambda w: ["xds", "delete", w.xds_doc["entryUUID"], "--yes", "--registry", w.xds]),
    "ihe xca query": (_with_xca, lambda w: ["xca", "query", "find-documents", "--patient", XDS_PID,
                                            "--community", w.xca]),
    "ihe xca retrieve": (_with_xca, lambda w: ["xca", "retrieve", w.xds_doc["uniqueId"], "--home", "urn:oid:1.2.3.99",
                                               "--out", str(w.tmp / "xca"), "--community", w.xca]),
    "ihe xdsi publish": (_with_xdsi, lambda w: ["xdsi", "publish", "--study", w.study, "--patient", w.xds_patient,
                                                "--repository", w.xds]),
    "ihe xdsi retrieve": (_with_xdsi, lambda w: ["xdsi", "retrieve", w.manifest, "--repository", w.xds,
                                                 "--source", w.xdsi, "--out", str(w.tmp / "xdsi")]),
}


def test_every_json_command_is_run_below():
    assert JSON_COMMANDS, "no command has --json"
    assert sorted(JSON_RUNS) == JSON_COMMANDS, "add a cheap --json invocation of each new command to JSON_RUNS"


@pytest.mark.parametrize("name", sorted(JSON_RUNS))
def test_json_is_all_there_is_on_stdout(name, world):
    setup, args = JSON_RUNS[name]
    if setup:
        setup(world)
    r = run_cli(*args(world), "--json")
    assert r.code == 0, r.stderr
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"`{name} --json` printed more than JSON on stdout ({e}):\n{r.stdout}") from None
    assert isinstance(doc, (dict, list)) and doc, doc


def test_json_of_an_empty_archive():
    r = run_cli("archive", "ls", "--json")
    assert r.code == 0 and json.loads(r.stdout) == []
    r = run_cli("archive", "check", "--json")
    assert r.code == 0 and json.loads(r.stdout)["instances"] == 0


def test_json_failures_leave_stdout_empty():
    r = run_cli("dicom", "echo", f"NOBODY@127.0.0.1:{free_port()}", "--timeout", "2", "--json")
    assert r.code == 4 and r.stdout == "" and "ihe: error:" in r.stderr
    r = run_cli("archive", "rm", "--study", "1.2.3", "--yes", "--json")
    assert r.code == 1 and r.stdout == "" and "ihe: error:" in r.stderr
