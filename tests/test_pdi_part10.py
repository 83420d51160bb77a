"""The media code's header walk without pydicom (ihecli.pdi.part10, ihecli.pdi.objects) against
pydicom and against the archive's walk: same elements, same values, same tables; and writing a
medium from files loads neither pydicom nor the archive's database layer."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom import fileset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID

from helpers import make_corpus
from ihecli.archive import ingest, looks_like_dicom as archive_looks_like_dicom
from ihecli.archive import scan
from ihecli.pdi import dicomdir, objects, part10

DATA = Path(__file__).parent / "data"


def _dicom_files() -> list[Path]:
    out = []
    for p in sorted(DATA.rglob("*")):
        if p.is_file() and p.stat().st_size > 132:
            with open(p, "rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                out.append(p)
    return out


FILES = _dicom_files()


def test_there_are_real_objects_to_compare():
    assert len(FILES) >= 15


def test_tables_agree_with_pydicoms_dictionary():
    for tag, (kw, vr) in objects.WANTED.items():
        assert tag_for_keyword(kw) == tag and dictionary_VR(tag) == vr, kw
    for kw, (tag, vr) in dicomdir.RECORD_ELEMENTS.items():
        assert tag_for_keyword(kw) == tag and dictionary_VR(tag) == vr, kw


def test_image_classes_are_image_records_of_storage_classes():
    for uid in objects.IMAGE_CLASSES:
        u = UID(uid)
        assert u.type == "SOP Class" and "Storage" in u.name, uid
        assert fileset._FOUR_LEVEL_SOP_CLASSES.get(uid, "IMAGE") == "IMAGE", uid  # noqa: SLF001
        assert objects.record_type(uid, "CT") == "IMAGE" and objects.is_storage_class(uid)
    # and the others still go by pydicom's tables
    assert objects.record_type("1.2.840.10008.5.1.4.1.1.88.59", "KO") == "KEY OBJECT DOC"
    assert objects.record_type("1.2.840.10008.5.1.4.1.1.11.1", "PR") == "PRESENTATION"
    assert not objects.is_storage_class("1.2.840.10008.1.1")


def test_identity_and_sniffing_are_the_archives():
    assert (part10.IMPLEMENTATION_UID, part10.IMPLEMENTATION_VERSION) == (ingest.IMPLEMENTATION_UID,
                                                                          ingest.IMPLEMENTATION_VERSION)
    for data in (b"", b"\x08\x00\x05\x00CS", b"\x02\x00\x00\x00UL", b"\x10\x00\x10\x00PN", b"\x00" * 128 + b"DICM",
                 b"\x00" * 131, b"\x08\x01\x05\x00CS\x00\x00"):
        assert part10.looks_like_dicom(data) == archive_looks_like_dicom(data), data


def test_file_meta_reads_back():
    uid = part10.new_uid()
    assert uid.startswith("2.25.") and len(uid) <= 64
    ds = pydicom.dcmread(io.BytesIO(part10.file_meta("1.2.840.10008.1.3.10", uid) + b"\x08\x00\x05\x00CS\x00\x00"))
    m = ds.file_meta
    assert m.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10" and m.MediaStorageSOPInstanceUID == uid
    assert m.TransferSyntaxUID == part10.EXPLICIT_LE and m.FileMetaInformationVersion == b"\x00\x01"
    assert m.ImplementationClassUID == ingest.IMPLEMENTATION_UID
    assert m.ImplementationVersionName == ingest.IMPLEMENTATION_VERSION
    assert part10.meta_uids(part10.file_meta("1.2.3", "4.5.6"))[0] == {
        "MediaStorageSOPClassUID": "1.2.3", "MediaStorageSOPInstanceUID": "4.5.6",
        "TransferSyntaxUID": part10.EXPLICIT_LE}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_the_walk_is_the_archives(path):
    """Element by element, the walk finds what the archive's walk finds (or both give up)."""
    data = path.read_bytes()
    meta, pos = part10.meta_uids(data)
    assert scan.meta_uids(data) == (meta, pos)
    implicit = meta.get("TransferSyntaxUID") == part10.IMPLICIT_LE
    while pos + 8 <= len(data):
        try:
            mine = part10.element(data, pos, implicit)
        except part10.Odd:
            with pytest.raises(scan._Odd):  # noqa: SLF001
                scan._element(data, pos, implicit)  # noqa: SLF001
            return
        except part10.Truncated:
            with pytest.raises(scan.Truncated):
                scan._element(data, pos, implicit)  # noqa: SLF001
            return
        assert mine == scan._element(data, pos, implicit)  # noqa: SLF001
        pos = mine[1]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_header_values_agree_with_pydicom(path, monkeypatch):
    """The walk's values are pydicom's, text in other character sets included."""
    data = path.read_bytes()
    try:
        fast = objects.read_values(data)
    except objects.DirectoryFile:
        return
    with monkeypatch.context() as m:
        m.setattr(objects, "_fast_values", lambda data: None)
        slow = objects.read_values(data)
    def every(values):  # the walk leaves out what is absent, pydicom's read says None
        return {kw: values[0].get(kw) for kw in objects.WANTED_KEYWORDS}, values[1]

    assert every(fast) == every(slow)


def test_writing_a_medium_from_files_loads_neither_pydicom_nor_the_archive(tmp_path):
    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=3)
    code = ("import contextlib, io, json, sys\n"
            "from ihecli.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    rc = main(['pdi', 'burn', '--iso', {str(tmp_path / 'x.iso')!r}, '--no-web', '--json', "
            f"{str(files[0].parent)!r}])\n"
            "print(json.dumps([rc, json.loads(out.getvalue())['objects'], sorted({m.split('.')[0] for m in "
            "sys.modules if m.split('.')[0] in ('pydicom', 'pynetdicom', 'sqlalchemy', 'numpy')})]))")
    env = {"IHE_CONFIG": str(tmp_path / "c.toml"), "IHE_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    rc, n, heavy = json.loads(p.stdout.splitlines()[-1])
    assert (rc, n, heavy) == (0, 3, [])
