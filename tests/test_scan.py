"""The archive's fast header scan (ihecli.archive.scan) against pydicom's reader: every real
object under tests/data, and synthetic ones in each little-endian transfer syntax, give the same
index values and header either way."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ihecli.archive import ingest
from ihecli.archive.scan import scan

DATA = Path(__file__).parent / "data"


def _part10_files() -> list[Path]:
    out = []
    for p in sorted(DATA.rglob("*")):
        if p.is_file() and p.name != "DICOMDIR" and p.stat().st_size > 132:
            with open(p, "rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                out.append(p)
    return out


def _both(data: bytes, monkeypatch):
    fast = ingest.parse(data)
    with monkeypatch.context() as m:
        m.setattr("ihecli.archive.scan.scan", lambda data: None)
        slow = ingest.parse(data)
    return fast, slow


FILES = _part10_files()


def test_there_are_real_objects_to_compare():
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_fast_scan_agrees_with_pydicom_on_real_objects(path, monkeypatch):
    data = path.read_bytes()
    fast, slow = _both(data, monkeypatch)
    assert fast == slow


def _encoded(ts: str, **extra) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "P1"
    ds.StudyDate = "20240102"
    ds.Modality = "OT"
    ds.InstanceNumber = 3
    inner = Dataset()
    inner.CodeValue = "113000"
    ds.ConceptNameCodeSequence = [inner]
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = b"\0" * 64
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = 8
    buf = BytesIO()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(buf, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:The value length")
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_fast_scan_agrees_on_both_little_endian_syntaxes(ts, monkeypatch):
    data = _encoded(ts, StudyDescription="x" * 70000 if ts == ImplicitVRLittleEndian else "short")
    assert scan(data) is not None
    fast, slow = _both(data, monkeypatch)
    assert fast == slow and fast.patient["name"] == "Müller^Jürgen"
    assert dcmread(BytesIO(data)).PixelData == data[-64:]


def test_a_long_value_in_a_2_byte_length_vr_is_not_misread(monkeypatch):
    """UV has a 4-byte length; a scan taking it for a short VR would walk into garbage."""
    data = _encoded(ExplicitVRLittleEndian)
    ds = dcmread(BytesIO(data))
    ds.add_new(0x00091010, "UV", [1, 2, 3])
    ds.add_new(0x00090010, "LO", "PRIVATE")
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    fast, slow = _both(buf.getvalue(), monkeypatch)
    assert fast == slow


def test_truncated_pixel_data_is_refused_by_both():
    data = _encoded(ExplicitVRLittleEndian)[:-10]
    from ihecli.errors import ArchiveError

    with pytest.raises(ArchiveError):
        ingest.parse(data)


@pytest.mark.parametrize("name", ["Doe^John=", "Doe^John==", "Müller^Jürgen=", "=Ideographic"])
def test_person_names_with_empty_component_groups(name, monkeypatch):
    data = _encoded(ExplicitVRLittleEndian, PatientName=name)
    fast, slow = _both(data, monkeypatch)
    assert fast == slow
