"""The archive's C-FIND: Patient Root and Study Root at every level, every matching kind, the
keys it returns, through the Python API and through DCMTK's findscu over the network."""
from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import insert, text

from helpers import DCMTK_ENV, dcmtk
from ihecli.archive import Archive, QueryError
from ihecli.archive import query as query_module
from ihecli.archive import schema as s
from ihecli.archive.query import Finder

# identifiers hold matching values (wildcards, "") that pydicom's value checks warn about
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
ROOT = "1.2.826.0.1.3680043.10.1137"  # UIDs of this test world
S1, S2, S3, S4, S5, S6, S7 = (f"{ROOT}.1.{i}" for i in range(1, 8))
SE11, SE12, SE21, SE31, SE41, SE51, SE61, SE71 = (f"{ROOT}.2.{i}" for i in (11, 12, 21, 31, 41, 51, 61, 71))
REF_STUDY = f"{ROOT}.9.1"


def item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, [item(**i) for i in v] if isinstance(v, list) and v and isinstance(v[0], dict) else v)
    return ds


def encode(sop_class: str, sop_uid: str | None = None, **attrs) -> bytes:
    """A Part-10 instance (no pixel data) with exactly the given attributes."""
    ds = item(**attrs)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


P1 = dict(PatientID="PID1", PatientName="Smith^John", PatientBirthDate="19700101", PatientSex="M")
P2 = dict(PatientID="PID2", PatientName="Smyth^Jane", PatientBirthDate="19851231", PatientSex="F")
P3 = dict(PatientID="PID3", PatientName="Müller^Hans", SpecificCharacterSet="ISO_IR 100")
P4 = dict(PatientID="PID4", PatientName="O_Brien^Pat", PatientSex="O")
P5 = dict(PatientID="PID5", PatientName="OXBrien^Pat")
REQUEST = [dict(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS1", RequestedProcedureDescription="CHEST"),
           dict(RequestedProcedureID="RP2", ScheduledProcedureStepID="SPS2", RequestedProcedureDescription="ABDOMEN")]


def world() -> list[bytes]:
    st1 = dict(P1, StudyInstanceUID=S1, StudyDate="20240105", StudyTime="083000", AccessionNumber="ACC1", StudyID="1",
               ReferringPhysicianName="Welby^Marcus", StudyDescription="CT CHEST", InstitutionName="General Hospital",
               ProcedureCodeSequence=[dict(CodeValue="CTCHEST", CodingSchemeDesignator="LOCAL",
                                           CodeMeaning="CT Chest")])
    st2 = dict(P1, StudyInstanceUID=S2, StudyDate="20240210", StudyTime="120000", AccessionNumber="ACC2", StudyID="2",
               StudyDescription="MR BRAIN", InstitutionName="City Clinic",
               ProcedureCodeSequence=[dict(CodeValue="MRBRAIN", CodingSchemeDesignator="LOCAL",
                                           CodeMeaning="MR Brain")])
    st3 = dict(P2, StudyInstanceUID=S3, StudyDate="20240301", StudyTime="115959.5", StudyDescription="CT ABDOMEN",
               InstitutionName="General Hospital")
    st4 = dict(P2, StudyInstanceUID=S4, StudyTime="1200", AccessionNumber="ACC4",
               ReferencedStudySequence=[dict(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                                             ReferencedSOPInstanceUID=REF_STUDY)])
    st5 = dict(P3, StudyInstanceUID=S5, StudyDate="20231231", StudyTime="0759", AccessionNumber="ACC5")
    st6 = dict(P4, StudyInstanceUID=S6, StudyDate="20240105", StudyTime="2300", StudyDescription="50% DOSE")
    st7 = dict(P5, StudyInstanceUID=S7, StudyDate="20240106", StudyTime="000000", StudyDescription="500 DOSE")
    return [
        encode(CT, f"{ROOT}.3.111", **st1, SeriesInstanceUID=SE11, Modality="CT", SeriesNumber=1, InstanceNumber=1,
               SeriesDescription="AXIAL", BodyPartExamined="CHEST", ProtocolName="CHEST ROUTINE", StationName="CT01",
               RequestAttributesSequence=REQUEST),
        encode(CT, f"{ROOT}.3.112", **st1, SeriesInstanceUID=SE11, Modality="CT", SeriesNumber=1, InstanceNumber=2,
               SeriesDescription="AXIAL", BodyPartExamined="CHEST", ProtocolName="CHEST ROUTINE", StationName="CT01",
               RequestAttributesSequence=REQUEST),
        encode(SR, f"{ROOT}.3.121", **st1, SeriesInstanceUID=SE12, Modality="SR", SeriesNumber=2, InstanceNumber=1,
               SeriesDescription="REPORT", StationName="WS01"),
        encode(MR, f"{ROOT}.3.211", **st2, SeriesInstanceUID=SE21, Modality="MR", SeriesNumber=1, InstanceNumber=1,
               ProtocolName="T1 AXIAL", StationName="MR01"),
        encode(CT, f"{ROOT}.3.311", **st3, SeriesInstanceUID=SE31, Modality="CT", SeriesNumber=1, InstanceNumber=1),
        encode(US, f"{ROOT}.3.411", **st4, SeriesInstanceUID=SE41, Modality="US", SeriesNumber=1, InstanceNumber=1),
        encode(US, f"{ROOT}.3.511", **st5, SeriesInstanceUID=SE51, Modality="US", SeriesNumber=1, InstanceNumber=1),
        encode(CT, f"{ROOT}.3.611", **st6, SeriesInstanceUID=SE61, Modality="CT", SeriesNumber=1, InstanceNumber=1),
        encode(MR, f"{ROOT}.3.711", **st7, SeriesInstanceUID=SE71, Modality="MR", SeriesNumber=1, InstanceNumber=1),
    ]


def objects() -> list[bytes]:
    """What the module-scoped archives of conftest hold."""
    return list(world())


def ident(level: str | None, **keys) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            v = [item(**i) for i in v]
        setattr(ds, k, v)
    return ds


def find(a: Archive, level: str, root: str = "study", **keys) -> list[Dataset]:
    """Responses; the unique keys of the level and above are always asked for (universal)."""
    if level in ("STUDY", "SERIES", "IMAGE"):
        keys.setdefault("StudyInstanceUID", "")
    if level in ("SERIES", "IMAGE"):
        keys.setdefault("SeriesInstanceUID", "")
    if level == "IMAGE":
        keys.setdefault("SOPInstanceUID", "")
    return a.find(ident(level, **keys), root)


def values(rsps, keyword: str) -> list:
    return [str(r[keyword].value) if r[keyword].value is not None else None for r in rsps]


def studies(rsps) -> set[str]:
    return {r.StudyInstanceUID for r in rsps}


# -- findscu -----------------------------------------------------------------------------------
class FindResult:
    def __init__(self, proc: subprocess.CompletedProcess, out: Path):
        self.log = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
        self.raw = proc.stdout + proc.stderr
        self.responses = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        line = [x for x in self.log.splitlines() if "Received Final Find Response" in x]
        self.final = line[-1] if line else ""

    @property
    def ok(self) -> bool:
        return "(Success)" in self.final


def findscu(port: int, tmp: Path, *keys: str | bytes, model: str = "-S") -> FindResult:
    """DCMTK's findscu (not pynetdicom's script of that name); responses extracted to files."""
    out = Path(tmp) / f"rsp-{time.monotonic_ns()}"
    out.mkdir()
    args: list[str | bytes] = [dcmtk("findscu"), "-v", model, "-aec", "IHE_ARCHIVE", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, env=DCMTK_ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return FindResult(proc, out)


# -- information models and levels ----------------------------------------------------------------
def test_patient_root_patient_level(arc):
    rsps = find(arc, "PATIENT", "patient", PatientID="", PatientName="", NumberOfPatientRelatedStudies="",
                NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="", StudyInstanceUID="")
    by_id = {r.PatientID: r for r in rsps}
    assert sorted(by_id) == ["PID1", "PID2", "PID3", "PID4", "PID5"]
    p1 = by_id["PID1"]
    assert str(p1.PatientName) == "Smith^John"
    assert (p1.NumberOfPatientRelatedStudies, p1.NumberOfPatientRelatedSeries,
            p1.NumberOfPatientRelatedInstances) == (2, 3, 4)
    assert p1.StudyInstanceUID in (None, "")  # a study key is not answered at the patient level
    assert all(r.QueryRetrieveLevel == "PATIENT" for r in rsps)


def test_patient_root_lower_levels(arc):
    st = find(arc, "STUDY", "patient", PatientID="PID1", StudyInstanceUID="")
    assert studies(st) == {S1, S2}
    se = find(arc, "SERIES", "patient", PatientID="PID1", StudyInstanceUID=S1, SeriesInstanceUID="", Modality="")
    assert {(r.SeriesInstanceUID, r.Modality) for r in se} == {(SE11, "CT"), (SE12, "SR")}
    im = find(arc, "IMAGE", "patient", PatientID="PID1", StudyInstanceUID=S1, SeriesInstanceUID=SE11,
              SOPInstanceUID="", InstanceNumber="")
    assert [(r.SOPInstanceUID, r.InstanceNumber) for r in im] == [(f"{ROOT}.3.111", 1), (f"{ROOT}.3.112", 2)]


def test_study_root_levels(arc):
    assert len(find(arc, "STUDY", StudyInstanceUID="")) == 7
    se = find(arc, "SERIES", StudyInstanceUID=S1, SeriesInstanceUID="", SeriesNumber="",
              NumberOfSeriesRelatedInstances="")
    assert {(r.SeriesInstanceUID, r.SeriesNumber, r.NumberOfSeriesRelatedInstances) for r in se} == {
        (SE11, 1, 2), (SE12, 2, 1)}
    im = find(arc, "IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=SE12, SOPInstanceUID="", SOPClassUID="")
    assert [(r.SOPInstanceUID, r.SOPClassUID) for r in im] == [(f"{ROOT}.3.121", SR)]
    assert all(r.QueryRetrieveLevel == "IMAGE" for r in im)


def test_study_root_has_no_patient_level(arc):
    with pytest.raises(QueryError) as e:
        find(arc, "PATIENT", "study", PatientID="")
    assert e.value.status in (0xA900, 0xC000)


def test_levels_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedStudies",
                model="-P")
    assert r.ok and len(r.responses) == 5
    assert {x.PatientID: x.NumberOfPatientRelatedStudies for x in r.responses}["PID1"] == 2
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PID2", "StudyInstanceUID", model="-P")
    assert r.ok and studies(r.responses) == {S3, S4}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S1}", "SeriesInstanceUID",
                "Modality")
    assert r.ok and {x.Modality for x in r.responses} == {"CT", "SR"}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={S1}",
                f"SeriesInstanceUID={SE11}", "SOPInstanceUID", "InstanceNumber")
    assert r.ok and [x.InstanceNumber for x in r.responses] == [1, 2]


