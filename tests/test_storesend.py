"""C-MOVE sub-operations on the archive's own C-STORE sender (ihecli.net.storesend): the wire
format against pynetdicom's encoder, and destinations that refuse, vanish or abort; and the
client's C-STORE (`ihe dicom store`, `ihe archive export --to`) to a peer that dies midway."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from io import BytesIO
import threading

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from helpers import DCMTK_ENV, dcmtk, free_port, make_corpus, run_cli, wait_port
from ihecli.archive.server import DicomServer, move_contexts
from ihecli.config import Node
from ihecli.net.storesend import parse_command, store_rq


def _study(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.parametrize("originator", [None, ("MOVESCU", 7), ("ODD", 65535)])
def test_command_set_is_what_pynetdicom_encodes(originator):
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    prim = C_STORE()
    prim.MessageID = 513
    prim.AffectedSOPClassUID = CTImageStorage
    prim.AffectedSOPInstanceUID = "1.2.3.456"  # odd length: padded with NUL
    prim.Priority = 0
    prim.DataSet = BytesIO(b"\x08\x00\x05\x00\x00\x00\x00\x00")
    if originator:
        prim.MoveOriginatorApplicationEntityTitle = originator[0]
        prim.MoveOriginatorMessageID = originator[1]
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    want = encode(msg.command_set, True, True)
    got = store_rq(513, CTImageStorage, "1.2.3.456", *(originator or (None, None)))
    assert got == want
    parsed = parse_command(got)
    assert struct.unpack("<H", parsed[0x00000100])[0] == 0x0001
    assert parsed[0x00001000] == b"1.2.3.456\0"


def test_contexts_offer_each_stored_syntax_then_fallbacks():
    pairs = [(CTImageStorage, "1.2.840.10008.1.2.4.70"), (CTImageStorage, "1.2.840.10008.1.2.1"),
             ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2")]
    cxs = move_contexts(pairs)
    assert [(c.abstract_syntax, c.transfer_syntax) for c in cxs[:3]] == [
        (CTImageStorage, ["1.2.840.10008.1.2.4.70"]), (CTImageStorage, ["1.2.840.10008.1.2.1"]),
        ("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2"])]
    assert len(cxs) == 5 and all(len(c.transfer_syntax) == 2 for c in cxs[3:])
    many = [(f"1.2.3.{i}", "1.2.840.10008.1.2.1") for i in range(200)]
    assert len(move_contexts(many)) == 128


class _Scp:
    """A pynetdicom storage SCP with a behaviour: reject, or abort after N."""

    def __init__(self, *, reject=False, abort_after=None):
        self.received = []
        self.ae = AE(ae_title="DEST")
        self.ae.add_supported_context(CTImageStorage, [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
        if reject:
            self.ae.require_calling_aet = ["SOMEONE_ELSE"]
        self.abort_after = abort_after
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            threading.Thread(target=event.assoc.abort).start()
            return 0xA700
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def loaded(archive, corpus):
    for p in corpus:
        archive.store(p.read_bytes())
    return archive


def _move_to(archive, scp_port, study, *extra):
    srv = DicomServer(archive, port=0, destinations={"DEST": Node("DEST", "127.0.0.1", scp_port)})
    srv.start()
    try:
        return run_cli("dicom", "move", f"IHE_ARCHIVE@127.0.0.1:{srv.port}", "--dest", "DEST",
                       "-k", f"StudyInstanceUID={study}", "--json", "--timeout", "20", *extra)
    finally:
        srv.stop()


def test_destination_not_listening_is_a801(loaded, corpus):
    r = _move_to(loaded, free_port(), _study(corpus[0]))
    assert r.code == 1 and "0xA801" in r.stderr


def test_destination_rejecting_the_association_is_a801(loaded, corpus):
    scp = _Scp(reject=True)
    try:
        r = _move_to(loaded, scp.port, _study(corpus[0]))
    finally:
        scp.stop()
    assert r.code == 1 and "0xA801" in r.stderr and not scp.received


def test_objects_of_a_class_the_destination_refuses_fail_and_are_listed(server, corpus, storescp):
    """DCMTK storescp takes the standard storage classes, not a private one."""
    from io import BytesIO

    for p in corpus:
        server.archive.store(p.read_bytes())
    ds = dcmread(corpus[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.6.1.4.1.9590.100.1.2.999"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.3.6.1.4.1.9590.100.1.3.12345"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    server.archive.store(buf.getvalue())
    r = run_cli("dicom", "move", server.spec, "--dest", "STORESCP", "-k",
                f"StudyInstanceUID={_study(corpus[0])}", "--json")
    assert r.code == 3, r.stderr
    assert r.json["completed"] == 6 and r.json["failed_uids"] == ["1.3.6.1.4.1.9590.100.1.3.12345"]
    assert len(list(storescp[1].iterdir())) == 6


def test_destination_aborting_midway_leaves_the_rest_failed_and_listed(loaded, corpus):
    scp = _Scp(abort_after=2)
    try:
        r = _move_to(loaded, scp.port, _study(corpus[0]))
    finally:
        scp.stop()
    assert r.code == 3, r.stderr
    assert r.json["completed"] == 2 and r.json["failed"] == 4
    study_uids = {str(dcmread(p).SOPInstanceUID) for p in corpus if _study(p) == _study(corpus[0])}
    assert set(r.json["failed_uids"]) == study_uids - set(scp.received)


def test_pynetdicom_destination_gets_every_object_intact(loaded, corpus):
    scp = _Scp()
    try:
        r = _move_to(loaded, scp.port, _study(corpus[0]))
    finally:
        scp.stop()
    assert r.code == 0, r.stderr
    assert r.json["completed"] == 6 and len(scp.received) == 6


@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
def test_find_response_command_set_is_what_pynetdicom_encodes(status):
    from pynetdicom.dimse_messages import C_FIND_RSP
    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.dsutils import encode
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from ihecli.net.storesend import find_rsp

    prim = C_FIND()
    prim.MessageIDBeingRespondedTo = 65535
    prim.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    prim.Status = status
    prim.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    msg = C_FIND_RSP()
    msg.primitive_to_message(prim)
    assert find_rsp(65535, StudyRootQueryRetrieveInformationModelFind, status, True) == \
        encode(msg.command_set, True, True)


def test_find_matches_larger_than_the_peers_pdu_arrive_whole(server, corpus, tmp_path):
    """A 10,000-character Patient Comments (from the stored header) crosses several 4 KiB PDUs
    to DCMTK findscu."""
    import subprocess

    from helpers import DCMTK_ENV, dcmtk

    ds = dcmread(corpus[0])
    ds.PatientComments = ("LONG " * 2000).strip()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    server.archive.store(buf.getvalue())
    out = tmp_path / "rsp"
    out.mkdir()
    r = subprocess.run([dcmtk("findscu"), "-S", "--max-pdu", "4096", "-aec", server.aet, "-od", str(out), "-X",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                        "-k", "PatientComments", "127.0.0.1", str(server.port)],
                       env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [dcmread(p) for p in out.iterdir()]
    assert len(got) == 1 and got[0].PatientComments == ds.PatientComments


@pytest.mark.parametrize("status", [0x0000, 0xB007, 0xA700])
def test_store_response_command_set_is_what_pynetdicom_encodes(status):
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    from ihecli.net.storesend import store_rsp

    prim = C_STORE()
    prim.MessageIDBeingRespondedTo = 7
    prim.AffectedSOPClassUID = CTImageStorage
    prim.AffectedSOPInstanceUID = "1.2.3.456"
    prim.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(prim)
    assert store_rsp(7, CTImageStorage, "1.2.3.456", status) == encode(msg.command_set, True, True)


@pytest.mark.parametrize("originator", [None, ("MOVESCU", 7), ("ODD", 65535)])
def test_store_request_read_directly_is_what_pynetdicom_decodes(originator):
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.pdu_primitives import P_DATA

    from ihecli.net.dimse import _store_request

    command = store_rq(513, CTImageStorage, "1.2.3.456", *(originator or (None, None)))
    msg = DIMSEMessage()
    for pdv in (b"\x03" + command, b"\x02" + b"\x08\x00\x05\x00\x00\x00\x00\x00"):
        p = P_DATA()
        p.presentation_data_value_list.append([1, pdv])
        msg.decode_msg(p)
    want = msg.message_to_primitive()
    got = _store_request(command)
    for attr in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(got, attr) == getattr(want, attr), attr
    assert _store_request(command[:-4]) is None  # truncated: left to pynetdicom


def test_store_requests_in_small_fragments_arrive_whole(server, corpus, tmp_path):
    """DCMTK storescu with the smallest PDU: the data sets come in many fragments, each
    command in one; what the archive keeps is byte for byte what was sent after the meta."""
    import subprocess

    from helpers import DCMTK_ENV

    r = subprocess.run(["/usr/bin/storescu", "-aec", "IHE_ARCHIVE", "--max-pdu", "4096", "127.0.0.1",
                        str(server.port), *map(str, corpus[:3])], env=DCMTK_ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from pydicom.dataset import Dataset

    for p in corpus[:3]:
        sent = dcmread(p)
        q = Dataset()
        q.SOPInstanceUID = sent.SOPInstanceUID
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = sent.StudyInstanceUID
        [ref] = server.archive.instances(q)
        kept = dcmread(server.archive.file_path(ref))
        assert kept.PixelData == sent.PixelData and kept.SOPInstanceUID == sent.SOPInstanceUID


def _store_to_dying_storescp(tmp_path, files_dir, *args):
    """`ihe dicom store` to a DCMTK storescp that kills itself (kill -9) after its first object;
    (completed process, number of objects storescp wrote)."""
    out = tmp_path / f"scp-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), "-xcr", "kill -9 $PPID",
                            str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        p = subprocess.run([sys.executable, "-m", "ihecli", "dicom", "store", f"STORESCP@127.0.0.1:{port}",
                            str(files_dir), "--timeout", "60", *args],
                           capture_output=True, text=True, timeout=240,
                           env={**os.environ, "TCP_NODELAY": "1"})
    finally:
        scp.kill()
        scp.wait(10)
    return p, len(list(out.iterdir()))


def test_store_to_a_peer_that_dies_midway_stops_at_once_and_lists_the_rest(tmp_path):
    """The connection closes under the association. The client notices, names what was not
    sent and exits 3, instead of waiting out the DIMSE timeout (60 s here) once for every file
    left; on the terminal the files left unsent are one line, not one line each."""
    import json

    files = make_corpus(tmp_path / "c", studies=1, series=1, images=40)
    p, received = _store_to_dying_storescp(tmp_path, tmp_path / "c", "--json")
    assert p.returncode == 3, p.stderr
    rep = json.loads(p.stdout)
    assert rep["sent"] <= received and rep["sent"] + len(rep["failed"]) == len(files)
    assert {f["reason"] for f in rep["failed"]} <= {"association lost", "no response (association aborted or timed out)"}

    p, _ = _store_to_dying_storescp(tmp_path, tmp_path / "c")
    assert p.returncode == 3, p.stderr
    warnings = p.stderr.split("ihe: warning:")[1:]
    assert len(warnings) <= 2, p.stderr  # the file in flight, if any, and the files left
    assert "was lost" in warnings[-1] and "not sent" in warnings[-1], p.stderr


def test_move_to_a_destination_that_dies_counts_what_it_answered(archive, tmp_path):
    """C-MOVE to a DCMTK storescp killed after its first object: the archive's log line for the
    association counts the sub-operations as the destination answered them (1 sent, 11 failed),
    not as handed to the sender; the mover lists a few failed UIDs and the count of the rest."""
    import logging

    files = make_corpus(tmp_path / "c", studies=1, series=1, images=12)
    for f in files:
        archive.store(f.read_bytes())

    said: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("ihe.archive")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    out = tmp_path / "scp"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(out), "-xcr", "kill -9 $PPID",
                            str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        srv = DicomServer(archive, port=0, destinations={"DEST": Node("DEST", "127.0.0.1", port)})
        srv.start()
        try:
            r = run_cli("dicom", "move", f"IHE_ARCHIVE@127.0.0.1:{srv.port}", "--dest", "DEST",
                        "-k", f"StudyInstanceUID={_study(files[0])}", "--timeout", "60")
        finally:
            srv.stop()
    finally:
        scp.kill()
        scp.wait(10)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert r.code == 3, r.stderr
    # the kill lands after the first object, sometimes after a second one is taken too
    m = re.search(r"(\d+) completed, (\d+) failed", r.stderr)
    assert m, r.stderr
    done, failed = int(m.group(1)), int(m.group(2))
    assert 1 <= done <= 2 and done + failed == 12, r.stderr
    assert r.stderr.count("failed: 1.") == 5 and f"failed: {failed - 5} more (--json lists them)" in r.stderr
    closing = [m for m in said if "released" in m and "sent" in m]
    assert closing and f"{done} sent, {failed} failed" in closing[-1], said
