"""MPPS SCP and PPS Manager (RAD-6/7/20/21): the state rules with their DIMSE statuses, driven by a
pynetdicom SCU (there is no DCMTK MPPS tool); forwarding through the outbox, across a restart."""
from __future__ import annotations

import threading
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from helpers import free_port, run_cli
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.config import Node
from ihecli.workflow import queue
from ihecli.workflow.mpps import get_step, list_steps
from ihecli.workflow.service import WorkflowConfig, WorkflowServices

CT = "1.2.840.10008.5.1.4.1.1.2"


def new_step(status="IN PROGRESS", **over) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "MÜLLER^HANS"
    ds.PatientID = "PID-MPPS"
    item = Dataset()
    item.StudyInstanceUID = generate_uid()
    item.AccessionNumber = "ACC-1"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "MODALITY"
    ds.PerformedProcedureStepStartDate = "20260101"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "CT HEAD"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    for k, v in over.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def completion(n_images=2, status="COMPLETED") -> tuple[Dataset, list[str]]:
    mods = Dataset()
    mods.PerformedProcedureStepStatus = status
    mods.PerformedProcedureStepEndDate = "20260101"
    mods.PerformedProcedureStepEndTime = "103000"
    se = Dataset()
    se.SeriesInstanceUID = generate_uid()
    se.ProtocolName = "HEAD"
    se.RetrieveAETitle = ""
    uids = [generate_uid() for _ in range(n_images)]
    refs = []
    for u in uids:
        r = Dataset()
        r.ReferencedSOPClassUID = CT
        r.ReferencedSOPInstanceUID = u
        refs.append(r)
    se.ReferencedImageSequence = refs
    mods.PerformedSeriesSequence = [se]
    return mods, uids


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pps(request, tmp_path_factory):
    """The archive with its workflow services, and an association of a modality to it."""
    d = tmp_path_factory.mktemp("mpps")
    url = f"sqlite:///{d / 'index.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("pg_server").new_database()
    archive = Archive(url, d / "storage")
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive)])
    port = srv.start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="IHE_ARCHIVE")
    assert assoc.is_established
    yield assoc, archive, port
    assoc.release()
    srv.stop()
    archive.close()


def create(assoc, ds, uid=None):
    uid = uid or generate_uid()
    status, _ = assoc.send_n_create(ds, MPPS, uid)
    return status, uid


