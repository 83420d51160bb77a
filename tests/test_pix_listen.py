"""PIX Consumer, PIX Update Notification (ITI-10): the IPF A31 messages over MLLP into the archive
database; then the archive (ihe archive ls, DCMTK findscu) finds a patient by any linked
identifier. Bad input gets a proper NAK and the listener keeps running."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from helpers import free_port, make_corpus, run_cli, run_dcmtk, wait_port
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.archive.tables_pix import pix_links
from ihecli.hl7 import v2
from ihecli.net.mllp import MllpClient, MllpServer
from ihecli.pix import Domain, UpdateNotificationReceiver, links
from pixmgr import A31_FILES, DATA, PixManager

IHENA = "1.3.6.1.4.1.21367.2010.1.2.300"


def a31(*cx: str, control: str = "1", version: str = "2.5", end: str = "\r") -> bytes:
    segs = [f"MSH|^~\\&|PIXMGR|HOSP|IHE|HOSP|20260101||ADT^A31^ADT_A05|{control}|P|{version}",
            "EVN|A31|20260101", f"PID|||{'~'.join(cx)}||DOE^JOHN", "PV1||N"]
    return (end.join(segs) + end).encode()


@pytest.fixture
def listener(db_url, tmp_path):
    archive = Archive(db_url, tmp_path / "storage")
    receiver = UpdateNotificationReceiver(archive)
    srv = MllpServer(receiver, port=0, name="PIX", max_size=64 * 1024)
    srv.start()
    yield archive, srv, receiver
    srv.stop()
    archive.close()


def _ids(archive, pid):
    with archive.connect() as conn:
        return [(lk.identifier.id, lk.identifier.domain.key) for lk in links(conn, pid)]


def test_ipf_notifications_are_stored_and_found(listener, tmp_path):
    archive, srv, receiver = listener
    files = make_corpus(tmp_path / "in", studies=1, series=1, images=1)
    ds = dcmread(files[0])
    ds.PatientID, ds.IssuerOfPatientID = "LOCAL01", "IHELOCAL"  # the archive's patient, in its local domain
    ds.save_as(files[0])
    archive.import_paths([files[0]])
    acks = PixManager.notify("127.0.0.1", srv.port)
    assert [a.code for a in acks] == ["AA", "AA", "AA"]
    assert [a.control_id for a in acks] == ["207597", "207607", "205632"]
    assert receiver.stats.accepted == 3 and receiver.stats.identifiers == 6
    assert sorted(_ids(archive, "01")) == [("01", IHENA), ("LOCAL01", "1.3.6.1.4.1.21367.2010.1.2.310")]
    assert len(_ids(archive, "5555")) == 3
    # the archive's own queries follow the links: by the enterprise id, the patient is found
    [hit] = [r for r in archive.find(_ident(PatientID="01"), "patient")]
    assert hit.PatientID == "LOCAL01"
    assert archive.find(_ident(PatientID="LOCAL01"), "patient")[0].PatientID == "LOCAL01"
    assert archive.find(_ident(PatientID="5555"), "patient") == []  # linked to nobody here
    assert archive.find(_ident(PatientID="0*"), "patient") == []  # wildcards match stored ids only


def _ident(**keys):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    for k, v in keys.items():
        setattr(ds, k, v)
    ds.PatientName = ""
    return ds


def test_a_new_cross_reference_replaces_the_old(listener):
    archive, srv, _ = listener
    with MllpClient("127.0.0.1", srv.port) as c:
        assert v2.read_ack(c.send(a31("A^^^D1", "B^^^D2", "C^^^D3", control="1"))).code == "AA"
        # B is unlinked: the Manager sends B alone, and A with C
        assert v2.read_ack(c.send(a31("B^^^D2", control="2"))).code == "AA"
        assert v2.read_ack(c.send(a31("A^^^D1", "C^^^D3", control="3"))).code == "AA"
        # the same notification again changes nothing
        assert v2.read_ack(c.send(a31("A^^^D1", "C^^^D3", control="3"))).code == "AA"
    assert sorted(_ids(archive, "A")) == [("A", "D1"), ("C", "D3")]
    assert _ids(archive, "B") == [("B", "D2")]
    with archive.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pix_links)).scalar() == 3


def test_findscu_finds_the_patient_by_a_linked_id(tmp_path):
    """DCMTK findscu asks the archive's DICOM server by the enterprise id; the answer is the local patient."""
    archive = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st")
    files = make_corpus(tmp_path / "in", studies=2, series=1, images=1)
    archive.import_paths(files)  # PID000000 and PID000001
    dicom = DicomServer(archive, aet="IHE_ARCHIVE", port=0)
    dicom.start()
    pix = MllpServer(UpdateNotificationReceiver(archive), port=0)
    pix.start()
    try:
        with MllpClient("127.0.0.1", pix.port) as c:
            ack = v2.read_ack(c.send(a31("PID000001^^^LOCAL", "E-77^^^&1.2.3.4&ISO")))
        assert ack.code == "AA"
        out = run_dcmtk("findscu", "-S", "-aec", "IHE_ARCHIVE", "-k", "QueryRetrieveLevel=STUDY", "-k",
                        "PatientID=E-77", "-k", "StudyInstanceUID", "127.0.0.1", str(dicom.port))
        text = out.stdout + out.stderr
        assert "PID000001" in text and "PID000000" not in text
        assert text.count("(0020,000d)") == 1
        out = run_dcmtk("findscu", "-S", "-aec", "IHE_ARCHIVE", "-k", "QueryRetrieveLevel=STUDY", "-k",
                        "PatientID=E-78", "127.0.0.1", str(dicom.port))
        assert "PID00000" not in out.stdout + out.stderr
    finally:
        pix.stop()
        dicom.stop()
        archive.close()


