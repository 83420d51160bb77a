"""Audit Record Repository and the audit hook (ITI-20) end to end on loopback: TLS and UDP
listeners storing into the archive database (SQLite and PostgreSQL), the background sender and its
spool, hostile peers, and `ihe audit send|query`."""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpers import free_port, run_cli
from ihecli import atna
from ihecli.archive.tables_audit import audit_events
from ihecli.atna import events as ev
from ihecli.atna import syslog
from ihecli.atna.query import query_events
from ihecli.atna.repository import AuditRepository
from ihecli.net import tls
from test_tls import pki  # noqa: F401  (the fixture)

DATA = Path(__file__).parent / "data" / "atna"


@pytest.fixture(autouse=True)
def no_audit_hook():
    yield
    atna.configure(None)


@pytest.fixture
def repo(db_url, pki):  # noqa: F811
    r = AuditRepository(db_url, tls_port=0, udp_port=0,
                        tls_config=tls.TlsConfig(cert=pki["server"], ca=pki["ca"]), frame_timeout=1.0)
    r.start()
    yield r
    r.stop()


def client_cfg(pki, name="client"):  # noqa: F811
    return tls.TlsConfig(cert=pki[name], ca=pki["ca"])


def stored(repo, **kw):
    repo.flush()
    return query_events(repo.engine, **kw)


def tls_stream(repo, pki, name="client"):  # noqa: F811
    return tls.connect("127.0.0.1", repo.tls_port, tls.context(client_cfg(pki, name), server=False))


def send_until_closed(s, data: bytes) -> None:
    """Send, then wait for the repository to close the connection (closing first could reset it
    before the repository read what was sent)."""
    s.sendall(data)
    s.settimeout(5)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()


def test_hook_sends_over_tls_and_repository_stores_and_queries(repo, pki, tmp_path):  # noqa: F811
    atna.configure(f"tls://127.0.0.1:{repo.tls_port}", tls_config=client_cfg(pki), spool=tmp_path / "spool",
                   source_id="TESTNODE")
    atna.record(ev.application_activity(True, app="IHE_ARCHIVE", aets=["IHE_ARCHIVE"]))
    atna.record(ev.instances_transferred(source=ev.Peer("MODALITY", "127.0.0.1"), destination=ev.Peer.local("IHE"),
                                         studies={"1.2.3": {"sop_classes": {"1.2.840.10008.5.1.4.1.1.2": 2}}},
                                         patients=["PID0001"]))
    atna.record(ev.registry_stored_query(source=ev.Peer.local("anon"), destination=ev.Peer("https://r", "r"),
                                         query_id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d", query=b"<q/>",
                                         patient_id="PID0002^^^&1.2.3&ISO"))
    assert atna.flush(10)
    assert repo.wait_stored(3)
    rows = stored(repo)
    assert {r.event for r in rows} == {"110100 Application Activity", "110104 DICOM Instances Transferred",
                                       "110112 Query"}
    assert all(r.format == "DICOM" and r.transport == "tls" and r.source == "TESTNODE" for r in rows)
    assert [r.event for r in stored(repo, event="Application Start")] == ["110100 Application Activity"]
    assert [r.event for r in stored(repo, event="iti-18")] == ["110112 Query"]
    assert [r.event for r in stored(repo, user="MODALITY")] == ["110104 DICOM Instances Transferred"]
    assert [r.event for r in stored(repo, patient="PID0002")] == ["110112 Query"]  # bare ID of a CX
    assert [r.event for r in stored(repo, patient="PID000*")] != []
    assert stored(repo, patient="NOBODY") == []


