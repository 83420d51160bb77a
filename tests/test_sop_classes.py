"""The SOP classes of SWF, CPI, KIN, ED, NM, MAMMO, DBT, CATH and ECHO: one object of each stored
over the network (C-STORE) and found again by DCMTK findscu at IMAGE level with the keys those
profiles query, matched and returned from the index. Real objects where a small one exists
(tests/data/workflow), else made here with pydicom."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers import DATA
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.config import Node
from ihecli.dicom import scu
from ihecli.workflow.service import WorkflowServices
from test_rejection import findscu

REAL = DATA / "workflow"
STUDY = generate_uid()


def code(value, scheme, meaning) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _image(frames=1, rows=8, cols=8) -> dict:
    attrs = {"Rows": rows, "Columns": cols, "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7,
             "PixelRepresentation": 0, "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
             "PixelData": bytes(rows * cols * frames)}
    if frames > 1:
        attrs["NumberOfFrames"] = frames
    return attrs


def _ps(label) -> dict:
    ref = Dataset()
    ref.SeriesInstanceUID = generate_uid()
    return {"ContentLabel": label, "ContentDescription": "for CPI", "PresentationCreationDate": "20260102",
            "PresentationCreationTime": "101010", "ContentCreatorName": "RAD^ONE", "ReferencedSeriesSequence": [ref]}


def _sr(title, date="20260103") -> dict:
    return {"CompletionFlag": "COMPLETE", "VerificationFlag": "VERIFIED", "ContentDate": date,
            "ContentTime": "120000", "ValueType": "CONTAINER", "ConceptNameCodeSequence": [title]}


MAMMO = {"ImageLaterality": "L", "ViewCodeSequence": [code("R-10242", "SRT", "cranio-caudal")]}

# (label, SOP Class UID, modality, attributes, query keys: -k values that must match and come back)
CLASSES = [
    ("GSPS", "1.2.840.10008.5.1.4.1.1.11.1", "PR", _ps("CPI_GSPS"),
     ["ContentLabel=CPI_GSPS", "PresentationCreationDate=20260102", "ContentCreatorName=RAD*"]),
    ("Color Softcopy PS", "1.2.840.10008.5.1.4.1.1.11.2", "PR", _ps("CPI_COLOR"), ["ContentLabel=CPI_COLOR"]),
    ("Pseudo-Color Softcopy PS", "1.2.840.10008.5.1.4.1.1.11.3", "PR", _ps("CPI_PSEUDO"), ["ContentLabel=CPI_PSEUDO"]),
    ("Blending Softcopy PS", "1.2.840.10008.5.1.4.1.1.11.4", "PR", _ps("CPI_BLEND"), ["ContentLabel=CPI_BLEND"]),
    ("XA/XRF Grayscale Softcopy PS", "1.2.840.10008.5.1.4.1.1.11.5", "PR", _ps("CPI_XA"), ["ContentLabel=CPI_XA"]),
    ("Key Object Selection", "1.2.840.10008.5.1.4.1.1.88.59", "KO", _sr(code("113000", "DCM", "Of Interest")),
     ["ConceptNameCodeSequence[0].CodeValue=113000", "ContentDate=20260103"]),
    ("Basic Text SR", "1.2.840.10008.5.1.4.1.1.88.11", "SR",
     _sr(code("18748-4", "LN", "Diagnostic Imaging Report"), "20260111"),
     ["ContentDate=20260111", "CompletionFlag=COMPLETE", "VerificationFlag=VERIFIED",
      "ConceptNameCodeSequence[0].CodeValue=18748-4"]),
    ("Enhanced SR", "1.2.840.10008.5.1.4.1.1.88.22", "SR",
     _sr(code("18748-4", "LN", "Diagnostic Imaging Report"), "20260112"),
     ["ContentDate=20260112", "VerificationFlag=VERIFIED"]),
    ("Comprehensive SR", "1.2.840.10008.5.1.4.1.1.88.33", "SR", _sr(code("125200", "DCM", "Adult Echocardiography "
                                                                         "Procedure Report")),
     ["ConceptNameCodeSequence[0].CodeValue=125200"]),
    ("Comprehensive 3D SR", "1.2.840.10008.5.1.4.1.1.88.34", "SR", _sr(code("126000", "DCM", "Imaging Measurement "
                                                                            "Report")),
     ["ConceptNameCodeSequence[0].CodeValue=126000"]),
    ("Mammography CAD SR", "1.2.840.10008.5.1.4.1.1.88.50", "SR", _sr(code("111036", "DCM", "Mammography CAD Report")),
     ["ConceptNameCodeSequence[0].CodeValue=111036", "CompletionFlag=COMPLETE", "ContentDate=20260103"]),
    ("Procedure Log", "1.2.840.10008.5.1.4.1.1.88.40", "SR", _sr(code("121145", "DCM", "Description of Procedure")),
     ["ConceptNameCodeSequence[0].CodeValue=121145"]),
    ("X-Ray Radiation Dose SR", "1.2.840.10008.5.1.4.1.1.88.67", "SR", _sr(code("113701", "DCM", "X-Ray Radiation "
                                                                               "Dose Report")),
     ["ConceptNameCodeSequence[0].CodeValue=113701"]),
    ("NM Image (multi-frame)", "1.2.840.10008.5.1.4.1.1.20", "NM",
     {**_image(frames=4), "ImageType": ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]},
     ["NumberOfFrames=4", "Rows=8", "Columns=8", "ImageType"]),
    ("DX For Presentation", "1.2.840.10008.5.1.4.1.1.1.1", "DX",
     {**_image(), "PresentationIntentType": "FOR PRESENTATION", "ViewPosition": "PA"},
     ["PresentationIntentType=FOR PRESENTATION", "ViewPosition=PA"]),
    ("DX For Processing", "1.2.840.10008.5.1.4.1.1.1.1.1", "DX",
     {**_image(), "PresentationIntentType": "FOR PROCESSING", "ViewPosition": "AP"},
     ["PresentationIntentType=FOR PROCESSING"]),
    ("MG For Presentation", "1.2.840.10008.5.1.4.1.1.1.2", "MG",
     {**_image(), **MAMMO, "PresentationIntentType": "FOR PRESENTATION"},
     ["ImageLaterality=L", "PresentationIntentType=FOR PRESENTATION", "ViewCodeSequence[0].CodeValue=R-10242"]),
    ("MG For Processing", "1.2.840.10008.5.1.4.1.1.1.2.1", "MG",
     {**_image(), **MAMMO, "PresentationIntentType": "FOR PROCESSING"},
     ["ImageLaterality=L", "PresentationIntentType=FOR PROCESSING"]),
    ("Breast Tomosynthesis", "1.2.840.10008.5.1.4.1.1.13.1.3", "MG",
     {**_image(frames=3), "ImageLaterality": "R", "PresentationIntentType": "FOR PRESENTATION"},
     ["ImageLaterality=R", "NumberOfFrames=3"]),
    ("Breast Projection X-Ray For Presentation", "1.2.840.10008.5.1.4.1.1.13.1.4", "MG",
     {**_image(), "ImageLaterality": "R", "PresentationIntentType": "FOR PRESENTATION"},
     ["ImageLaterality=R", "PresentationIntentType=FOR PRESENTATION"]),
    ("Breast Projection X-Ray For Processing", "1.2.840.10008.5.1.4.1.1.13.1.5", "MG",
     {**_image(), "ImageLaterality": "R", "PresentationIntentType": "FOR PROCESSING"},
     ["ImageLaterality=R", "PresentationIntentType=FOR PROCESSING"]),
    ("XA", "1.2.840.10008.5.1.4.1.1.12.1", "XA", _image(frames=5), ["NumberOfFrames=5"]),
    ("Enhanced XA", "1.2.840.10008.5.1.4.1.1.12.1.1", "XA", _image(frames=6), ["NumberOfFrames=6"]),
    ("US", "1.2.840.10008.5.1.4.1.1.6.1", "US", _image(), ["Rows=8"]),
    ("US Multi-frame", "1.2.840.10008.5.1.4.1.1.3.1", "US", _image(frames=7), ["NumberOfFrames=7"]),
    ("Enhanced US Volume", "1.2.840.10008.5.1.4.1.1.6.2", "US", _image(frames=9), ["NumberOfFrames=9"]),
    ("IVOCT For Presentation", "1.2.840.10008.5.1.4.1.1.14.1", "IVOCT",
     {**_image(frames=2), "PresentationIntentType": "FOR PRESENTATION"}, ["PresentationIntentType=FOR PRESENTATION"]),
    ("IVOCT For Processing", "1.2.840.10008.5.1.4.1.1.14.2", "IVOCT",
     {**_image(frames=2), "PresentationIntentType": "FOR PROCESSING"}, ["PresentationIntentType=FOR PROCESSING"]),
    ("12-lead ECG", "1.2.840.10008.5.1.4.1.1.9.1.1", "ECG", {"ContentDate": "20260104"}, ["ContentDate=20260104"]),
    ("Hemodynamic Waveform", "1.2.840.10008.5.1.4.1.1.9.2.1", "HD", {"ContentDate": "20260105"},
     ["ContentDate=20260105"]),
    ("Encapsulated PDF", "1.2.840.10008.5.1.4.1.1.104.1", "DOC",
     {"DocumentTitle": "Cath report", "MIMETypeOfEncapsulatedDocument": "application/pdf",
      "EncapsulatedDocument": b"%PDF-1.4\n%%EOF\n", "BurnedInAnnotation": "NO",
      "ConceptNameCodeSequence": [code("18745-0", "LN", "Cardiac catheterization study")]},
     ["DocumentTitle=Cath*", "MIMETypeOfEncapsulatedDocument=application/pdf",
      "ConceptNameCodeSequence[0].CodeValue=18745-0"]),
]
# real objects: (file, keys)
REAL_OBJECTS = [
    ("gsps-PR000000.dcm", ["ContentLabel=PRESENTATION", "PresentationCreationDate=20190107"]),
    ("sr-MarekLatin2.dcm", ["CompletionFlag=PARTIAL", "ContentDate=20140507"]),
    ("sample-pdf.dcm", ["MIMETypeOfEncapsulatedDocument=application/pdf"]),
    ("us-multiframe.dcm", ["NumberOfFrames=8"]),
]


def synthesise(label, sop_class, modality, attrs, n) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "PID-SOP", "CLASSES^ALL"
    ds.StudyInstanceUID, ds.StudyDate = STUDY, "20260101"
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, n, 1
    ds.SeriesDescription = label
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Every object sent to the archive over one association (pynetdicom storescu)."""
    d = tmp_path_factory.mktemp("sop")
    files: dict[str, tuple[Path, list[str]]] = {}
    for n, (label, cls, mod, attrs, keys) in enumerate(CLASSES, 1):
        p = d / f"{n:02d}.dcm"
        synthesise(label, cls, mod, attrs, n).save_as(p, enforce_file_format=True)
        files[label] = (p, keys)
    for name, keys in REAL_OBJECTS:
        files[name] = (REAL / name, keys)
    archive = Archive(f"sqlite:///{d / 'index.db'}", d / "storage")
    srv = DicomServer(archive, aet="IHE_ARCHIVE", port=0, services=[WorkflowServices(archive)])
    srv.start()
    rep = scu.store(Node("IHE_ARCHIVE", "127.0.0.1", srv.port), [p for p, _ in files.values()])
    assert rep.sent == len(files) and not rep.failed, rep.failed
    yield srv, files, d
    srv.stop()
    archive.close()


