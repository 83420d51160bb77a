"""IOCM Change Requester (RAD-66): `ihe iocm reject` builds rejection notes titled exactly
113001/113037/113038/113039 (with the quality reasons as modifiers), shows and asks, then sends
them to a DCMTK storescp or the archive's server, or stores them in the archive."""
from __future__ import annotations

import pytest
from pydicom import dcmread

from helpers import make_corpus, run_cli, run_dcmtk
from ihecli.errors import UsageError
from ihecli.kos import codes, iocm
from ihecli.kos.document import load, read_kos
from test_kin import corpus_info, db_args, dciodvfy


def test_reasons_are_exactly_the_iocm_titles():
    expected = {"quality": "113001", "patient-safety": "113037", "incorrect-mpps": "113038",
                "data-retention": "113039"}
    for word, value in expected.items():
        assert iocm.reason_code(word).value == value
        assert iocm.reason_code(value).value == value
        assert codes.is_rejection_title(value)
    assert iocm.quality_reason_code("motion-blur").value == "111210"
    assert iocm.quality_reason_code("111212").meaning == "Over exposed"
    for bad in ("113000", "sloppy", ""):
        with pytest.raises(UsageError):
            iocm.reason_code(bad)
    with pytest.raises(UsageError):
        iocm.quality_reason_code("111220")  # in CID 7011, not one of the IOCM quality reasons


@pytest.fixture
def corpus(tmp_path, archive):
    """2 studies x 2 series x 2 images, in the archive."""
    files = make_corpus(tmp_path / "corpus", studies=2, series=2, images=2)
    archive.import_paths(files)
    return corpus_info(files)


def _notes(archive) -> list:
    from sqlalchemy import select

    from ihecli.archive import schema as s

    with archive.connect() as conn:
        paths = conn.execute(select(s.instances.c.path)
                             .where(s.instances.c.sop_class == "1.2.840.10008.5.1.4.1.1.88.59")).scalars().all()
    return [archive.file_path(p) for p in paths]


def test_reject_store_into_the_archive(corpus, archive):
    a = corpus[0]
    series = [d for d in corpus if d.SeriesInstanceUID == a.SeriesInstanceUID]
    r = run_cli("iocm", "reject", "--reason", "quality", "--quality-reason", "motion-blur", "--quality-reason",
                "positioning", "--series", a.SeriesInstanceUID, "--store", "--yes", "--description", "Patient moved",
                "--observer", "Tech^Tom", *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    assert sorted(r.json["rejected"]) == sorted(d.SOPInstanceUID for d in series)
    notes = _notes(archive)
    assert len(notes) == 1
    assert dciodvfy(notes[0]) == []
    info = read_kos(load(str(notes[0])))
    assert (info.title.value, info.title.scheme_designator) == ("113001", "DCM") and info.is_rejection
    assert [m.value for m in info.modifiers] == ["111210", "111209"]
    assert info.description == "Patient moved" and info.observers == ["Tech^Tom"]
    assert sorted(r.sop_uid for r in info.references) == sorted(d.SOPInstanceUID for d in series)
    assert {r.retrieve_aet for r in info.references} == {archive.aet}
    assert run_dcmtk("dsrdump", str(notes[0])).stdout.count("Document Title Modifier") == 2
    import highdicom as hd

    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(notes[0]))
    assert sorted(i.referenced_sop_instance_uid for i in kos.content.get_references()) == \
           sorted(d.SOPInstanceUID for d in series)
    assert kos.content[0].name.value == "113001"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_one_note_per_study(corpus, archive):
    studies = sorted({d.StudyInstanceUID for d in corpus})
    r = run_cli("iocm", "reject", "--reason", "data-retention", "--study", studies[0], "--study", studies[1],
                "--store", "--yes", *db_args(archive), "--json")
    assert r.code == 0, r.stderr
    docs = r.json["documents"]
    assert sorted(d["study_instance_uid"] for d in docs) == studies
    assert all(d["title_code"] == "DCM:113039" and d["references"] == 4 for d in docs)


def test_reject_from_files_to_dcmtk_storescp(tmp_path, storescp):
    node, folder = storescp
    files = make_corpus(tmp_path / "f", studies=1, series=1, images=2)
    info = corpus_info(files)
    r = run_cli("iocm", "reject", "--reason", "patient-safety", "--instance", info[1].SOPInstanceUID,
                "--from-files", tmp_path / "f", "--to", f"{node.aet}@127.0.0.1:{node.port}", "--yes")
    assert r.code == 0, r.stderr
    got = list(folder.iterdir())
    assert len(got) == 1 and dciodvfy(got[0]) == []
    ds = dcmread(got[0])
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113037"
    ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [x.ReferencedSOPInstanceUID for x in ref] == [info[1].SOPInstanceUID]


