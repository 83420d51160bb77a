"""PIX Consumer, PIX Query (ITI-9): `ihe pix query` against a PIX Manager on the wire (tests/pixmgr.py)
that answers from the IPF A31 cross-references or replays IPF's recorded RSP^K23 answers."""
from __future__ import annotations

import socket
import time

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from helpers import free_port, run_cli
from ihecli.hl7 import v2
from ihecli.pix import Domain, Identifier
from ihecli.pix.query import build_query, read_answer
from pixmgr import DATA, PixManager

HIMSS = "HIMSS2005&1.3.6.1.4.1.21367.2005.1.1&ISO"
REPLAY = {
    "79471": "ipf-iti9-rsp-k23-ok-2.hl7",  # two domains asked, one found
    "79234": "ipf-iti9-rsp-k23-nf-1.hl7",
    "NonExistingPatientId": "ipf-iti9-rsp-k23-err-1.hl7",
    "REJECTME": "ipf-iti9-rsp-k23-err-2.hl7",  # a plain ACK^Q23, AR
    "566253be": "ipf-iti9-rsp-k23-tplus.hl7",  # CRLF, blank lines, +0900
}


@pytest.fixture(scope="module")
def mgr():
    m = PixManager(replay=REPLAY)
    m.start()
    yield m
    m.stop()


def test_found_in_every_domain(mgr):
    r = run_cli("pix", "query", "13278", "--domain", HIMSS, "--manager", mgr.peer, "--json")
    assert r.code == 0, r.stderr
    doc = r.json
    assert doc["status"] == "OK"
    assert [(i["id"], i["namespace"], i["oid"]) for i in doc["identifiers"]] == [
        ("02777", "XREF2005", "1.3.6.1.4.1.21367.2005.1.2"), ("5555", "HZLN", "1.3.6.1.4.1.21367.2005.1.3")]
    q = mgr.queries[-1]  # what went over the wire
    assert (q.type, q.trigger, q.structure, q.version) == ("QBP", "Q23", "QBP_Q21", "2.5")
    assert q.value("QPD", 1) == "IHE PIX Query" and q.raw("QPD", 3) == f"13278^^^{HIMSS}" and q.raw("QPD", 4) == ""
    assert q.value("RCP", 1) == "I"


def test_table_and_target_domain(mgr):
    r = run_cli("pix", "query", "13278", "--domain", "1.3.6.1.4.1.21367.2005.1.1", "--target-domain", "HZLN",
                "--to", mgr.peer)
    assert r.code == 0, r.stderr
    assert "5555" in r.stdout and "HZLN" in r.stdout and "02777" not in r.stdout
    assert mgr.queries[-1].raw("QPD", 4) == "^^^HZLN"
    # a CX on the command line needs no --domain
    r = run_cli("pix", "query", "02777^^^XREF2005", "--target-domain", "1.3.6.1.4.1.21367.2005.1.1",
                "--manager", mgr.peer, "--json")
    assert r.code == 0 and [i["id"] for i in r.json["identifiers"]] == ["13278"], r.stderr
    assert mgr.queries[-1].raw("QPD", 4) == "^^^&1.3.6.1.4.1.21367.2005.1.1&ISO"


def test_not_found_is_exit_1(mgr):
    # known, but nothing in the domain asked for: AA / NF
    r = run_cli("pix", "query", "52231059", "--domain", "IHENA", "--target-domain", "HZLN", "--manager", mgr.peer)
    assert r.code == 1 and "no identifier in HZLN" in r.stderr and "status NF" in r.stderr and r.stdout == ""
    # IPF's recorded NF answer
    r = run_cli("pix", "query", "79234", "--domain", "HZLN", "--manager", mgr.peer, "--json")
    assert r.code == 1 and "status NF" in r.stderr and r.stdout == ""


