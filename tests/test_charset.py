"""Specific Character Set in C-FIND: David Clunie's character-set test images ingested, queried by
their non-ASCII names (in UTF-8 and in each file's own character set), answered with the right
names and character set, through the Python API and through DCMTK's findscu."""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers import DATA, DCMTK_ENV, dcmtk
from ihecli.archive import Archive

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

CHARSET = DATA / "charset"
# file: (Patient ID, Specific Character Set, Patient's Name)
FILES = {
    "SCSGERM": ("SCSGERM", "ISO_IR 100", "\u00c4neas^R\u00fcdiger"),
    "SCSRUSS": ("SCSRUSS", "ISO_IR 144", "\u041b\u044e\u043ace\u043c\u0431yp\u0433"),  # c, e, y, p are Latin
    "SCSGREEK": ("SCSGREEK", "ISO_IR 126", "\u0394\u03b9\u03bf\u03bd\u03c5\u03c3\u03b9\u03bf\u03c2"),
    "SCSH31": ("H31EXAMPLE", "\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "SCSH32": ("H32EXAMPLE", "ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    "SCSI2": ("I2EXAMPLE", "\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동"),
    "SCSX1": ("X1EXAMPLE", "ISO_IR 192", "Wang^XiaoDong=王^小東"),
    "SCSX2": ("X2EXAMPLE", "GB18030", "Wang^XiaoDong=王^小东"),
}


def charset_str(value) -> str:
    return value if isinstance(value, str) else "\\".join(value)


def raw_name(path: Path) -> bytes:
    """Patient's Name as encoded in the file (not decoded), without padding or empty trailing groups."""
    ds = dcmread(path, stop_before_pixels=True)
    return ds.get_item(0x00100010).value.rstrip(b" =")


def objects() -> list[bytes]:
    """What the module-scoped archives of conftest hold."""
    return [(CHARSET / name).read_bytes() for name in FILES]


def query(charset: str | None, **keys) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def in_own_charset(path: Path, name_bytes: bytes | None = None) -> Dataset:
    """A STUDY query whose Patient's Name carries the file's own bytes and character set, as
    received from the network (decoded by the identifier's own Specific Character Set)."""
    src = dcmread(path, stop_before_pixels=True)
    ds = Dataset()
    ds[0x00080005] = src.get_item(0x00080005)
    ds.QueryRetrieveLevel = "STUDY"
    name = src.get_item(0x00100010)
    if name_bytes is not None:
        name = name._replace(value=name_bytes, length=len(name_bytes))
    ds[0x00100010] = name
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)  # through bytes, as an identifier arrives
    return dcmread(io.BytesIO(buf.getvalue()), force=True)


def test_copies_are_the_documented_files():
    readme = (DATA / "README.md").read_text()
    for name in FILES:
        digest = hashlib.sha256((CHARSET / name).read_bytes()).hexdigest()[:16]
        line = next(x for x in readme.splitlines() if f"`charset/{name}`" in x)
        assert digest in line and "orthanc-tests" in line and f"DavidClunie/{name}" in line


@pytest.mark.parametrize("name", sorted(FILES))
def test_query_in_utf8(arc, name):
    pid, charset, pn = FILES[name]
    rsps = arc.find(query("ISO_IR 192", PatientName=pn))
    assert [r.PatientID for r in rsps] == [pid]
    assert str(rsps[0].PatientName) == pn
    assert charset_str(rsps[0].SpecificCharacterSet) == charset


@pytest.mark.parametrize("name", sorted(FILES))
def test_query_in_the_files_own_charset(arc, name):
    pid, charset, pn = FILES[name]
    ident = in_own_charset(CHARSET / name)
    assert str(ident.PatientName) == pn  # the identifier really is in that character set
    rsps = arc.find(ident)
    assert [r.PatientID for r in rsps] == [pid]
    assert str(rsps[0].PatientName) == pn
    assert charset_str(rsps[0].SpecificCharacterSet) == charset


@pytest.mark.parametrize("name", sorted(FILES))
def test_wildcard_on_a_non_ascii_prefix(arc, name):
    pid, _, pn = FILES[name]
    prefix = pn[:3] + "*"
    rsps = arc.find(query("ISO_IR 192", PatientName=prefix))
    assert pid in [r.PatientID for r in rsps]
    assert all(str(r.PatientName).upper().startswith(pn[:3].upper()) for r in rsps)


def test_response_encodes_back_to_the_files_own_bytes(arc):
    """Each response written out (as the server sends it) holds the file's own bytes."""
    for name, (pid, charset, pn) in FILES.items():
        (rsp,) = arc.find(query("ISO_IR 192", PatientID=pid, PatientName=""))
        buf = io.BytesIO()
        rsp.save_as(buf, implicit_vr=False, little_endian=True)
        back = dcmread(io.BytesIO(buf.getvalue()), force=True)
        assert back.get_item(0x00100010).value.rstrip(b" =") == raw_name(CHARSET / name), name


def test_ideographic_and_phonetic_groups(arc):
    def pids(pn, charset="ISO_IR 192"):
        return sorted(r.PatientID for r in arc.find(query(charset, PatientName=pn)))

    assert pids("山田^太郎") == ["H31EXAMPLE", "H32EXAMPLE"]
    assert pids("やまだ*") == ["H31EXAMPLE", "H32EXAMPLE"]
    assert pids("Yamada^Tarou") == ["H31EXAMPLE"]
    assert pids("ﾔﾏﾀﾞ^ﾀﾛｳ") == ["H32EXAMPLE"]
    assert pids("=山田^太郎") == ["H31EXAMPLE", "H32EXAMPLE"]
    assert pids("=やまだ^たろう") == []  # phonetic name in the ideographic group
    assert pids("Yamada*=山田*") == ["H31EXAMPLE"]
    assert pids("王^小東") == ["X1EXAMPLE"]  # traditional 東
    assert pids("王^小东") == ["X2EXAMPLE"]  # simplified 东
    assert pids("Wang^XiaoDong") == ["X1EXAMPLE", "X2EXAMPLE"]
    assert pids("홍^길동") == ["I2EXAMPLE"]
    assert pids("洪*") == ["I2EXAMPLE"]