def test_udp_and_legacy_rfc3881_with_junk(repo):
    raw = (DATA / "wustl-fullmsg.txt").read_bytes()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(raw, ("127.0.0.1", repo.udp_port))
        s.sendto(b"\xef\xbb\xbf" + (DATA / "wustl-msg.txt").read_bytes()[3:], ("127.0.0.1", repo.udp_port))
        s.sendto(b"total garbage \x00\xff", ("127.0.0.1", repo.udp_port))
    assert repo.wait_stored(3)
    rows = stored(repo)
    assert sorted(r.format for r in rows) == ["RFC3881", "RFC3881", "invalid"]
    bad = [r for r in rows if r.format == "invalid"][0]
    assert bad.error and bad.transport == "udp"


def test_hostile_peers_are_refused_and_good_messages_kept(repo, pki):  # noqa: F811
    good = syslog.frame(syslog.message(ev.to_xml(ev.user_authentication(True, user="alice"))))
    # garbage after a good frame: the connection is cut, the good message kept
    send_until_closed(tls_stream(repo, pki), good + b"GARBAGE\n")
    # wrong octet count: too short a count makes the rest garbage
    send_until_closed(tls_stream(repo, pki), good + b"10 <85>1 - - - - - -" + b"x" * 50 + b"\n")
    # oversized frame announced
    send_until_closed(tls_stream(repo, pki), b"999999999 <85>")
    # slow loris: half a frame, then nothing (frame_timeout is 1 s)
    slow = tls_stream(repo, pki)
    slow.sendall(good[:40])
    # TLS without a client certificate, and with a certificate from another CA
    for cfg in (tls.TlsConfig(ca=pki["ca"]), tls.TlsConfig(cert=pki["rogue"], ca=pki["ca"])):
        with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
            c = tls.connect("127.0.0.1", repo.tls_port, tls.context(cfg, server=False))
            c.sendall(good)
            c.settimeout(2)
            if c.recv(1) == b"":
                raise ConnectionError("closed")
    # TLS 1.1 below the floor
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_verify_locations(pki["ca"])
    ctx.load_cert_chain(pki["client"])
    ctx.check_hostname = False
    with pytest.raises((ssl.SSLError, OSError)):
        tls.connect("127.0.0.1", repo.tls_port, ctx)
    # a plain-text (non-TLS) client on the TLS port
    with socket.create_connection(("127.0.0.1", repo.tls_port)) as p:
        p.sendall(good)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (repo.stats.refused_frames < 4 or repo.stats.refused_tls < 4):
        time.sleep(0.05)
    assert repo.stats.refused_frames >= 4  # garbage, short count, oversized, slow
    assert repo.stats.refused_tls >= 4  # no certificate, rogue CA, TLS 1.1, plain text
    slow.close()
    # still serving: a good message after all that
    s = tls_stream(repo, pki)
    s.sendall(good)
    assert repo.wait_stored(4)
    s.close()
    rows = stored(repo, with_message=True)
    # three good messages, and the 10 octets the short count announced, kept as received
    assert sorted(r.event for r in rows) == [""] + ["110114 User Authentication"] * 3
    assert [r.message for r in rows if r.format == "invalid"] == ["<85>1 - - "]


def test_refused_peer_is_audited_as_a_security_alert(repo, pki, tmp_path):  # noqa: F811
    # the repository's own node audits to itself: a refused peer becomes a stored Security Alert
    atna.configure(f"tls://127.0.0.1:{repo.tls_port}", tls_config=client_cfg(pki), spool=tmp_path / "spool")
    with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
        c = tls.connect("127.0.0.1", repo.tls_port, tls.context(tls.TlsConfig(cert=pki["rogue"], ca=pki["ca"]),
                                                                server=False))
        c.settimeout(2)
        c.sendall(b"5 hello")
        if c.recv(1) == b"":
            raise ConnectionError("closed")
    assert repo.wait_stored(1)
    assert atna.flush(5)
    rows = stored(repo, event="Node Authentication")
    assert len(rows) == 1 and rows[0].outcome == 4
    assert "TLS handshake refused" in query_events(repo.engine, with_message=True)[0].message