def test_error_answers_are_shown(mgr):
    r = run_cli("pix", "query", "NonExistingPatientId", "--domain", "HZLN", "--manager", mgr.peer)
    assert r.code == 1
    assert r.stderr.startswith("ihe: error: the PIX Manager refused the query (AE)")
    assert "204 Unknown key identifier in the patient identifier (QPD-3): Unknown patient ID" in r.stderr
    # the Manager's own rules: unknown identifier, unknown domain of it, unknown target domain
    r = run_cli("pix", "query", "NOBODY", "--domain", HIMSS, "--manager", mgr.peer)
    assert r.code == 1 and "(AE)" in r.stderr and "patient identifier (QPD-3)" in r.stderr
    r = run_cli("pix", "query", "13278", "--domain", "NOWHERE", "--manager", mgr.peer)
    assert r.code == 1 and "QPD-3" in r.stderr
    r = run_cli("pix", "query", "13278", "--domain", HIMSS, "--target-domain", "NOWHERE", "--manager", mgr.peer)
    assert r.code == 1 and "domains asked for (QPD-4)" in r.stderr


def test_plain_ack_rejection(mgr):
    r = run_cli("pix", "query", "REJECTME", "--domain", "HZLN", "--manager", mgr.peer)
    assert r.code == 1 and "(AR)" in r.stderr and "Unable to resolve requested domains in QPD-4" in r.stderr


def test_recorded_answers(mgr):
    r = run_cli("pix", "query", "79471", "--domain", "HZLN", "--manager", mgr.peer, "--json")
    assert r.code == 0, r.stderr
    assert [(i["id"], i["namespace"]) for i in r.json["identifiers"]] == [("78912", "PKLN")]
    r = run_cli("pix", "query", "566253be", "--domain", "1.3.6.1.4.1.21367.2011.2.5.5435", "--manager", mgr.peer,
                "--json")
    assert r.code == 0 and r.json["identifiers"][0]["id"] == "12312", r.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("ipf-iti9-*.hl7")))
def test_every_ipf_answer_reads(name):
    a = read_answer((DATA / name).read_bytes(), Identifier("79471", Domain("HZLN")))
    expected = {"ok": "OK", "nf": "NF", "err-1": "AE", "err-2": "AR", "tplus": "OK"}
    assert a.status == next(v for k, v in expected.items() if k in name)
    if a.status == "AE":
        assert a.errors and "204" in a.errors[0]


