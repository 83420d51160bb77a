"""TCE Receiver (RAD-53): the archive recognises manifests titled TCE001/2/7/8 (IHERADTF) or
128710/1/3/4 (DCM) when they are stored, groups each with the instances it references, arriving
before or after it (sent here by DCMTK storescu), keeps the key text; `ihe tce ls|show|export`."""
from __future__ import annotations

import json

import pytest
from pydicom import dcmread
from sqlalchemy import delete

from helpers import make_corpus, run_cli, run_dcmtk
from ihecli.archive import tables_kos
from ihecli.kos import codes
from ihecli.kos.builder import build_kos, encode
from test_kin import corpus_info, db_args, dciodvfy

TCE001 = codes.TCE_TITLES["TCE001"]
DELAY = codes.TCE_DELAY_REASONS["TCE011"]


def manifest(tmp_path, info, title=TCE001, name="manifest.dcm", **kw):
    """A TCE manifest (what an Export Manager sends) referencing ``info``, written to a file."""
    kw.setdefault("description", "Classic Colles fracture\nteaching point: dorsal angulation")
    ds = build_kos(title, info, retrieve_aet="EXPORT_MGR", **kw)
    path = tmp_path / name
    path.write_bytes(encode(ds))
    return path, ds


def storescu(server, *paths):
    run_dcmtk("storescu", "-aec", server.aet, "127.0.0.1", str(server.port), *[str(p) for p in paths])


def cases(archive, *extra):
    r = run_cli("tce", "ls", *db_args(archive), *extra, "--json")
    assert r.code == 0, r.stderr
    return r.json


def test_manifest_before_its_instances(server, tmp_path):
    archive = server.archive
    files = make_corpus(tmp_path / "c", studies=1, series=2, images=2)
    info = corpus_info(files)
    path, kos = manifest(tmp_path, info, modifiers=[DELAY], observer="Teach^Ann")
    assert dciodvfy(path) == []
    dump = run_dcmtk("dsrdump", str(path)).stdout
    assert "For Teaching File Export" in dump and "Delay export until final report is available" in dump
    storescu(server, path)
    [case] = cases(archive)
    assert case["manifest_uid"] == kos.SOPInstanceUID
    assert (case["references"], case["received_instances"], case["complete"]) == (4, 0, False)
    assert case["title"] == "For Teaching File Export" and case["title_code"] == "IHERADTF:TCE001"
    assert case["description"].startswith("Classic Colles fracture\nteaching point")
    assert case["delay_reasons"] == ["Delay export until final report is available"]
    assert case["observers"] == ["Teach^Ann"] and case["patient_id"] == info[0].PatientID
    assert [c["case"] for c in cases(archive, "--incomplete")] == [case["case"]]

    storescu(server, *files[:3])
    [case] = cases(archive)
    assert (case["received_instances"], case["missing"], case["complete"]) == (3, 1, False)
    storescu(server, files[3])
    [case] = cases(archive)
    assert case["complete"] and case["received_instances"] == 4
    assert cases(archive, "--incomplete") == []

    r = run_cli("tce", "ls", *db_args(archive))
    assert r.code == 0 and "4/4" in r.stdout and "complete" in r.stdout and "Delay export until final" in r.stdout


