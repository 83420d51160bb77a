"""What `ihe pix|pdq|xds|wic|audit` check before they send, and how they word what a peer did:
a patient ID whose own domain --domain contradicts, stored query values a registry would silently
match nothing with, WIC patient and study values, a SOAP peer that is not HTTP or a host name that
does not resolve, failed STOW-RS uploads with the archive's explanation, and `audit send --user`
as the person acting. Against real servers: `ihe xds serve`, `ihe archive serve --http-port` and
`ihe audit serve` in their own processes, the PIX Manager double of tests/pixmgr.py, a raw TCP peer."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from lxml import etree
from PIL import Image

from helpers import free_port, run_cli, wait_port
from pixmgr import PixManager
from test_tls import pki  # noqa: F401  (the fixture)

HZLN_OID = "1.3.6.1.4.1.21367.2005.1.3"
XDS_PID = "PIDC1^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
ATNA_XSD = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "data" / "atna" / "ipf-dicom2017c.xsd")))


def serve(tmp: Path, *args: str, port: int):
    """`ihe ARGS` as its own process with its own profile and data folder; returns it once `port` answers."""
    env = {**os.environ, "IHE_CONFIG": str(tmp / "none.toml"), "IHE_DATA_DIR": str(tmp / "data")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", *args], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 30)
    except TimeoutError:
        p.kill()
        raise AssertionError(f"ihe {' '.join(args)} did not start: {p.communicate(timeout=10)[1]}") from None
    return p


def stop(p) -> None:
    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def one_usage_line(r, *words: str) -> None:
    assert r.code == 2, (r.code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ihe: error: "), r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


# -- PIX: the patient ID's own domain and --domain -------------------------------------------------

@pytest.fixture(scope="module")
def mgr():
    m = PixManager()
    m.start()
    yield m
    m.stop()


def test_pix_id_with_its_own_domain_and_another_domain_is_refused_unsent(mgr):
    before = len(mgr.queries)
    r = run_cli("pix", "query", "5555^^^HZLN", "--domain", "XREF2005", "--manager", mgr.peer)
    one_usage_line(r, "HZLN", "XREF2005")
    r = run_cli("pix", "query", f"5555^^^HZLN&{HZLN_OID}&ISO", "--domain", "1.3.6.1.4.1.21367.2005.1.2",
                "--manager", mgr.peer)
    one_usage_line(r, HZLN_OID, "1.3.6.1.4.1.21367.2005.1.2")
    assert len(mgr.queries) == before  # nothing was asked about another patient


@pytest.mark.parametrize("args, qpd3", [
    (["5555^^^HZLN", "--domain", "HZLN"], "5555^^^HZLN"),
    (["5555^^^HZLN", "--domain", f"HZLN&{HZLN_OID}&ISO"], f"5555^^^HZLN&{HZLN_OID}&ISO"),
    ([f"5555^^^HZLN&{HZLN_OID}&ISO", "--domain", HZLN_OID], f"5555^^^HZLN&{HZLN_OID}&ISO"),
    (["5555^^^HZLN"], "5555^^^HZLN"),
    (["5555^^^", "--domain", "HZLN"], "5555^^^HZLN"),
    (["5555", "--domain", "HZLN"], "5555^^^HZLN"),
])
def test_pix_id_and_domain_that_agree_ask_for_that_patient(mgr, args, qpd3):
    r = run_cli("pix", "query", *args, "--manager", mgr.peer, "--json")
    assert r.code == 0, r.stderr
    assert mgr.queries[-1].raw("QPD", 3) == qpd3
    assert {i["id"] for i in r.json["identifiers"]} == {"13278", "02777"}


# -- SOAP: a peer that is not HTTP, a host name that does not resolve --------------------------------

class NotHttpPeer:
    """A TCP server that reads an HTTP request to its end, answers 'hello' and closes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")
                               if x.lower().startswith(b"content-length:")), 0)
                while len(body) < length:  # all of it: closing with unread bytes would reset the connection
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                self.requests += 1
                c.sendall(b"hello\r\n")
                c.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def not_http():
    peer = NotHttpPeer()
    yield peer
    peer.close()


