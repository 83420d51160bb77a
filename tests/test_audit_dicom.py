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


def test_archive_serve_audits_start_stop_and_checks_the_clock(arr, tmp_path):
    """`ihe archive serve` as a user runs it: profile with a repository and a time server."""
    import os
    import subprocess
    import sys

    from helpers import free_port, wait_port
    from test_time import _free_udp_port

    ntp = _free_udp_port()
    (tmp_path / "chrony.conf").write_text(f"port {ntp}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 10\n"
                                          f"cmdport 0\npidfile {tmp_path}/chronyd.pid\n")
    chrony = subprocess.Popen(["/usr/sbin/chronyd", "-f", str(tmp_path / "chrony.conf"), "-d", "-x"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[archive]\nport = {port}\nworkers = 1\n[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\n'
                   f'[time]\nserver = "127.0.0.1:{ntp}"\n')
    env = {**os.environ, "IHE_CONFIG": str(cfg), "IHE_DATA_DIR": str(tmp_path / "data")}
    try:
        time.sleep(0.3)  # chronyd binds
        p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve"], env=env, stderr=subprocess.PIPE,
                             text=True)
        wait_port(port, 30)
        p.terminate()
        err = p.communicate(timeout=30)[1]
    finally:
        chrony.terminate()
        chrony.wait(10)
    assert p.returncode == 0, err
    assert f"ms of 127.0.0.1:{ntp}" in err  # the clock was checked
    got = events(arr, 2)
    assert [e.types for e in got] == ["110120 Application Start", "110121 Application Stop"]
    assert all("IHE_ARCHIVE" in e.users for e in got)


def test_dicomweb_services_are_audited(arr, corpus, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    from pydicom import dcmread

    from ihecli.archive import Archive
    from ihecli.web import DicomWebServer

    atna.configure(f"tcp://127.0.0.1:{arr.tcp_port}", spool=tmp_path / "spool")
    archive = Archive(f"sqlite:///{tmp_path / 'web.db'}", tmp_path / "web")
    web = DicomWebServer(archive)
    web.start()
    try:
        client = DICOMwebClient(url=web.base_url)
        client.store_instances([dcmread(p) for p in corpus[:2] + corpus[6:8]])  # two patients: two messages
        study = str(dcmread(corpus[0], stop_before_pixels=True).StudyInstanceUID)
        assert len(client.search_for_studies(search_filters={"PatientID": "PID000000"})) == 1
        assert len(client.retrieve_study(study)) == 2
        got = events(arr, 4)
    finally:
        web.stop()
        archive.close()
    kinds = {(e.types.split(" ")[0], e.action) for e in got}
    assert kinds == {("RAD-108", "C"), ("RAD-129", "E"), ("RAD-107", "R")}
    assert all("127.0.0.1" in e.users for e in got)
    for e in got:
        assert problems(e.message.encode("utf-8")) == [], e.event
    assert sorted(tuple(e.patients) for e in got if e.types.startswith("RAD-108")) == [("PID000000",), ("PID000001",)]
    assert [e.patients for e in got if e.types.startswith("RAD-107")] == [["PID000000"]]


def test_pdi_export_and_import_are_audited(arr, profile, corpus, tmp_path):
    r = run_cli("--config", profile, "pdi", "burn", *map(str, corpus[:3]), "--usb", str(tmp_path / "usb"), "--no-web")
    assert r.code == 0, r.stderr
    r = run_cli("--config", profile, "pdi", "import", str(tmp_path / "usb"), "--db",
                f"sqlite:///{tmp_path / 'imp.db'}", "--storage", str(tmp_path / "imp"))
    assert r.code == 0, r.stderr
    got = events(arr, 2)
    assert [(e.event, e.action) for e in got] == [("110106 Export", "R"), ("110107 Import", "C")]
    assert all(e.patients == ["PID000000"] for e in got)
    for e in got:
        assert problems(e.message.encode("utf-8")) == [], e.event
        doc = etree.fromstring(e.message.encode("utf-8"))
        assert doc.find("ActiveParticipant/MediaIdentifier/MediaType").get("csd-code") == "110030"  # USB


def test_one_message_per_patient(arr, profile, server, corpus, tmp_path):
    """A transfer that touches two patients leaves one audit message for each (PS3.15 A.5.3: a
    message names a single patient), each with that patient's study and instance count."""
    from pydicom import dcmread

    heads = [dcmread(p, stop_before_pixels=True) for p in corpus]
    by_patient = {}
    for h in heads:
        by_patient.setdefault(str(h.PatientID), set()).add(str(h.StudyInstanceUID))
    assert len(by_patient) == 2 and all(len(s) == 1 for s in by_patient.values())
    r = run_cli("--config", profile, "dicom", "store", server.spec, *map(str, corpus))
    assert r.code == 0, r.stderr
    studies = "\\".join(sorted({str(h.StudyInstanceUID) for h in heads}))
    r = run_cli("--config", profile, "dicom", "get", server.spec, "--out", str(tmp_path / "got"), "-k",
                f"StudyInstanceUID={studies}")
    assert r.code == 0, r.stderr
    def source(e) -> str:
        doc = etree.fromstring(e.message.encode("utf-8"))
        return next(a.get("UserID") for a in doc.findall("ActiveParticipant")
                    if a.find("RoleIDCode") is not None and a.find("RoleIDCode").get("csd-code") == "110153")

    # per patient: store (sent, received), C-GET (begin, sent, received)
    got = [e for e in events(arr, 10) if "IHE" in e.users and e.event.startswith("110104")]
    # sent by `dicom store`, received by the archive; sent by the archive for the C-GET, received by `dicom get`
    for src, action in (("IHE", "R"), ("IHE", "C"), ("IHE_ARCHIVE", "R"), ("IHE_ARCHIVE", "C")):
        mine = [e for e in got if e.action == action and source(e) == src]
        assert sorted(p for e in mine for p in e.patients) == sorted(by_patient), (src, action)
        for e in mine:
            assert len(e.patients) == 1 and problems(e.message.encode("utf-8")) == []
            (study,) = by_patient[e.patients[0]]
            doc = etree.fromstring(e.message.encode("utf-8"))
            (obj,) = [o for o in doc.findall("ParticipantObjectIdentification")
                      if o.get("ParticipantObjectTypeCodeRole") == "3"]
            assert obj.get("ParticipantObjectID") == study
            assert obj.find("ParticipantObjectDescription/SOPClass").get("NumberOfInstances") == "6"