def test_instances_before_their_manifest(server, tmp_path):
    archive = server.archive
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=3)
    info = corpus_info(files)
    storescu(server, *files)
    assert cases(archive) == []
    path, kos = manifest(tmp_path, info[:2], title=codes.TCE_TITLES["128711"], description="Trial ABC, visit 2")
    storescu(server, path)
    [case] = cases(archive)
    assert case["complete"] and (case["references"], case["received_instances"]) == (2, 2)
    assert case["title_code"] == "DCM:128711" and case["description"] == "Trial ABC, visit 2"

    r = run_cli("tce", "show", str(case["case"]), *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    assert sorted(i["sop_uid"] for i in r.json["instances"]) == sorted(d.SOPInstanceUID for d in info[:2])
    assert {i["retrieve_aet"] for i in r.json["instances"]} == {"EXPORT_MGR"}


def test_a_rejected_instance_is_no_longer_awaited(archive, tmp_path):
    """One of a case's instances rejected in the archive (IOCM, patient safety) after it came:
    the case is complete, the instance shown as rejected, and the export leaves it out, exit 0."""
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=3)
    info = corpus_info(files)
    path, _kos = manifest(tmp_path, info)
    for f in (path, *files):
        archive.store(f.read_bytes())
    r = run_cli("iocm", "reject", "--reason", "patient-safety", "--instance", info[1].SOPInstanceUID, "--store",
                "--yes", *db_args(archive))
    assert r.code == 0, r.stderr
    (case,) = cases(archive)
    assert (case["received_instances"], case["rejected_instances"], case["missing"], case["complete"]) == (2, 1, 0, True)
    assert cases(archive, "--incomplete") == []
    r = run_cli("tce", "show", "1", *db_args(archive), "--json")
    states = {x["sop_uid"]: x["state"] for x in r.json["instances"]}
    assert states[info[1].SOPInstanceUID].startswith("rejected (") and list(states.values()).count("received") == 2
    r = run_cli("tce", "export", "1", "--out", tmp_path / "case", *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    assert r.json["written"] == 2 and r.json["rejected"] == [info[1].SOPInstanceUID] and r.json["missing"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_only_tce_titles_make_cases(archive, tmp_path):
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=1)
    info = corpus_info(files)
    archive.import_paths(files)
    for i, title in enumerate((codes.OF_INTEREST, codes.MANIFEST, codes.REJECTED_FOR_PATIENT_SAFETY_REASONS,
                               codes.Code("TCE001", "DCM", "wrong scheme"))):
        path, _ = manifest(tmp_path, info, title=title, name=f"k{i}.dcm")
        archive.store(path.read_bytes())
    archive.store((tmp_path / "k0.dcm").read_bytes())  # a duplicate changes nothing
    assert cases(archive) == []
    for i, key in enumerate(("TCE002", "TCE007", "TCE008", "128710", "128713", "128714")):
        path, _ = manifest(tmp_path, info, title=codes.TCE_TITLES[key], name=f"t{i}.dcm")
        archive.store(path.read_bytes())
    got = cases(archive)
    assert [c["title_code"].split(":")[1] for c in got] == ["TCE002", "TCE007", "TCE008", "128710", "128713",
                                                            "128714"]
    assert all(c["complete"] for c in got)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_export_a_case(archive, tmp_path):
    files = make_corpus(tmp_path / "c", studies=1, series=2, images=1)
    info = corpus_info(files)
    path, kos = manifest(tmp_path, info, modifiers=[codes.TCE_DELAY_REASONS["TCE014"]])
    archive.store(path.read_bytes())
    archive.store(files[0].read_bytes())
    out = tmp_path / "case"
    r = run_cli("tce", "export", "1", "--out", out, *db_args(archive))
    assert r.code == 3 and info[1].SOPInstanceUID in r.stderr  # one instance not received yet
    archive.store(files[1].read_bytes())
    r = run_cli("tce", "export", kos.SOPInstanceUID, "--out", out, *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    assert r.json["written"] == 2 and r.json["missing"] == []
    assert dcmread(out / "MANIFEST.dcm").SOPInstanceUID == kos.SOPInstanceUID
    for d in info:
        assert (out / d.StudyInstanceUID / d.SeriesInstanceUID / f"{d.SOPInstanceUID}.dcm").read_bytes() == \
               files[info.index(d)].read_bytes()
    doc = json.loads((out / "case.json").read_text())
    assert doc["delay_reasons"] == ["Delay export until histopathology is available"]
    assert doc["title"] == "For Teaching File Export" and doc["description"].startswith("Classic Colles")
    # an instance whose file is gone from the storage: named, the rest written, exit 3
    archive.blobs.path(archive.blobs.rel_path(str(info[0].SOPInstanceUID))).unlink()
    r = run_cli("tce", "export", "1", "--out", tmp_path / "again", *db_args(archive), "--json")
    assert r.code == 3, r.stderr
    assert r.json["written"] == 1 and r.json["lost"] == [str(info[0].SOPInstanceUID)] and r.json["missing"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_lost_index_row_is_made_again(archive, tmp_path):
    """A manifest whose row is missing (process killed between the two commits) is indexed on listing."""
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=1)
    path, kos = manifest(tmp_path, corpus_info(files))
    archive.store(path.read_bytes())
    with archive.engine.begin() as conn:
        conn.execute(delete(tables_kos.kos_references))
        conn.execute(delete(tables_kos.kos_documents))
    [case] = cases(archive)
    assert case["manifest_uid"] == kos.SOPInstanceUID and case["references"] == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input(archive, tmp_path):
    # a KOS the reader cannot understand is stored (it is valid DICOM) but makes no case
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=1)
    path, kos = manifest(tmp_path, corpus_info(files))
    del kos.ConceptNameCodeSequence
    archive.store(encode(kos))
    assert cases(archive) == []
    for args, code, words in ((["show", "7"], 2, "no TCE case '7'"),
                              (["export", "1.2.3", "--out", str(tmp_path / "x")], 2, "no TCE case")):
        r = run_cli("tce", *args, *db_args(archive))
        assert r.code == code and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists()


def test_real_manifest_is_not_a_tce_case(archive):
    """Real XDS-I manifests (113030) are read and indexed as key objects, not as TCE cases."""
    from test_kin import KOS_DATA

    out = archive.store((KOS_DATA / "IDS-DEPT022-a-kos.dcm").read_bytes())
    archive.store((KOS_DATA / "IDS-DEPT022-a-us.dcm").read_bytes())
    assert out.outcome == "stored"
    from sqlalchemy import select

    with archive.connect() as conn:
        row = conn.execute(select(tables_kos.kos_documents)).one()
    assert (row.title_value, row.tce, row.num_refs, row.patient_id) == ("113030", False, 1, "IDS-DEPT022-a")
    assert cases(archive) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_export_that_cannot_write_is_one_line_and_leaves_no_truncated_file(archive, tmp_path):
    """A case export whose files cannot be written whole (a file size limit here, as a full
    disk would): one line naming the case and the cause, exit 1, no instance file cut short."""
    import os
    import resource
    import subprocess
    import sys

    files = make_corpus(tmp_path / "c", studies=1, series=1, images=2)
    info = corpus_info(files)
    path, _ = manifest(tmp_path, info)
    archive.store(path.read_bytes())
    for f in files:
        archive.store(f.read_bytes())
    limit = files[0].stat().st_size // 2
    assert path.stat().st_size < limit  # the manifest fits, the instances do not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "case"
    p = subprocess.run([sys.executable, "-m", "ihecli", "tce", "export", "1", "--out", str(out),
                        *map(str, db_args(archive))], capture_output=True, text=True, timeout=120,
                       preexec_fn=small_files, env=dict(os.environ))
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith("ihe: error: cannot write case 1 to ") and "File too large" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert [f for f in out.rglob("*") if f.is_file() and f.name != "MANIFEST.dcm"] == []
