"""Key Image Notes (RAD-29): the one KOS builder, `ihe kin create|show`, validated by dciodvfy and
read back by DCMTK (dsrdump, dsr2xml), pydicom and highdicom; sent to a DCMTK storescp and to the
archive's DICOM server, found again with DCMTK findscu and moved with movescu."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree
from pydicom import dcmread

from helpers import DATA, make_corpus, run_cli, run_dcmtk
from ihecli.kos import codes

KOS_DATA = DATA / "kos"


def dciodvfy(path: Path) -> list[str]:
    """The error lines of dicom3tools' IOD validator (Debian package dicom3tools)."""
    tool = Path("/usr/bin/dciodvfy")
    assert tool.exists(), "dciodvfy is missing: make test installs the Debian package dicom3tools"
    p = subprocess.run([str(tool), str(path)], capture_output=True, text=True, timeout=60, errors="replace")
    lines = (p.stdout + p.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("E:") or "Error" in ln]


def dsr2xml(path: Path):
    """DCMTK's reading of a structured document, as XML."""
    p = run_dcmtk("dsr2xml", str(path))
    return etree.fromstring(p.stdout.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True,
                                                                       load_dtd=False))


def corpus_info(paths: list[Path]) -> list:
    return [dcmread(p, stop_before_pixels=True) for p in paths]


def db_args(archive) -> list[str]:
    return ["--db", archive.db_url, "--storage", str(archive.blobs.root)]


@pytest.fixture
def study(tmp_path, archive):
    """One study of 2 series x 2 CT images, in the archive; (files, datasets)."""
    files = make_corpus(tmp_path / "corpus", studies=1, series=2, images=2)
    archive.import_paths(files)
    return files, corpus_info(files)


def _one(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def test_titles_by_name_and_code():
    assert codes.title_code("of-interest") == codes.OF_INTEREST
    assert codes.title_code("113002").meaning == "For Referring Provider"
    assert codes.title_code("For Teaching").value == "113004"
    assert codes.title_code("TCE001").scheme_designator == "IHERADTF"
    assert codes.title_code("DCM:128710").meaning == "For Teaching File Export"
    with pytest.raises(ValueError):
        codes.title_code("999999")
    assert codes.is_rejection_title("113039") and not codes.is_rejection_title("113000")
    assert codes.is_tce_title("TCE002", "IHERADTF") and codes.is_tce_title("128714", "DCM")
    assert not codes.is_tce_title("TCE002", "DCM")


def test_kin_create_validates_and_reads_back(study, archive, tmp_path):
    files, info = study
    a, b = info[0], info[-1]  # two series
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    out = tmp_path / "kin"
    r = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--instance", a.SOPInstanceUID,
                "--instance", b.SOPInstanceUID, "--title", "for-referring-provider",
                "--description", "Fracture of the distal radius", "--observer", "Doe^Jane", "--out", out,
                *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    doc = r.json["documents"][0]
    assert doc["title_code"] == "DCM:113002" and doc["references"] == 2 and doc["series"] == 2
    path = _one(list(out.iterdir()))
    assert dciodvfy(path) == []

    ds = dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and ds.Modality == "KO"
    assert ds.StudyInstanceUID == a.StudyInstanceUID and ds.PatientID == a.PatientID
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113002"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1
    by_series = {s.SeriesInstanceUID: s for s in evidence[0].ReferencedSeriesSequence}
    assert set(by_series) == {a.SeriesInstanceUID, b.SeriesInstanceUID}
    assert {s.RetrieveAETitle for s in by_series.values()} == {archive.aet}
    assert by_series[a.SeriesInstanceUID].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID

    import highdicom as hd

    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    assert {i.referenced_sop_instance_uid for i in kos.content.get_references()} == {a.SOPInstanceUID,
                                                                                     b.SOPInstanceUID}
    assert kos.resolve_reference(b.SOPInstanceUID)[1] == b.SeriesInstanceUID

    dump = run_dcmtk("dsrdump", str(path)).stdout
    assert "For Referring Provider" in dump and "Fracture of the distal radius" in dump and "Doe^Jane" in dump
    xml = dsr2xml(path)
    texts = [t.findtext("value") for t in xml.iter("text")]
    assert "Fracture of the distal radius" in texts
    assert len([e for e in xml.iter("image")]) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_several_titles_each_valid(study, archive, tmp_path):
    files, info = study
    a = info[0]
    for title, code in (("of-interest", "113000"), ("for-teaching", "113004"), ("113003", "113003"),
                        ("quality-issue", "113010"), ("TCE001", "TCE001"), ("128711", "128711")):
        out = tmp_path / title
        r = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--series", a.SeriesInstanceUID, "--title",
                    title, "--out", out, *db_args(archive))
        assert r.code == 0, r.stderr
        path = _one(list(out.iterdir()))
        assert dciodvfy(path) == [], title
        ds = dcmread(path)
        assert ds.ConceptNameCodeSequence[0].CodeValue == code
        refs = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        assert len(refs) == 1 and len(refs[0].ReferencedSOPSequence) == 2  # the whole series


