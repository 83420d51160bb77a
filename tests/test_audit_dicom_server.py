"""The archive's DICOM services over TLS (ITI-19) and their audit events (ITI-20), with DCMTK's
tools as the peers: refused peers become Security Alerts, stored, queried and moved instances
their PS3.15 events."""
from __future__ import annotations

import pytest

from helpers import run_cli
from ihecli import atna
from test_atna import problems
from test_audit_dicom import arr, events  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def dicom_pki(tmp_path_factory):
    """Separate key and certificate files (DCMTK wants them apart), a CA, and a rogue CA's pair."""
    import trustme

    d = tmp_path_factory.mktemp("dicom-pki")
    ca, rogue = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    out = {"ca": str(d / "ca.pem")}
    for name, issuer in (("server", ca), ("client", ca), ("rogue", rogue)):
        c = issuer.issue_cert("localhost", "127.0.0.1")
        c.private_key_pem.write_to_path(str(d / f"{name}.key"))
        c.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
        c.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        out[name] = str(d / f"{name}.pem")
        out[name + "_key"], out[name + "_crt"] = str(d / f"{name}.key"), str(d / f"{name}.crt")
    return out


@pytest.fixture
def tls_archive(tmp_path, dicom_pki, arr, monkeypatch):
    from ihecli.archive import Archive
    from ihecli.archive.server import DicomServer
    from ihecli.net import tls

    # one process here plays the archive and the clients: the profile they share names the repository
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\nspool = "{tmp_path / "spool"}"\n')
    monkeypatch.setenv("IHE_CONFIG", str(cfg))
    atna.configure(f"tcp://127.0.0.1:{arr.tcp_port}", spool=tmp_path / "spool")
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage")
    srv = DicomServer(archive, aet="IHE_ARCHIVE", port=0,
                      ssl_context=tls.context(tls.TlsConfig(cert=dicom_pki["server"], ca=dicom_pki["ca"]), server=True))
    srv.start()
    yield srv
    srv.stop()
    archive.close()


def test_dicom_over_tls_with_dcmtk_and_ihe(tls_archive, dicom_pki, arr, corpus):
    from helpers import run_dcmtk

    port = str(tls_archive.port)
    k = dicom_pki
    # DCMTK over TLS with a certificate of the trusted CA: echo and store
    run_dcmtk("echoscu", "+tls", k["client_key"], k["client_crt"], "+cf", k["ca"], "-aec", "IHE_ARCHIVE",
              "127.0.0.1", port)
    run_dcmtk("storescu", "+tls", k["client_key"], k["client_crt"], "+cf", k["ca"], "-aet", "TLSSCU", "-aec",
              "IHE_ARCHIVE", "127.0.0.1", port, str(corpus[0]))
    assert tls_archive.archive.counts()["instances"] == 1
    # ihe over TLS, and refused without a certificate, with a rogue one, and without TLS
    r = run_cli("dicom", "echo", f"IHE_ARCHIVE@127.0.0.1:{port}", "--cert", k["client"], "--ca", k["ca"])
    assert r.code == 0, r.stderr
    r = run_cli("dicom", "find", f"IHE_ARCHIVE@127.0.0.1:{port}", "--cert", k["client"], "--ca", k["ca"], "--json")
    assert r.code == 0 and len(r.json) == 1, r.stderr
    r = run_cli("dicom", "echo", f"IHE_ARCHIVE@127.0.0.1:{port}", "--ca", k["ca"], "--timeout", "5")
    assert r.code == 1, r.stderr
    bad = run_dcmtk("echoscu", "+tls", k["rogue_key"], k["rogue_crt"], "+cf", k["ca"], "-aec", "IHE_ARCHIVE",
                    "127.0.0.1", port, check=False)
    assert bad.returncode != 0
    plain = run_dcmtk("echoscu", "-to", "5", "-aec", "IHE_ARCHIVE", "127.0.0.1", port, check=False)
    assert plain.returncode != 0
    # the server still serves, and recorded each refusal as a Security Alert (Node Authentication)
    r = run_cli("dicom", "echo", f"IHE_ARCHIVE@127.0.0.1:{port}", "--cert", k["client"], "--ca", k["ca"])
    assert r.code == 0, r.stderr
    got = events(arr, 5)
    alerts = [e for e in got if e.types == "110126 Node Authentication"]
    assert len(alerts) >= 3, [e.types for e in got]
    reasons = " ".join(e.message for e in alerts)
    assert "no client certificate" in reasons and "not trusted" in reasons and "not a TLS handshake" in reasons
    stored = [e for e in got if e.event == "110104 DICOM Instances Transferred"]
    assert stored and "TLSSCU" in stored[0].users and stored[0].action == "C"


