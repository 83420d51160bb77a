"""The DICOM actors call the audit hook: with audit.repository in the profile, `ihe dicom store`,
`find`, `move` and `get` and the archive's own services leave their events (PS3.15 A.5.3) in a
real Audit Record Repository; every recorded message validates against the DICOM audit schema."""
from __future__ import annotations

import time

import pytest
from lxml import etree

from helpers import run_cli
from ihecli import atna
from ihecli.atna.query import query_events
from ihecli.atna.repository import AuditRepository
from test_atna import problems


@pytest.fixture
def arr(tmp_path):
    r = AuditRepository(f"sqlite:///{tmp_path / 'arr.db'}", tls_port=None, udp_port=None, tcp_port=0)
    r.start()
    yield r
    r.stop()
    atna.configure(None)


@pytest.fixture
def profile(arr, tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f'[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\nspool = "{tmp_path / "spool"}"\n'
                   f'source_id = "TESTNODE"\n')
    return str(cfg)


def events(arr, n, timeout=15):
    """Wait for at least ``n`` stored events; returns them oldest first, with their messages."""
    end = time.monotonic() + timeout
    atna.flush(timeout)
    while time.monotonic() < end and arr.stats.stored < n:
        time.sleep(0.02)
    arr.flush()
    return list(reversed(query_events(arr.engine, with_message=True)))


def test_scu_operations_are_audited(arr, profile, server, storescp, corpus, tmp_path):
    study = None
    r = run_cli("--config", profile, "dicom", "store", server.spec, *map(str, corpus[:6]))
    assert r.code == 0, r.stderr
    r = run_cli("--config", profile, "dicom", "find", server.spec, "-L", "study", "-k", "PatientID=PID000000")
    assert r.code == 0, r.stderr
    from pydicom import dcmread

    study = str(dcmread(corpus[0], stop_before_pixels=True).StudyInstanceUID)
    r = run_cli("--config", profile, "dicom", "move", server.spec, "--dest", "STORESCP", "-k",
                f"StudyInstanceUID={study}")
    assert r.code == 0, r.stderr
    r = run_cli("--config", profile, "dicom", "get", server.spec, "--out", str(tmp_path / "got"), "-k",
                f"StudyInstanceUID={study}")
    assert r.code == 0, r.stderr
    got = [e for e in events(arr, 4) if e.users and e.users[0] in ("IHE", "IHE_ARCHIVE") or "IHE" in e.users]
    mine = [(e.event, e.action) for e in got if "IHE" in e.users]
    assert ("110104 DICOM Instances Transferred", "R") in mine  # store, as the sender
    assert ("110112 Query", "E") in mine
    assert ("110102 Begin Transferring DICOM Instances", "E") in mine
    assert ("110104 DICOM Instances Transferred", "C") in mine  # get, as the receiver
    for e in got:
        assert problems(e.message.encode("utf-8")) == [], e.event
    sent = [e for e in got if e.event.startswith("110104") and e.action == "R" and "IHE" in e.users][0]
    doc = etree.fromstring(sent.message.encode("utf-8"))
    assert doc.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass").get(
        "NumberOfInstances") == "6"
    assert sorted(sent.patients) == ["PID000000"]
    assert all(e.source == "TESTNODE" for e in got)