def test_default_title_is_of_interest_and_show_reads_it(study, archive, tmp_path):
    files, info = study
    a = info[0]
    r = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--instance", a.SOPInstanceUID, "--out",
                tmp_path / "k", *db_args(archive))
    assert r.code == 0, r.stderr
    path = _one(list((tmp_path / "k").iterdir()))
    r = run_cli("kin", "show", path, "--json")
    assert r.code == 0, r.stderr
    doc = r.json[0]
    assert doc["title_code"] == "DCM:113000" and doc["series"][0]["instances"] == [a.SOPInstanceUID]
    assert doc["series"][0]["retrieve_aet"] == archive.aet


def test_show_reads_real_manifests():
    r = run_cli("kin", "show", KOS_DATA / "IDS-DEPT002-a-kos.dcm", KOS_DATA / "IDS-DEPT022-a-kos.dcm", "--json")
    assert r.code == 0, r.stderr
    big, small = r.json
    assert big["title_code"] == "DCM:113030" and big["references"] == 36
    assert small["series"][0]["retrieve_aet"] == "DCM4CHEE" and small["patient_id"] == "IDS-DEPT022-a"


def test_show_refuses_what_is_not_kos(tmp_path):
    r = run_cli("kin", "show", KOS_DATA / "IDS-DEPT022-a-us.dcm")
    assert r.code == 1 and "not a Key Object Selection Document" in r.stderr and len(r.stderr.splitlines()) == 1
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 10 + b"not dicom at all")
    r = run_cli("kin", "show", junk)
    assert r.code == 1 and r.stderr.strip() == f"ihe: error: {junk}: not a DICOM file"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_send_to_dcmtk_storescp(study, archive, storescp):
    node, folder = storescp
    files, info = study
    a = info[1]
    r = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--instance", a.SOPInstanceUID, "--title",
                "for-surgery", "--description", "Left knee", "--to", f"{node.aet}@127.0.0.1:{node.port}",
                *db_args(archive))
    assert r.code == 0, r.stderr
    received = list(folder.iterdir())
    assert len(received) == 1
    ds = dcmread(received[0])
    assert ds.SOPInstanceUID == r.stdout.strip()
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "For Surgery"
    assert dciodvfy(received[0]) == []


def test_from_files_without_the_archive(tmp_path):
    files = make_corpus(tmp_path / "files", studies=1, series=1, images=3)
    info = corpus_info(files)
    r = run_cli("kin", "create", "--study", info[0].StudyInstanceUID, "--instance", info[0].SOPInstanceUID,
                "--instance", info[2].SOPInstanceUID, "--from-files", tmp_path / "files", "--retrieve-aet",
                "MODALITY", "--out", tmp_path / "k", "--json")
    assert r.code == 0, r.stderr
    ds = dcmread(_one(list((tmp_path / "k").iterdir())))
    series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert series.RetrieveAETitle == "MODALITY" and len(series.ReferencedSOPSequence) == 2


