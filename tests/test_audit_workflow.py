"""Audit events (ITI-20, DICOM PS3.15 A.5) of the imaging workflow transactions, recorded by the
archive in a real Audit Record Repository: MPPS received and forwarded (Procedure Record, RAD-6/7),
Storage Commitment (DICOM Instances Transferred, RAD-10), rejection notes (DICOM Instances
Accessed / DICOM Study Deleted, RAD-66). Each awaited event validates against the DICOM audit
schema. DCMTK storescu sends the objects and notes, pynetdicom plays the modality and the RIS."""
from __future__ import annotations

import re

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from helpers import free_port, make_corpus, run_dcmtk
from ihecli import atna
from ihecli.archive.server import DicomServer
from ihecli.kos import codes
from ihecli.workflow.service import WorkflowConfig, WorkflowServices
from test_atna import problems
from test_audit_dicom import arr  # noqa: F401  (the fixture)
from test_move_tls import wait_events
from test_mpps import MppsPeer, completion, create, new_step
from test_rejection import note
from test_stgcmt import CT, Scu, refs_of


def _serve(archive, arr, tmp_path, **config):
    atna.configure(f"tcp://127.0.0.1:{arr.tcp_port}", spool=tmp_path / "spool")
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, WorkflowConfig(poll=0.1, **config))])
    srv.start()
    return srv


def _check(got, want: dict) -> dict:
    """The first stored event each predicate of ``want`` matches (by name), each valid."""
    found = {}
    for name, pred in want.items():
        hits = [e for e in got if pred(e)]
        assert hits, (name, [(e.event, e.action, e.outcome, e.users) for e in got])
        found[name] = hits[0]
        assert problems(hits[0].message.encode("utf-8")) == [], name
    return found


def test_mpps_received_and_forwarded_are_audited(archive, arr, tmp_path):
    ris = MppsPeer(free_port()).start()
    srv = _serve(archive, arr, tmp_path, mpps_forward=[ris.node])
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="IHE_ARCHIVE")
        step = new_step()
        status, uid = create(assoc, step)
        assert status.Status == 0
        mods, _ = completion()
        assert assoc.send_n_set(mods, MPPS, uid)[0].Status == 0
        assert assoc.send_n_set(mods, MPPS, uid)[0].Status == 0x0110  # completed: may no longer be updated
        assoc.release()
        study = str(step.ScheduledStepAttributesSequence[0].StudyInstanceUID)

        def pr(action, who, outcome=0):
            return lambda e: (e.event == "110111 Procedure Record" and e.action == action and who in e.users
                              and e.outcome == outcome and uid in e.message)
        want = {"N-CREATE received": pr("C", "MODALITY"), "N-SET received": pr("U", "MODALITY"),
                "N-SET refused": pr("U", "MODALITY", 4),
                "N-CREATE forwarded": pr("C", "RIS"), "N-SET forwarded": pr("U", "RIS")}
        ev = _check(wait_events(arr, list(want.values())), want)
    finally:
        srv.stop()
        ris.stop()
    for name, e in ev.items():
        assert e.patients == ["PID-MPPS"], name
        assert study in e.message and f'<MPPS UID="{uid}"/>' in e.message, name
    assert "0xA710" in ev["N-SET refused"].message or "0x0110" in ev["N-SET refused"].message
    # received: the modality is the requesting source; forwarded: the archive is
    assert 'UserID="MODALITY" UserIsRequestor="true"' in ev["N-CREATE received"].message
    assert 'UserID="RIS" UserIsRequestor="false"' in ev["N-CREATE forwarded"].message


def test_storage_commitment_is_audited(archive, arr, tmp_path):
    files = make_corpus(tmp_path / "study", studies=1, series=1, images=3)
    srv = _serve(archive, arr, tmp_path)
    try:
        run_dcmtk("storescu", "-aet", "MODALITY", "-aec", "IHE_ARCHIVE", "127.0.0.1", str(srv.port),
                  *map(str, files))
        scu = Scu()
        assoc = scu.associate(srv.port)
        assert scu.request(assoc, refs_of(files))[0].Status == 0
        scu.wait()
        scu.arrived.clear()
        assert scu.request(assoc, refs_of(files)[:1] + [(CT, generate_uid())])[0].Status == 0
        scu.wait()
        assoc.release()

        def commit(outcome):
            return lambda e: (e.event == "110104 DICOM Instances Transferred" and "RAD-10" in e.types
                              and e.outcome == outcome)
        want = {"all committed": commit(0), "one never stored": commit(4)}
        ev = _check(wait_events(arr, list(want.values())), want)
    finally:
        srv.stop()
    for e in ev.values():
        assert e.action == "R" and "MODALITY" in e.users and "IHE_ARCHIVE" in e.users
        assert e.patients == ["PID000000"]
        assert str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) in e.message
    assert 'NumberOfInstances="3"' in ev["all committed"].message
    assert 'NumberOfInstances="1"' in ev["one never stored"].message
    assert "1 of 2 instances not committed" in ev["one never stored"].message


