"""C-MOVE to destinations that want TLS (ITI-19): `ihe archive serve` with profile nodes marked
``tls = true`` (or written ``tls://AET@host:port``) sends the sub-operations over TLS with the
profile's [tls] certificate and CA, to DCMTK storescp with TLS (which requires our certificate);
a destination whose certificate no trusted CA signed fails every sub-operation, counted in the
C-MOVE response, and is recorded as a Security Alert in a real Audit Record Repository."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from pydicom import dcmread

from helpers import DCMTK_ENV, dcmtk, free_port, run_cli, wait_port
from ihecli.atna.query import query_events
from test_atna import problems
from test_audit_dicom import arr  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Our CA with the archive's certificate and a destination's, and a rogue CA's destination;
    keys and certificates apart (DCMTK wants them so) and together (PEM bundles for ihe)."""
    import trustme

    d = tmp_path_factory.mktemp("move-pki")
    ca, rogue = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    out = {"ca": str(d / "ca.pem")}
    for name, issuer in (("archive", ca), ("dest", ca), ("rogue", rogue)):
        c = issuer.issue_cert("localhost", "127.0.0.1")
        c.private_key_pem.write_to_path(str(d / f"{name}.key"))
        c.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
        c.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        out[name] = str(d / f"{name}.pem")
        out[name + "_key"], out[name + "_crt"] = str(d / f"{name}.key"), str(d / f"{name}.crt")
    return out