def tags(status) -> list[int]:
    """The attributes a failure names: Attribute Identifier List (N-SET), or the tags an N-CREATE
    response can only give in its Error Comment."""
    if "AttributeIdentifierList" not in status:
        import re

        return [int(g + e, 16) for g, e in re.findall(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", str(status.ErrorComment))]
    v = status.AttributeIdentifierList
    return [int(t) for t in (v if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v])]


def test_create_then_complete(pps):
    assoc, archive, _ = pps
    status, uid = create(assoc, new_step())
    assert status.Status == 0x0000
    mods, _ = completion()
    status, _ = assoc.send_n_set(mods, MPPS, uid)
    assert status.Status == 0x0000
    stored = get_step(archive.engine, uid)
    assert stored.PerformedProcedureStepStatus == "COMPLETED"
    assert str(stored.PatientName) == "MÜLLER^HANS"  # kept from the N-CREATE, in its character set
    assert len(stored.PerformedSeriesSequence[0].ReferencedImageSequence) == 2
    step = next(s for s in list_steps(archive.engine) if s.sop_uid == uid)
    assert (step.status, step.patient_id, step.modality, step.accession) == ("COMPLETED", "PID-MPPS", "CT", "ACC-1")
    assert step.calling_aet == "MODALITY"


def test_in_progress_may_be_updated_before_the_end(pps):
    assoc, archive, _ = pps
    status, uid = create(assoc, new_step())
    mods = Dataset()
    mods.PerformedProcedureStepDescription = "CT HEAD WITH CONTRAST"
    mods.PerformedProcedureStepStatus = "IN PROGRESS"
    assert assoc.send_n_set(mods, MPPS, uid)[0].Status == 0x0000
    stopped, _ = completion(status="DISCONTINUED")
    assert assoc.send_n_set(stopped, MPPS, uid)[0].Status == 0x0000
    stored = get_step(archive.engine, uid)
    assert (stored.PerformedProcedureStepDescription, stored.PerformedProcedureStepStatus) == \
        ("CT HEAD WITH CONTRAST", "DISCONTINUED")


def test_create_without_uid_gets_one_from_the_scp(pps):
    assoc, archive, _ = pps
    before = {s.sop_uid for s in list_steps(archive.engine)}
    status, _ = assoc.send_n_create(new_step(), MPPS, None)
    assert status.Status == 0x0000
    assert len({s.sop_uid for s in list_steps(archive.engine)} - before) == 1


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
@pytest.mark.parametrize("then", ["COMPLETED", "DISCONTINUED", "IN PROGRESS", "description"])
def test_final_states_may_no_longer_be_updated(pps, final, then):
    assoc, archive, _ = pps
    _, uid = create(assoc, new_step())
    mods, _ = completion(status=final)
    assert assoc.send_n_set(mods, MPPS, uid)[0].Status == 0x0000
    again = Dataset()
    if then == "description":
        again.PerformedProcedureStepDescription = "changed"
    else:
        again, _ = completion(status=then)
        if then == "IN PROGRESS":
            again = Dataset()
            again.PerformedProcedureStepStatus = "IN PROGRESS"
    status, _ = assoc.send_n_set(again, MPPS, uid)
    assert status.Status == 0x0110
    assert status.ErrorID == 0xA710
    assert get_step(archive.engine, uid).PerformedProcedureStepStatus == final


def test_duplicate_create(pps):
    assoc, archive, _ = pps
    status, uid = create(assoc, new_step())
    status, _ = create(assoc, new_step(PatientID="OTHER"), uid)
    assert status.Status == 0x0111
    assert str(get_step(archive.engine, uid).PatientID) == "PID-MPPS"


@pytest.mark.parametrize("bad", ["COMPLETED", "DISCONTINUED", "SCHEDULED", "garbage"])
def test_create_must_be_in_progress(pps, bad):
    assoc, archive, _ = pps
    status, uid = create(assoc, new_step(status=bad))
    assert status.Status == 0x0106
    assert tags(status) == [0x00400252]
    assert get_step(archive.engine, uid) is None


@pytest.mark.parametrize("missing", ["PerformedProcedureStepID", "PerformedStationAETitle", "Modality",
                                     "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                                     "PerformedProcedureStepStatus", "ScheduledStepAttributesSequence"])
def test_create_missing_type1_attribute(pps, missing):
    assoc, archive, _ = pps
    status, uid = create(assoc, new_step(**{missing: None}))
    assert status.Status == 0x0120
    from pydicom.datadict import tag_for_keyword

    assert tag_for_keyword(missing) in tags(status)
    assert get_step(archive.engine, uid) is None


def test_create_type1_attribute_without_value(pps):
    assoc, archive, _ = pps
    status, uid = create(assoc, new_step(Modality=""))
    assert status.Status == 0x0121
    assert tags(status) == [0x00080060]
    ssa = Dataset()
    ssa.AccessionNumber = "X"  # no Study Instance UID
    status, uid = create(assoc, new_step(ScheduledStepAttributesSequence=[ssa]))
    assert status.Status == 0x0121


def test_unknown_attributes_are_refused(pps):
    assoc, archive, _ = pps
    ds = new_step()
    ds.StudyDescription = "not an MPPS attribute"
    ds.Rows = 512
    status, uid = create(assoc, ds)
    assert status.Status == 0x0105
    assert sorted(tags(status)) == [0x00081030, 0x00280010]
    assert get_step(archive.engine, uid) is None
    # N-SET: unknown attributes, and those only an N-CREATE may set
    _, uid = create(assoc, new_step())
    for kw, value in (("PatientID", "CHANGED"), ("Modality", "MR"), ("SeriesDescription", "x")):
        mods = Dataset()
        setattr(mods, kw, value)
        status, _ = assoc.send_n_set(mods, MPPS, uid)
        assert status.Status == 0x0105, kw
    assert str(get_step(archive.engine, uid).PatientID) == "PID-MPPS"


def test_set_unknown_step(pps):
    assoc, _, _ = pps
    mods, _ = completion()
    status, _ = assoc.send_n_set(mods, MPPS, generate_uid())
    assert status.Status == 0x0112


@pytest.mark.parametrize("bad", ["SCHEDULED", "DONE", ""])
def test_set_bad_status_value(pps, bad):
    assoc, archive, _ = pps
    _, uid = create(assoc, new_step())
    mods = Dataset()
    mods.PerformedProcedureStepStatus = bad
    status, _ = assoc.send_n_set(mods, MPPS, uid)
    assert status.Status == 0x0106
    assert get_step(archive.engine, uid).PerformedProcedureStepStatus == "IN PROGRESS"


@pytest.mark.parametrize("drop", ["PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                                  "PerformedSeriesSequence"])
def test_final_state_needs_its_attributes(pps, drop):
    assoc, archive, _ = pps
    _, uid = create(assoc, new_step())
    mods, _ = completion()
    delattr(mods, drop)
    status, _ = assoc.send_n_set(mods, MPPS, uid)
    assert status.Status == 0x0121
    from pydicom.datadict import tag_for_keyword

    assert tag_for_keyword(drop) in tags(status)
    assert get_step(archive.engine, uid).PerformedProcedureStepStatus == "IN PROGRESS"


def test_garbage_attribute_list_does_not_stop_the_listener(pps):
    assoc, archive, port = pps
    # an N-CREATE whose dataset is not DICOM: failure status, and the listener goes on
    from pynetdicom.dimse_primitives import N_CREATE
    import io

    req = N_CREATE()
    req.MessageID = 4242
    req.AffectedSOPClassUID = MPPS
    req.AffectedSOPInstanceUID = generate_uid()
    req.AttributeList = io.BytesIO(b"\x10\x00\x10\x00\xff\xff\xff\x7fgarbage")
    cx = assoc._get_valid_context(MPPS, "", "scu")
    assoc._reactor_checkpoint.clear()  # as pynetdicom's send_* do: the reactor must not take the reply
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp.Status != 0x0000
    status, _ = create(assoc, new_step())
    assert status.Status == 0x0000


class MppsPeer:
    """A RIS stand-in: a pynetdicom MPPS SCP recording what it receives (N-CREATE, N-SET)."""

    def __init__(self, port: int, aet: str = "RIS"):
        self.port, self.aet = port, aet
        self.got: list[tuple[str, str, str]] = []  # (op, uid, status)
        self.changed = threading.Event()
        self.ae = AE(ae_title=aet)
        self.ae.add_supported_context(MPPS)
        self.server = None

    def start(self):
        def on_create(event):
            self.got.append(("create", str(event.request.AffectedSOPInstanceUID),
                             str(event.attribute_list.PerformedProcedureStepStatus)))
            self.changed.set()
            return 0x0000, None

        def on_set(event):
            self.got.append(("set", str(event.request.RequestedSOPInstanceUID),
                             str(event.modification_list.get("PerformedProcedureStepStatus", ""))))
            self.changed.set()
            return 0x0000, None

        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_N_CREATE, on_create), (evt.EVT_N_SET, on_set)])
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()

    @property
    def node(self) -> Node:
        return Node(self.aet, "127.0.0.1", self.port)


def wait_for(cond, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_forwarding_survives_a_restart(tmp_path):
    """A step received while the RIS is down is forwarded, in order, by the next archive run."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    ris_port = free_port()
    ris = MppsPeer(ris_port)
    config = WorkflowConfig(mpps_forward=[ris.node], retry_base=0.2, poll=0.1)
    archive = Archive(url, tmp_path / "storage")
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, config)])
    port = srv.start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port)
    _, uid = create(assoc, new_step())
    mods, _ = completion()
    assert assoc.send_n_set(mods, MPPS, uid)[0].Status == 0
    assoc.release()
    assert wait_for(lambda: any(i.attempts >= 1 for i in queue.items(archive.engine, ref=uid)))
    srv.stop()
    archive.close()
    with Archive(url, tmp_path / "storage") as closed:
        pending = queue.items(closed.engine, ref=uid)
    assert [(i.kind, i.state) for i in pending] == [("mpps-create", "pending"), ("mpps-set", "pending")]
    assert "cannot reach" in pending[0].last_error
    assert pending[1].attempts == 0  # never overtakes its N-CREATE

    ris.start()
    try:
        archive = Archive(url, tmp_path / "storage")
        srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, config)])
        srv.start()
        try:
            assert wait_for(lambda: len(ris.got) == 2)
            assert ris.got == [("create", uid, "IN PROGRESS"), ("set", uid, "COMPLETED")]
            assert wait_for(lambda: all(i.state == "done" for i in queue.items(archive.engine, ref=uid)))
            step = next(s for s in list_steps(archive.engine) if s.sop_uid == uid)
            assert step.forwarded == "2/2 sent"
        finally:
            srv.stop()
            archive.close()
    finally:
        ris.stop()


def test_cli_create_set_and_ls(tmp_path):
    """`ihe dicom mpps create|set` against the archive, then `ihe archive mpps ls`."""
    db = f"sqlite:///{tmp_path / 'index.db'}"
    archive = Archive(db, tmp_path / "storage")
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive)])
    port = srv.start()
    node = f"IHE_ARCHIVE@127.0.0.1:{port}"
    try:
        r = run_cli("dicom", "mpps", "create", node, "--patient-id", "P7", "--patient-name", "DOE^JANE",
                    "--modality", "MR", "--accession", "A7", "--study", "1.2.3.4", "--study", "1.2.3.5", "--json")
        assert r.code == 0, r.stderr
        uid = r.json["sop_uid"]
        # a final state without performed series: the archive says no, exit 1 with the status
        r = run_cli("dicom", "mpps", "set", node, uid, "--state", "COMPLETED")
        assert r.code == 1
        assert "ihe: error:" in r.stderr and "0x0121" in r.stderr.splitlines()[-1]
        from helpers import make_corpus

        files = make_corpus(tmp_path / "study", studies=1, series=1, images=2)
        r = run_cli("dicom", "mpps", "set", node, uid, "--state", "COMPLETED", "--series-from", tmp_path / "study")
        assert r.code == 0, r.stderr
        r = run_cli("dicom", "mpps", "set", node, uid, "--state", "DISCONTINUED")
        assert r.code == 1 and "0x0110" in r.stderr and "0xA710" in r.stderr
        jf = tmp_path / "step.json"
        jf.write_text('{"PatientID": "P8", "Modality": "US", "PerformedProcedureStepDescription": "ECHO"}')
        r = run_cli("dicom", "mpps", "create", node, "--from-json", jf, "--json")
        assert r.code == 0, r.stderr
        r = run_cli("archive", "mpps", "ls", "--db", db, "--storage", tmp_path / "storage", "--json")
        assert r.code == 0, r.stderr
        got = {s["sop_uid"]: s for s in r.json}
        assert got[uid]["status"] == "COMPLETED" and got[uid]["patient_id"] == "P7"
        assert got[uid]["modality"] == "MR" and got[uid]["accession"] == "A7"
        step = get_step(archive.engine, uid)
        assert len(step.PerformedSeriesSequence[0].ReferencedImageSequence) == len(files)
        assert [i.StudyInstanceUID for i in step.ScheduledStepAttributesSequence] == ["1.2.3.4", "1.2.3.5"]
        assert got[uid]["study_uid"] == "1.2.3.4"
        other = next(s for s in r.json if s["sop_uid"] != uid)
        assert (other["patient_id"], other["modality"], other["description"]) == ("P8", "US", "ECHO")
        r = run_cli("archive", "mpps", "ls", "--db", db, "--storage", tmp_path / "storage", "--state", "completed")
        assert r.code == 0 and uid in r.stdout and other["sop_uid"] not in r.stdout
        r = run_cli("archive", "mpps", "ls", "--db", db, "--storage", tmp_path / "storage", "--patient", "P?", "--json")
        assert {s["sop_uid"] for s in r.json} == {uid, other["sop_uid"]}
        r = run_cli("archive", "mpps", "ls", "--db", db, "--storage", tmp_path / "storage", "--patient", "P8", "--json")
        assert [s["sop_uid"] for s in r.json] == [other["sop_uid"]]
    finally:
        srv.stop()
        archive.close()


def test_archive_serve_with_profile_settings(tmp_path):
    """`ihe archive serve` (two worker processes) as a user runs it: the profile's mpps_forward
    sends each step to the RIS once, and the storage commitment report reaches a requester that
    left, at its node from the profile."""
    import os
    import signal
    import subprocess
    import sys

    from helpers import wait_port
    from ihecli.workflow import stgcmt

    ris = MppsPeer(free_port()).start()
    port, listen = free_port(), free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'''
[archive]
port = {port}
workers = 2
mpps_forward = ["ris"]
commit_new_association = ["TESTER"]

[nodes]
ris = "RIS@127.0.0.1:{ris.port}"
tester = "TESTER@127.0.0.1:{listen}"
''')
    env = {**os.environ, "IHE_CONFIG": str(cfg), "IHE_DATA_DIR": str(tmp_path / "data")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve"], env=env, stderr=subprocess.PIPE)
    try:
        wait_port(port, 30)
        node = Node("IHE_ARCHIVE", "127.0.0.1", port)
        from ihecli.workflow.mpps import send_create, send_set

        uids = [generate_uid() for _ in range(3)]
        for uid in uids:
            send_create(node, uid, new_step(), calling_aet="MODALITY")
            mods, _ = completion()
            send_set(node, uid, mods, calling_aet="MODALITY")
        assert wait_for(lambda: len(ris.got) == 6, 20), ris.got
        for uid in uids:  # each once, N-CREATE before N-SET, whichever worker took it
            assert [g for g in ris.got if g[1] == uid] == [("create", uid, "IN PROGRESS"), ("set", uid, "COMPLETED")]
        res = stgcmt.request_commitment(node, [stgcmt.Ref(CT, generate_uid())], calling_aet="TESTER",
                                        listen=("127.0.0.1", listen), timeout=20)
        assert not res.same_association and len(res.failed) == 1 and res.failed[0].reason == 0x0112
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        finally:
            ris.stop()
    assert p.returncode == 0