def test_spool_while_repository_is_down_then_resent_in_order(db_url, pki, tmp_path):  # noqa: F811
    port = free_port()
    spool = tmp_path / "spool"
    atna.configure(f"tls://127.0.0.1:{port}", tls_config=client_cfg(pki), spool=spool)
    users = [f"user{i}" for i in range(5)]
    t0 = time.perf_counter()
    for u in users:
        atna.record(ev.user_authentication(True, user=u))
    assert time.perf_counter() - t0 < 1  # the caller never waits for the network (loose: a busy machine)
    assert not atna.flush(0.5)
    assert len(list(spool.glob("*.msg"))) == 5
    r = AuditRepository(db_url, tls_port=port, udp_port=None, tls_config=tls.TlsConfig(cert=pki["server"],
                                                                                       ca=pki["ca"]))
    r.start()
    try:
        atna.record(ev.user_authentication(False, user="after"))
        assert atna.flush(15)
        assert r.wait_stored(6)
        r.flush()
        with r.engine.connect() as conn:
            got = [row.users.split("\n")[0] for row in conn.execute(select(audit_events).order_by(audit_events.c.id))]
        assert got == users + ["after"]
        assert list(spool.glob("*.msg")) == []
    finally:
        r.stop()


def test_spool_is_bounded(tmp_path):
    from ihecli.atna.sender import Spool

    sp = Spool(tmp_path / "s", max_bytes=1000)
    for i in range(10):
        sp.add(b"%d" % i + b"x" * 299)
    files = sp.files()
    assert [f.read_bytes()[:1] for f in files] == [b"7", b"8", b"9"]
    assert sp.dropped == 7


def test_cli_send_and_query(repo, pki):  # noqa: F811
    url = f"tls://127.0.0.1:{repo.tls_port}"
    r = run_cli("audit", "send", "--arr", url, "--cert", pki["client"], "--ca", pki["ca"], "--event", "login",
                "--user", "alice")
    assert r.code == 0, r.stderr
    r = run_cli("audit", "send", "--arr", url, "--cert", pki["client"], "--ca", pki["ca"],
                str(DATA / "start.xml"), str(DATA / "pixquery.xml"), "--json")
    assert r.code == 0 and r.json["sent"] == 2
    r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{repo.udp_port}", "--event", "patient-read",
                "--patient", "PID77")
    assert r.code == 0, r.stderr
    assert repo.wait_stored(4)
    repo.flush()
    q = run_cli("audit", "query", "--db", repo.db_url, "--user", "alice", "--json")
    assert q.code == 0 and [e["event"] for e in q.json] == ["110114 User Authentication"]
    assert "<AuditMessage>" in q.json[0]["message"]
    q = run_cli("audit", "query", "--db", repo.db_url, "--patient", "PID77", "--json")
    assert [e["action"] for e in q.json] == ["R"]
    q = run_cli("audit", "query", "--db", repo.db_url, "--event", "110112", "--since", "2000-01-01")
    assert q.code == 0 and "MESA_XREF" in q.stdout and "PIX Query" in q.stdout
    # refused: no client certificate; a file that is no audit message; nothing listening
    r = run_cli("audit", "send", "--arr", url, "--ca", pki["ca"], "--event", "login")
    assert r.code == 1 and ("refused" in r.stderr or "closed" in r.stderr)
    # a repository whose certificate we do not trust: one line says so (no log line under it)
    r = run_cli("audit", "send", "--arr", url, "--cert", pki["client"], "--ca", pki["other_ca"], "--event", "login")
    said = [line for line in r.stderr.splitlines() if "audit repository:" not in line]  # the server's log, same process
    assert r.code == 1 and len(said) == 1 and said[0].startswith("ihe: error:"), r.stderr
    assert "certificate not trusted" in said[0]
    r = run_cli("audit", "send", "--arr", url, "--ca", pki["ca"], str(DATA / "README.md"))
    assert r.code == 1 and "not an audit message" in r.stderr
    r = run_cli("audit", "send", "--arr", f"tls://127.0.0.1:{free_port()}", "--event", "login")
    assert r.code == 4
    r = run_cli("audit", "send", "--arr", "http://x", "--event", "login")
    assert r.code == 2
    r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{repo.udp_port}", "--event", "patient-update")
    assert r.code == 2 and r.stderr == "ihe: error: --event patient-update needs --patient ID (the patient whose " \
                                       "record it is)\n"
    r = run_cli("audit", "query", "--db", repo.db_url, "--since", "yesterday-ish")
    assert r.code == 2