def test_study_root_patient_level_refused_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID")
    assert not r.ok and r.responses == []
    assert "Received Final Find Response" in r.final and "Success" not in r.final


# -- bad identifiers -----------------------------------------------------------------------------
@pytest.mark.parametrize("level", [None, "", "BOGUS", "FRAME"])
def test_bad_level_is_refused(arc, level):
    with pytest.raises(QueryError) as e:
        arc.find(ident(level, PatientID=""), "patient")
    assert e.value.status in (0xA900, 0xC000)


def test_bad_identifiers_over_the_network_then_the_server_keeps_serving(srv, tmp_path):
    for keys in (["QueryRetrieveLevel=BOGUS", "PatientName"], ["PatientName"]):
        r = findscu(srv.port, tmp_path, *keys)
        assert r.responses == []
        assert "DataSetDoesNotMatchSOPClass" in r.final or "UnableToProcess" in r.final, r.final
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PID1", "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1, S2}


def test_invalid_values_match_nothing_over_the_network(srv, tmp_path):
    for key in ("SeriesNumber=abc", "StudyDate=garbage", "StudyTime=25:99", "NumberOfSeriesRelatedInstances=x"):
        r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=SERIES", key, "SeriesInstanceUID")
        assert r.ok and r.responses == [], key


def test_empty_value_matching_on_number_keys(arc):
    """Raw values, as an identifier arrives: pydicom refuses to build an IS of '""'."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    def with_raw(tag, value):
        ds = ident("SERIES", SeriesInstanceUID="")
        ds[tag] = RawDataElement(Tag(tag), "IS", len(value), value, 0, False, True)
        return {r.SeriesInstanceUID for r in arc.find(ds)}

    assert with_raw(0x00200011, b'""') == set()  # every series has a Series Number
    assert with_raw(0x00200011, b"2 ") == {SE12}
    assert with_raw(0x00200011, b"abc ") == set()


# -- single value, wildcards, lists ----------------------------------------------------------------
def test_single_value_matching(arc):
    assert studies(find(arc, "STUDY", AccessionNumber="ACC2")) == {S2}
    assert studies(find(arc, "STUDY", StudyID="1")) == {S1}
    assert studies(find(arc, "STUDY", PatientSex="F")) == {S3, S4}
    assert studies(find(arc, "STUDY", StudyDescription="CT CHEST")) == {S1}
    assert studies(find(arc, "STUDY", StudyDescription="ct chest")) == set()  # LO is case-sensitive
    assert studies(find(arc, "STUDY", StudyDate="20240105")) == {S1, S6}
    assert studies(find(arc, "STUDY", PatientBirthDate="19851231")) == {S3, S4}
    assert [r.SeriesInstanceUID for r in find(arc, "SERIES", Modality="SR")] == [SE12]
    assert [r.SeriesInstanceUID for r in find(arc, "SERIES", StudyInstanceUID=S1, SeriesNumber="2")] == [SE12]
    assert [r.SOPInstanceUID for r in find(arc, "IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=SE11,
                                           InstanceNumber="2")] == [f"{ROOT}.3.112"]
    assert [r.SOPInstanceUID for r in find(arc, "IMAGE", SOPInstanceUID=f"{ROOT}.3.311")] == [f"{ROOT}.3.311"]


def test_wildcards(arc):
    assert studies(find(arc, "STUDY", PatientName="SM?TH*")) == {S1, S2, S3, S4}
    assert studies(find(arc, "STUDY", PatientName="*^JANE")) == {S3, S4}
    assert studies(find(arc, "STUDY", PatientName="SMITH^JOHN")) == {S1, S2}
    assert studies(find(arc, "STUDY", StudyDescription="CT*")) == {S1, S3}
    assert studies(find(arc, "STUDY", StudyDescription="*DOSE")) == {S6, S7}
    assert studies(find(arc, "STUDY", AccessionNumber="ACC?")) == {S1, S2, S4, S5}
    assert {r.SeriesInstanceUID for r in find(arc, "SERIES", Modality="?R")} == {SE12, SE21, SE71}
    assert {r.SeriesInstanceUID for r in find(arc, "SERIES", BodyPartExamined="CH*")} == {SE11}
    assert studies(find(arc, "STUDY", StudyDescription="*")) == {S1, S2, S3, S4, S5, S6, S7}  # * alone: universal
    assert studies(find(arc, "STUDY", PatientName="JONES\\*")) == {S1, S2, S3, S4, S5, S6, S7}


def test_wildcards_treat_sql_metacharacters_as_literals(arc):
    assert studies(find(arc, "STUDY", PatientName="O_BRIEN*")) == {S6}
    assert studies(find(arc, "STUDY", PatientName="O?BRIEN*")) == {S6, S7}
    assert studies(find(arc, "STUDY", StudyDescription="50%*")) == {S6}
    assert studies(find(arc, "STUDY", StudyDescription="50% DOSE")) == {S6}


def test_uid_list_matching(arc):
    assert studies(find(arc, "STUDY", StudyInstanceUID=f"{S1}\\{S3}\\{ROOT}.404")) == {S1, S3}
    assert studies(find(arc, "STUDY", StudyInstanceUID=[S2, S4])) == {S2, S4}
    rsps = find(arc, "SERIES", SeriesInstanceUID=f"{SE11}\\{SE21}")
    assert {r.SeriesInstanceUID for r in rsps} == {SE11, SE21}


def test_wildcards_lists_and_uid_lists_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=sm?th*", "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1, S2, S3, S4}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S2}\\{S5}", "PatientName")
    assert r.ok and studies(r.responses) == {S2, S5}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=SERIES", "Modality=CT\\US", "SeriesInstanceUID")
    assert r.ok and {x.SeriesInstanceUID for x in r.responses} == {SE11, SE31, SE41, SE51, SE61}


# -- dates and times -------------------------------------------------------------------------------
def test_date_ranges(arc):
    assert studies(find(arc, "STUDY", StudyDate="20240101-20240229")) == {S1, S2, S6, S7}
    assert studies(find(arc, "STUDY", StudyDate="-20231231")) == {S5}
    assert studies(find(arc, "STUDY", StudyDate="20240210-")) == {S2, S3}
    assert studies(find(arc, "STUDY", StudyDate="20240105-20240105")) == {S1, S6}
    assert studies(find(arc, "STUDY", PatientBirthDate="19700101-19800101")) == {S1, S2}


def test_time_ranges(arc):
    # stored: S1 083000, S2 120000, S3 115959.5, S4 1200, S5 0759, S6 2300, S7 000000
    assert studies(find(arc, "STUDY", StudyTime="0800-1200")) == {S1, S2, S3, S4}
    assert studies(find(arc, "STUDY", StudyTime="080000-115959")) == {S1, S3}
    assert studies(find(arc, "STUDY", StudyTime="083000.000001-115959.4")) == set()
    assert studies(find(arc, "STUDY", StudyTime="115959.5-115959.5")) == {S3}
    assert studies(find(arc, "STUDY", StudyTime="-0759")) == {S5, S7}
    assert studies(find(arc, "STUDY", StudyTime="2200-")) == {S6}
    assert studies(find(arc, "STUDY", StudyTime="1200")) == {S2, S4}  # HHMM and HHMMSS forms alike
    rsps = find(arc, "STUDY", StudyInstanceUID=f"{S3}\\{S5}", StudyTime="")
    assert {r.StudyInstanceUID: r.StudyTime for r in rsps} == {S3: "115959.5", S5: "075900"}


def test_date_and_time_are_matched_each_on_its_own(arc):
    """No combined date-time matching (an extended negotiation option): a time range applies to
    every day of the date range; S1 (20240105 08:30) is outside 1000-1300, S2 (20240210 12:00) inside."""
    assert studies(find(arc, "STUDY", StudyDate="20240105-20240210", StudyTime="1000-1300")) == {S2}
    assert studies(find(arc, "STUDY", StudyDate="20240105-20240210", StudyTime="0800-")) == {S1, S2, S6}


def test_dates_and_times_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240229", "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1, S2, S6, S7}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyTime=0800-1200", "StudyDate",
                "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1, S2, S3, S4}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=20240105-", "StudyTime=-1200",
                "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1, S2, S3, S7}


# -- universal and empty-value matching -----------------------------------------------------------
def test_universal_matching_returns_the_value(arc):
    rsps = find(arc, "STUDY", StudyInstanceUID=S1, StudyDescription="", AccessionNumber="", StudyDate="",
                ReferringPhysicianName="", PatientBirthDate="", PatientSex="", StudyID="")
    (r,) = rsps
    assert (r.StudyDescription, r.AccessionNumber, r.StudyDate, str(r.ReferringPhysicianName), r.PatientBirthDate,
            r.PatientSex, r.StudyID) == ("CT CHEST", "ACC1", "20240105", "Welby^Marcus", "19700101", "M", "1")


def test_empty_value_matching(arc):
    assert studies(find(arc, "STUDY", AccessionNumber='""')) == {S3, S6, S7}
    assert studies(find(arc, "STUDY", StudyDate='""')) == {S4}
    assert studies(find(arc, "STUDY", StudyDescription='""')) == {S4, S5}
    assert studies(find(arc, "STUDY", PatientSex='""')) == {S5, S7}
    assert studies(find(arc, "STUDY", ReferringPhysicianName='""')) == {S2, S3, S4, S5, S6, S7}
    assert studies(find(arc, "STUDY", InstitutionName='""')) == {S4, S5, S6, S7}  # from the stored header
    rsps = find(arc, "STUDY", StudyDate='""', StudyInstanceUID="")
    assert rsps[0].StudyDate in (None, "")


def test_empty_value_matching_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", 'AccessionNumber=""', "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S3, S6, S7}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", 'InstitutionName=""', "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S4, S5, S6, S7}


# -- sequences -------------------------------------------------------------------------------------
def test_sequence_matching_returns_the_matching_items(arc):
    rsps = find(arc, "SERIES", SeriesInstanceUID="",
                RequestAttributesSequence=[dict(RequestedProcedureID="RP2", ScheduledProcedureStepID="")])
    assert [r.SeriesInstanceUID for r in rsps] == [SE11]
    seq = rsps[0].RequestAttributesSequence
    assert len(seq) == 1
    assert (seq[0].RequestedProcedureID, seq[0].ScheduledProcedureStepID) == ("RP2", "SPS2")
    assert "RequestedProcedureDescription" not in seq[0]  # only the item keys asked for


def test_sequence_item_must_match_one_stored_item(arc):
    # RP1 and SPS2 exist, but not in the same item
    rsps = find(arc, "SERIES", SeriesInstanceUID="",
                RequestAttributesSequence=[dict(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS2")])
    assert rsps == []
    rsps = find(arc, "SERIES", SeriesInstanceUID="",
                RequestAttributesSequence=[dict(RequestedProcedureID="RP?", RequestedProcedureDescription="ABD*")])
    assert [r.SeriesInstanceUID for r in rsps] == [SE11]
    assert [i.RequestedProcedureID for i in rsps[0].RequestAttributesSequence] == ["RP2"]


def test_sequence_universal_returns_every_item(arc):
    rsps = find(arc, "SERIES", SeriesInstanceUID=f"{SE11}\\{SE21}",
                RequestAttributesSequence=[dict(RequestedProcedureID="", ScheduledProcedureStepID="")])
    by_uid = {r.SeriesInstanceUID: r for r in rsps}
    assert set(by_uid) == {SE11, SE21}  # a universal sequence key matches series without it too
    assert [i.ScheduledProcedureStepID for i in by_uid[SE11].RequestAttributesSequence] == ["SPS1", "SPS2"]
    assert len(by_uid[SE21].RequestAttributesSequence) == 0


def test_study_level_sequences(arc):
    rsps = find(arc, "STUDY", ProcedureCodeSequence=[dict(CodeValue="MRBRAIN", CodeMeaning="")])
    assert studies(rsps) == {S2}
    assert rsps[0].ProcedureCodeSequence[0].CodeMeaning == "MR Brain"
    rsps = find(arc, "STUDY", ReferencedStudySequence=[dict(ReferencedSOPInstanceUID=REF_STUDY,
                                                             ReferencedSOPClassUID="")])
    assert studies(rsps) == {S4}
    assert rsps[0].ReferencedStudySequence[0].ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.1"
    assert find(arc, "STUDY", ReferencedStudySequence=[dict(ReferencedSOPInstanceUID=f"{ROOT}.404")]) == []


def test_sequences_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=SERIES", "SeriesInstanceUID",
                "RequestAttributesSequence[0].RequestedProcedureID=RP2",
                "RequestAttributesSequence[0].ScheduledProcedureStepID")
    assert r.ok and [x.SeriesInstanceUID for x in r.responses] == [SE11]
    seq = r.responses[0].RequestAttributesSequence
    assert [(i.RequestedProcedureID, i.ScheduledProcedureStepID) for i in seq] == [("RP2", "SPS2")]
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                "ProcedureCodeSequence[0].CodeValue=CT*", "ProcedureCodeSequence[0].CodeMeaning")
    assert r.ok and studies(r.responses) == {S1}
    assert r.responses[0].ProcedureCodeSequence[0].CodeMeaning == "CT Chest"


# -- returned keys ---------------------------------------------------------------------------------
def test_computed_keys_at_the_study_level(arc):
    (r,) = find(arc, "STUDY", StudyInstanceUID=S1, ModalitiesInStudy="", SOPClassesInStudy="",
                NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="", NumberOfPatientRelatedStudies="",
                NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    assert list(r.ModalitiesInStudy) == ["CT", "SR"]
    assert sorted(r.SOPClassesInStudy) == sorted([CT, SR])
    assert (r.NumberOfStudyRelatedSeries, r.NumberOfStudyRelatedInstances) == (2, 3)
    assert (r.NumberOfPatientRelatedStudies, r.NumberOfPatientRelatedSeries,
            r.NumberOfPatientRelatedInstances) == (2, 3, 4)


def test_computed_keys_below_the_study_level(arc):
    (r,) = find(arc, "SERIES", SeriesInstanceUID=SE12, ModalitiesInStudy="", NumberOfSeriesRelatedInstances="",
                NumberOfStudyRelatedInstances="", NumberOfPatientRelatedStudies="")
    assert list(r.ModalitiesInStudy) == ["CT", "SR"]
    assert (r.NumberOfSeriesRelatedInstances, r.NumberOfStudyRelatedInstances,
            r.NumberOfPatientRelatedStudies) == (1, 3, 2)


def test_matching_on_computed_keys(arc):
    assert studies(find(arc, "STUDY", ModalitiesInStudy="MR")) == {S2, S7}
    assert studies(find(arc, "STUDY", ModalitiesInStudy="SR\\US")) == {S1, S4, S5}
    assert studies(find(arc, "STUDY", SOPClassesInStudy=SR)) == {S1}
    # at the series level, ModalitiesInStudy looks at every series of the study, not the row's
    assert {r.SeriesInstanceUID for r in find(arc, "SERIES", ModalitiesInStudy="SR")} == {SE11, SE12}
    assert {r.SeriesInstanceUID for r in find(arc, "SERIES", SOPClassesInStudy=SR)} == {SE11, SE12}
    rsps = find(arc, "STUDY", ModalitiesInStudy="MR", StudyInstanceUID="", NumberOfStudyRelatedInstances="")
    assert {(r.StudyInstanceUID, r.NumberOfStudyRelatedInstances) for r in rsps} == {(S2, 1), (S7, 1)}


def test_computed_keys_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PID1", "StudyInstanceUID",
                "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                "SOPClassesInStudy", "NumberOfPatientRelatedStudies")
    assert r.ok
    by_uid = {x.StudyInstanceUID: x for x in r.responses}
    assert list(by_uid[S1].ModalitiesInStudy) == ["CT", "SR"]
    assert (by_uid[S1].NumberOfStudyRelatedSeries, by_uid[S1].NumberOfStudyRelatedInstances) == (2, 3)
    assert by_uid[S2].ModalitiesInStudy == "MR" and by_uid[S2].NumberOfPatientRelatedStudies == 2
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=SR", "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1}
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S1}", "SeriesInstanceUID",
                "NumberOfSeriesRelatedInstances")
    assert r.ok and {(x.SeriesInstanceUID, x.NumberOfSeriesRelatedInstances) for x in r.responses} == {
        (SE11, 2), (SE12, 1)}


def test_other_keys_come_from_the_stored_header(arc):
    rsps = find(arc, "STUDY", PatientID="PID1", StudyInstanceUID="", InstitutionName="")
    assert {r.StudyInstanceUID: r.InstitutionName for r in rsps} == {S1: "General Hospital", S2: "City Clinic"}
    rsps = find(arc, "SERIES", StudyInstanceUID=S1, SeriesInstanceUID="", StationName="", ProtocolName="")
    assert {r.SeriesInstanceUID: (r.StationName, r.ProtocolName) for r in rsps} == {
        SE11: ("CT01", "CHEST ROUTINE"), SE12: ("WS01", None)}
    assert studies(find(arc, "STUDY", InstitutionName="General*")) == {S1, S3}
    assert {r.SeriesInstanceUID for r in find(arc, "SERIES", ProtocolName="*AXIAL")} == {SE21}
    assert {r.SeriesInstanceUID for r in find(arc, "SERIES", StationName="CT01\\MR01")} == {SE11, SE21}


def test_header_keys_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=SERIES", "StationName=CT01\\WS01", "SeriesInstanceUID",
                "ProtocolName", "InstitutionName")
    assert r.ok
    got = {x.SeriesInstanceUID: (x.ProtocolName, x.InstitutionName) for x in r.responses}
    assert got == {SE11: ("CHEST ROUTINE", "General Hospital"), SE12: ("", "General Hospital")}


def test_answers_without_the_stored_files(tmp_path):
    """Every key, the header ones included, is answered from the index: delete the files, ask again."""
    a = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage")
    try:
        for data in world()[:4]:
            a.store(data)
        keys = dict(StudyInstanceUID="", PatientName="", InstitutionName="", ModalitiesInStudy="",
                    NumberOfStudyRelatedInstances="", ProcedureCodeSequence=[dict(CodeValue="", CodeMeaning="")])
        before = find(a, "STUDY", **keys)
        series_before = find(a, "SERIES", SeriesInstanceUID="", ProtocolName="", StationName="CT01",
                             RequestAttributesSequence=[dict(RequestedProcedureID="RP1")])
        stored = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]
        assert len(stored) >= 4
        for p in stored:
            p.unlink()
        after = find(a, "STUDY", **keys)
        assert after == before
        assert {r.InstitutionName for r in after} == {"General Hospital", "City Clinic"}
        assert {r.ProcedureCodeSequence[0].CodeValue for r in after} == {"CTCHEST", "MRBRAIN"}
        series_after = find(a, "SERIES", SeriesInstanceUID="", ProtocolName="", StationName="CT01",
                            RequestAttributesSequence=[dict(RequestedProcedureID="RP1")])
        assert series_after == series_before
        assert [(r.SeriesInstanceUID, r.ProtocolName) for r in series_after] == [(SE11, "CHEST ROUTINE")]
    finally:
        a.close()


def test_retrieve_aet_and_availability(arc):
    (r,) = find(arc, "STUDY", StudyInstanceUID=S1, RetrieveAETitle="", InstanceAvailability="")
    assert r.RetrieveAETitle == "IHE_ARCHIVE" and r.InstanceAvailability == "ONLINE"


def test_limit(arc):
    assert len(arc.find(ident("STUDY", StudyInstanceUID=""), "study", limit=3)) == 3
    assert len(arc.find(ident("STUDY", PatientName="S*"), "study", limit=3)) == 3
    assert len(arc.find(ident("STUDY", InstitutionName="General*"), "study", limit=1)) == 1


# -- person names ------------------------------------------------------------------------------------
def test_patient_name_is_case_insensitive(arc):
    assert studies(find(arc, "STUDY", PatientName="smith^john")) == {S1, S2}
    assert studies(find(arc, "STUDY", PatientName="müller*")) == {S5}
    assert studies(find(arc, "STUDY", PatientName="MÜLLER^HANS")) == {S5}
    assert studies(find(arc, "STUDY", PatientName="muller*")) == set()  # accents count by default


def test_fuzzy_names_ignore_accents(arc, tmp_path):
    fuzzy = Archive(arc.db_url, tmp_path / "unused", fuzzy_names=True)
    try:
        assert studies(find(fuzzy, "STUDY", PatientName="muller*")) == {S5}
        assert studies(find(fuzzy, "STUDY", PatientName="MULLER^HANS")) == {S5}
        assert studies(find(fuzzy, "STUDY", PatientName="Müller^hans")) == {S5}
        assert studies(find(fuzzy, "STUDY", PatientName="smith*")) == {S1, S2}
    finally:
        fuzzy.close()


def test_names_over_the_network(srv, tmp_path):
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                "PatientName=müller*", "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S5}
    assert str(r.responses[0].PatientName) == "Müller^Hans"
    r = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=SMITH^JOHN", "StudyInstanceUID")
    assert r.ok and studies(r.responses) == {S1, S2}


# -- C-MOVE / C-GET selection uses the same matching ------------------------------------------------
def test_retrieve_selection(arc):
    refs = arc.instances(ident("STUDY", StudyInstanceUID=S1))
    assert sorted(r.sop_uid for r in refs) == [f"{ROOT}.3.111", f"{ROOT}.3.112", f"{ROOT}.3.121"]
    refs = arc.instances(ident("SERIES", StudyInstanceUID=S1, SeriesInstanceUID=SE12))
    assert [r.sop_uid for r in refs] == [f"{ROOT}.3.121"]
    refs = arc.instances(ident("PATIENT", PatientID="PID2"), "patient")
    assert {r.study_uid for r in refs} == {S3, S4}
    refs = arc.instances(ident("STUDY", PatientName="smyth*", StudyDate='""'))
    assert [r.study_uid for r in refs] == [S4]
    with pytest.raises(QueryError):
        arc.instances(ident("STUDY", StudyInstanceUID=""))


# -- scale -------------------------------------------------------------------------------------------
SURNAMES = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ", "MARTINEZ",
            "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE", "JACKSON", "MARTIN"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """10,000 studies of 5,000 patients (index rows written directly: ingest is not under test)."""
    from datetime import datetime

    d = tmp_path_factory.mktemp("big")
    a = Archive(f"sqlite:///{d / 'index.db'}", d / "storage")
    t = datetime(2026, 1, 1)
    names = [f"{SURNAMES[i % 20]}^GIVEN{i:07d}" for i in range(5000)]
    with a.engine.begin() as c:
        c.execute(insert(s.patients), [dict(id=i + 1, pid=f"P{i:07d}", issuer="", name=n, name_ci=n.upper(),
                                            name_fold=n.upper()) for i, n in enumerate(names)])
        c.execute(insert(s.studies), [dict(id=i + 1, study_uid=f"{ROOT}.7.{i}", patient_fk=i // 2 + 1,
                                           study_date=f"20{10 + i % 16:02d}0101", accession=f"A{i:08d}",
                                           received=t, updated=t, num_series=1, num_instances=10)
                                      for i in range(10000)])
        c.execute(insert(s.series), [dict(id=i + 1, series_uid=f"{ROOT}.8.{i}", study_fk=i + 1,
                                          modality=("CT", "MR")[i % 2], num_instances=10) for i in range(10000)])
    yield a
    a.close()


def _plan(a: Archive, ds: Dataset, level: str) -> str:
    with a.connect() as conn:
        q = Finder(conn)._select(ds, level)[0]
        sql = str(q.compile(a.engine, compile_kwargs={"literal_binds": True}))
        return " | ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))


def test_name_query_on_10000_studies_uses_the_index(big, monkeypatch):
    calls = {"n": 0}
    real = query_module.matching.matches

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(query_module.matching, "matches", counting)
    ds = ident("STUDY", PatientName="SMITH*", StudyInstanceUID="", PatientID="", StudyDate="", AccessionNumber="",
               ModalitiesInStudy="", NumberOfStudyRelatedInstances="")
    t0 = time.perf_counter()
    rsps = big.find(ds)
    elapsed = time.perf_counter() - t0
    assert len(rsps) == 500
    assert all(str(r.PatientName).startswith("SMITH^") for r in rsps)
    assert calls["n"] <= len(rsps)  # Python checks the candidates only, not all 10,000 rows
    plan = _plan(big, ds, "STUDY")
    assert "SEARCH patients USING INDEX ix_patients_name_ci" in plan, plan
    assert "SCAN" not in plan.replace("SCAN CONSTANT", ""), plan
    assert elapsed < 3.0, elapsed


def test_exact_name_and_date_queries_on_10000_studies_use_indexes(big):
    plan = _plan(big, ident("STUDY", PatientName="SMITH^GIVEN0000000"), "STUDY")
    assert "ix_patients_name_ci (name_ci=?)" in plan, plan
    plan = _plan(big, ident("STUDY", PatientName="MÜLLER*"), "STUDY")  # non-ASCII, still the index
    assert "SEARCH patients USING INDEX ix_patients_name_ci (name_ci>? AND name_ci<?)" in plan, plan
    plan = _plan(big, ident("STUDY", StudyDate="20150101-20150131"), "STUDY")
    assert "ix_studies_date" in plan, plan
    assert len(big.find(ident("STUDY", StudyDate="20150101-20150131"))) == 625


def test_a_misspelt_key_names_the_keyword_it_probably_meant():
    from helpers import free_port, run_cli

    r = run_cli("dicom", "find", f"ARCHIVE@127.0.0.1:{free_port()}", "-k", "PatientNme=SMITH*")
    assert r.code == 2
    assert r.stderr.strip() == ("ihe: error: bad key 'PatientNme=SMITH*': no DICOM keyword 'PatientNme' "
                                "(did you mean PatientName?)")
    r = run_cli("dicom", "find", f"ARCHIVE@127.0.0.1:{free_port()}", "-L", "image",
                "-k", "ReferencedSeriesSequence[0].SeriesInstanceUI=1.2")
    assert r.code == 2 and "did you mean SeriesInstanceUID?" in r.stderr
