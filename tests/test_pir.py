"""Patient Information Reconciliation end to end: HL7 A08 and A40 from a plain MLLP client, then
DCMTK findscu sees the new demographics and movescu/getscu receive instances whose headers carry
the reconciled patient, the stored values kept in the Original Attributes Sequence; files of
other patients go out as stored, and the stored files are never rewritten."""
from __future__ import annotations

import hashlib
import socket
import time

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from helpers import DATA, run_cli, run_dcmtk
from ihecli.archive.server import StoredDataset
from ihecli.hl7 import v2
from ihecli.net.mllp import Deframer, MllpServer
from ihecli.workflow import pir
from ihecli.workflow.hl7 import Hl7Feed
from test_hl7_feed import adt, instance


def plain_mllp(port: int, *messages: bytes) -> list[v2.AckResult]:
    """A plain MLLP client: a socket, the framing bytes, nothing of ours."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        d = Deframer()
        for m in messages:
            s.sendall(b"\x0b" + m + b"\x1c\r")
            frames: list = []
            while not frames:
                data = s.recv(65536)
                assert data, "the HL7 listener closed the connection"
                frames = d.feed(data)
            out.append(v2.read_ack(frames[0].data))
    return out


def findscu(port: int, tmp, *keys: str) -> list[Dataset]:
    out = tmp / f"find-{time.monotonic_ns()}"
    out.mkdir()
    args = ["-S", "-aec", "IHE_ARCHIVE", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    run_dcmtk("findscu", *args, "127.0.0.1", str(port))
    return [dcmread(p) for p in sorted(out.iterdir())]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hl7(server):
    srv = MllpServer(Hl7Feed(server.archive), port=0)
    srv.start()
    yield srv
    srv.stop()


def test_a08_a40_then_findscu_movescu_getscu(server, hl7, storescp, tmp_path):
    archive = server.archive
    st_keep, st_prior, st_other = generate_uid(), generate_uid(), generate_uid()
    for _ in range(2):
        archive.store(instance("PIR1", "WRONG^NAME", st_keep, birth="19500101", sex="O"))
        archive.store(instance("PIR2", "DUPLICATE^REG", st_prior))
    other = instance("PIR3", "UNTOUCHED^PATIENT", st_other)
    archive.store(other)
    files = {p: sha(p) for p in archive.blobs.root.rglob("*.dcm")}
    assert len(files) == 5

    a08, a40 = plain_mllp(hl7.port,
                          adt("A08", "PIR1", "RIGHT^NAME^Q", control="a08-1", birth="19500102", sex="F"),
                          adt("A40", "PIR1", "RIGHT^NAME^Q", mrg="PIR2", control="a40-1", birth="19500102", sex="F"))
    assert (a08.code, a40.code) == ("AA", "AA"), (a08.text, a40.text)

    rsps = findscu(server.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PIR1", "PatientName",
                   "PatientBirthDate", "PatientSex", "StudyInstanceUID")
    assert sorted(r.StudyInstanceUID for r in rsps) == sorted([st_keep, st_prior])
    assert {(str(r.PatientName), r.PatientBirthDate, r.PatientSex) for r in rsps} == {("RIGHT^NAME^Q", "19500102", "F")}
    assert findscu(server.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PIR2", "StudyInstanceUID") == []

    run_dcmtk("movescu", "-S", "-aec", server.aet, "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={st_keep}\\{st_prior}\\{st_other}", "127.0.0.1", str(server.port))
    _, out = storescp
    moved = [dcmread(p) for p in sorted(out.iterdir())]
    assert len(moved) == 5
    for ds in moved:
        if ds.StudyInstanceUID == st_other:  # another patient: sent as stored
            assert ds.PatientID == "PIR3" and "OriginalAttributesSequence" not in ds
            continue
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == \
            ("PIR1", "RIGHT^NAME^Q", "19500102", "F")
        [item] = ds.OriginalAttributesSequence
        assert item.ReasonForTheAttributeModification == "CORRECT" and item.ModifyingSystem == "IHE_ARCHIVE"
        orig = item.ModifiedAttributesSequence[0]
        if ds.StudyInstanceUID == st_prior:
            assert (orig.PatientID, str(orig.PatientName)) == ("PIR2", "DUPLICATE^REG")
        else:
            assert "PatientID" not in orig and str(orig.PatientName) == "WRONG^NAME"
            assert orig.PatientBirthDate == "19500101" and orig.PatientSex == "O"
        assert ds.PixelData == dcmread(instance_file(archive, ds.SOPInstanceUID)).PixelData

    got = tmp_path / "get"
    r = run_cli("dicom", "get", server.spec, "--out", got, "-k", "QueryRetrieveLevel=STUDY", "-k",
                f"StudyInstanceUID={st_prior}")
    assert r.code == 0, r.stderr
    for p in got.rglob("*.dcm"):
        ds = dcmread(p)
        assert ds.PatientID == "PIR1" and ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID \
            == "PIR2"
    assert len(list(got.rglob("*.dcm"))) == 2
    # nothing was rewritten
    assert {p: sha(p) for p in archive.blobs.root.rglob("*.dcm")} == files


def test_dicomweb_and_rad69_carry_the_reconciled_patient(archive, tmp_path):
    """WADO-RS (instances and metadata), WADO-URI and RAD-69 answer with the index's patient
    after an A08, as C-MOVE does; the stored file stays as it was."""
    import requests

    from ihecli.net.soap import SoapClient
    from ihecli.web import DicomWebServer
    from ihecli.xdsi.rad69 import ImageRequest, retrieve_imaging_document_set

    st = generate_uid()
    archive.store(instance("PIR7", "OLD^NAME", st, birth="19700101", sex="F"))
    feed = Hl7Feed(archive)
    ack = v2.read_ack(feed(adt("A08", "PIR7", "NEW^NAME", control="a08-7", birth="19700202", sex="F")))
    assert ack.code == "AA", ack.text
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = st
    (ref,) = archive.instances(ident)
    before = sha(archive.file_path(ref))

    def check(ds):
        assert (str(ds.PatientName), ds.PatientBirthDate) == ("NEW^NAME", "19700202")
        orig = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        assert str(orig.PatientName) == "OLD^NAME"

    with DicomWebServer(archive, imaging_source_uid="1.2.3.4.5") as web:
        import io

        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(web.url + "/dicom-web")
        (ds,) = client.retrieve_study(st)
        check(ds)
        (meta,) = client.retrieve_study_metadata(st)
        assert meta["00100010"]["Value"][0]["Alphabetic"] == "NEW^NAME"
        r = requests.get(web.url + "/wado", params={"requestType": "WADO", "studyUID": st, "seriesUID": ref.series_uid,
                                                    "objectUID": ref.sop_uid, "contentType": "application/dicom"})
        assert r.status_code == 200
        check(dcmread(io.BytesIO(r.content)))
        res = retrieve_imaging_document_set(SoapClient(web.url + "/xdsi"), [ImageRequest(
            st, ref.series_uid, ref.sop_uid, "1.2.3.4.5")], ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        (doc,) = res.documents
        check(dcmread(io.BytesIO(doc.data)))
    assert sha(archive.file_path(ref)) == before


def instance_file(archive, sop_uid: str):
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.SOPInstanceUID = sop_uid
    [ref] = archive.instances(ident)
    return archive.file_path(ref)


def test_coerce_passes_unchanged_instances_through(tmp_path):
    p = tmp_path / "a.dcm"
    p.write_bytes(instance("SAME1", "SAME^NAME", birth="20000101", sex="M"))
    stored = StoredDataset(p)
    cur = pir.CurrentPatient("SAME1", "", "SAME^NAME", "20000101", "M")
    assert pir.coerce(stored, cur) is stored  # the file's bytes go out undecoded
    assert pir.coerce(stored, None) is stored
    changed = pir.coerce(StoredDataset(p), pir.CurrentPatient("SAME1", "HOSP", "SAME^NAME", "20000101", "M"))
    assert isinstance(changed, pir.CoercedDataset)  # patient elements rewritten in the stored bytes
    ds = changed.decoded()
    assert ds.IssuerOfPatientID == "HOSP" and ds.PatientID == "SAME1" and ds.PixelData == dcmread(p).PixelData
    assert ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].IssuerOfPatientID in (None, "")
    assert changed.encoded_as(False, True, False) is not None  # sent without decoding
    assert changed.encoded_as(True, True, False) is None  # another encoding: decoded() is used


def test_coerce_to_a_name_outside_the_files_character_set(tmp_path):
    src = DATA / "charset" / "SCSGERM"  # ISO_IR 100, German name
    orig = dcmread(src)
    p = tmp_path / "germ.dcm"
    p.write_bytes(src.read_bytes())
    ds = pir.coerce(StoredDataset(p), pir.CurrentPatient(orig.PatientID, "", "Διονυσιος", None, None))
    import io

    b = io.BytesIO()
    ds.save_as(b)
    back = dcmread(io.BytesIO(b.getvalue()))
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Διονυσιος"
    assert str(back.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == str(orig.PatientName)
    for elem in orig:  # every other text value survives the change of character set
        if elem.VR in ("LO", "SH", "ST", "LT", "PN") and elem.keyword not in ("PatientName", "SpecificCharacterSet"):
            assert str(back[elem.tag].value) == str(elem.value), elem.keyword


def test_merge_is_visible_at_once_and_rewrites_no_file(archive, tmp_path):
    feed = Hl7Feed(archive)
    uid = generate_uid()
    for _ in range(30):
        archive.store(instance("BIG-PRIOR", "PRIOR^P", uid))
    archive.store(instance("BIG-TARGET", "TARGET^T"))
    with archive.connect() as conn:
        assert pir.reconciled_patients(conn, [uid]) == {}  # nothing reconciled yet: no check on retrieve
    files = {p: sha(p) for p in archive.blobs.root.rglob("*.dcm")}
    a = v2.read_ack(feed(adt("A40", "BIG-TARGET", "TARGET^T", mrg="BIG-PRIOR", control="big")))
    q = Dataset()
    q.QueryRetrieveLevel, q.PatientID, q.NumberOfPatientRelatedInstances = "PATIENT", "BIG-TARGET", ""
    [p] = archive.find(q, "patient")  # at once: bench/hl7.py times it on 10,000 instances
    assert a.code == "AA" and p.NumberOfPatientRelatedInstances == 31
    with archive.connect() as conn:
        cur = pir.reconciled_patients(conn, [uid])
    assert cur[uid].pid == "BIG-TARGET" and cur[uid].name == "TARGET^T"
    assert {p: sha(p) for p in archive.blobs.root.rglob("*.dcm")} == files


def test_export_and_media_carry_the_reconciled_patient(server, hl7, storescp, db_url, tmp_path):
    """After an A08, `ihe archive export` (to a folder and to a node) and `ihe pdi burn` write
    the index's patient, the stored values in the Original Attributes Sequence, as C-MOVE does;
    another patient's instances go out byte for byte as stored."""
    archive = server.archive
    st_fixed, st_other = generate_uid(), generate_uid()
    for _ in range(2):
        archive.store(instance("PIR5", "OLD^NAME", st_fixed, birth="19600101", sex="M"))
    archive.store(instance("PIR6", "OTHER^PATIENT", st_other))
    (a08,) = plain_mllp(hl7.port, adt("A08", "PIR5", "NEW^NAME", control="a08-5", birth="19600202", sex="M"))
    assert a08.code == "AA", a08.text
    arc = ("--db", db_url, "--storage", str(archive.blobs.root))

    def check(ds):
        if ds.StudyInstanceUID == st_other:
            assert ds.PatientID == "PIR6" and "OriginalAttributesSequence" not in ds
            return
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == ("PIR5", "NEW^NAME", "19600202")
        orig = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        assert (str(orig.PatientName), orig.PatientBirthDate) == ("OLD^NAME", "19600101")

    r = run_cli("pdi", "burn", "--study", st_fixed, "--usb", tmp_path / "usb", "--no-web", *arc)
    assert r.code == 0, r.stderr
    dicomdir = dcmread(tmp_path / "usb" / "DICOMDIR")
    (patient,) = [x for x in dicomdir.DirectoryRecordSequence if x.DirectoryRecordType == "PATIENT"]
    assert str(patient.PatientName) == "NEW^NAME"
    media = [dcmread(p) for p in (tmp_path / "usb" / "DICOM").rglob("*") if p.is_file()]
    assert len(media) == 2
    for ds in media:
        check(ds)
    assert "NEW" in (tmp_path / "usb" / "README.TXT").read_text().upper()
    r = run_cli("archive", "export", "--study", st_fixed, "--study", st_other, "--out", tmp_path / "out", *arc)
    assert r.code == 0, r.stderr
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 3
    for p in files:
        ds = dcmread(p)
        check(ds)
        if ds.StudyInstanceUID == st_other:
            assert p.read_bytes() == instance_file(archive, ds.SOPInstanceUID).read_bytes()
    node, received = storescp
    r = run_cli("archive", "export", "--study", st_fixed, "--to", f"{node.aet}@127.0.0.1:{node.port}", *arc)
    assert r.code == 0, r.stderr
    sent = [dcmread(p) for p in sorted(received.iterdir())]
    assert len(sent) == 2
    for ds in sent:
        check(ds)
    # a teaching file case of the study, exported
    r = run_cli("kin", "create", "--study", st_fixed, *[x for ds in media for x in ("--instance", ds.SOPInstanceUID)],
                "--title", "TCE001", "--store", *arc)
    assert r.code == 0, r.stderr
    r = run_cli("tce", "export", "1", "--out", tmp_path / "case", *arc)
    assert r.code == 0, r.stderr
    exported = [dcmread(p) for p in (tmp_path / "case").rglob("*.dcm") if p.name != "MANIFEST.dcm"]
    assert len(exported) == 2
    for ds in exported:
        check(ds)
