"""The archive's HL7 feed (RAD-4/12/13): reading real and hostile messages, ACKs that hl7apy
validates, patient updates, merges and identifier changes in the index (SQLite and PostgreSQL),
orders, and `ihe hl7 send`."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from helpers import run_cli
from ihecli.archive import schema as s
from ihecli.archive import tables_hl7 as t
from ihecli.hl7 import v2
from ihecli.hl7.client import split_messages
from ihecli.net.mllp import MllpClient, MllpServer
from ihecli.workflow.hl7 import Hl7Feed

DATA = Path(__file__).parent / "data" / "hl7"
A08 = DATA / "ipf-iti8-adt-a08.hl7"  # PID-3: ""^^^&2.71&ISO ~ 306567^^^MPI&2.16...&ISO; BEST^XML^2; 19470101; M
A40 = DATA / "ipf-iti8-adt-a40.hl7"  # PID-3 142025 (LENNON^JOHN), MRG-1 704686
A31 = DATA / "ipf-iti10-adt-a31-3.hl7"  # CRLF and blank lines; three identifiers


def instance(pid: str, name: str, study_uid: str | None = None, issuer: str | None = None,
             birth: str = "", sex: str = "O") -> bytes:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = pid, name, birth, sex
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


def adt(trigger: str, pid: str, name: str = "", *, control: str = "1", mrg: str = "", version: str = "2.5",
        extra: str = "", birth: str = "", sex: str = "") -> bytes:
    structure = {"A40": "ADT_A39", "A47": "ADT_A30", "A31": "ADT_A05"}.get(trigger, "ADT_A01")
    segs = [f"MSH|^~\\&|HIS|HOSP|PACS|RAD|20240101120000||ADT^{trigger}^{structure}|{control}|P|{version}{extra}",
            f"EVN|{trigger}|20240101120000", f"PID|1||{pid}||{name}||{birth}|{sex}"]
    if mrg:
        segs.append(f"MRG|{mrg}")
    return ("\r".join(segs) + "\r").encode("utf-8")


def study_find(archive, **keys) -> list[Dataset]:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    for k in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
        setattr(q, k, keys.get(k, ""))
    return archive.find(q)


def counts(archive) -> dict:
    with archive.connect() as conn:
        out = archive.counts()
        out["retired"] = conn.execute(select(func.count()).select_from(t.hl7_patient_ids)).scalar_one()
        out["pids"] = sorted(conn.execute(select(s.patients.c.pid, s.patients.c.name)).all())
        out["studies_of"] = sorted(conn.execute(select(s.studies.c.study_uid, s.studies.c.patient_fk)).all())
    return out


@pytest.fixture
def feed(archive):
    return Hl7Feed(archive, app="IHE_ARCHIVE")


def send(feed, raw: bytes) -> v2.AckResult:
    return v2.read_ack(feed(raw))


# -- reading -----------------------------------------------------------------------------------
def test_reads_real_messages_with_any_segment_end():
    m = v2.parse(A31.read_bytes())  # CRLF with blank lines
    assert (m.type, m.trigger, m.structure, m.version) == ("ADT", "A31", "ADT_A05", "2.5")
    assert [x[0] for x in m.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert m.value("PID", 3, 4, 2, rep=2) == "1.3.6.1.4.1.21367.2005.1.3"
    lf = v2.parse(A40.read_bytes().replace(b"\r", b"\n"))
    assert lf.value("MRG", 1) == "704686" and lf.version == "2.3.1"
    stray = v2.parse(b"\x0b\r\n" + A08.read_bytes() + b"\x1c\r")
    assert stray.control_id == "387352" and stray.raw("PID", 3).startswith('""')


def test_escapes_and_character_sets():
    text = "MSH|^~\\&|A|B|C|D|20240101||ADT^A08|9|P|2.5|||||| 8859/1\rPID|||X\\S\\1||M\\F\\LLER^J\\T\\R\\E\\\r"
    m = v2.parse(text.replace("M\\F\\LLER", "MÜLLER").encode("latin-1"))
    assert m.encoding == "iso8859-1" and m.value("PID", 5, 1) == "MÜLLER" and m.value("PID", 3, 1) == "X^1"
    assert m.value("PID", 5, 2) == "J&R\\"
    utf8 = v2.parse(("MSH|^~\\&|A|B|C|D|20240101||ADT^A08|9|P|2.5||||||UNICODE UTF-8\rPID|||1||山田^太郎\r")
                    .encode("utf-8"))
    assert utf8.value("PID", 5, 1) == "山田"
    a = utf8  # the ACK keeps the character set and is encoded in it
    assert b"UNICODE UTF-8" in v2.ack(a, "AA")
    latin_no_msh18 = v2.parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A08|9|P|2.5\rPID|||1||MÜLLER\r".encode("latin-1"))
    assert latin_no_msh18.value("PID", 5) == "MÜLLER"
    with pytest.raises(v2.Hl7Error) as e:
        v2.parse(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|9|P|2.5||||||KLINGON\rPID|||1\r")
    assert e.value.ack_code == "AR" and e.value.code == 103


@pytest.mark.parametrize("raw,code", [
    (b"", 100), (b"hello world", 100), (b"MSH", 100), (b"MSH|^~\\&|A|B|C|D|2024||ADT^A08||P|2.5\r", 101),
    (b"MSH|^~\\&|A|B|C|D|2024||ADT^A08|1|P|3.0\r", 203), (b"MSH|^~\\&|A|B|C|D|2024||ADT^A08|1|P|2.5\rP\x00D|x\r", 100),
    (b"MSHa^~\\&|A\r", 102),
])
def test_hostile_input_is_rejected_with_err(raw, code):
    with pytest.raises(v2.Hl7Error) as e:
        v2.parse(raw)
    assert e.value.ack_code == "AR" and e.value.code == code
    nak = v2.read_ack(v2.nak(raw, e.value))
    assert nak.code == "AR" and nak.errors[0].startswith(str(code))


def test_mutated_messages_always_get_an_ack(tmp_path):
    """Real messages with random bytes changed, inserted and removed: every one is answered with
    an acknowledgement that reads back, whatever the feed made of it."""
    import random

    from ihecli.archive import Archive

    rnd = random.Random(7)
    with Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st") as archive:
        archive.store(instance("704686", "LENNON^J"))
        archive.store(instance("306567", "BEST^X"))
        feed = Hl7Feed(archive)
        for n in range(300):
            b = bytearray((A08, A40, A31)[n % 3].read_bytes())
            for _ in range(rnd.randint(1, 6)):
                pos = rnd.randrange(len(b))
                op = rnd.random()
                if op < 0.4:
                    b[pos] = rnd.randrange(256)
                elif op < 0.7:
                    b.insert(pos, rnd.choice(b'|^~\\&\r\n\x0b\x1c".'))
                else:
                    del b[pos:pos + rnd.randint(1, 20)]
            a = v2.read_ack(feed(bytes(b)))
            assert a.code in ("AA", "AE", "AR")
            if a.code != "AA":
                assert a.errors


@pytest.mark.parametrize("fixture", [A08, A40, A31])
def test_acks_validate_in_hl7apy_strict_mode(fixture):
    m = v2.parse(fixture.read_bytes())
    for raw in (v2.ack(m, "AA"), v2.ack(m, "AE", error=v2.Hl7Error("no such patient", code=204,
                                                                     location=("MRG", 1, 1, 1)))):
        tree = parse_message(raw.decode(), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        tree.validate()
        assert tree.msh.msh_12.value == m.version  # same version back
        assert tree.msh.msh_5.value == m.raw("MSH", 3) and tree.msh.msh_3.value == m.raw("MSH", 5)
        assert tree.msa.msa_2.value == m.control_id


# -- patient updates ---------------------------------------------------------------------------
def test_a08_real_message_updates_demographics(archive, feed):
    uid = generate_uid()
    archive.store(instance("306567", "OLD^NAME", uid))
    a = send(feed, A08.read_bytes())
    assert a.code == "AA" and a.control_id == "387352"
    [r] = study_find(archive, StudyInstanceUID=uid)
    assert (r.PatientID, str(r.PatientName), r.PatientBirthDate, r.PatientSex) == \
        ("306567", "BEST^XML^2", "19470101", "M")
    assert len(study_find(archive, PatientName="BEST*")) == 1  # matching uses the new name


def test_applied_update_is_audited(archive, feed, tmp_path):
    import socket

    from ihecli import atna

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    atna.configure(f"udp://127.0.0.1:{rx.getsockname()[1]}", spool=tmp_path / "spool")
    try:
        archive.store(instance("AUD1", "OLD^NAME"))
        assert send(feed, adt("A08", "AUD1", "NEW^NAME", control="aud1")).code == "AA"
        atna.flush()
        got = rx.recv(65536)
    finally:
        atna.configure(None)
        rx.close()
    assert b"RAD-12" in got and b'ParticipantObjectID="AUD1"' in got and b'EventActionCode="U"' in got


def test_a31_creates_and_a01_updates_with_non_ascii_name(archive, feed):
    assert send(feed, A31.read_bytes()).code == "AA"  # nobody stored yet: the patient is created
    q = Dataset()
    q.QueryRetrieveLevel, q.PatientID, q.PatientName = "PATIENT", "13278", ""
    [p] = archive.find(q, "patient")
    assert str(p.PatientName) == "MOORE^CHIP"
    uid = generate_uid()
    archive.store(instance("13278", "MOORE^CHIP", uid, issuer="HIMSS2005"))
    raw = adt("A01", "13278^^^HIMSS2005", "ΔΙΟΝΥΣΙΟΣ^JÖRG", control="u1", extra="||||||UNICODE UTF-8", birth="19600229",
              sex="F")
    assert send(feed, raw).code == "AA"
    [r] = study_find(archive, StudyInstanceUID=uid)
    assert str(r.PatientName) == "ΔΙΟΝΥΣΙΟΣ^JÖRG" and r.SpecificCharacterSet == "ISO_IR 192"
    assert r.PatientBirthDate == "19600229" and r.PatientSex == "F"


def test_a40_real_message_merges(archive, feed):
    prior = [generate_uid(), generate_uid()]
    surviving = generate_uid()
    for uid in prior:
        archive.store(instance("704686", "LENNON^J", uid))
    archive.store(instance("142025", "LENNON^JOHN", surviving))
    archive.store(instance("OTHER", "SOMEONE^ELSE"))
    a = send(feed, A40.read_bytes())
    assert a.code == "AA", a.text
    assert study_find(archive, PatientID="704686") == []
    merged = study_find(archive, PatientID="142025")
    assert sorted(r.StudyInstanceUID for r in merged) == sorted(prior + [surviving])
    assert {(str(r.PatientName), r.PatientBirthDate, r.PatientSex) for r in merged} == \
        {("LENNON^JOHN", "19730811", "M")}
    assert [r.PatientID for r in study_find(archive, PatientName="SOMEONE*")] == ["OTHER"]
    assert archive.counts()["patients"] == 2
    # a modality still sending the retired ID: its new study joins the surviving patient
    late = generate_uid()
    archive.store(instance("704686", "LENNON^J", late))
    assert study_find(archive, PatientID="704686") == []
    assert late in {r.StudyInstanceUID for r in study_find(archive, PatientID="142025")}
    # sent again (an ACK lost on the way): acknowledged, not applied twice
    before = counts(archive)
    assert send(feed, A40.read_bytes()).code == "AA"
    assert counts(archive) == before


def test_merge_into_an_unknown_patient_renames(archive, feed):
    uid = generate_uid()
    archive.store(instance("OLD1", "DOE^JANE", uid))
    assert send(feed, adt("A40", "NEW1^^^HOSP", "DOE^JANE^M", mrg="OLD1^^^HOSP", control="m1")).code == "AA"
    [r] = study_find(archive, StudyInstanceUID=uid)
    assert (r.PatientID, str(r.PatientName)) == ("NEW1", "DOE^JANE^M")


def test_bad_merges_change_nothing(archive, feed):
    archive.store(instance("P1", "ONE^PATIENT"))
    archive.store(instance("P2", "TWO^PATIENT"))
    before = counts(archive)
    a = send(feed, adt("A40", "P1", "ONE^PATIENT", mrg="NOBODY", control="b1"))
    assert a.code == "AE" and a.errors[0].startswith("204") and "NOBODY" in a.text
    a = send(feed, adt("A40", "P1", "X^Y", mrg="P1", control="b2"))
    assert a.code == "AE" and a.errors[0].startswith("205")
    a = send(feed, adt("A40", "P1", "X^Y", control="b3"))  # no MRG segment
    assert a.code == "AE" and a.errors[0].startswith("100")
    # a message with two merges, the second of an unknown patient: the first is not applied either
    two = adt("A40", "P1", "ONE^PATIENT", mrg="P2", control="b4") + b"PID|2||P1\rMRG|GHOST\r"
    a = send(feed, two)
    assert a.code == "AE" and "GHOST" in a.text
    assert send(feed, adt("A08", '""', "X^Y", control="b5")).errors[0].startswith("101")
    assert counts(archive) == before


def test_a47_changes_the_identifier(archive, feed):
    uid = generate_uid()
    archive.store(instance("TEMP123", "UNKNOWN^TRAUMA", uid))
    archive.store(instance("TAKEN", "SOMEONE^ELSE"))
    before = counts(archive)
    a = send(feed, adt("A47", "TAKEN", mrg="TEMP123", control="c0"))
    assert a.code == "AE" and a.errors[0].startswith("205")
    assert send(feed, adt("A47", "MRN77", mrg="GHOST", control="c1")).errors[0].startswith("204")
    assert counts(archive) == before
    assert send(feed, adt("A47", "MRN77^^^HOSP", "SMITH^ANNA", mrg="TEMP123", control="c2")).code == "AA"
    [r] = study_find(archive, StudyInstanceUID=uid)
    assert (r.PatientID, str(r.PatientName)) == ("MRN77", "SMITH^ANNA")
    assert study_find(archive, PatientID="TEMP123") == []


def test_unknown_messages_are_rejected(archive, feed):
    before = counts(archive)
    for raw, code in ((adt("A99", "P1", control="u1"), 201), (b"garbage\r\n", 100),
                      (adt("A08", "P1", control="u2").replace(b"ADT^A08", b"ZZZ^Z01"), 200)):
        a = send(feed, raw)
        assert a.code == "AR" and a.errors[0].startswith(str(code))
    assert counts(archive) == before
    assert feed.stats.refused == 3 and feed.stats.accepted == 0


# -- orders ------------------------------------------------------------------------------------
ORM = ("MSH|^~\\&|RIS|HOSP|PACS|RAD|20240101120000||ORM^O01|o{n}|P|2.3.1\r"
       "PID|1||PAT9^^^HOSP||ROE^RICHARD\rPV1||O\r"
       "ORC|{ctl}|PL1|FL1||{st}||^^^20240102090000\r"
       "OBR|1|PL1|FL1|CT1^CT HEAD^LOCAL||||||||||||||ACC1|RP1|SPS1||||CT\r"
       "ZDS|1.2.3.4.5^100^Application^DICOM\r")
OMI = ("MSH|^~\\&|RIS|HOSP|PACS|RAD|20240101120000||OMI^O23^OMI_O23|i1|P|2.5.1\r"
       "PID|1||PAT8||DOE^JANE\rORC|NW|PL2|FL2||SC\rTQ1|||||||20240103080000\r"
       "OBR|1|PL2|FL2|MR1^MR KNEE\r"
       "IPC|ACC2|RP2|1.2.3.9|SPS2a|MR\rIPC|ACC2|RP2|1.2.3.9|SPS2b|MR\r")


def test_orders_are_kept_updated_and_cancelled(archive, feed):
    assert send(feed, ORM.format(n=1, ctl="NW", st="SC").encode()).code == "AA"
    assert send(feed, OMI.encode()).code == "AA"
    r = run_cli("hl7", "orders", "--db", archive.db_url, "--storage", archive.blobs.root, "--json")
    assert r.code == 0, r.stderr
    rows = {(o["placer_order"], o["sps_id"]): o for o in r.json}
    assert set(rows) == {("PL1", "SPS1"), ("PL2", "SPS2a"), ("PL2", "SPS2b")}
    o = rows[("PL1", "SPS1")]
    assert (o["accession"], o["study_uid"], o["modality"], o["procedure"], o["scheduled"], o["status"], o["pid"]) == \
        ("ACC1", "1.2.3.4.5", "CT", "CT HEAD", "20240102090000", "SCHEDULED", "PAT9")
    assert rows[("PL2", "SPS2b")]["scheduled"] == "20240103080000"
    assert send(feed, ORM.format(n=2, ctl="CA", st="CA").encode()).code == "AA"
    a = send(feed, ORM.format(n=3, ctl="CA", st="CA").encode().replace(b"PL1", b"PLX").replace(b"FL1", b"FLX"))
    assert a.code == "AE" and a.errors[0].startswith("204")
    r = run_cli("hl7", "orders", "--db", archive.db_url, "--storage", archive.blobs.root, "--json",
                "--accession", "ACC1")
    assert [o["status"] for o in r.json] == ["CANCELED"]
    where = ("--db", archive.db_url, "--storage", archive.blobs.root, "--json")
    r = run_cli("hl7", "orders", *where, "--patient", "PAT?")
    assert sorted(o["sps_id"] for o in r.json) == ["SPS1", "SPS2a", "SPS2b"]
    r = run_cli("hl7", "orders", *where, "--patient", "PAT8")
    assert sorted(o["sps_id"] for o in r.json) == ["SPS2a", "SPS2b"]
    # the orders of a merged patient follow it
    archive.store(instance("PAT8", "DOE^JANE"))
    assert send(feed, adt("A40", "PAT7^^^HOSP", "DOE^JANE", mrg="PAT8", control="om1")).code == "AA"
    r = run_cli("hl7", "orders", *where, "--patient", "PAT7")
    assert sorted(o["sps_id"] for o in r.json) == ["SPS2a", "SPS2b"]


# -- ihe hl7 send ------------------------------------------------------------------------------
def test_split_messages_of_a_file():
    two = A08.read_bytes() + b"\n\n" + A40.read_bytes().replace(b"\r", b"\r\n")
    msgs = split_messages(b"FHS|^~\\&\rBHS|^~\\&\r" + two + b"BTS|2\rFTS|1\r")
    assert [v2.parse(m).trigger for m in msgs] == ["A08", "A40"]
    assert all(b"\n" not in m and m.endswith(b"\r") for m in msgs)


def test_hl7_send_command(archive, tmp_path):
    srv = MllpServer(Hl7Feed(archive), port=0)
    srv.start()
    try:
        archive.store(instance("704686", "LENNON^J"))
        peer = f"127.0.0.1:{srv.port}"
        r = run_cli("hl7", "send", peer, A40, "--json")
        assert r.code == 0, r.stderr
        [res] = r.json
        assert res["ack_code"] == "AA" and res["control_id"] == "00000000000396814" and res["message_type"] == \
            "ADT^A40" and res["ack"].startswith("MSH|")
        bad = tmp_path / "bad.hl7"
        bad.write_bytes(adt("A40", "X1", mrg="NOBODY", control="z1"))
        r = run_cli("hl7", "send", peer, bad)
        assert r.code == 1 and "MSA|AE|z1" in r.stdout and "204" in r.stderr
        r = run_cli("hl7", "send", peer, A08, bad)
        assert r.code == 3
        garbage = tmp_path / "garbage.txt"
        garbage.write_text("hello")
        r = run_cli("hl7", "send", peer, garbage)
        assert r.code == 2 and "no HL7 v2 message" in r.stderr
    finally:
        srv.stop()
    r = run_cli("hl7", "send", f"127.0.0.1:{srv.port}", A08)
    assert r.code == 4 and r.stderr.startswith("ihe: error: cannot reach")
    assert run_cli("hl7", "send", "nowhere", A08).code == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_archive_serve_hl7_port(tmp_path, workers):
    """`ihe archive serve --hl7-port` as a user runs it: one process, or the HL7 listener in the
    process that supervises two DICOM workers."""
    import os
    import subprocess
    import sys

    from helpers import free_port, run_dcmtk, wait_port

    db, storage = f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st"
    from ihecli.archive import Archive

    with Archive(db, storage) as a:
        a.store(instance("SRV1", "BEFORE^NAME"))
    port, hl7_port = free_port(), free_port()
    env = {**os.environ, "IHE_CONFIG": str(tmp_path / "c.toml"), "IHE_DATA_DIR": str(tmp_path / "d")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port), "--hl7-port",
                          str(hl7_port), "--workers", workers, "--db", db, "--storage", str(storage)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(hl7_port, timeout=30)
        wait_port(port, timeout=30)
        with MllpClient("127.0.0.1", hl7_port) as c:
            assert v2.read_ack(c.send(adt("A08", "SRV1", "AFTER^NAME", control="s1"))).code == "AA"
        out = run_dcmtk("findscu", "-S", "-aec", "IHE_ARCHIVE", "-k", "QueryRetrieveLevel=STUDY", "-k",
                        "PatientID=SRV1", "-k", "PatientName", "127.0.0.1", str(port))
        assert "AFTER^NAME" in out.stdout + out.stderr
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"HL7 (MLLP) listening on 127.0.0.1:{hl7_port}" in err


def test_many_messages_over_one_connection_without_nagle(tmp_path, monkeypatch):
    """200 A08s over one connection, each acknowledged in order; both ends of the connection
    have Nagle's algorithm off (with it on, every message waits ~40 ms for a delayed ACK).
    bench/hl7.py measures the rate."""
    import socket

    from ihecli.archive import Archive
    from ihecli.net import mllp

    nodelay = []
    real = mllp._nodelay

    def spy(sock):
        real(sock)
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(mllp, "_nodelay", spy)
    with Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st") as archive:
        archive.store(instance("FAST1", "FAST^ONE"))
        srv = MllpServer(Hl7Feed(archive), port=0)
        srv.start()
        try:
            with MllpClient("127.0.0.1", srv.port) as c:
                for i in range(200):
                    ack = c.send(adt("A08", "FAST1", f"FAST^N{i}", control=f"t{i}"))
                    assert ack.startswith(b"MSH") and f"t{i}".encode() in ack
        finally:
            srv.stop()
        [r] = study_find(archive, PatientID="FAST1")
        assert str(r.PatientName) == "FAST^N199"
    assert len(nodelay) >= 2 and all(nodelay), nodelay  # the client's socket and the server's