def test_soap_peer_answering_something_not_http_is_refused_not_unreachable(not_http):
    url = f"http://127.0.0.1:{not_http.port}/pdq"
    r = run_cli("pdq", "query", "--family", "Jones", "--supplier", url)
    assert r.code == 1, r.stderr
    assert r.stderr.strip() == f"ihe: error: {url} answered something that is not HTTP: 'hello'"
    # every SOAP client says the same (XDS here)
    url = f"http://127.0.0.1:{not_http.port}/xds"
    r = run_cli("xds", "query", "find-documents", "--patient", XDS_PID, "--registry", url)
    assert r.code == 1 and "answered something that is not HTTP" in r.stderr, r.stderr
    assert not_http.requests == 2


def test_soap_unknown_host_name_is_one_plain_line():
    r = run_cli("pdq", "query", "--family", "Jones", "--supplier", "http://no-such-host.invalid:8080/pdq")
    assert r.code == 4, r.stderr
    assert r.stderr.startswith("ihe: error: cannot reach http://no-such-host.invalid:8080/pdq: host name not found")
    assert "Max retries" not in r.stderr and "HTTPConnectionPool" not in r.stderr
    r = run_cli("pdq", "query", "--family", "Jones", "--supplier", f"http://127.0.0.1:{free_port()}/pdq")
    assert r.code == 4 and r.stderr.strip().endswith(": connection refused"), r.stderr


def test_soap_tls_failures_are_one_plain_line(pki, tmp_path):  # noqa: F811
    port = free_port()
    p = serve(tmp_path, "xds", "serve", "--port", str(port), "--cert", pki["server"], "--ca", pki["ca"], port=port)
    url = f"https://127.0.0.1:{port}/xds"
    try:
        query = ("xds", "query", "find-documents", "--patient", XDS_PID, "--registry", url)
        r = run_cli(*query, "--cert", pki["client"], "--ca", pki["ca"])
        assert r.code == 0, r.stderr  # the right certificates: it answers
        r = run_cli(*query, "--cert", pki["client"], "--ca", pki["other_ca"])  # we do not trust the server
        assert r.code == 1 and "TLS failed: the server's certificate is not trusted" in r.stderr, r.stderr
        r = run_cli(*query, "--ca", pki["ca"])  # the server wants our certificate
        assert r.code == 1 and "TLS failed: the server closed the connection" in r.stderr, r.stderr
        assert "(does it trust our certificate?)" in r.stderr
        assert "Max retries" not in r.stderr and "HTTPSConnectionPool" not in r.stderr
    finally:
        stop(p)


# -- XDS stored queries: status, times and entryUUIDs checked before sending ------------------------

@pytest.fixture(scope="module")
def xds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xds")
    port = free_port()
    p = serve(tmp, "xds", "serve", "--port", str(port), port=port)
    url = f"http://127.0.0.1:{port}/xds"
    (tmp / "note.txt").write_text("a note\n")
    try:
        r = run_cli("xds", "submit", tmp / "note.txt", "--patient", XDS_PID, "--repository", url, "--json")
        assert r.code == 0, r.stderr
        yield {"url": url, "doc": r.json[0]}
    finally:
        stop(p)


def xq(xds, *args):
    return run_cli("xds", "query", *args, "--registry", xds["url"], "--json")


