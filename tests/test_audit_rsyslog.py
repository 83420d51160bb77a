"""Real rsyslog (with rsyslog-gnutls) on loopback as the other end of ITI-20: `ihe` sends to it over
TLS and UDP, and it forwards to `ihe audit serve`'s repository with octet-counted TLS framing.
rsyslogd runs as a plain process with its own configuration in a temporary folder."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import trustme

from helpers import free_port, run_cli, wait_port
from ihecli import atna
from ihecli.atna import events as ev
from ihecli.atna.query import query_events
from ihecli.atna.repository import AuditRepository
from ihecli.net import tls

RSYSLOGD = "/usr/sbin/rsyslogd"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """PEM files: one CA, a certificate for rsyslog and one for ihe, and a rogue CA's certificate."""
    assert Path(RSYSLOGD).exists(), "rsyslogd is missing: make test installs rsyslog and rsyslog-gnutls"
    d = tmp_path_factory.mktemp("rsyslog-pki")
    ca, rogue = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    files = {"ca": str(d / "ca.pem")}
    for name, issuer in (("rsyslog", ca), ("ihe", ca), ("rogue", rogue)):
        c = issuer.issue_cert("localhost", "127.0.0.1")
        c.private_key_pem.write_to_path(str(d / f"{name}-key.pem"))
        c.cert_chain_pems[0].write_to_path(str(d / f"{name}-cert.pem"))
        c.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        files[name] = str(d / f"{name}.pem")
        files[name + "_key"], files[name + "_cert"] = str(d / f"{name}-key.pem"), str(d / f"{name}-cert.pem")
    return files


class Rsyslog:
    def __init__(self, folder: Path, conf: str, ports: list[tuple[str, int]]):
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        (folder / "rsyslog.conf").write_text(conf)
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(folder / "rsyslog.conf")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(folder / "rsyslog.conf"), "-i",
                                      str(folder / "rsyslogd.pid")], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        for kind, port in ports:
            if kind == "tcp":
                wait_port(port)
        time.sleep(0.3 if any(k == "udp" for k, _ in ports) else 0)

    def stop(self) -> str:
        self.proc.terminate()
        out = self.proc.communicate(timeout=15)[0]
        return out.decode("utf-8", "replace")


def _global(certs, folder: Path) -> str:
    return (f'global(workDirectory="{folder}" DefaultNetstreamDriver="gtls" '
            f'DefaultNetstreamDriverCAFile="{certs["ca"]}" DefaultNetstreamDriverCertFile="{certs["rsyslog_cert"]}" '
            f'DefaultNetstreamDriverKeyFile="{certs["rsyslog_key"]}")\n')


def _lines(path: Path, n: int, timeout: float = 10) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []


def test_ihe_sends_to_rsyslog_over_tls_and_udp(certs, tmp_path):
    folder = tmp_path / "rs"
    tport, uport = free_port(), free_port()
    conf = _global(certs, folder) + f'''
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="x509/certvalid")
input(type="imtcp" port="{tport}" address="127.0.0.1")
module(load="imudp")
input(type="imudp" port="{uport}" address="127.0.0.1")
template(name="audit" type="string" string="%inputname%|%msgid%|%app-name%|%msg%\\n")
action(type="omfile" file="{folder}/audit.log" template="audit")
'''
    rs = Rsyslog(folder, conf, [("tcp", tport), ("udp", uport)])
    try:
        r = run_cli("audit", "send", "--arr", f"tls://127.0.0.1:{tport}", "--cert", certs["ihe"], "--ca",
                    certs["ca"], "--event", "login", "--user", "alice")
        assert r.code == 0, r.stderr
        r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{uport}", "--event", "logout",
                    "--user", "bob")
        assert r.code == 0, r.stderr
        # the background hook: several messages over one TLS connection
        atna.configure(f"tls://127.0.0.1:{tport}", tls_config=tls.TlsConfig(cert=certs["ihe"], ca=certs["ca"]),
                       spool=tmp_path / "spool")
        for i in range(3):
            atna.record(ev.patient_record("R", patients=[f"PID{i}"], user="ihe"))
        assert atna.flush(10)
        # refused by rsyslog: a certificate from another CA
        r = run_cli("audit", "send", "--arr", f"tls://127.0.0.1:{tport}", "--cert", certs["rogue"], "--ca",
                    certs["ca"], "--event", "login", "--user", "mallory")
        assert r.code == 1, r.stderr
        lines = _lines(folder / "audit.log", 5)
    finally:
        atna.configure(None)
        rs.stop()
    assert len(lines) == 5, lines
    assert {ln.split("|")[0] for ln in lines} == {"imtcp", "imudp"}
    assert all(ln.split("|")[1:3] == ["IHE+RFC-3881", "ihe"] for ln in lines)
    assert any("alice" in ln and ln.startswith("imtcp") for ln in lines)
    assert any("bob" in ln and ln.startswith("imudp") for ln in lines)
    assert sum("PID" in ln for ln in lines) == 3
    assert not any("mallory" in ln for ln in lines)


def test_rsyslog_forwards_to_ihe_repository_with_octet_counted_tls(certs, tmp_path):
    db = f"sqlite:///{tmp_path / 'arr.db'}"
    repo = AuditRepository(db, tls_port=0, udp_port=None,
                           tls_config=tls.TlsConfig(cert=certs["ihe"], ca=certs["ca"]))
    repo.start()
    folder = tmp_path / "rs"
    uport = free_port()
    conf = _global(certs, folder) + f'''
module(load="imudp")
input(type="imudp" port="{uport}" address="127.0.0.1")
action(type="omfwd" target="127.0.0.1" port="{repo.tls_port}" protocol="tcp" TCP_Framing="octet-counted"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/certvalid"
       template="RSYSLOG_SyslogProtocol23Format")
'''
    rs = Rsyslog(folder, conf, [("udp", uport)])
    try:
        for user in ("carol", "dave"):
            r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{uport}", "--event", "login",
                        "--user", user)
            assert r.code == 0, r.stderr
        assert repo.wait_stored(2, timeout=15), rs.stop()
        repo.flush()
        rows = query_events(repo.engine, event="login")
    finally:
        rs.stop()
        repo.stop()
    assert sorted(u for r in rows for u in r.users if u in ("carol", "dave")) == ["carol", "dave"]
    assert all(r.transport == "tls" and r.format == "DICOM" for r in rows)
    assert repo.stats.refused_frames == 0

