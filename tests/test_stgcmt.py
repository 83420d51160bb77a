"""Storage Commitment Push Model SCP (RAD-10) of the archive, driven by pynetdicom as the SCU (DCMTK
has no storage commitment SCU), and `ihe dicom commit` against it."""
from __future__ import annotations

import threading
import time

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel as STGCMT

from helpers import free_port, make_corpus, run_cli
from ihecli.archive.server import DicomServer
from ihecli.config import Node
from ihecli.workflow import queue, stgcmt
from ihecli.workflow.service import WorkflowConfig, WorkflowServices

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UID = stgcmt.WELL_KNOWN_INSTANCE


@pytest.fixture
def files(tmp_path):
    return make_corpus(tmp_path / "study", studies=1, series=1, images=3)


class Scu:
    """A modality asking for storage commitment: pynetdicom, reports on its association or on a
    listener of its own (SCP role of Storage Commitment, as a new association needs)."""

    def __init__(self, aet="MODALITY"):
        self.aet = aet
        self.reports: list[tuple[int, Dataset, bool]] = []
        self.arrived = threading.Event()
        self.server = None

    def _on_report(self, event, same):
        self.reports.append((event.request.EventTypeID, event.event_information, same))
        self.arrived.set()
        return 0x0000, None

    def listen(self, port):
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(STGCMT, scu_role=False, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, lambda e: self._on_report(e, False))])
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()

    def associate(self, port):
        ae = AE(ae_title=self.aet)
        ae.add_requested_context(STGCMT)
        assoc = ae.associate("127.0.0.1", port, evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                                               lambda e: self._on_report(e, True))])
        assert assoc.is_established
        return assoc

    def request(self, assoc, refs, uid=None, action=1):
        info = Dataset()
        info.TransactionUID = uid or generate_uid()
        items = []
        for cls, sop in refs:
            it = Dataset()
            it.ReferencedSOPClassUID = cls
            it.ReferencedSOPInstanceUID = sop
            items.append(it)
        info.ReferencedSOPSequence = items
        status, _ = assoc.send_n_action(info, action, STGCMT, UID)
        return status, info.TransactionUID

    def wait(self, timeout=15):
        assert self.arrived.wait(timeout), "no storage commitment report"
        return self.reports[-1]


def serve(archive, **config):
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, WorkflowConfig(**config))])
    srv.start()
    return srv


