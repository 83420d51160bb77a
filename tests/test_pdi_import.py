"""`ihe pdi import`: media written by others (dicom3tools, DCMTK, pydicom), lower-case names, no DICOMDIR,
dangling references, hostile File IDs, ISO and zip sources, reconciliation, UID collisions, C-STORE."""
from __future__ import annotations

import os
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from helpers import make_corpus, run_cli, run_dcmtk
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from pdi_helpers import CHARSET_DATA, PDI_DATA

CHARSET_NAMES = ["SCSARAB", "SCSFREN", "SCSGERM", "SCSGREEK", "SCSH31", "SCSH32", "SCSHBRW", "SCSI2", "SCSRUSS",
                 "SCSX1", "SCSX2"]


def charset_medium(dst: Path) -> Path:
    """The dicom3tools-written DICOMDIR with its 11 images, as on the original medium."""
    dst.mkdir(parents=True)
    shutil.copy(PDI_DATA / "charset-media" / "DICOMDIR", dst / "DICOMDIR")
    for n in CHARSET_NAMES:
        src = PDI_DATA / "charset-media" / n
        shutil.copy(src if src.exists() else CHARSET_DATA / n, dst / n)
    return dst


def imp(tmp_path, *args, db: str | None = None):
    db = db or f"sqlite:///{tmp_path / 'arc.db'}"
    return run_cli("pdi", "import", *args, "--db", db, "--storage", tmp_path / "storage", "--json")


def archive_of(tmp_path, db: str | None = None) -> Archive:
    return Archive(db or f"sqlite:///{tmp_path / 'arc.db'}", tmp_path / "storage")


def patients(a: Archive) -> dict[str, str]:
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = ""
    ident.PatientName = ""
    return {str(r.PatientID): str(r.PatientName) for r in a.find(ident, "patient")}


def test_dicom3tools_media_with_non_ascii_names(tmp_path, db_url):
    medium = charset_medium(tmp_path / "cd")
    r = imp(tmp_path, medium, db=db_url)
    assert r.code == 0, r.stderr
    rep = r.json
    assert rep["counts"]["stored"] == 11 and rep["dicomdirs"] == ["DICOMDIR"]
    assert all(o["outcome"] == "stored" for o in rep["objects"])
    with archive_of(tmp_path, db_url) as a:
        names = patients(a)
    assert names["SCSHBRW"] == "שרון^דבורה" and names["SCSRUSS"] == "Люкceмбypг"
    assert names["H31EXAMPLE"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_lower_case_names_and_backslashes(tmp_path):
    """A medium copied by a tool that lower-cased every name: File IDs still resolve."""
    medium = charset_medium(tmp_path / "cd")
    for p in list(medium.iterdir()):
        p.rename(p.with_name(p.name.lower()))
    r = imp(tmp_path, medium)
    assert r.code == 0, r.stderr
    assert r.json["counts"] == {"stored": 11, "files_skipped": 0} and r.json["dicomdirs"] == ["dicomdir"]


def test_dcmtk_and_pydicom_dicomdirs(tmp_path):
    """pydicom's dicomdirtests: a DCMTK DICOMDIR (files in numeric folders), a pydicom one in a sub-folder,
    and copies of DICOMDIRs under other names (directories, not objects: skipped and said so)."""
    src = Path(get_testdata_file("DICOMDIR")).parent
    r = imp(tmp_path, src)
    assert r.code == 0, r.stderr
    rep = r.json
    assert rep["dicomdirs"] == ["DICOMDIR", "TINY_ALPHA/DICOMDIR"]
    assert rep["counts"]["stored"] == 31 + 50
    skipped = dict(rep["skipped_files"])
    assert "DICOMDIR" in skipped["DICOMDIR-reordered"] and "not DICOM" in skipped["TINY_ALPHA/README"]
    assert not [o for o in rep["objects"] if o["outcome"] != "stored"]


def test_dangling_references_are_reported(tmp_path):
    medium = tmp_path / "cd"
    medium.mkdir()
    shutil.copy(PDI_DATA / "dicomdir-dangling" / "DICOMDIR", medium / "DICOMDIR")
    r = imp(tmp_path, medium)
    assert r.code == 1  # nothing could be imported
    rep = r.json
    assert rep["counts"]["dangling"] == 20 and rep["fileset_id"] == "RLE_COMPRESSION"
    o = rep["objects"][0]
    assert o["path"] == "IMAGES/RLE/SC1_RLE" and o["outcome"] == "dangling" and o["patient_id"]
    # the human summary says it too, on stderr
    r = run_cli("pdi", "import", medium, "--db", f"sqlite:///{tmp_path / 'arc.db'}", "--storage", tmp_path / "s")
    assert r.code == 1 and "IMAGES/RLE/SC1_RLE" in r.stdout and "20 missing from the medium" in " ".join(r.stderr.split())


def test_no_dicomdir_no_meta_viewer_folders_and_other_files(tmp_path):
    medium = tmp_path / "stick"
    (medium / "IHE_PDI").mkdir(parents=True)
    (medium / "Some Folder" / "deeper").mkdir(parents=True)
    bare = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # a dataset without preamble and meta
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(fp, bare)
    (medium / "Some Folder" / "deeper" / "image1").write_bytes(fp.getvalue())
    shutil.copy(get_testdata_file("CT_small.dcm"), medium / "Some Folder" / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), medium / "IHE_PDI" / "MR.DCM")  # in the web folder: skipped
    (medium / "README.TXT").write_text("hello")
    (medium / "Some Folder" / "notes.bin").write_bytes(os.urandom(300))
    (medium / "AUTORUN.INF").write_text("[autorun]\nopen=viewer.exe\n")
    r = imp(tmp_path, medium)
    assert r.code == 0, r.stderr
    rep = r.json
    assert rep["dicomdirs"] == [] and rep["counts"]["stored"] == 2
    skipped = dict(rep["skipped_files"])
    assert skipped["IHE_PDI/"].startswith("viewer or web content folder")
    assert skipped["Some Folder/notes.bin"] == "not DICOM" and "AUTORUN.INF" in skipped and "README.TXT" in skipped
    with archive_of(tmp_path) as a:
        assert a.counts()["instances"] == 2