def test_cli_serve_in_a_process(pki, tmp_path):  # noqa: F811
    tport, uport = free_port(), free_port()
    db = f"sqlite:///{tmp_path / 'arr.db'}"
    env = {**os.environ, "IHE_CONFIG": str(tmp_path / "none.toml"), "IHE_DATA_DIR": str(tmp_path / "data")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "audit", "serve", "--tls-port", str(tport), "--udp-port",
                          str(uport), "--cert", pki["server"], "--ca", pki["ca"], "--db", db],
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stderr.readline()
        assert "listening on tls 127.0.0.1:%d, udp 127.0.0.1:%d" % (tport, uport) in line, line
        r = run_cli("audit", "send", "--arr", f"tls://127.0.0.1:{tport}", "--cert", pki["client"], "--ca",
                    pki["ca"], "--event", "start")
        assert r.code == 0, r.stderr
        for _ in range(100):
            q = run_cli("audit", "query", "--db", db, "--json")
            if q.json:
                break
            time.sleep(0.05)
        assert [e["types"] for e in q.json] == ["110120 Application Start"]
    finally:
        p.terminate()
        out = p.communicate(timeout=15)[1]
    assert p.returncode == 0 and "1 messages stored" in out


def test_serve_on_a_busy_port_is_one_clear_line(pki, tmp_path):  # noqa: F811
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        r = run_cli("audit", "serve", "--tls-port", "0", "--udp-port", str(taken), "--cert", pki["server"], "--db",
                    f"sqlite:///{tmp_path / 'a.db'}")
    assert r.code == 2 and f"cannot listen on 127.0.0.1:{taken} (UDP syslog): Address already in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("audit", "serve", "--no-tls", "--no-udp")
    assert r.code == 2 and "every listener is off" in r.stderr
    r = run_cli("audit", "serve", "--tls-port", "0")
    assert r.code == 2 and "needs a certificate" in r.stderr


def test_a_broken_audit_setting_is_said_not_silent(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[audit]\nrepository = "tls://127.0.0.1:{free_port()}"\n[tls]\nca = "{tmp_path / "nope.pem"}"\n')
    r = run_cli("--config", str(cfg), "config", "path")
    assert r.code == 0 and "no audit trail: CA file" in r.stderr and not atna.enabled()


def test_a_message_too_large_for_udp_is_said_and_holds_nothing_up(repo, tmp_path):
    """An event no UDP datagram can carry (a retrieve of many documents lists each one): `audit send`
    says so in one line; the background sender drops it with an error instead of spooling it for
    ever, and the messages after it still go."""
    import logging

    from ihecli.atna.sender import AuditSender, parse_target

    xml = ev.to_xml(ev.user_authentication(True, user="big" + "x" * 100_000))
    f = tmp_path / "big.xml"
    f.write_bytes(xml)
    r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{repo.udp_port}", str(f))
    assert r.code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"ihe: error: {f}: ") and "too many for one UDP datagram" in r.stderr
    said: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda rec: said.append(rec.getMessage())
    logging.getLogger("ihe").addHandler(handler)
    s = AuditSender(parse_target(f"udp://127.0.0.1:{repo.udp_port}"), spool_dir=tmp_path / "spool")
    try:
        s.submit(syslog.message(xml, app="ihe"))
        s.submit(syslog.message(ev.to_xml(ev.user_authentication(True, user="small")), app="ihe"))
        assert s.flush(10)
        assert repo.wait_stored(1)
        (e,) = stored(repo)
        assert "small" in e.users
        assert list((tmp_path / "spool").glob("*.msg")) == []
    finally:
        s.close()
        logging.getLogger("ihe").removeHandler(handler)
    assert any("dropped" in m and "too many for one UDP datagram" in m for m in said), said