def test_rejection_notes_are_audited(archive, arr, tmp_path):
    files = make_corpus(tmp_path / "study", studies=1, series=2, images=2)
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    srv = _serve(archive, arr, tmp_path)
    try:
        port = str(srv.port)
        run_dcmtk("storescu", "-aet", "MODALITY", "-aec", "IHE_ARCHIVE", "127.0.0.1", port, *map(str, files))
        # the first series rejected for quality (hidden), then the rest as past retention (deleted)
        run_dcmtk("storescu", "-aet", "QA_STATION", "-aec", "IHE_ARCHIVE", "127.0.0.1", port,
                  str(note(codes.REJECTED_FOR_QUALITY_REASONS, files[:2], tmp_path)))
        run_dcmtk("storescu", "-aet", "RETENTION", "-aec", "IHE_ARCHIVE", "127.0.0.1", port,
                  str(note(codes.DATA_RETENTION_POLICY_EXPIRED, files[2:], tmp_path)))
        want = {
            "some rejected": lambda e: e.event == "110103 DICOM Instances Accessed" and "QA_STATION" in e.users,
            "the rest deleted": lambda e: e.event == "110105 DICOM Study Deleted" and "RETENTION" in e.users}
        ev = _check(wait_events(arr, list(want.values())), want)
    finally:
        srv.stop()
    for e in ev.values():
        assert e.action == "D" and "RAD-66" in e.types and e.outcome == 0
        assert e.patients == ["PID000000"] and study in e.message and 'NumberOfInstances="2"' in e.message
    assert 'ParticipantObjectDataLifeCycle="14"' in ev["some rejected"].message
    assert "113001 Rejected for Quality Reasons" in ev["some rejected"].message
    assert 'ParticipantObjectDataLifeCycle="15"' in ev["the rest deleted"].message
    assert "113039 Data Retention Policy Expired" in ev["the rest deleted"].message


def test_mpps_sent_by_the_cli_is_audited(arr, tmp_path):
    """`ihe dicom mpps create|set` as a modality: Procedure Record events with this side as the
    requesting source; a node that is not there still leaves a (failed) record."""
    from helpers import run_cli

    ris = MppsPeer(free_port()).start()
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f'[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\nspool = "{tmp_path / "spool"}"\n')
    try:
        node = f"RIS@127.0.0.1:{ris.port}"
        r = run_cli("--config", cfg, "dicom", "mpps", "create", node, "--patient-id", "PID-SCU", "--modality", "CT",
                    "--calling-aet", "CT_ROOM_1", "--json")
        assert r.code == 0, r.stderr
        uid = r.json["sop_uid"]
        files = make_corpus(tmp_path / "done", studies=1, series=1, images=2)
        r = run_cli("--config", cfg, "dicom", "mpps", "set", node, uid, "--state", "COMPLETED",
                    "--series-from", tmp_path / "done", "--calling-aet", "CT_ROOM_1")
        assert r.code == 0, r.stderr
    finally:
        ris.stop()
    r = run_cli("--config", cfg, "dicom", "mpps", "set", f"RIS@127.0.0.1:{free_port()}", uid, "--state",
                "DISCONTINUED", "--calling-aet", "CT_ROOM_1", "--timeout", "5")
    assert r.code != 0

    def pr(action, outcome=0):
        return lambda e: (e.event == "110111 Procedure Record" and e.action == action and "CT_ROOM_1" in e.users
                          and e.outcome == outcome)
    want = {"N-CREATE sent": pr("C"), "N-SET sent": pr("U"), "N-SET to nobody": pr("U", 4)}
    ev = _check(wait_events(arr, list(want.values())), want)
    assert ev["N-CREATE sent"].patients == ["PID-SCU"]
    done = dcmread(files[0], stop_before_pixels=True)
    assert ev["N-SET sent"].patients == [done.PatientID]  # from the files of --series-from
    assert str(done.StudyInstanceUID) in ev["N-SET sent"].message and uid in ev["N-SET sent"].message
    assert ev["N-SET to nobody"].patients == []  # an N-SET names no patient: the record says who set what
    assert "Connection refused" in ev["N-SET to nobody"].message or "connect" in ev["N-SET to nobody"].message
    assert re.search(r'UserID="CT_ROOM_1" [^>]*UserIsRequestor="true"', ev["N-CREATE sent"].message)
    assert re.search(r'UserID="RIS" [^>]*UserIsRequestor="false"', ev["N-CREATE sent"].message)