def test_hostile_file_ids_and_links_are_refused(tmp_path):
    """File IDs with .. and absolute paths, and a link to a file outside the medium, all naming a real
    DICOM file outside the medium: refused and reported; that file is never read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    secret.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    secret.save_as(outside / "SECRET")
    medium = charset_medium(tmp_path / "media" / "cd")
    os.symlink(outside / "SECRET", medium / "LINK")
    dd = pydicom.dcmread(medium / "DICOMDIR")
    refs = [rec for rec in dd.DirectoryRecordSequence if "ReferencedFileID" in rec]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refs[0].ReferencedFileID = ["..", "..", "outside", "SECRET"]
        refs[1].ReferencedFileID = str(outside / "SECRET").replace("/", "\\")  # absolute
        refs[2].ReferencedFileID = "LINK"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid values we write on purpose
        dd.save_as(medium / "DICOMDIR")
    r = imp(tmp_path, medium)
    assert r.code == 3, r.stderr  # partial success
    rep = r.json
    refused = [o for o in rep["objects"] if o["outcome"] == "refused"]
    assert len(refused) == 3
    # the three images no longer referenced are still found, by scanning
    assert rep["counts"]["stored"] == 11
    assert len([o for o in rep["objects"] if o["reason"] == "not in the DICOMDIR"]) == 3
    assert ["LINK", "a link pointing outside the medium"] in rep["skipped_files"]
    with archive_of(tmp_path) as a:
        _, sops = a.uid_owners((), ["1.2.3.4.5.6.7.8.9"])
        assert sops == {}


def test_corrupt_iso_and_corrupt_dicomdir(tmp_path):
    bad = tmp_path / "bad.iso"
    bad.write_bytes(b"\x00" * 40000 + os.urandom(10000))
    r = imp(tmp_path, bad)
    assert r.code == 2 and "neither an ISO 9660 image nor a zip file, not a medium" in r.stderr and r.stdout == ""
    # an image cut short after its first volume descriptor
    assert run_cli("pdi", "burn", PDI_DATA / "sample-pdf.dcm", "--iso", tmp_path / "whole.iso", "--no-web").code == 0
    bad.write_bytes((tmp_path / "whole.iso").read_bytes()[:0x8800])
    r = imp(tmp_path, bad)
    assert r.code == 2 and "not a readable ISO 9660 image" in r.stderr and r.stdout == ""
    # one DICOM file is not a medium: said so (was 'not a readable ISO 9660 image: ... at least one PVD')
    r = imp(tmp_path, PDI_DATA / "sample-pdf.dcm")
    assert r.code == 2 and "sample-pdf.dcm: a DICOM file, not a medium" in r.stderr and "ihe archive import" in r.stderr
    medium = charset_medium(tmp_path / "cd")
    data = (medium / "DICOMDIR").read_bytes()
    (medium / "DICOMDIR").write_bytes(data[:132] + os.urandom(400))  # the preamble survives, the rest is garbage
    r = imp(tmp_path, medium)
    assert r.code == 0, r.stderr
    assert r.json["counts"]["stored"] == 11
    assert any("unreadable DICOMDIR" in n and "scanned" in n for n in r.json["notes"])


def test_iso_and_zip_are_read_directly(tmp_path):
    files = make_corpus(tmp_path / "corpus", studies=1, series=2, images=2)
    iso = tmp_path / "m.iso"
    assert run_cli("pdi", "burn", *files, "--iso", iso).code == 0
    r = imp(tmp_path, iso)
    assert r.code == 0, r.stderr
    assert r.json["kind"] == "iso" and r.json["counts"]["stored"] == 4
    assert dict(r.json["skipped_files"])["IHE_PDI/"].startswith("viewer")
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for k, f in enumerate(files):
            zf.write(f, f"export/img{k}")
        zf.writestr("../evil", b"DICM")
    r = imp(tmp_path, z)
    assert r.code == 0, r.stderr
    assert r.json["kind"] == "zip" and r.json["counts"]["duplicate"] == 4
    assert ["../evil", "a path leaving the medium"] in r.json["skipped_files"]


def test_reconcile_to_a_local_patient_id_then_findscu(tmp_path):
    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=3)
    medium = tmp_path / "cd"
    assert run_cli("pdi", "burn", *files, "--usb", medium, "--no-web").code == 0
    r = imp(tmp_path, medium, "--patient-id", "LOCAL7", "--issuer", "HOSP", "--patient-name", "LOCAL^PATIENT",
            "--accession", "ACC77")
    assert r.code == 0, r.stderr
    assert r.json["reconciled"][0]["from"]["PatientID"] == "PID000000"
    with archive_of(tmp_path) as a:
        refs = a.instances(_ident(PatientID="LOCAL7"))
        assert len(refs) == 3
        ds = pydicom.dcmread(a.file_path(refs[0]))
        # UIDs kept (no collision), originals kept
        assert ds.SOPInstanceUID in {pydicom.dcmread(f).SOPInstanceUID for f in files}
        assert ds.PatientID == "LOCAL7" and ds.IssuerOfPatientID == "HOSP" and ds.PatientName == "LOCAL^PATIENT"
        assert ds.AccessionNumber == "ACC77"
        mod = ds.OriginalAttributesSequence[0]
        assert mod.ReasonForTheAttributeModification == "COERCE" and mod.ModifyingSystem
        old = mod.ModifiedAttributesSequence[0]
        assert old.PatientID == "PID000000" and old.PatientName == "TEST^PATIENT000000" and old.AccessionNumber == "ACC000000"
        assert "PID000000" in [x.PatientID for x in ds.OtherPatientIDsSequence]  # after the source's own
        server = DicomServer(a, aet="IHE_ARCHIVE", port=0)
        server.start()
        try:
            out = tmp_path / "rsp"
            out.mkdir()
            run_dcmtk("findscu", "-S", "-aec", "IHE_ARCHIVE", "-X", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                      "-k", "PatientID=LOCAL7", "-k", "AccessionNumber", "-k", "PatientName", "-k", "StudyInstanceUID",
                      "127.0.0.1", str(server.port))
        finally:
            server.stop()
    (rsp,) = [pydicom.dcmread(f) for f in out.glob("rsp*.dcm")]
    assert rsp.AccessionNumber == "ACC77" and rsp.PatientName == "LOCAL^PATIENT"


def _ident(**keys) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE" if "SOPInstanceUID" in keys else "STUDY"
    for k, v in keys.items():
        setattr(ident, k, v)
    return ident


def test_match_local_and_uid_collisions(tmp_path):
    # the local archive knows the patient as LOC1 (same name and birth date) and holds a study whose UID
    # the medium reuses for another patient
    files = make_corpus(tmp_path / "corpus", studies=2, series=1, images=2)
    local = make_corpus(tmp_path / "local", studies=1, series=1, images=1)
    with archive_of(tmp_path) as a:
        ds = pydicom.dcmread(local[0])
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = "LOC1", "TEST^PATIENT000000", "19700101"
        ds.save_as(local[0])
        a.store(local[0].read_bytes())
        clash = pydicom.dcmread(local[0])
        clash.PatientID, clash.PatientName = "SOMEONE", "OTHER^PERSON"
        clash.StudyInstanceUID = pydicom.dcmread(files[2]).StudyInstanceUID  # the medium's second study
        clash.SeriesInstanceUID = pydicom.uid.generate_uid()
        clash.SOPInstanceUID = pydicom.uid.generate_uid()
        clash.file_meta.MediaStorageSOPInstanceUID = clash.SOPInstanceUID
        clash.save_as(tmp_path / "clash.dcm")
        a.store((tmp_path / "clash.dcm").read_bytes())
    medium = tmp_path / "cd"
    medium.mkdir()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = "EXT-9", "TEST^PATIENT000000", "19700101"
        ds.save_as(medium / f"IM{k}")
    # not on a terminal and no --yes: asking is impossible, and nothing is stored
    r = imp(tmp_path, medium, "--match-local")
    assert r.code == 2 and "--yes" in r.stderr
    r = imp(tmp_path, medium, "--match-local", "--yes", "--dry-run")
    assert r.code == 0 and r.json["counts"]["planned"] == 4
    r = imp(tmp_path, medium, "--match-local", "--yes")
    assert r.code == 0, r.stderr
    rep = r.json
    assert rep["reconciled"][0]["to"]["PatientID"] == "LOC1"
    new = [o for o in rep["objects"] if o["new_uids"]]
    assert len(new) == 2  # the two objects of the study whose UID was taken
    clash_uid = pydicom.dcmread(files[2]).StudyInstanceUID
    with archive_of(tmp_path) as a:
        assert a.uid_owners([clash_uid])[0][clash_uid] == ("SOMEONE", "")
        refs = a.instances(_ident(PatientID="LOC1"))
        assert len(refs) == 1 + 4
        moved = [pydicom.dcmread(a.file_path(x)) for x in refs if x.sop_uid == new[0]["sop_uid"]][0]
        assert moved.StudyInstanceUID != clash_uid
        olds = [x for item in moved.OriginalAttributesSequence for x in item.ModifiedAttributesSequence]
        assert any(x.get("StudyInstanceUID") == clash_uid for x in olds)
        assert any(x.get("PatientID") == "EXT-9" for x in olds)
    # two local patients matching equally: --yes cannot choose
    with archive_of(tmp_path) as a:
        ds = pydicom.dcmread(local[0])
        ds.PatientID = "LOC2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        ds.save_as(tmp_path / "twin.dcm")
        a.store((tmp_path / "twin.dcm").read_bytes())
    r = imp(tmp_path, medium, "--match-local", "--yes")
    assert r.code == 1 and "equally well" in r.stderr


def test_send_to_a_node(tmp_path, storescp):
    node, folder = storescp
    to = f"{node.aet}@{node.host}:{node.port}"
    medium = charset_medium(tmp_path / "cd")  # 11 patients: one --patient-id for all of them is a merge
    r = run_cli("pdi", "import", medium, "--to", to, "--patient-id", "P1", "--json")
    assert r.code == 2 and "11 patients" in r.stderr and r.stdout == ""
    assert list(folder.iterdir()) == []
    r = run_cli("pdi", "import", medium, "--to", to, "--json")
    assert r.code == 0, r.stderr
    assert r.json["counts"]["sent"] == 11 and r.json["destination"].startswith("STORESCP")
    got = [pydicom.dcmread(p) for p in folder.iterdir()]
    assert len(got) == 11 and {d.PatientID for d in got} == set(CHARSET_NAMES) - {
        "SCSH31", "SCSH32", "SCSI2", "SCSX1", "SCSX2"} | {"H31EXAMPLE", "H32EXAMPLE", "I2EXAMPLE", "X1EXAMPLE",
                                                         "X2EXAMPLE"}
    for f in folder.iterdir():
        f.unlink()
    one = tmp_path / "one"
    one.mkdir()
    for n in ("SCSGERM", "SCSFREN"):  # two objects of one patient, reconciled on the way
        ds = pydicom.dcmread(medium / n)
        ds.PatientID, ds.PatientName = "THEIRS", "Müller^Hans"
        ds.save_as(one / n)
    r = run_cli("pdi", "import", one, "--to", to, "--patient-id", "P1", "--json")
    assert r.code == 0, r.stderr
    got = [pydicom.dcmread(p) for p in folder.iterdir()]
    assert len(got) == 2 and {d.PatientID for d in got} == {"P1"}
    assert {d.OtherPatientIDsSequence[-1].PatientID for d in got} == {"THEIRS"}


def test_bad_usage(tmp_path):
    r = imp(tmp_path, tmp_path / "nothing-here")
    assert r.code == 2 and "no such file" in r.stderr
    medium = charset_medium(tmp_path / "cd")
    r = imp(tmp_path, medium, "--issuer", "X")
    assert r.code == 2 and "--patient-id" in r.stderr
    r = imp(tmp_path, medium, "--patient-name", "DOE^JANE")  # the option's own name (--name is a hidden alias)
    assert r.code == 2 and "--issuer and --patient-name go with --patient-id" in r.stderr, r.stderr
    r = imp(tmp_path, medium, "--patient-id", "A", "--match-local")
    assert r.code == 2
    r = imp(tmp_path, medium, "--accession", "A1")
    assert r.code == 2 and "one study" in r.stderr


MEMORY_SCRIPT = r"""
import resource, sys
from ihecli.archive import Archive
from ihecli.pdi import burn, import_media, open_medium
from pathlib import Path
files, out = sorted(Path(sys.argv[1]).iterdir()), Path(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
burn(files, iso=out / "big.iso", web=False, media="dvd")
after_burn = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with Archive(f"sqlite:///{out / 'a.db'}", out / "storage") as a, open_medium(out / "big.iso") as m:
    rep = import_media(m, archive=a)
after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(rep.counts["stored"], after_burn - base, after_import - base)
"""


def test_memory_stays_flat(tmp_path):
    """A 120 MB medium of 1 MB objects: burning and importing it grows the process by far less."""
    import subprocess
    import sys

    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base.Rows, base.Columns = 1024, 512
    base.PixelData = np.random.default_rng(1).integers(0, 4000, (1024, 512), dtype=np.uint16).tobytes()
    for k in range(120):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        base.InstanceNumber = k + 1
        base.save_as(src / f"f{k:03d}.dcm")
    p = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(src), str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    stored, burn_kib, import_kib = map(int, p.stdout.split())
    assert stored == 120
    assert burn_kib < 30_000, f"burn grew by {burn_kib} KiB"
    assert import_kib < 40_000, f"import grew by {import_kib} KiB"


def test_real_world_objects_with_bad_values(tmp_path):
    """A KOS whose Study Time is 13:45:00, a multi-frame US, a Latin-2 SR and an encapsulated PDF."""
    medium = tmp_path / "cd"
    medium.mkdir()
    for f in ("xdsi/kos022.dcm", "xdsi/us022.dcm", "MarekLatin2.dcm", "sample-pdf.dcm"):
        shutil.copy(PDI_DATA / f, medium / Path(f).name.upper().replace(".DCM", ""))
    r = imp(tmp_path, medium)
    assert r.code == 0, r.stderr
    assert r.json["counts"]["stored"] == 4
    with archive_of(tmp_path) as a:
        names = patients(a)
    assert names["P22"] == "Testowy^Teste" and "IDS-DEPT022-a" in names


def test_choosing_among_local_patients(tmp_path):
    """On a terminal the user picks; through the API a callback does."""
    from ihecli.pdi import import_media, open_medium

    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=1)
    with archive_of(tmp_path) as a:
        for pid in ("LOCA", "LOCB"):
            ds = pydicom.dcmread(files[0])
            ds.PatientID, ds.PatientBirthDate = pid, "19800101"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(tmp_path / f"{pid}.dcm")
            a.store((tmp_path / f"{pid}.dcm").read_bytes())
        medium = tmp_path / "cd"
        medium.mkdir()
        ds = pydicom.dcmread(files[0])
        ds.PatientID, ds.PatientBirthDate = "THEIRS", "19800101"
        ds.save_as(medium / "IM1")
        asked = []

        def choose(mp, candidates):
            asked.append((mp.patient_id, [c.patient_id for c in candidates]))
            return candidates[1]

        with open_medium(medium) as m:
            rep = import_media(m, archive=a, match=True, choose=choose)
        assert asked == [("THEIRS", ["LOCA", "LOCB"])]
        assert rep.counts["stored"] == 1
        assert len(a.instances(_ident(PatientID="LOCB"))) == 2


def test_dcmtk_dicomdir_on_a_plain_iso9660_image(tmp_path):
    """dcmmkdir's DICOMDIR in an image xorriso wrote without Joliet or Rock Ridge names (NAME.;1)."""
    import subprocess

    stage = tmp_path / "stage"
    (stage / "DICOM").mkdir(parents=True)
    for k, f in enumerate(make_corpus(tmp_path / "corpus", studies=1, series=1, images=3)):
        shutil.copy(f, stage / "DICOM" / f"IM{k:06d}")
    run_dcmtk("dcmmkdir", "+r", "-q", "+id", str(stage), "--output-file", str(stage / "DICOMDIR"))
    iso = tmp_path / "plain.iso"
    p = subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "PLAIN", "-o", str(iso), str(stage)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = imp(tmp_path, iso)
    assert r.code == 0, r.stderr
    assert r.json["counts"] == {"stored": 3, "files_skipped": 0} and r.json["dicomdirs"] == ["DICOMDIR"]
    assert all(o["path"].startswith("DICOM/IM") for o in r.json["objects"])


def test_a_medium_without_dicom(tmp_path):
    medium = tmp_path / "stick"
    medium.mkdir()
    (medium / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0not really")
    r = imp(tmp_path, medium)
    assert r.code == 1 and "no DICOM objects found" in r.stderr
    assert r.json["counts"] == {"files_skipped": 1}


def test_dicomdir_variants_read_alike():
    """pydicom's DICOMDIR variants: big endian, implicit VR, no offsets, records out of order, no
    patient records; every one gives the same 31 file references."""
    from ihecli.pdi.dirread import read_dicomdir

    folder = Path(get_testdata_file("DICOMDIR")).parent
    base = read_dicomdir((folder / "DICOMDIR").read_bytes())
    expected = sorted(("/".join(r.file_id), r.sop_uid) for r in base.references)
    assert len(expected) == 31 and base.order_used == "offsets" and base.fileset_id == "PYDICOM_TEST"
    assert base.references[0].patient_name == "Doe^Archibald" and base.references[0].modality == "CR"
    for name in ("DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-nooffset", "DICOMDIR-reordered",
                 "DICOMDIR-nopatient"):
        d = read_dicomdir((folder / name).read_bytes())
        assert sorted(("/".join(r.file_id), r.sop_uid) for r in d.references) == expected, name
    assert read_dicomdir((folder / "DICOMDIR-nopatient").read_bytes()).order_used == "sequence"


def test_one_study_uid_for_two_patients_over_several_batches(tmp_path):
    """Batches are stored while the next ones are read: a study UID (and a SOP Instance UID) that
    the medium gives to two patients is still told apart, however the objects fall in batches."""
    from ihecli.pdi.importer import BATCH

    n = BATCH + 6
    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=2 * n)
    medium = tmp_path / "cd"
    medium.mkdir()
    same_sop = None
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        who = "A" if k < n else "B"
        ds.PatientID, ds.PatientName = f"PAT-{who}", f"PATIENT^{who}"
        if k == 1:
            same_sop = ds.SOPInstanceUID
        if k == n + 1:  # B's object reuses an instance UID of A's
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = same_sop
        ds.save_as(medium / f"IM{k:04d}")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    r = imp(tmp_path, medium)
    assert r.code == 0, r.stderr
    rep = r.json
    assert rep["counts"]["stored"] == 2 * n
    by_patient: dict[str, set] = {}
    for o in rep["objects"]:
        by_patient.setdefault(o["patient_id"], set()).add(o["study_uid"])
        assert o["new_uids"] == (o["patient_id"] == "PAT-B")
    assert by_patient["PAT-A"] == {study} and len(by_patient["PAT-B"]) == 1 and study not in by_patient["PAT-B"]
    with archive_of(tmp_path) as a:
        assert len(a.instances(_ident(PatientID="PAT-A"))) == n
        refs = a.instances(_ident(PatientID="PAT-B"))
        assert len(refs) == n and {x.study_uid for x in refs} == by_patient["PAT-B"]
        assert str(same_sop) not in {x.sop_uid for x in refs}


def test_new_uids_reach_the_references_to_them(tmp_path):
    """A study whose UID the archive holds for another patient gets new UIDs; a Key Object
    Selection on the medium that selects its images (read before them) and an image that names
    its neighbour (Referenced Image Sequence) name the images' new UIDs, and keep the old
    references in the Original Attributes Sequence."""
    from pydicom.sequence import Sequence

    from ihecli.kos import codes
    from ihecli.kos.builder import build_kos

    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=2)
    images = [pydicom.dcmread(f) for f in files]
    study = str(images[0].StudyInstanceUID)
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = images[0].SOPClassUID, images[0].SOPInstanceUID
    images[1].ReferencedImageSequence = Sequence([ref])
    kos = build_kos(codes.title_code("113000"), images)  # Of Interest
    medium = tmp_path / "cd"
    medium.mkdir()
    kos.save_as(medium / "IM0", enforce_file_format=True)  # met first: its references before the images
    for k, ds in enumerate(images, 1):
        ds.save_as(medium / f"IM{k}")
    with archive_of(tmp_path) as a:  # the archive holds the study UID for someone else
        clash = pydicom.dcmread(files[0])
        clash.PatientID = "SOMEONE"
        clash.SeriesInstanceUID = pydicom.uid.generate_uid()
        clash.SOPInstanceUID = clash.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        clash.save_as(tmp_path / "clash.dcm")
        a.store((tmp_path / "clash.dcm").read_bytes())
    r = imp(tmp_path, medium, "--patient-id", "LOC7")
    assert r.code == 0, r.stderr
    assert r.json["counts"]["stored"] == 3 and all(o["new_uids"] for o in r.json["objects"])
    with archive_of(tmp_path) as a:
        stored = {x.sop_uid: pydicom.dcmread(a.file_path(x)) for x in a.instances(_ident(PatientID="LOC7"))}
    new_kos = next(d for d in stored.values() if d.Modality == "KO")
    new_images = sorted((d for d in stored.values() if d.Modality != "KO"), key=lambda d: d.InstanceNumber)
    assert {str(d.StudyInstanceUID) for d in stored.values()} == {str(new_kos.StudyInstanceUID)} != {study}
    (ev,) = new_kos.CurrentRequestedProcedureEvidenceSequence
    assert ev.StudyInstanceUID == new_kos.StudyInstanceUID
    (se,) = ev.ReferencedSeriesSequence
    assert se.SeriesInstanceUID == new_images[0].SeriesInstanceUID
    assert sorted(x.ReferencedSOPInstanceUID for x in se.ReferencedSOPSequence) == \
        sorted(str(d.SOPInstanceUID) for d in new_images)
    selected = {str(x.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for x in new_kos.ContentSequence
                if "ReferencedSOPSequence" in x}
    assert selected == {str(d.SOPInstanceUID) for d in new_images}
    assert new_images[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_images[0].SOPInstanceUID
    olds = [x for item in new_kos.OriginalAttributesSequence for x in item.ModifiedAttributesSequence]
    old_ev = next(x.CurrentRequestedProcedureEvidenceSequence for x in olds
                  if "CurrentRequestedProcedureEvidenceSequence" in x)
    assert old_ev[0].StudyInstanceUID == study


def _medium_of(folder: Path, datasets: list[Dataset]) -> Path:
    folder.mkdir(parents=True)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"IM{k}", enforce_file_format=True)
    return folder


def test_one_local_patient_for_several_patients_of_the_medium_is_refused(tmp_path):
    """--patient-id, or --match-local finding one local patient for them, would file objects of
    several patients of the medium under one local patient (a merge): a usage error that says how
    many patients the medium holds, and nothing stored. Patients differ by ID, issuer or name; a
    name written in another case or with empty trailing components is the same name."""
    files = make_corpus(tmp_path / "corpus", studies=2, series=1, images=2, patients=2)
    iso = tmp_path / "two.iso"
    assert run_cli("pdi", "burn", *files, "--iso", iso, "--no-web").code == 0
    for extra in ((), ("--dry-run",), ("--issuer", "HOSP", "--accession", "A1")):
        r = imp(tmp_path, iso, "--patient-id", "ONE", *extra)
        assert r.code == 2 and r.stdout == "", r.stderr
        line = " ".join(r.stderr.split())
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert "the medium holds 2 patients" in line and "--patient-id ONE would merge them" in line
        assert "ID PID000000 TEST^PATIENT000000" in line and "ID PID000001 TEST^PATIENT000001" in line
        assert "without --patient-id" in line
    with archive_of(tmp_path) as a:
        assert a.counts()["instances"] == 0
    # one Patient ID, two people (by name), or two issuers: refused too
    base = [pydicom.dcmread(f) for f in files[:2]]
    for k, (second_name, second_issuer, n) in enumerate([("ROE^RICHARD", None, 2), ("TEST^PATIENT000000", "OTHER", 2),
                                                          ("test^patient000000^^", None, 1)]):
        ds = [pydicom.dcmread(f) for f in files[:2]]
        ds[1].PatientName = second_name
        if second_issuer:
            ds[1].IssuerOfPatientID = second_issuer
        medium = _medium_of(tmp_path / f"m{k}", ds)
        r = imp(tmp_path, medium, "--patient-id", "ONE")
        if n == 2:
            assert r.code == 2 and "the medium holds 2 patients" in " ".join(r.stderr.split()), r.stderr
        else:  # the same name: one patient, reconciled and stored
            assert r.code == 0, r.stderr
            assert r.json["counts"]["stored"] == 2 and {o["patient_id"] for o in r.json["objects"]} == {"ONE"}
    with archive_of(tmp_path) as a:
        assert {str(x.sop_uid) for x in a.instances(_ident(PatientID="ONE"))} == {str(d.SOPInstanceUID) for d in base}
    # --match-local: two patients of the medium with the name and birth date of one local patient
    with archive_of(tmp_path) as a:
        loc = pydicom.dcmread(files[2])
        loc.PatientID, loc.PatientName, loc.PatientBirthDate = "LOC1", "DOE^JANE", "19700101"
        a.store(_encode(loc))
        before = a.counts()["instances"]
    ds = [pydicom.dcmread(f) for f in files]
    for d in ds:
        d.PatientName, d.PatientBirthDate = "DOE^JANE", "19700101"
        d.PatientID = "EXT-1" if d.PatientID == "PID000000" else "EXT-2"
    medium = _medium_of(tmp_path / "twins", ds)
    r = imp(tmp_path, medium, "--match-local", "--yes")
    line = " ".join(r.stderr.split())
    assert r.code == 2 and "the medium holds 2 patients" in line and "--match-local would merge them" in line
    assert "local patient LOC1" in line
    with archive_of(tmp_path) as a:
        assert a.counts()["instances"] == before


def _encode(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_importing_a_medium_again_gives_the_same_new_uids(tmp_path):
    """A medium whose UIDs the archive holds for another patient gets new UIDs for the local
    patient; imported again it gets the same ones (derived from the old UID and the local
    patient): nothing is stored twice, references stay consistent, and an instance rejected
    since (IOCM) is refused rather than coming back under a fresh UID."""
    from pydicom.sequence import Sequence

    from ihecli.kos import codes
    from ihecli.kos.builder import build_kos

    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=3)
    images = [pydicom.dcmread(f) for f in files]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = images[0].SOPClassUID, images[0].SOPInstanceUID
    images[1].ReferencedImageSequence = Sequence([ref])
    kos = build_kos(codes.title_code("113000"), images)
    iso = tmp_path / "p0.iso"
    stage = _medium_of(tmp_path / "stage", [kos, *images])
    assert run_cli("pdi", "burn", *sorted(stage.iterdir()), "--iso", iso, "--no-web").code == 0
    r = imp(tmp_path, iso)  # the original UIDs: PID000000's
    assert r.code == 0 and r.json["counts"]["stored"] == 4, r.stderr
    args = ("--patient-id", "LOCAL1", "--issuer", "HOSP", "--accession", "A778", "--yes")
    r = imp(tmp_path, iso, *args)
    assert r.code == 0, r.stderr
    assert r.json["counts"]["stored"] == 4 and all(o["new_uids"] for o in r.json["objects"])
    first = sorted(o["sop_uid"] for o in r.json["objects"])
    assert not set(first) & {str(d.SOPInstanceUID) for d in [kos, *images]}
    assert all(len(u) <= 64 and re.fullmatch(r"2\.25\.[1-9][0-9]*", u) for u in first)
    for _ in range(2):
        second = int(time.time())
        while int(time.time()) == second:  # reconciled in another second: other bytes than the first time
            time.sleep(0.05)
        r = imp(tmp_path, iso, *args)
        assert r.code == 0, r.stderr
        assert r.json["counts"] == {"duplicate": 4, "files_skipped": 2}  # README.TXT, INDEX.HTM
        assert sorted(o["sop_uid"] for o in r.json["objects"]) == first
        # the copies reconciled again differ from the first ones (the time of the change): no
        # warning of a conflict for each, they are simply there
        assert "received again" not in r.stderr and "WARNING" not in r.stderr, r.stderr
    r = run_cli("pdi", "import", iso, *args, "--db", f"sqlite:///{tmp_path / 'arc.db'}", "--storage",
                tmp_path / "storage")
    assert r.code == 0 and "4 objects: 0 stored, 4 already there" in " ".join(r.stderr.split()), r.stderr
    with archive_of(tmp_path) as a:
        stored = {x.sop_uid: pydicom.dcmread(a.file_path(x)) for x in a.instances(_ident(PatientID="LOCAL1"))}
        assert sorted(stored) == first and a.counts()["studies"] == 2
    new_kos = next(d for d in stored.values() if d.Modality == "KO")
    new_images = sorted((d for d in stored.values() if d.Modality != "KO"), key=lambda d: d.InstanceNumber)
    (se,) = new_kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert sorted(x.ReferencedSOPInstanceUID for x in se.ReferencedSOPSequence) == \
        sorted(str(d.SOPInstanceUID) for d in new_images)
    assert new_images[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_images[0].SOPInstanceUID
    # another local patient: other new UIDs
    r = imp(tmp_path, iso, "--patient-id", "LOCAL2", "--yes")
    assert r.code == 0 and r.json["counts"]["stored"] == 4, r.stderr
    assert not {o["sop_uid"] for o in r.json["objects"]} & set(first)
    # an image rejected in the archive stays rejected when the medium comes again
    gone = str(new_images[2].SOPInstanceUID)
    r = run_cli("iocm", "reject", "--reason", "quality", "--instance", gone, "--store", "--yes",
                "--db", f"sqlite:///{tmp_path / 'arc.db'}", "--storage", tmp_path / "storage")
    assert r.code == 0, r.stderr
    r = imp(tmp_path, iso, *args, "--dry-run")
    why = {o["sop_uid"]: o["reason"] for o in r.json["objects"]}
    assert "rejected" in why[gone] and all(why[u] == "already in the archive" for u in first if u != gone)
    # the plan counts them as what storing would come to: exit 3, as the real run
    assert r.code == 3 and r.json["counts"] == {"duplicate": 3, "refused": 1, "files_skipped": 2}
    r = imp(tmp_path, iso, *args)
    assert r.code == 3, r.stderr  # the others are there: partly done
    assert r.json["counts"] == {"duplicate": 3, "refused": 1, "files_skipped": 2}
    (refused,) = [o for o in r.json["objects"] if o["outcome"] == "refused"]
    assert refused["sop_uid"] == gone and "was rejected" in refused["reason"]
    with archive_of(tmp_path) as a:
        assert gone not in {x.sop_uid for x in a.instances(_ident(PatientID="LOCAL1"))}
        assert a.uid_owners((), [gone])[1] == {}


def test_one_object_is_said_in_the_singular(tmp_path):
    """A medium of one object: README.TXT and the import summary say '1 object' (were '1 objects'),
    and a study without a description leaves no gap in README.TXT's contents line."""
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(PDI_DATA / "sample-pdf.dcm")
    del ds.StudyDescription
    ds.save_as(src / "doc.dcm")
    assert run_cli("pdi", "burn", src / "doc.dcm", "--usb", tmp_path / "m", "--no-web").code == 0
    readme = (tmp_path / "m" / "README.TXT").read_text()
    line = next(ln for ln in readme.splitlines() if "(ID " in ln)
    assert line.endswith("[OT], 1 object") and "  [" not in line, line
    r = run_cli("pdi", "import", tmp_path / "m", "--db", f"sqlite:///{tmp_path / 'arc.db'}", "--storage",
                tmp_path / "storage")
    assert r.code == 0 and "1 object: 1 stored," in " ".join(r.stderr.split()), r.stderr


RECONCILE_MEMORY = r"""
import re, sys
from ihecli.cli import main
code = main(sys.argv[1:])
# the peak of this process (ru_maxrss would count the test process it was forked from)
print(code, re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read()).group(1))
"""


def test_reconciling_a_huge_object_copies_its_pixel_data_once(tmp_path):
    """A 250 MB cine loop imported for a local patient: its header is rewritten and its pixel data
    appended as it was read, not decoded and encoded again (the import held four copies of it,
    now two: the object read and the one stored); the stored object is the same but for the
    patient, and keeps the old values."""
    import subprocess
    import sys

    import numpy as np

    ds = pydicom.dcmread(PDI_DATA / "xdsi" / "us022.dcm")
    n, rows, cols = 1000, 500, 500
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ramp = (np.add.outer(np.arange(rows), np.arange(cols)) % 256).astype(np.uint8)
    ds.PixelData = b"".join(np.roll(ramp, k, axis=1).tobytes() for k in range(n))
    medium = tmp_path / "stick"
    medium.mkdir()
    ds.save_as(medium / "CINE")
    pixels_sha = __import__("hashlib").sha256(ds.PixelData).hexdigest()
    del ds
    size_kib = (medium / "CINE").stat().st_size // 1024
    p = subprocess.run([sys.executable, "-c", RECONCILE_MEMORY, "pdi", "import", medium, "--patient-id", "LOC9",
                        "--patient-name", "Ŝtraße^Zoë", "--db", f"sqlite:///{tmp_path / 'arc.db'}", "--storage",
                        tmp_path / "storage"], capture_output=True, text=True, timeout=300)
    code, peak_kib = map(int, p.stdout.split()[-2:])
    assert code == 0, p.stderr
    assert peak_kib < 3 * size_kib, f"{peak_kib} KiB to import a {size_kib} KiB object"
    with archive_of(tmp_path) as a:
        (ref,) = a.instances(_ident(PatientID="LOC9"))
        got = pydicom.dcmread(a.file_path(ref))
    assert got.PatientName == "Ŝtraße^Zoë" and int(got.NumberOfFrames) == n
    assert got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == "IDS-DEPT022-a"
    assert __import__("hashlib").sha256(got.PixelData).hexdigest() == pixels_sha


def test_a_local_name_outside_the_medium_character_set(tmp_path):
    """A medium in Latin-2 (a Polish report) and one without a character set, reconciled to a
    name with letters neither has: the objects move to UTF-8 and keep every other text as it was
    (the name was written with '?' for what the old character set lacks)."""
    medium = tmp_path / "m"
    medium.mkdir()
    shutil.copy(PDI_DATA / "MarekLatin2.dcm", medium / "SR")
    shutil.copy(PDI_DATA / "xdsi" / "us022.dcm", medium / "US")
    for name in ("SR", "US"):
        one = tmp_path / f"only-{name}"
        one.mkdir()
        shutil.copy(medium / name, one / name)
        r = imp(tmp_path, one, "--patient-id", f"L-{name}", "--patient-name", "Ŝtraße^Zoë Łucja")
        assert r.code == 0, r.stderr
        before = pydicom.dcmread(one / name)
        with archive_of(tmp_path) as a:
            (ref,) = a.instances(_ident(PatientID=f"L-{name}"))
            got = pydicom.dcmread(a.file_path(ref))
        assert got.SpecificCharacterSet == "ISO_IR 192" and got.PatientName == "Ŝtraße^Zoë Łucja"
        old = got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        assert old.PatientName == before.PatientName and old.get("SpecificCharacterSet", "") == \
            before.get("SpecificCharacterSet", "")
        kept = _texts(got)
        assert [t for t in _texts(before) if t not in kept] == []  # the old name in Original Attributes
        assert name == "US" or "Oddział" in kept  # the report has Polish letters of its own


def _texts(ds) -> list[str]:
    out = []
    for e in ds:
        if e.VR == "SQ":
            for item in e.value:
                out += _texts(item)
        elif e.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC"):
            out.append(str(e.value))
    return out


def test_an_interrupted_import_says_so_and_resumes(tmp_path):
    """Ctrl-C halfway through an import: one line says what was stored stays and how to finish,
    exit 130; importing the medium again stores the rest and finds the others already there."""
    import signal
    import subprocess
    import sys

    files = make_corpus(tmp_path / "corpus", studies=1, series=1, images=400)
    iso = tmp_path / "cd.iso"
    assert run_cli("pdi", "burn", *files, "--iso", iso, "--no-web", "--media", "dvd").code == 0
    db, storage = f"sqlite:///{tmp_path / 'arc.db'}", tmp_path / "storage"
    p = subprocess.Popen([sys.executable, "-c", "import sys; from ihecli.cli import main; sys.exit(main())",
                          "pdi", "import", str(iso), "--db", db, "--storage", str(storage)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while p.poll() is None and not any(storage.rglob("*.dcm")):  # halfway: some objects stored
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "ihe: error: interrupted: what was stored stays; import the medium again" in " ".join(err.split())
    r = imp(tmp_path, iso)
    assert r.code == 0, r.stderr
    c = r.json["counts"]
    assert c.get("stored", 0) + c.get("duplicate", 0) == 400 and c.get("duplicate", 0) > 0, c