class TlsStorescp:
    """DCMTK storescp with TLS: its key and certificate, our CA to check the archive's certificate
    (required by default: mutual authentication)."""

    def __init__(self, aet: str, key: str, crt: str, ca: str, out):
        self.aet, self.out, self.port = aet, out, free_port()
        out.mkdir()
        self.proc = subprocess.Popen([dcmtk("storescp"), "+tls", key, crt, "+cf", ca, "-aet", aet, "-od", str(out),
                                      str(self.port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def files(self) -> list:
        return sorted(self.out.glob("*"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_events(arr, want, timeout: float = 20) -> list:
    """Poll the repository until every predicate in ``want`` matches a stored event; returns the
    events (the caller asserts)."""
    end = time.monotonic() + timeout
    while True:
        arr.flush()
        got = query_events(arr.engine, with_message=True)
        if all(any(w(e) for e in got) for w in want) or time.monotonic() > end:
            return got
        time.sleep(0.1)


@pytest.fixture
def serve(tmp_path, pki, arr):
    """`ihe archive serve` (one process) with a profile naming two TLS destinations and the
    repository; yields (archive spec, secure storescp, rogue storescp, the profile file)."""
    secure = TlsStorescp("SECURE", pki["dest_key"], pki["dest_crt"], pki["ca"], tmp_path / "secure")
    rogue = TlsStorescp("ROGUE", pki["rogue_key"], pki["rogue_crt"], pki["ca"], tmp_path / "rogue")
    port = free_port()
    cfg = tmp_path / "archive.toml"
    cfg.write_text(f'''
[archive]
port = {port}
workers = 1
[tls]
cert = "{pki['archive']}"
ca = "{pki['ca']}"
[audit]
repository = "tcp://127.0.0.1:{arr.tcp_port}"
spool = "{tmp_path / 'spool'}"
[nodes.secure]
aet = "SECURE"
host = "127.0.0.1"
port = {secure.port}
tls = true
[nodes]
rogue = "tls://ROGUE@127.0.0.1:{rogue.port}"
plain = "PLAIN@127.0.0.1:{secure.port}"
''')
    env = {**os.environ, "IHE_CONFIG": str(cfg), "IHE_DATA_DIR": str(tmp_path / "data")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve"], env=env, stderr=subprocess.PIPE,
                         text=True)
    try:
        wait_port(port, 30)
        yield f"IHE_ARCHIVE@127.0.0.1:{port}", secure, rogue, cfg
    finally:
        p.terminate()
        err = p.communicate(timeout=30)[1]
        secure.stop()
        rogue.stop()
        assert p.returncode == 0, err


def test_move_to_tls_destinations(serve, corpus, arr, tmp_path):
    archive, secure, rogue, _ = serve
    client = tmp_path / "client.toml"  # the client commands: no TLS, no audit trail of their own
    client.write_text("")
    files = corpus[:6]  # one study, two series
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    r = run_cli("--config", client, "dicom", "store", archive, *files)
    assert r.code == 0, r.stderr

    # the node marked tls = true: the instances arrive over TLS
    r = run_cli("--config", client, "dicom", "move", archive, "--dest", "SECURE", "-k", f"StudyInstanceUID={study}",
                "--json", "--timeout", "60")
    assert r.code == 0, r.stderr
    assert r.json["completed"] == 6 and r.json["failed"] == 0
    assert len(secure.files()) == 6
    assert {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in secure.files()} == \
        {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

    # tls://ROGUE@...: its certificate is from a CA we do not trust; every sub-operation fails
    r = run_cli("--config", client, "dicom", "move", archive, "--dest", "ROGUE", "-k", f"StudyInstanceUID={study}",
                "--timeout", "60")
    assert r.code == 1, r.stderr
    assert "0xA702" in r.stderr and "6 sub-operations failed" in r.stderr, r.stderr
    assert rogue.files() == []

    got = wait_events(arr, [
        lambda e: e.types == "110126 Node Authentication" and f"127.0.0.1:{rogue.port}" in e.message,
        lambda e: e.event == "110104 DICOM Instances Transferred" and e.action == "R" and "SECURE" in e.users,
        lambda e: e.event == "110104 DICOM Instances Transferred" and e.action == "R" and "ROGUE" in e.users])
    alerts = [e for e in got if e.types == "110126 Node Authentication" and f"127.0.0.1:{rogue.port}" in e.message]
    assert alerts, [(e.event, e.types) for e in got]
    assert "certificate not trusted" in alerts[0].message and "DICOM C-MOVE" in alerts[0].users
    sent = [e for e in got if e.event == "110104 DICOM Instances Transferred" and "SECURE" in e.users]
    assert sent and sent[0].outcome == 0
    # what the destination never got is no success in the audit trail: serious failure (8)
    lost = [e for e in got if e.event == "110104 DICOM Instances Transferred" and "ROGUE" in e.users]
    assert lost and lost[0].outcome == 8, [(e.event, e.outcome) for e in lost]
    for e in alerts + sent + lost:
        assert problems(e.message.encode("utf-8")) == [], e.event


def test_a_tls_destination_reached_without_tls_fails(serve, corpus, tmp_path):
    """The TLS storescp as a node without the flag (PLAIN): its TLS listener does not take plain
    DICOM, which is what a destination that wants TLS but is not marked so looks like."""
    archive, secure, _, _ = serve
    client = tmp_path / "client.toml"
    client.write_text("")
    study = str(dcmread(corpus[0], stop_before_pixels=True).StudyInstanceUID)
    r = run_cli("--config", client, "dicom", "store", archive, *corpus[:6])
    assert r.code == 0, r.stderr
    r = run_cli("--config", client, "dicom", "move", archive, "--dest", "PLAIN", "-k", f"StudyInstanceUID={study}",
                "--timeout", "60")
    assert r.code == 1 and secure.files() == [], r.stderr


def test_dicom_commands_follow_the_node_flag(serve):
    """`ihe dicom` to a node marked tls, by profile name or tls://, with the profile's [tls]
    certificate; the same address without the flag gets no answer from a TLS listener."""
    _, secure, _, cfg = serve
    for node in ("secure", f"tls://SECURE@127.0.0.1:{secure.port}"):
        r = run_cli("--config", cfg, "dicom", "echo", node, "--json")
        assert r.code == 0, r.stderr
        assert r.json["node"] == f"tls://SECURE@127.0.0.1:{secure.port}"
    r = run_cli("--config", cfg, "dicom", "echo", "plain", "--timeout", "5")
    assert r.code != 0
    r = run_cli("--config", cfg, "dicom", "echo", "secure", "--no-tls", "--timeout", "5")
    assert r.code != 0


def test_archive_export_to_a_tls_node(serve, corpus, tmp_path):
    """`ihe archive export --to` a node marked tls: the profile's [tls] certificate and CA."""
    _, secure, _, cfg = serve
    local = ["--db", f"sqlite:///{tmp_path / 'local.db'}", "--storage", tmp_path / "local"]
    r = run_cli("--config", cfg, "archive", "import", *local, *map(str, corpus[:3]))
    assert r.code == 0, r.stderr
    study = str(dcmread(corpus[0], stop_before_pixels=True).StudyInstanceUID)
    r = run_cli("--config", cfg, "archive", "export", *local, "--study", study, "--to", "secure", "--json")
    assert r.code == 0, r.stderr
    assert r.json["instances"] == 3 and r.json["to"].startswith("tls://SECURE@")
    assert len(secure.files()) == 3