def test_linked_id_query_uses_the_indexes(tmp_path):
    """The linked-identifier match stays an index lookup (no scan of patients or links)."""
    from sqlalchemy.dialects import sqlite

    from ihecli.archive.query import Finder

    archive = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st")
    try:
        with archive.connect() as conn:
            q, *_ = Finder(conn)._select(_ident(PatientID="E-77", QueryRetrieveLevel="STUDY"), "STUDY")
            sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
            plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert "SCAN patients" not in plan and "SCAN pix_" not in plan, plan
        assert "uq_pix_link" in plan or "sqlite_autoindex_pix_links" in plan, plan
    finally:
        archive.close()


def test_cli_ls(listener, monkeypatch):
    archive, srv, _ = listener
    PixManager.notify("127.0.0.1", srv.port)
    db = archive.db_url
    r = run_cli("pix", "ls", "02777", "--db", db, "--json")
    assert r.code == 0, r.stderr
    assert [d["id"] for d in r.json] == ["02777", "13278", "5555"]
    assert r.json[0]["sender"] == "ICW_MPI^ICW" and len({d["group"] for d in r.json}) == 1
    r = run_cli("pix", "ls", "--db", db)
    assert r.code == 0 and "52231059" in r.stdout and "LOCAL01" in r.stdout, r.stderr
    r = run_cli("pix", "ls", "02777", "--domain", "HZLN", "--db", db)
    assert r.code == 1 and "no cross-reference holds 02777 in HZLN" in r.stderr
    r = run_cli("pix", "ls", "02777", "--domain", "XREF2005", "--db", db, "--json")  # by namespace, OID stored
    assert r.code == 0 and len(r.json) == 3, r.stderr


