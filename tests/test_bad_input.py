"""Hostile and broken input: a clear DIMSE failure, the listener keeps serving, nothing half-written."""
from __future__ import annotations

import socket
import time

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config, build_context

from ihecli.archive.server import DicomServer
from ihecli.dicom import scu
from ihecli.errors import IheError

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _send_raw(node, path, sop_uid, sop_class=CT, ts=EXPLICIT) -> int | None:
    """Send a file's bytes as they are (no decode, no re-encode) and return the C-STORE status."""
    ae = AE(ae_title="HOSTILE")
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(node.host, node.port, [build_context(sop_class, ts)], ae_title=node.aet)
        assert assoc.is_established
        rsp = assoc.send_c_store(path)
        assoc.release()
        return int(rsp.Status) if rsp and "Status" in rsp else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def _with_meta(tmp_path, name, body: bytes, sop_uid="1.2.3.4.5.6.7", sop_class=CT):
    from ihecli.archive.ingest import part10

    p = tmp_path / name
    p.write_bytes(part10(body, sop_class, sop_uid, EXPLICIT))
    return p


def _ct_bytes() -> bytes:
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    start = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[start:]


def _assert_clean(server):
    a = server.archive
    assert list(a.blobs.tmp.iterdir()) == []
    rep = a.check()
    assert not rep.missing_files and not rep.orphan_files
    assert scu.echo(server.node).status == 0  # still serving


@pytest.mark.parametrize("name,body,statuses", [
    ("garbage", b"\x13\x37" * 5000, {0xC000, 0xA900}),
    ("truncated", _ct_bytes()[:-3000], {0xC000}),
    ("empty", b"", {0xC000, 0xA900}),
    ("header-only-cut", _ct_bytes()[:777], {0xC000}),
])
def test_broken_dataset_gets_failure_status(server, tmp_path, name, body, statuses):
    uid = "1.2.826.0.1.3680043.8.498.1" if name != "truncated" else str(dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID)
    status = _send_raw(server.node, _with_meta(tmp_path, name, body, sop_uid=uid), uid)
    assert status in statuses, f"{name}: 0x{status:04X}"
    assert server.archive.counts()["instances"] == 0
    _assert_clean(server)


def test_missing_sop_instance_uid_is_refused(server, tmp_path):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    uid = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID
    p = tmp_path / "nouid.dcm"
    ds.save_as(p)
    status = _send_raw(server.node, p, uid)
    assert status == 0xA900
    _assert_clean(server)


def test_uid_mismatch_with_request_is_refused(server, tmp_path):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    p = tmp_path / "x.dcm"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"  # what the C-STORE request will say
    ds.save_as(p)
    assert _send_raw(server.node, p, "1.2.3.999") == 0xA900
    _assert_clean(server)


def test_wrong_vrs_are_stored_and_indexed_leniently(server, tmp_path):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyDate = "notadate"
    ds.StudyTime = "25:99"
    ds.SeriesNumber = "77"
    p = tmp_path / "odd.dcm"
    ds.save_as(p)
    raw = p.read_bytes()
    tag = b"\x20\x00\x11\x00IS\x02\x0077"  # pydicom refuses to write a bad IS: patch the bytes
    assert tag in raw
    p.write_bytes(raw.replace(tag, b"\x20\x00\x11\x00IS\x02\x00x1"))
    assert _send_raw(server.node, p, str(ds.SOPInstanceUID)) == 0x0000
    assert server.archive.counts()["instances"] == 1
    from pydicom.dataset import Dataset

    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.SeriesNumber = ""
    q.SeriesInstanceUID = ""
    (rsp,) = server.archive.find(q)
    assert rsp.SeriesNumber in ("", None)  # indexed as empty, not a crash
    _assert_clean(server)


def test_garbage_and_oversized_pdu_do_not_stop_the_listener(server):
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"\x01\x00" + (0xFFFFFFF0).to_bytes(4, "big") + b"\x00" * 64,  # A-ASSOCIATE-RQ claiming 4 GB
                    b"\x04\x00" + (0x7FFFFFFF).to_bytes(4, "big") + b"\xff" * 1000):  # P-DATA without association
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(payload)
            time.sleep(0.2)
    assert scu.echo(server.node).status == 0


def test_calling_aet_not_allowed_is_rejected(archive):
    srv = DicomServer(archive, port=0, allow=["MODALITY1"])
    srv.start()
    try:
        from ihecli.config import Node

        node = Node("IHE_ARCHIVE", "127.0.0.1", srv.port)
        with pytest.raises(IheError, match="rejected"):
            scu.echo(node, calling_aet="INTRUDER")
        assert scu.echo(node, calling_aet="MODALITY1").status == 0
    finally:
        srv.stop()
