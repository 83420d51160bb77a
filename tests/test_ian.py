"""Instance Availability Notification (RAD-49): once a COMPLETED step's instances are all stored,
each subscriber gets an IAN N-CREATE (received here by a pynetdicom IAN SCP: no DCMTK tool
receives IAN)."""
from __future__ import annotations

import threading
import time

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import InstanceAvailabilityNotification as IAN
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from helpers import free_port, make_corpus
from ihecli.archive.server import DicomServer
from ihecli.config import Node
from ihecli.workflow.service import WorkflowConfig, WorkflowServices
from test_mpps import new_step


class Subscriber:
    def __init__(self):
        self.port = free_port()
        self.got: list[tuple[str, Dataset]] = []
        self.arrived = threading.Event()
        ae = AE(ae_title="RIS")
        ae.add_supported_context(IAN)

        def on_create(event):
            self.got.append((str(event.request.AffectedSOPInstanceUID), event.attribute_list))
            self.arrived.set()
            return 0x0000, None

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_N_CREATE, on_create)])

    @property
    def node(self) -> Node:
        return Node("RIS", "127.0.0.1", self.port)

    def stop(self):
        self.server.shutdown()


def performed(files) -> Dataset:
    mods = Dataset()
    mods.PerformedProcedureStepStatus = "COMPLETED"
    mods.PerformedProcedureStepEndDate = "20260101"
    mods.PerformedProcedureStepEndTime = "110000"
    se = Dataset()
    first = dcmread(files[0], stop_before_pixels=True)
    se.SeriesInstanceUID = first.SeriesInstanceUID
    refs = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        r = Dataset()
        r.ReferencedSOPClassUID = ds.SOPClassUID
        r.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(r)
    se.ReferencedImageSequence = refs
    mods.PerformedSeriesSequence = [se]
    return mods


def test_ian_when_all_instances_are_stored(archive, tmp_path):
    files = make_corpus(tmp_path / "study", studies=1, series=1, images=2)
    sub = Subscriber()
    srv = DicomServer(archive, aet="IHE_ARCHIVE", port=0, services=[WorkflowServices(archive, WorkflowConfig(
        ian_subscribers=[sub.node], poll=0.1, retry_base=0.2))])
    srv.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        assoc = ae.associate("127.0.0.1", srv.port)
        uid = generate_uid()
        assert assoc.send_n_create(new_step(), MPPS, uid)[0].Status == 0
        archive.store(files[0].read_bytes())
        assert assoc.send_n_set(performed(files), MPPS, uid)[0].Status == 0
        # discontinued steps announce nothing
        other = generate_uid()
        assert assoc.send_n_create(new_step(), MPPS, other)[0].Status == 0
        stop = performed(files)
        stop.PerformedProcedureStepStatus = "DISCONTINUED"
        assert assoc.send_n_set(stop, MPPS, other)[0].Status == 0
        assoc.release()
        assert not sub.arrived.wait(1.0), "IAN sent before every instance was stored"
        archive.store(files[1].read_bytes())
        assert sub.arrived.wait(10), "no IAN"
        time.sleep(0.5)
    finally:
        srv.stop()
        sub.stop()
    assert len(sub.got) == 1
    ian_uid, ds = sub.got[0]
    assert ian_uid
    first = dcmread(files[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    pps = ds.ReferencedPerformedProcedureStepSequence[0]
    assert (pps.ReferencedSOPClassUID, pps.ReferencedSOPInstanceUID) == (MPPS, uid)
    series = ds.ReferencedSeriesSequence
    assert len(series) == 1 and series[0].SeriesInstanceUID == first.SeriesInstanceUID
    refs = series[0].ReferencedSOPSequence
    assert {r.ReferencedSOPInstanceUID for r in refs} == {dcmread(f).SOPInstanceUID for f in files}
    assert all(r.InstanceAvailability == "ONLINE" and r.RetrieveAETitle == "IHE_ARCHIVE" for r in refs)