def _send_raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """A plain MLLP client: bytes out, the first framed answer back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(data)
        buf = b""
        while b"\x1c\r" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.startswith(b"\x0b"), buf
    return buf[1:buf.index(b"\x1c")]


def test_bad_input(listener):
    archive, srv, receiver = listener
    port = srv.port
    frame = lambda m: b"\x0b" + m + b"\x1c\r"  # noqa: E731

    def answer(data: bytes) -> v2.AckResult:
        return v2.read_ack(_send_raw(port, data))

    # LF-only and mixed segment ends are read
    assert answer(frame(a31("L1^^^D1", "L2^^^D2", end="\n"))).code == "AA"
    assert answer(frame(a31("M1^^^D1", "M2^^^D2").replace(b"\rPID", b"\r\nPID"))).code == "AA"
    assert sorted(_ids(archive, "L1")) == [("L1", "D1"), ("L2", "D2")]
    # a start block inside a message: the sender started over, the rest is one (broken) message
    a = answer(b"\x0b" + a31("X1^^^D1")[:30] + b"\x0bGARBAGE\x1c\r")
    assert a.code == "AR" and "100" in a.errors[0]
    # PID-3 missing, or an identifier without its assigning authority
    a = answer(frame(a31("")))
    assert a.code == "AE" and a.errors[0].startswith("101") and "PID" in a.errors[0]
    a = answer(frame(a31("NODOMAIN")))
    assert a.code == "AE" and "assigning authority" in a.text
    no_pid = b"\r".join(s for s in a31("Z^^^D").split(b"\r") if not s.startswith(b"PID"))
    assert answer(frame(no_pid)).code == "AE"
    # ITI-8 messages are not ITI-10: refused as unsupported events
    for name in ("ipf-iti8-adt-a08.hl7", "ipf-iti8-adt-a40.hl7"):
        a = answer(frame((DATA / name).read_bytes()))
        assert a.code == "AR" and a.errors[0].startswith("201"), a.errors
    # an oversized message is read to its end and refused
    big = a31("BIG^^^D1").replace(b"DOE^JOHN", b"A" * 100_000)
    a = answer(frame(big))
    assert a.code == "AR" and "larger than" in a.text
    # garbage
    assert answer(frame(b"hello")).code == "AR"
    assert receiver.stats.refused == 7  # the oversized one never reached it: the MLLP server answered
    assert _ids(archive, "X1") == [] and _ids(archive, "BIG") == []
    # and the listener still works
    assert answer(frame(a31("OK1^^^D1"))).code == "AA"


def test_unknown_domain_when_domains_are_followed(tmp_path):
    archive = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st")
    recv = UpdateNotificationReceiver(archive, domains=[Domain.parse(IHENA), Domain.parse("IHELOCAL")])
    try:
        a = v2.read_ack(recv(a31(f"01^^^IHENA&{IHENA}&ISO", "9^^^ELSEWHERE")))
        assert a.code == "AE" and a.errors[0].startswith("204") and "ELSEWHERE" in a.text
        a = v2.read_ack(recv((DATA / "ipf-iti10-adt-a31-2.hl7").read_bytes()))
        assert a.code == "AA"
        with archive.connect() as conn:
            assert len(links(conn)) == 2
    finally:
        archive.close()


@pytest.mark.parametrize("how", ["listen", "archive serve", "archive serve, 2 workers"])
def test_the_commands(tmp_path, how):
    """`ihe pix listen` and `ihe archive serve --pix-port` as a user runs them."""
    db, storage = f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st"
    port = free_port()
    env = {**os.environ, "IHE_CONFIG": str(tmp_path / "c.toml"), "IHE_DATA_DIR": str(tmp_path / "d")}
    if how == "listen":
        args = ["pix", "listen", "--port", str(port)]
    else:
        workers = "2" if "2 workers" in how else "1"  # 2: the listener runs in the supervising process
        args = ["archive", "serve", "--port", str(free_port()), "--workers", workers, "--pix-port", str(port)]
    p = subprocess.Popen([sys.executable, "-m", "ihecli", *args, "--db", db, "--storage", str(storage)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=30)
        if how == "listen":  # any MLLP sender will do, `ihe hl7 send` too
            r = run_cli("hl7", "send", f"127.0.0.1:{port}", A31_FILES[2], "--json")
            assert r.code == 0 and [a["ack_code"] for a in r.json] == ["AA"], r.stderr
        else:
            acks = PixManager.notify("127.0.0.1", port, A31_FILES[2:])
            assert [a.code for a in acks] == ["AA"]
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"PIX Update Notification (MLLP) listening on 127.0.0.1:{port}" in err
    r = run_cli("pix", "ls", "13278", "--db", db, "--json")
    assert r.code == 0 and len(r.json) == 3


def test_rate_over_one_connection(tmp_path):
    """300 ITI-10 messages acknowledged in order over one connection, every link stored
    (bench/pix.py measures the rate; test_hl7_feed checks Nagle is off on the MLLP sockets)."""
    archive = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st")
    srv = MllpServer(UpdateNotificationReceiver(archive), port=0)
    srv.start()
    try:
        with MllpClient("127.0.0.1", srv.port) as c:
            for i in range(300):
                assert c.send(a31(f"R{i}^^^D1", f"S{i}^^^&1.2.3&ISO", control=f"r{i}")).count(b"MSA|AA|") == 1
        with archive.connect() as conn:
            assert conn.execute(select(func.count()).select_from(pix_links)).scalar() == 600
    finally:
        srv.stop()
        archive.close()


def test_xds_query_by_a_linked_id(tmp_path, monkeypatch):
    """A Registry Stored Query by a local identifier finds the documents filed under the affinity
    domain identifier PIX links it to (one archive database: `ihe xds serve` and `ihe pix listen`)."""
    from ihecli.net.soap import schemas
    from ihecli.xds.server import XdsServer

    monkeypatch.setattr(schemas, "STRICT", True)
    archive = Archive(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "st")
    xds = XdsServer(archive, repository_unique_id="1.3.6.1.4.1.21367.2017.2.3.9999")
    xds.start()
    try:
        (tmp_path / "report.txt").write_text("report")
        affinity, local = "E-77^^^&1.3.6.1.4.1.21367.2005.3.7&ISO", "L-1^^^&1.2.9&ISO"
        r = run_cli("xds", "submit", tmp_path / "report.txt", "--patient", affinity, "--repository", xds.url)
        assert r.code == 0, r.stderr
        query = ["xds", "query", "find-documents", "--patient", local, "--registry", xds.url, "--json"]
        assert run_cli(*query).json == []
        recv = UpdateNotificationReceiver(archive)
        assert b"MSA|AA" in recv(a31("L-1^^^LOCAL&1.2.9&ISO", "E-77^^^XREF&1.3.6.1.4.1.21367.2005.3.7&ISO"))
        r = run_cli(*query)
        assert r.code == 0 and len(r.json) == 1 and affinity in str(r.json[0]), r.stdout + r.stderr
        r = run_cli("xds", "query", "get-all", "--patient", local, "--registry", xds.url, "--json")
        assert r.code == 0 and len(r.json) >= 2, r.stderr  # the document entry and its submission set
    finally:
        xds.stop()
        archive.close()


def test_acknowledgements_are_valid_hl7(tmp_path):
    """hl7apy (strict) reads our AA and AE acknowledgements of A31s as valid v2.5 ACKs."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    archive = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st")
    try:
        recv = UpdateNotificationReceiver(archive, app="IHE", facility="RAD")
        for raw, code in ((A31_FILES[0].read_bytes(), "AA"), (a31("NODOMAIN"), "AE")):
            ack = recv(raw).decode()
            m = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            assert m.validate() and m.msa.msa_1.value == code
            assert m.msh.msh_9.to_er7() == "ACK^A31^ACK"
    finally:
        archive.close()


def test_a_query_sent_to_a_pix_consumer_is_refused_in_one_plain_line(listener):
    """`ihe pix query` pointed at a PIX Consumer (which takes only ADT^A31): its AR, its reason once."""
    _archive, srv, _receiver = listener
    r = run_cli("pix", "query", "13278", "--domain", "HIMSS2005", "--manager", f"127.0.0.1:{srv.port}")
    said = [line for line in r.stderr.splitlines() if "notification refused" not in line]  # the listener's log
    assert r.code == 1 and len(said) == 1, r.stderr
    assert said[0].startswith("ihe: error: the PIX Manager refused the query (AR): ")
    assert said[0].count("a PIX Consumer takes ADT^A31") == 1