def test_serve_on_a_taken_tls_port_says_which(repo, pki):  # noqa: F811
    r = run_cli("audit", "serve", "--tls-port", str(repo.tls_port), "--udp-port", "0", "--cert", pki["server"])
    assert r.code == 2 and r.stderr == f"ihe: error: cannot listen on 127.0.0.1:{repo.tls_port} (TLS syslog): " \
                                       "Address already in use\n"


def test_tls_options_for_a_repository_without_tls_are_a_usage_error(repo, pki):  # noqa: F811
    """--cert/--ca/--tls with udp:// or tcp:// would send in the clear while the user believes otherwise."""
    r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{repo.udp_port}", "--cert", pki["client"], "--ca",
                pki["ca"], "--event", "login")
    assert r.code == 2 and r.stderr == f"ihe: error: --cert, --ca given, but udp://127.0.0.1:{repo.udp_port} is no " \
                                       "TLS link: use tls://127.0.0.1:6514\n"
    r = run_cli("audit", "send", "--arr", f"tcp://127.0.0.1:{repo.tls_port}", "--tls", "--event", "login")
    assert r.code == 2 and f"use tls://127.0.0.1:{repo.tls_port}" in r.stderr


def test_query_says_when_its_default_cap_cut_the_listing(repo, pki):  # noqa: F811
    msg = syslog.message(ev.to_xml(ev.user_authentication(True, user="many")), app="ihe")
    s = tls_stream(repo, pki)
    s.sendall(syslog.frame(msg) * 1001)
    send_until_closed(s, b"")
    assert repo.wait_stored(1001, timeout=60)
    repo.flush()
    r = run_cli("audit", "query", "--db", repo.db_url)
    assert r.code == 0 and r.stderr.strip().endswith("1000 events (the first 1000: --limit; more may match) "
                                                     "(times in UTC)"), r.stderr
    r = run_cli("audit", "query", "--db", repo.db_url, "--json")
    assert r.code == 0 and len(json.loads(r.stdout)) == 1000
    assert r.stderr == "ihe: warning: only the newest 1000 events: --limit N for more\n"
    r = run_cli("audit", "query", "--db", repo.db_url, "--json", "--limit", "1001")
    assert r.code == 0 and len(json.loads(r.stdout)) == 1001 and r.stderr == ""


def test_an_audit_message_with_entities_is_refused_not_expanded(repo, tmp_path):
    """DOCTYPE with an internal entity: lxml would expand it into a stored UserID; refused instead,
    by `audit send` (one line, nothing sent) and by the repository (kept as not an audit message)."""
    body = (DATA / "start.xml").read_text()
    body = body[body.index("<AuditMessage"):]
    assert 'UserID=""' in body
    hostile = ('<?xml version="1.0"?><!DOCTYPE AuditMessage [<!ENTITY x "EXPANDED-ENTITY">]>'
               + body.replace('UserID=""', 'UserID="&x;"', 1))
    f = tmp_path / "entity.xml"
    f.write_text(hostile)
    r = run_cli("audit", "send", "--arr", f"udp://127.0.0.1:{repo.udp_port}", str(f))
    assert r.code == 1 and r.stderr == f"ihe: error: {f}: not an audit message: XML with a document type " \
                                       "declaration (DOCTYPE) is refused\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(syslog.message(hostile.encode(), app="ihe"), ("127.0.0.1", repo.udp_port))
    assert repo.wait_stored(1)
    (e,) = stored(repo)
    assert not e.event and "DOCTYPE" in e.error and "EXPANDED-ENTITY" not in " ".join(e.users)