def refs_of(paths):
    out = []
    for p in paths:
        ds = dcmread(p, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def report_sets(info):
    ok = {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in info.get("ReferencedSOPSequence", [])}
    bad = {(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in info.get("FailedSOPSequence", [])}
    return ok, bad


def test_stored_and_never_stored_on_the_same_association(archive, files):
    """The report lists stored instances as committed and the others with their failure reason."""
    for f in files:
        archive.store(f.read_bytes())
    stored = refs_of(files)
    never = generate_uid()
    wrong_class = stored[2][1]
    srv = serve(archive)
    try:
        scu = Scu()
        assoc = scu.associate(srv.port)
        status, tuid = scu.request(assoc, stored[:2] + [(CT, never), (MR, wrong_class)])
        assert status.Status == 0x0000
        event_type, info, same = scu.wait()
        assoc.release()
    finally:
        srv.stop()
    assert same and event_type == 2
    assert str(info.TransactionUID) == tuid
    ok, bad = report_sets(info)
    assert ok == set(stored[:2])
    assert bad == {(never, 0x0112), (wrong_class, 0x0119)}
    assert info.RetrieveAETitle == "IHE_ARCHIVE"


def test_changed_file_is_not_committed(archive, files):
    """The checksum taken at ingest is checked again: a file changed on disk is a failure (0x0110)."""
    for f in files:
        archive.store(f.read_bytes())
    stored = refs_of(files)
    with archive.connect() as conn:
        from sqlalchemy import select

        from ihecli.archive import schema as s

        rel = conn.execute(select(s.instances.c.path).where(s.instances.c.sop_uid == stored[0][1])).scalar_one()
    p = archive.file_path(rel)
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    srv = serve(archive)
    try:
        scu = Scu()
        assoc = scu.associate(srv.port)
        scu.request(assoc, stored)
        event_type, info, _ = scu.wait()
        assoc.release()
    finally:
        srv.stop()
    ok, bad = report_sets(info)
    assert event_type == 2 and bad == {(stored[0][1], 0x0110)} and ok == set(stored[1:])


def test_report_on_a_new_association_when_the_requester_left(archive, files, tmp_path):
    """The requester releases after the N-ACTION response; the report goes to its node from the
    profile, queued until the node listens."""
    for f in files:
        archive.store(f.read_bytes())
    stored = refs_of(files)
    port = free_port()
    srv = serve(archive, nodes={"MODALITY": Node("MODALITY", "127.0.0.1", port)}, retry_base=0.2, poll=0.1)
    scu = Scu()
    try:
        assoc = scu.associate(srv.port)
        status, tuid = scu.request(assoc, stored)
        assert status.Status == 0
        assoc.release()
        # nobody listens yet: the report waits in the outbox and is retried
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(i.attempts for i in queue.items(archive.engine, ref=tuid)):
            time.sleep(0.05)
        item = queue.items(archive.engine, ref=tuid)[0]
        assert item.kind == "stgcmt-report" and item.state == "pending" and "cannot reach" in item.last_error
        scu.listen(port)
        event_type, info, same = scu.wait()
    finally:
        scu.stop()
        srv.stop()
    assert not same and event_type == 1
    assert str(info.TransactionUID) == tuid
    assert report_sets(info)[0] == set(stored)


def test_new_association_configured_for_a_node(archive, files):
    """commit_new_association: that requester's reports go on a new association even while its
    own is open; commit_reply names where (another port than its AE title's node)."""
    archive.store(files[0].read_bytes())
    port = free_port()
    scu = Scu("CT1").listen(port)
    srv = serve(archive, commit_new_association={"CT1"},
                commit_reply={"CT1": Node("CT1", "127.0.0.1", port)})
    try:
        assoc = scu.associate(srv.port)
        scu.request(assoc, refs_of(files[:1]))
        event_type, info, same = scu.wait()
        assert assoc.is_established
        assoc.release()
    finally:
        scu.stop()
        srv.stop()
    assert not same and event_type == 1


def test_bad_requests(archive, files):
    srv = serve(archive)
    try:
        scu = Scu()
        assoc = scu.associate(srv.port)
        status, _ = scu.request(assoc, [(CT, generate_uid())], action=2)
        assert status.Status == 0x0123  # no such action
        info = Dataset()
        info.ReferencedSOPSequence = []
        status, _ = assoc.send_n_action(info, 1, STGCMT, UID)
        assert status.Status == 0x0115  # no Transaction UID, no references
        status, _ = assoc.send_n_action(info, 1, STGCMT, generate_uid())
        assert status.Status == 0x0117  # not the well-known instance
        # the association and the service still work
        status, _ = scu.request(assoc, [(CT, generate_uid())])
        assert status.Status == 0
        event_type, _info, _ = scu.wait()
        assert event_type == 2
        assoc.release()
    finally:
        srv.stop()


def test_cli_commit(archive, files, tmp_path):
    """`ihe dicom commit NODE PATH|--study UID`: the report as a table or JSON, exit 0/3/1."""
    for f in files[:2]:
        archive.store(f.read_bytes())
    port = free_port()
    srv = serve(archive, nodes={"IHE": Node("IHE", "127.0.0.1", port)})
    node = f"IHE_ARCHIVE@127.0.0.1:{srv.port}"
    try:
        r = run_cli("dicom", "commit", node, files[0], files[1], "--json")
        assert r.code == 0, r.stderr
        assert len(r.json["committed"]) == 2 and r.json["failed"] == [] and r.json["same_association"]
        r = run_cli("dicom", "commit", node, files[0].parent)  # the folder: one never stored
        assert r.code == 3
        assert "0x0112" in r.stdout and "2 committed, 1 failed" in " ".join(r.stderr.split())
        study = str(dcmread(files[0]).StudyInstanceUID)
        r = run_cli("dicom", "commit", node, "--study", study, "--db", archive.db_url,
                    "--storage", archive.blobs.root, "--report-port", port, "--json")
        assert r.code == 0, r.stderr
        assert len(r.json["committed"]) == 2 and not r.json["same_association"]
        other = make_corpus(tmp_path / "other", studies=1, series=1, images=1)
        r = run_cli("dicom", "commit", node, other[0])
        assert r.code == 1
        r = run_cli("dicom", "commit", node)
        assert r.code == 2
    finally:
        srv.stop()


def test_acknowledged_request_survives_a_crash(archive, files, monkeypatch):
    """The archive stops after acknowledging the N-ACTION, before its report: the next run checks
    the request and sends the report on a new association."""
    from ihecli.workflow import service

    archive.store(files[0].read_bytes())
    port = free_port()
    scu = Scu("CT2").listen(port)
    nodes = {"CT2": Node("CT2", "127.0.0.1", port)}
    monkeypatch.setattr(service, "LATE_REPORT_AFTER", 0.5)
    monkeypatch.setattr(service.WorkflowServices, "_commit", lambda *a, **k: None)  # dies before reporting
    srv = serve(archive, nodes=nodes, poll=0.1)
    try:
        assoc = scu.associate(srv.port)
        status, tuid = scu.request(assoc, refs_of(files[:2]))
        assert status.Status == 0
        assoc.release()
    finally:
        srv.stop()
    assert not scu.arrived.is_set()
    monkeypatch.undo()
    srv = serve(archive, nodes=nodes, poll=0.1)
    try:
        event_type, info, same = scu.wait(30)
    finally:
        srv.stop()
        scu.stop()
    assert not same and event_type == 2 and str(info.TransactionUID) == tuid
    ok, bad = report_sets(info)
    assert len(ok) == 1 and len(bad) == 1