def test_ideographic_query_in_iso2022(arc):
    ident = in_own_charset(CHARSET / "SCSH31", b"=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B")  # =山田^太郎
    assert str(ident.PatientName) == "=山田^太郎"
    assert sorted(r.PatientID for r in arc.find(ident)) == ["H31EXAMPLE", "H32EXAMPLE"]


def test_case_insensitive_beyond_ascii(arc):
    assert [r.PatientID for r in arc.find(query("ISO_IR 192", PatientName="διονυσιος"))] == ["SCSGREEK"]
    assert [r.PatientID for r in arc.find(query("ISO_IR 192", PatientName="ЛЮК*"))] == ["SCSRUSS"]
    assert [r.PatientID for r in arc.find(query("ISO_IR 100", PatientName="äneas^rüdiger"))] == ["SCSGERM"]


def test_fuzzy_names_fold_accents_of_these_files(arc, tmp_path):
    fuzzy = Archive(arc.db_url, tmp_path / "unused", fuzzy_names=True)
    try:
        assert [r.PatientID for r in fuzzy.find(query(None, PatientName="aneas^rudiger"))] == ["SCSGERM"]
        assert [r.PatientID for r in fuzzy.find(query("ISO_IR 192", PatientName="Διονυσιος"))] == ["SCSGREEK"]
    finally:
        fuzzy.close()


def _instance(**attrs) -> bytes:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_values_from_two_character_sets_are_answered_in_utf8(tmp_path):
    """A Latin-1 patient whose later study is Cyrillic: one response holds both scripts."""
    a = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage")
    try:
        study = generate_uid()
        a.store(_instance(SpecificCharacterSet="ISO_IR 100", PatientID="MIX", PatientName="Äneas^Rüdiger",
                          StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), Modality="OT"))
        a.store(_instance(SpecificCharacterSet="ISO_IR 144", PatientID="MIX", PatientName="Aneas^Rudiger",
                          StudyInstanceUID=study, SeriesInstanceUID=generate_uid(), Modality="OT",
                          StudyDescription="Люксембург"))
        (rsp,) = a.find(query(None, StudyInstanceUID=study, PatientName="", StudyDescription=""))
        assert rsp.SpecificCharacterSet == "ISO_IR 192"
        assert (str(rsp.PatientName), rsp.StudyDescription) == ("Äneas^Rüdiger", "Люксембург")
        buf = io.BytesIO()
        rsp.save_as(buf, implicit_vr=False, little_endian=True)
        assert "Äneas^Rüdiger".encode() in buf.getvalue() and "Люксембург".encode() in buf.getvalue()
    finally:
        a.close()


# -- DCMTK findscu -----------------------------------------------------------------------------------
def findscu(port: int, tmp: Path, *keys: str | bytes) -> tuple[bytes, list[Dataset]]:
    """Raw log bytes (findscu prints values as received) and the responses it extracted."""
    out = Path(tmp) / f"rsp-{time.monotonic_ns()}"
    out.mkdir()
    args: list[str | bytes] = [dcmtk("findscu"), "-v", "-S", "-aec", "IHE_ARCHIVE", "+sr", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    p = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, env=DCMTK_ENV, timeout=60)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    log = p.stdout + p.stderr
    assert b"Received Final Find Response (Success)" in log, log.decode("utf-8", "replace")
    return log, [dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]


def printed(log: bytes, tag: bytes) -> list[bytes]:
    """Values findscu printed for a tag in the responses (the request is printed first)."""
    rsp_part = log.split(b"Find Response:", 1)[1] if b"Find Response:" in log else b""
    return [m.rstrip(b" =") for m in re.findall(rb"\(" + tag + rb"\) \w\w \[(.*?)\] *#", rsp_part)]


@pytest.mark.parametrize("name", sorted(FILES))
def test_findscu_utf8_query(srv, tmp_path, name):
    pid, charset, pn = FILES[name]
    log, rsps = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                        b"PatientName=" + pn.encode(), "PatientID", "StudyInstanceUID")
    assert [r.PatientID for r in rsps] == [pid]
    assert str(rsps[0].PatientName) == pn and charset_str(rsps[0].SpecificCharacterSet) == charset
    assert printed(log, b"0010,0010") == [raw_name(CHARSET / name)]
    assert printed(log, b"0008,0005") == [charset.encode()]


@pytest.mark.parametrize("name", sorted(FILES))
def test_findscu_query_in_the_files_own_charset(srv, tmp_path, name):
    pid, charset, pn = FILES[name]
    raw = raw_name(CHARSET / name)
    log, rsps = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", b"SpecificCharacterSet=" + charset.encode(),
                        b"PatientName=" + raw, "PatientID", "StudyInstanceUID")
    assert [r.PatientID for r in rsps] == [pid]
    assert str(rsps[0].PatientName) == pn
    assert printed(log, b"0010,0010") == [raw]


def test_findscu_ideographic_wildcard(srv, tmp_path):
    log, rsps = findscu(srv.port, tmp_path, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                        "PatientName=山田*", "PatientID")
    assert sorted(r.PatientID for r in rsps) == ["H31EXAMPLE", "H32EXAMPLE"]
    assert sorted(printed(log, b"0010,0010")) == sorted([raw_name(CHARSET / "SCSH31"), raw_name(CHARSET / "SCSH32")])