def test_archive_services_are_audited(arr, server, storescp, corpus, tmp_path):
    from pydicom import dcmread

    from helpers import run_dcmtk

    atna.configure(f"tcp://127.0.0.1:{arr.tcp_port}", spool=tmp_path / "spool")
    port = str(server.port)
    run_dcmtk("storescu", "-aet", "MODALITY", "-aec", "IHE_ARCHIVE", "127.0.0.1", port, *map(str, corpus[:6]))
    study = str(dcmread(corpus[0], stop_before_pixels=True).StudyInstanceUID)
    run_dcmtk("findscu", "-S", "-aet", "VIEWER", "-aec", "IHE_ARCHIVE", "-k", "QueryRetrieveLevel=STUDY", "-k",
              "PatientID=PID000000", "-k", "StudyInstanceUID", "127.0.0.1", port)
    run_dcmtk("movescu", "-S", "-aet", "VIEWER", "-aec", "IHE_ARCHIVE", "-aem", "STORESCP", "-k",
              "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", port)
    got = events(arr, 4)
    kinds = [(e.event, e.action) for e in got]
    assert ("110104 DICOM Instances Transferred", "C") in kinds  # stored from MODALITY
    assert ("110112 Query", "E") in kinds
    assert ("110102 Begin Transferring DICOM Instances", "E") in kinds
    assert ("110104 DICOM Instances Transferred", "R") in kinds  # sent to STORESCP
    received = [e for e in got if e.action == "C"][0]
    assert "MODALITY" in received.users and received.patients == ["PID000000"]
    query = [e for e in got if e.event == "110112 Query"][0]
    assert "VIEWER" in query.users
    sent = [e for e in got if e.action == "R"][0]
    assert "STORESCP" in sent.users and sent.patients == ["PID000000"]
    for e in got:
        assert problems(e.message.encode("utf-8")) == [], e.event


def test_archive_serve_with_tls_and_workers(arr, dicom_pki, tmp_path, corpus):
    """`ihe archive serve --cert --ca` with two worker processes: TLS on the shared port, the
    refusal recorded by the worker that refused, start and stop by the server."""
    import os
    import subprocess
    import sys

    from helpers import free_port, wait_port

    k = dicom_pki
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\nspool = "{tmp_path / "spool"}"\n')
    env = {**os.environ, "IHE_CONFIG": str(cfg), "IHE_DATA_DIR": str(tmp_path / "data")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port), "--workers", "2",
                          "--cert", k["server"], "--ca", k["ca"]], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 30)
        node = f"IHE_ARCHIVE@127.0.0.1:{port}"
        ok = run_cli("--config", str(cfg), "dicom", "store", node, str(corpus[0]), "--cert", k["client"], "--ca",
                     k["ca"])
        assert ok.code == 0, ok.stderr
        refused = run_cli("--config", str(cfg), "dicom", "echo", node, "--cert", k["rogue"], "--ca", k["ca"],
                          "--timeout", "5")
        assert refused.code == 1, refused.stderr
    finally:
        p.terminate()
        err = p.communicate(timeout=30)[1]
    assert p.returncode == 0, err
    assert "with TLS" in err
    got = events(arr, 5)
    types = [e.types for e in got]
    assert "110120 Application Start" in types and "110121 Application Stop" in types
    assert "110126 Node Authentication" in types
    assert sorted(e.action for e in got if e.event == "110104 DICOM Instances Transferred") == ["C", "R"]


def test_client_refuses_an_untrusted_archive_and_audits_it(tls_archive, dicom_pki, arr, tmp_path):
    k = dicom_pki
    other = tmp_path / "other-ca.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(other))
    r = run_cli("dicom", "echo", f"IHE_ARCHIVE@127.0.0.1:{tls_archive.port}", "--cert", k["client"], "--ca", str(other),
                "--timeout", "5")
    assert r.code == 1 and "certificate not trusted" in r.stderr, r.stderr
    r = run_cli("audit", "send", "--arr", f"tls://127.0.0.1:{tls_archive.port}", "--ca", str(other), "--event",
                "login")
    assert r.code == 1, r.stderr
    # ours as the client (and the archive's, which saw us leave the handshake)
    import time

    for _ in range(100):
        ours = [e for e in events(arr, 2) if e.types == "110126 Node Authentication" and "TLS client" in e.users]
        if len(ours) >= 2:
            break
        time.sleep(0.1)
    assert len(ours) == 2