def test_the_query_is_hl7_v25():
    """hl7apy reads our QBP^Q23 as a QBP_Q21 and finds MSH, QPD and RCP valid (strict); QPD-4
    (IHE's "what domains returned") is not in hl7apy's v2.5 QPD, so it is checked apart."""
    raw = build_query(Identifier("13278", Domain.parse(HIMSS)), [Domain("HZLN"), Domain("", "1.2.3", "ISO")],
                      sending_app="IHE", receiving_app="PIXMGR")
    msg = v2.parse(raw)
    assert msg.raw("QPD", 4) == "^^^HZLN~^^^&1.2.3&ISO"
    strict = raw.decode().split("\r")
    strict = [s if not s.startswith("QPD") else "|".join(s.split("|")[:4]) for s in strict]
    m = parse_message("\r".join(strict), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert m.name == "QBP_Q21" and m.validate()
    assert m.qpd.qpd_3.to_er7() == f"13278^^^{HIMSS}" and m.msh.msh_9.to_er7() == "QBP^Q23^QBP_Q21"


def test_silent_manager_times_out():
    """A peer that accepts the connection and never answers: exit 4 after --timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        started = time.monotonic()
        r = run_cli("pix", "query", "1", "--domain", "X", "--manager", f"127.0.0.1:{s.getsockname()[1]}",
                    "--timeout", "0.5")
        assert r.code == 4 and "did not answer within 0.5 s" in r.stderr
        assert time.monotonic() - started < 5


def test_usage_and_unreachable():
    r = run_cli("pix", "query", "1", "--domain", "X", "--manager", f"127.0.0.1:{free_port()}")
    assert r.code == 4 and "cannot reach" in r.stderr
    assert run_cli("pix", "query", "1", "--manager", "127.0.0.1:1").code == 2  # no domain, none in the profile
    r = run_cli("pix", "query", "1|2", "--domain", "X")
    assert r.code == 2 and "separators" in r.stderr
    assert run_cli("pix", "query", "1", "--domain", "A&B&C&D").code == 2
    assert run_cli("pix", "query", "1", "--domain", "X", "--manager", "nohost").code == 2


def test_domain_from_the_profile(mgr, tmp_path):
    import os

    from pathlib import Path

    Path(os.environ["IHE_CONFIG"]).write_text(f'[pix]\nmanager = "{mgr.peer}"\ndomain = "{HIMSS}"\n')
    r = run_cli("pix", "query", "13278", "--json")
    assert r.code == 0 and len(r.json["identifiers"]) == 2, r.stderr


def test_mllp_over_tls_with_mutual_authentication(tmp_path):
    """ITI-9 and ITI-10 over TLS (ITI-19): the shared TLS options, certificates from one CA."""
    import trustme

    from ihecli.archive import Archive
    from ihecli.net import tls
    from ihecli.net.mllp import MllpServer
    from ihecli.pix import UpdateNotificationReceiver
    from pixmgr import A31_FILES

    ca = trustme.CA()
    for name, cert in (("server", ca.issue_cert("localhost", "127.0.0.1")), ("client", ca.issue_cert("ihe"))):
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_ctx = tls.context(tls.TlsConfig(cert=str(tmp_path / "server.pem"), ca=str(tmp_path / "ca.pem")),
                             server=True)
    m = PixManager(ssl_context=server_ctx)
    m.start()
    try:
        args = ["pix", "query", "13278", "--domain", HIMSS, "--manager", m.peer, "--json"]
        r = run_cli(*args, "--cert", tmp_path / "client.pem", "--ca", tmp_path / "ca.pem")
        assert r.code == 0 and len(r.json["identifiers"]) == 2, r.stderr
        r = run_cli(*args, "--ca", tmp_path / "ca.pem", "--timeout", "3")  # no client certificate: refused
        said = [line for line in r.stderr.splitlines() if "PIXMGR:" not in line]  # the manager's log, same process
        assert r.code == 1 and said == [f"ihe: error: {m.peer}: TLS failed: no client certificate"], r.stderr
    finally:
        m.stop()
    with Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st") as archive:
        srv = MllpServer(UpdateNotificationReceiver(archive), port=0, ssl_context=server_ctx)
        srv.start()
        try:
            client_ctx = tls.context(tls.TlsConfig(cert=str(tmp_path / "client.pem"), ca=str(tmp_path / "ca.pem")),
                                     server=False)
            acks = PixManager.notify("127.0.0.1", srv.port, A31_FILES, ssl_context=client_ctx)
            assert [a.code for a in acks] == ["AA"] * 3
        finally:
            srv.stop()


def test_answers_that_are_not_ours():
    """A recorded answer to another query (MSA-2 names another message), or no HL7 at all: exit 1."""
    from ihecli.net.mllp import MllpServer

    answers = iter([(DATA / "ipf-iti9-rsp-k23-ok-1.hl7").read_bytes(), b"HTTP/1.1 400 Bad Request\r\n\r\n"])
    srv = MllpServer(lambda raw: next(answers), port=0)
    srv.start()
    try:
        r = run_cli("pix", "query", "79471", "--domain", "HZLN", "--manager", f"127.0.0.1:{srv.port}")
        assert r.code == 1 and "answered another message (MSA-2 '10501108'" in r.stderr
        r = run_cli("pix", "query", "79471", "--domain", "HZLN", "--manager", f"127.0.0.1:{srv.port}")
        assert r.code == 1 and "cannot be read" in r.stderr
    finally:
        srv.stop()


def test_profile_mistakes_are_named():
    import os
    from pathlib import Path

    cfg = Path(os.environ["IHE_CONFIG"])
    for text, key in (('[pix]\nmanager = "nohost"\n', "manager"), ('[pdq]\nsupplier = "ftp://x"\n', "supplier"),
                      ('[pdq]\nsender = "not-an-oid"\n', "sender"), ('[pix]\nport = "x"\n', "port")):
        cfg.write_text(text)
        r = run_cli("config", "show")
        assert r.code == 2 and f"line 2: {key}:" in r.stderr, (text, r.stderr)