def test_store_find_and_move_round_trip(server, storescp, tmp_path):
    """Sent to the archive's server, found by findscu at image level with the title, moved by movescu."""
    archive = server.archive
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=2)
    archive.import_paths(files)
    a = corpus_info(files)[0]
    r = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--instance", a.SOPInstanceUID, "--title",
                "for-teaching", "--description", "Classic case", "--to", server.spec, *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    kos_uid = r.json["documents"][0]["sop_instance_uid"]
    kos_series = r.json["documents"][0]["series_instance_uid"]
    p = run_dcmtk("findscu", "-S", "-aec", server.aet, "127.0.0.1", str(server.port),
                  "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={a.StudyInstanceUID}",
                  "-k", f"SeriesInstanceUID={kos_series}", "-k", "SOPInstanceUID",
                  "-k", "ConceptNameCodeSequence[0].CodeValue", "-k", "ConceptNameCodeSequence[0].CodeMeaning")
    out = p.stdout + p.stderr
    assert kos_uid in out and "113004" in out and "For Teaching" in out
    # matching on the title: a second note titled otherwise, in the same series level query, is left out
    r2 = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--instance", a.SOPInstanceUID, "--to",
                 server.spec, *db_args(archive), "--json")
    assert r2.code == 0, r2.stderr
    other_uid = r2.json["documents"][0]["sop_instance_uid"]
    for value, present, absent in (("113004", kos_uid, other_uid), ("113000", other_uid, kos_uid)):
        p = run_dcmtk("findscu", "-S", "-aec", server.aet, "127.0.0.1", str(server.port),
                      "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={a.StudyInstanceUID}",
                      "-k", "SeriesInstanceUID", "-k", "SOPInstanceUID", "-k", "Modality=KO",
                      "-k", f"ConceptNameCodeSequence[0].CodeValue={value}")
        found = p.stdout + p.stderr
        assert present in found and absent not in found, value
    dest, folder = storescp
    run_dcmtk("movescu", "-S", "-aec", server.aet, "-aem", dest.aet, "127.0.0.1", str(server.port),
              "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={a.StudyInstanceUID}",
              "-k", f"SeriesInstanceUID={kos_series}", "-k", f"SOPInstanceUID={kos_uid}")
    moved = [dcmread(f) for f in folder.iterdir()]
    assert [m.SOPInstanceUID for m in moved] == [kos_uid]
    assert moved[0].ContentSequence[-1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID


# -- bad input: one line, the right code, nothing sent -----------------------------------------------

@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input_sends_nothing(study, archive, storescp, tmp_path):
    node, folder = storescp
    to = ["--to", f"{node.aet}@127.0.0.1:{node.port}"]
    files, info = study
    a = info[0]
    other = corpus_info(make_corpus(tmp_path / "other", studies=1, series=1, images=1))[0]
    archive.import_paths([tmp_path / "other"])
    base = ["kin", "create", "--study", a.StudyInstanceUID, *to, *db_args(archive)]
    cases = [
        ([*base, "--instance", a.SOPInstanceUID, "--title", "999999"], 2, "unknown Key Object Selection title"),
        ([*base, "--instance", a.SOPInstanceUID, "--title", "113001"], 2, "ihe iocm reject"),
        ([*base], 2, "select key images"),
        ([*base, "--instance", other.SOPInstanceUID], 1, f"belongs to study {other.StudyInstanceUID}"),
        ([*base, "--instance", "1.2.3.999"], 1, "unknown reference 1.2.3.999"),
        ([*base, "--series", "1.2.3.998"], 1, "unknown reference 1.2.3.998"),
        (["kin", "create", "--instance", a.SOPInstanceUID, *to], 2, "--study"),
        ([*base, "--instance", a.SOPInstanceUID, "--store"], 2, "exactly one of"),
    ]
    for args, code, words in cases:
        r = run_cli(*args)
        assert r.code == code, (args, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(folder.iterdir()) == []
    r = run_cli(*base, "--instance", a.SOPInstanceUID, "--instance", "1.2.3.999", "--allow-missing", "--json")
    assert r.code == 0, r.stderr
    assert r.json["documents"][0]["references"] == 1 and "1.2.3.999" in r.stderr
    assert len(list(folder.iterdir())) == 1


def test_dciodvfy_finds_errors():
    """The validator the tests rely on does report errors (a real manifest with an invalid Study Time)."""
    tmp = KOS_DATA / "IDS-DEPT022-a-kos.dcm"
    assert dciodvfy(tmp), "dciodvfy reported nothing for a manifest known to have errors"


def test_builder_identical_documents_and_retrieve_location(tmp_path):
    """What the XDS-I manifest will use: Retrieve Location UID, Identical Documents; one study only."""
    from ihecli.errors import IheError, UsageError
    from ihecli.kos.builder import build_kos, encode

    info = corpus_info(make_corpus(tmp_path / "c", studies=2, series=1, images=2))
    one_study = [d for d in info if d.StudyInstanceUID == info[0].StudyInstanceUID]
    ds = build_kos(codes.MANIFEST, one_study, retrieve_aet="IHE_ARCHIVE", retrieve_location_uid="1.2.3.4.5.6",
                   identical_documents=[(one_study[0].StudyInstanceUID, "1.2.3.4.5.7", "1.2.3.4.5.8")])
    path = tmp_path / "m.dcm"
    path.write_bytes(encode(ds))
    assert dciodvfy(path) == []
    back = dcmread(path)
    series = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert (series.RetrieveAETitle, series.RetrieveLocationUID) == ("IHE_ARCHIVE", "1.2.3.4.5.6")
    same = back.IdenticalDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert same.ReferencedSOPInstanceUID == "1.2.3.4.5.8"
    # from references alone (what a manifest reader gives): the patient and study from a header
    from ihecli.kos.builder import evidence_dataset, read_kos

    refs = read_kos(back).references
    again = build_kos(codes.MANIFEST, [evidence_dataset(r, one_study[0]) for r in refs])
    assert [(r.sop_uid, r.retrieve_aet, r.value_type) for r in read_kos(again).references] == \
           [(r.sop_uid, r.retrieve_aet, "IMAGE") for r in refs]
    assert again.PatientID == one_study[0].PatientID
    with pytest.raises(IheError, match="spans 2 studies"):
        build_kos(codes.OF_INTEREST, info)
    with pytest.raises(UsageError, match="nothing selected"):
        build_kos(codes.OF_INTEREST, [])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sending_is_audited(study, archive, storescp, tmp_path):
    """A key object sent to a node is reported to the profile's Audit Record Repository (syslog/UDP)."""
    import socket

    from ihecli import atna

    node, folder = storescp
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    (tmp_path / "config.toml").write_text(f'[audit]\nrepository = "udp://127.0.0.1:{sock.getsockname()[1]}"\n')
    files, info = study
    a = info[0]
    try:
        r = run_cli("kin", "create", "--study", a.StudyInstanceUID, "--instance", a.SOPInstanceUID,
                    "--to", f"{node.aet}@127.0.0.1:{node.port}", *db_args(archive))
        assert r.code == 0, r.stderr
        assert atna.flush(10)
        message = sock.recv(65536).decode("utf-8", "replace")
    finally:
        atna.configure(None)
        sock.close()
    assert "110104" in message and a.StudyInstanceUID in message and node.aet in message


def test_reader_survives_damaged_manifests():
    """Truncated and bit-flipped manifests: a clear IheError, never another exception."""
    import random

    from ihecli.errors import IheError
    from ihecli.kos.document import load, read_kos

    data = (KOS_DATA / "IDS-DEPT002-a-kos.dcm").read_bytes()
    assert len(read_kos(load(data)).references) == 36
    rnd = random.Random(7)
    damaged = [data[:cut] for cut in range(132, len(data), 97)]
    for _ in range(150):
        b = bytearray(data)
        for _ in range(4):
            b[rnd.randrange(132, len(b))] = rnd.randrange(256)
        damaged.append(bytes(b))
    errors = 0
    for d in damaged:
        try:
            read_kos(load(d))
        except IheError:
            errors += 1
    assert errors > 0  # damage was noticed; nothing else escaped


def test_non_ascii_names_and_text(tmp_path):
    """A Japanese patient name and a German/Japanese description: the note is UTF-8, valid, readable."""
    src = DATA / "charset" / "SCSH31"
    img = dcmread(src, stop_before_pixels=True)
    text = "Überprüfung – 確認"
    r = run_cli("kin", "create", "--study", img.StudyInstanceUID, "--instance", img.SOPInstanceUID, "--from-files",
                src, "--description", text, "--observer", "Müller^Jürgen", "--out", tmp_path / "k")
    assert r.code == 0, r.stderr
    path = _one(list((tmp_path / "k").iterdir()))
    assert dciodvfy(path) == []
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == str(img.PatientName)
    r = run_cli("kin", "show", path, "--json")
    assert r.json[0]["description"] == text and r.json[0]["observers"] == ["Müller^Jürgen"]
    assert text in run_dcmtk("dsrdump", "+U8", str(path)).stdout


def test_out_that_cannot_be_written_is_one_line_and_leaves_no_file_cut_short(tmp_path):
    """--out on a disk that cannot take the note (a file size limit here, as a full or
    read-only disk would): one line naming the folder and the cause, exit 1, nothing left."""
    import os
    import resource
    import subprocess
    import sys

    files = make_corpus(tmp_path / "c", studies=1, series=1, images=1)
    ds = dcmread(files[0], stop_before_pixels=True)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (500, 500))

    out = tmp_path / "kin"
    p = subprocess.run([sys.executable, "-m", "ihecli", "kin", "create", "--study", str(ds.StudyInstanceUID),
                        "--instance", str(ds.SOPInstanceUID), "--from-files", str(files[0]), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, preexec_fn=small_files, env=dict(os.environ))
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == f"ihe: error: cannot write to {out}: File too large", p.stderr
    assert list(out.iterdir()) == []