@pytest.mark.parametrize("args, words", [
    (["find-documents", "--patient", XDS_PID, "--status", "foo"], ["--status 'foo'", "approved, deprecated or "
                                                                                       "submitted"]),
    (["get-all", "--patient", XDS_PID, "--status", "urn:oasis:names:tc:ebxml-regrep:StatusType:Gone"], ["--status"]),
    (["find-documents", "--patient", XDS_PID, "--time-from", "20241399"], ["--time-from '20241399'", "DTM"]),
    (["find-documents", "--patient", XDS_PID, "--time-to", "20230229"], ["--time-to '20230229'"]),
    (["find-documents", "--patient", XDS_PID, "--time-from", "2024123124"], ["hour"]),
    (["find-documents", "--patient", XDS_PID, "--time-from", "2024-01-01"], ["YYYY[MM[DD[hh[mm[ss]]]]]"]),
    (["find-submission-sets", "--patient", XDS_PID, "--time-from", "20241"], ["--time-from"]),
    (["find-folders", "--patient", XDS_PID, "--time-to", "202401312360"], ["minute"]),
    (["get-documents", "--uuid", "notauuid"], ["--uuid 'notauuid'", "urn:uuid:"]),
    (["get-documents", "--uuid", "7edca82f-054d-47f2-a032-9b2a5b5186c1"], ["urn:uuid:<uuid>"]),
    (["get-associations", "--uuid", "urn:uuid:7edca82f-054d-47f2-a032"], ["--uuid"]),
])
def test_xds_query_values_a_registry_would_match_nothing_with_are_usage_errors(xds, args, words):
    one_usage_line(xq(xds, *args), *words)


def test_xds_query_good_values_still_find(xds):
    doc = xds["doc"]
    found = xq(xds, "find-documents", "--patient", XDS_PID, "--status", "APPROVED", "--status",
               "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated", "--time-from", "2000", "--time-to", "21000101")
    assert found.code == 0, found.stderr
    assert [d["uniqueId"] for d in found.json] == [doc["uniqueId"]]
    r = xq(xds, "find-documents", "--patient", XDS_PID, "--status", "submitted")
    assert r.code == 0 and r.json == [], r.stderr
    # an entryUUID in upper case is the same entryUUID
    uuid = found.json[0]["entryUUID"]
    r = xq(xds, "get-documents", "--uuid", uuid.upper())
    assert r.code == 0, r.stderr
    assert [d["entryUUID"] for d in r.json] == [uuid]


# -- WIC: patient and study values checked before sending; failures with the archive's words --------

@pytest.fixture(scope="module")
def stow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wic")
    port = free_port()
    p = serve(tmp, "archive", "serve", "--port", "0", "--http-port", str(port), port=port)
    img = tmp / "photo.jpg"
    Image.new("RGB", (24, 16), (200, 40, 40)).save(img, "JPEG")
    try:
        yield {"url": f"http://127.0.0.1:{port}/dicom-web", "photo": img}
    finally:
        stop(p)


def studies_of(stow, patient: str) -> list:
    r = httpx.get(stow["url"] + "/studies", params={"PatientID": patient}, timeout=30)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else []


@pytest.mark.parametrize("args, words", [
    (["--sex", "X", "--new-study"], ["--sex 'X'", "M, F or O"]),
    (["--birth-date", "2024-13-01", "--new-study"], ["--birth-date '2024-13-01'", "YYYYMMDD"]),
    (["--birth-date", "20230229", "--new-study"], ["--birth-date"]),
    (["--birth-date", "1980", "--new-study"], ["--birth-date"]),
    (["--study", "not-a-uid"], ["--study 'not-a-uid'"]),
    (["--study", "1.2.03"], ["--study"]),
    (["--study", "1." + "2" * 64], ["64 characters"]),
])
def test_wic_bad_patient_or_study_values_are_usage_errors_and_send_nothing(stow, args, words):
    r = run_cli("wic", "upload", stow["photo"], "--patient", "WICBAD", *args, "--url", stow["url"])
    one_usage_line(r, *words)
    assert studies_of(stow, "WICBAD") == []


def test_wic_values_are_stored_as_dicom_has_them(stow):
    r = run_cli("wic", "upload", stow["photo"], "--patient", "WICOK", "--sex", "f", "--birth-date", "1980-02-29",
                "--new-study", "--url", stow["url"], "--json")
    assert r.code == 0, r.stderr
    (created,) = r.json["created"]
    meta = httpx.get(created["url"] + "/metadata", timeout=30).json()[0]
    assert meta["00100040"]["Value"] == ["F"] and meta["00100030"]["Value"] == ["19800229"]