@pytest.mark.parametrize("label", [c[0] for c in CLASSES] + [r[0] for r in REAL_OBJECTS])
def test_found_at_image_level_by_findscu(stored, label):
    srv, files, d = stored
    path, keys = files[label]
    ds = dcmread(path, stop_before_pixels=True)
    wanted = [k.split("=")[0].split("[")[0] for k in keys]
    rsps = findscu(srv.port, d, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ds.StudyInstanceUID}",
                   "SOPInstanceUID", f"SOPClassUID={ds.SOPClassUID}", *keys)
    assert [str(r.SOPInstanceUID) for r in rsps] == [str(ds.SOPInstanceUID)]
    rsp = rsps[0]
    assert str(rsp.SOPClassUID) == str(ds.SOPClassUID)
    for kw in wanted:  # each key comes back with the stored value
        assert kw in rsp, kw
        if kw.endswith("Sequence"):
            assert str(rsp[kw].value[0].CodeValue) == str(ds[kw].value[0].CodeValue)
        else:
            assert str(rsp[kw].value) == str(ds[kw].value), kw
    # a value that differs matches nothing
    first = keys[0]
    if "=" in first and "*" not in first:
        k, v = first.split("=", 1)
        none = findscu(srv.port, d, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ds.StudyInstanceUID}",
                       "SOPInstanceUID", f"SOPClassUID={ds.SOPClassUID}",
                       f"{k}={v}X" if not v.isdigit() else f"{k}={int(v) + 100}")
        assert none == []