def test_reject_on_the_archive_server_found_by_cfind(server, tmp_path):
    """--to the archive: what is rejected is found there by C-FIND (study, series or instance level)."""
    archive = server.archive
    files = make_corpus(tmp_path / "c", studies=2, series=2, images=2)
    archive.import_paths(files)
    info = corpus_info(files)
    st = info[0].StudyInstanceUID
    of_study = sorted(d.SOPInstanceUID for d in info if d.StudyInstanceUID == st)
    of_series = sorted(d.SOPInstanceUID for d in info if d.SeriesInstanceUID == info[-1].SeriesInstanceUID)
    for args, expected in ((["--study", st], of_study), (["--series", info[-1].SeriesInstanceUID], of_series)):
        r = run_cli("iocm", "reject", "--reason", "incorrect-mpps", *args, "--to", server.spec, "--yes", "--json",
                    "--description", "wrong worklist entry")
        assert r.code == 0, r.stderr
        assert sorted(r.json["rejected"]) == expected
        note_uid = r.json["documents"][0]["sop_instance_uid"]
        note = read_kos(load(str(archive.file_path(_rel_paths(archive, note_uid)[0]))))
        assert note.title.value == "113038" and note.description == "wrong worklist entry"
        assert sorted(x.sop_uid for x in note.references) == expected
        assert {x.retrieve_aet for x in note.references} == {server.aet}


def test_rejected_instance_vanishes_from_findscu(server, tmp_path):
    """The archive (Image Manager) hides what a rejection note sent to it rejects."""
    from ihecli.workflow.service import attach

    archive = server.archive
    attach(archive)  # as `ihe archive serve` does: the archive acts on the rejection notes it stores
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=3)
    archive.import_paths(files)
    info = corpus_info(files)
    victim = info[0]
    r = run_cli("iocm", "reject", "--reason", "quality", "--instance", victim.SOPInstanceUID, "--to", server.spec,
                "--yes", "--json")  # the instance alone: found by a relational C-FIND
    assert r.code == 0, r.stderr
    assert r.json["rejected"] == [victim.SOPInstanceUID]
    p = run_dcmtk("findscu", "-S", "-aec", server.aet, "127.0.0.1", str(server.port), "-k",
                  "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={victim.StudyInstanceUID}",
                  "-k", f"SeriesInstanceUID={victim.SeriesInstanceUID}", "-k", "SOPInstanceUID")
    out = p.stdout + p.stderr
    assert victim.SOPInstanceUID not in out
    assert info[1].SOPInstanceUID in out and info[2].SOPInstanceUID in out


def _rel_paths(archive, sop_uid):
    from sqlalchemy import select

    from ihecli.archive import schema as s

    with archive.connect() as conn:
        return conn.execute(select(s.instances.c.path).where(s.instances.c.sop_uid == sop_uid)).scalars().all()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_shows_and_asks_before_sending(corpus, archive):
    a = corpus[0]
    r = run_cli("iocm", "reject", "--reason", "quality", "--instance", a.SOPInstanceUID, "--store",
                *db_args(archive))
    assert r.code == 2 and "add --yes" in r.stderr
    assert a.SeriesInstanceUID in r.stdout  # the table of what would be rejected
    assert "1 instance in 1 series of 1 study" in r.stderr
    assert _notes(archive) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input_sends_nothing(corpus, archive, storescp):
    node, folder = storescp
    a = corpus[0]
    to = ["--to", f"{node.aet}@127.0.0.1:{node.port}"]
    cases = [
        (["--reason", "sloppy", "--instance", a.SOPInstanceUID, "--store"], 2, "unknown rejection reason"),
        (["--reason", "113000", "--instance", a.SOPInstanceUID, "--store"], 2, "unknown rejection reason"),
        (["--reason", "patient-safety", "--quality-reason", "motion-blur", "--instance", a.SOPInstanceUID,
          "--store"], 2, "--reason quality only"),
        (["--reason", "quality", "--quality-reason", "wobbly", "--instance", a.SOPInstanceUID, "--store"], 2,
         "unknown quality reason"),
        (["--reason", "quality", "--store"], 2, "say what to reject"),
        (["--reason", "quality", "--instance", "1.2.3.999", "--store"], 1, "unknown reference 1.2.3.999: nothing "
         "found for it\n"),
        (["--reason", "quality", "--instance", a.SOPInstanceUID, *to, "--store"], 2, "exactly one of"),
    ]
    for args, code, words in cases:
        r = run_cli("iocm", "reject", *args, "--yes", *db_args(archive))
        assert r.code == code, (args, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _notes(archive) == [] and list(folder.iterdir()) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_second_rejection_leaves_the_first_note_out(corpus, archive):
    st = corpus[0].StudyInstanceUID
    other = next(d for d in corpus if d.StudyInstanceUID == st and d.SeriesInstanceUID != corpus[0].SeriesInstanceUID)
    first = run_cli("iocm", "reject", "--reason", "quality", "--series", corpus[0].SeriesInstanceUID, "--store",
                    "--yes", *db_args(archive), "--json")
    assert first.code == 0, first.stderr
    kin = run_cli("kin", "create", "--study", st, "--instance", other.SOPInstanceUID, "--store",
                  *db_args(archive), "--json")
    assert kin.code == 0, kin.stderr
    second = run_cli("iocm", "reject", "--reason", "data-retention", "--study", st, "--store", "--yes",
                     *db_args(archive), "--json")
    assert second.code == 0, second.stderr
    rejected = set(second.json["rejected"])
    assert first.json["documents"][0]["sop_instance_uid"] not in rejected
    assert kin.json["documents"][0]["sop_instance_uid"] in rejected  # a Key Image Note goes with its study
    # a third time: nothing left, and said so
    third = run_cli("iocm", "reject", "--reason", "quality", "--instance", other.SOPInstanceUID, "--store", "--yes",
                    *db_args(archive))
    assert third.code == 1 and f"{other.SOPInstanceUID} was already rejected (113039" in " ".join(third.stderr.split())