def test_wic_failed_upload_keeps_the_archive_explanation(stow):
    r = run_cli("wic", "upload", stow["photo"], "--patient", "WICOWNER", "--new-study", "--url", stow["url"], "--json")
    assert r.code == 0, r.stderr
    study = r.json["study"]
    # someone else's study: the archive refuses and says why
    r = run_cli("wic", "upload", stow["photo"], "--patient", "WICOTHER", "--study", study, "--url", stow["url"])
    assert r.code == 1
    assert "no matches" not in r.stderr and "(several)" not in r.stderr and "0 created" not in r.stderr
    failed = [line for line in r.stderr.splitlines() if "failed (" in line]
    assert len(failed) == 1 and "photo.jpg" in failed[0], r.stderr
    said = " ".join(r.stderr.split())  # the console may wrap long lines
    assert "belongs to patient WICOWNER" in said and "nothing stored: 1 file failed" in said, r.stderr
    r = run_cli("wic", "upload", stow["photo"], "--patient", "WICOTHER", "--study", study, "--url", stow["url"],
                "--json")
    assert r.code == 1
    (f,) = r.json["failed"]
    assert f["reason"].startswith("0x") and f["meaning"] and "belongs to patient WICOWNER" in f["text"]
    assert "belongs to patient WICOWNER" in r.json["warning"] and r.json["created"] == []
    assert studies_of(stow, "WICOTHER") == []


# -- audit send --user: the person acting, whatever the event ---------------------------------------

KINDS = ["start", "stop", "login", "logout", "alert", "patient-read", "patient-update"]


@pytest.fixture(scope="module")
def arr(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arr")
    port = free_port()
    db = f"sqlite:///{tmp / 'arr.db'}"
    p = serve(tmp, "audit", "serve", "--no-tls", "--no-udp", "--tcp-port", str(port), "--db", db, port=port)
    try:
        yield {"arr": f"tcp://127.0.0.1:{port}", "db": db}
    finally:
        stop(p)


def poll_query(db: str, *args: str, want: int, tries: int = 400) -> list:
    for _ in range(tries):
        r = run_cli("audit", "query", "--db", db, *args, "--json")
        assert r.code == 0, r.stderr
        if len(r.json) >= want:
            return r.json
        time.sleep(0.05)
    return r.json


def test_audit_send_user_is_an_active_participant_in_every_event_kind(arr):
    for kind in KINDS:
        r = run_cli("audit", "send", "--arr", arr["arr"], "--event", kind, "--user", f"eve-{kind}",
                    "--patient", "PIDA1")
        assert r.code == 0, r.stderr
    for kind in KINDS:
        found = poll_query(arr["db"], "--user", f"eve-{kind}", want=1)
        assert len(found) == 1, (kind, found)
        doc = etree.fromstring(found[0]["message"].encode())
        users = {ap.get("UserID"): ap.get("UserIsRequestor") for ap in doc.iter("ActiveParticipant")}
        assert users.get(f"eve-{kind}") == "true", (kind, users)
        assert ATNA_XSD.validate(doc), (kind, ATNA_XSD.error_log)
    (alert,) = poll_query(arr["db"], "--user", "eve-alert", want=1)
    doc = etree.fromstring(alert["message"].encode())
    assert doc.find("EventIdentification/EventID").get("csd-code") == "110113"  # Security Alert
    # the person is no Node ID: the alert's subject is this node
    assert [o.get("ParticipantObjectID") for o in doc.iter("ParticipantObjectIdentification")] != ["eve-alert"]


def test_audit_serve_without_certificate_names_the_real_options(tmp_path):
    r = run_cli("audit", "serve", "--tls-port", "0", "--no-udp", "--db", f"sqlite:///{tmp_path / 'a.db'}")
    one_usage_line(r, "--cert", "--tls-key", "--no-tls")
    assert "--key " not in r.stderr and "--key," not in r.stderr
