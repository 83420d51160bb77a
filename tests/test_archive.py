"""The archive's own promises, through its Python API."""
from __future__ import annotations

import sqlite3

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from ihecli.archive import Archive
from ihecli.errors import UsageError


def _q(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_duplicates_keep_and_overwrite(tmp_path, corpus):
    import logging

    said: list[logging.LogRecord] = []  # on the logger itself: the CLI's configuration stops propagation
    hear = logging.Handler(logging.WARNING)
    hear.emit = said.append
    logging.getLogger("ihe.archive").addHandler(hear)
    data = corpus[0].read_bytes()
    with Archive(f"sqlite:///{tmp_path / 'k.db'}", tmp_path / "k") as a:
        assert a.store(data).outcome == "stored"
        assert a.store(data).outcome == "duplicate"  # a resend: nothing to say
        assert said == []
        ds = dcmread(corpus[0])
        ds.StudyDescription = "CHANGED"
        changed = tmp_path / "changed.dcm"
        ds.save_as(changed)
        assert a.store(changed.read_bytes()).outcome == "duplicate"
        # other content under a UID the archive holds: kept out, and the log says so
        assert [f"instance {ds.SOPInstanceUID} received again with other content" in r.getMessage() for r in said] \
            == [True]
        logging.getLogger("ihe.archive").removeHandler(hear)
        (rsp,) = a.find(_q("STUDY", StudyDescription=""))
        assert rsp.StudyDescription != "CHANGED"
        assert a.counts()["instances"] == 1
        assert list(a.blobs.tmp.iterdir()) == []
    with Archive(f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "o", duplicates="overwrite") as a:
        a.store(data)
        assert a.store(changed.read_bytes()).outcome == "overwritten"
        assert a.counts()["instances"] == 1
        (ref,) = a.instances(_q("IMAGE", SOPInstanceUID=str(ds.SOPInstanceUID)))
        assert dcmread(a.file_path(ref)).StudyDescription == "CHANGED"
        assert not a.check().orphan_files


def test_remove_keeps_counters_right(archive, corpus):
    for p in corpus:
        archive.store(p.read_bytes())
    first = dcmread(corpus[0])
    refs = archive.instances(_q("SERIES", SeriesInstanceUID=str(first.SeriesInstanceUID)))
    assert len(refs) == 3
    archive.remove(refs)
    (study,) = archive.find(_q("STUDY", StudyInstanceUID=str(first.StudyInstanceUID),
                               NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances=""))
    assert int(study.NumberOfStudyRelatedSeries) == 1 and int(study.NumberOfStudyRelatedInstances) == 3
    archive.remove(archive.instances(_q("STUDY", StudyInstanceUID=str(first.StudyInstanceUID))))
    assert archive.counts() == {"patients": 1, "studies": 1, "series": 2, "instances": 6}
    for rel in (r.path for r in refs):
        assert not archive.file_path(rel).exists()


def test_retrieve_without_keys_is_refused(archive):
    from ihecli.archive import QueryError

    with pytest.raises(QueryError):
        archive.instances(_q("STUDY", StudyInstanceUID=""))


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    Archive(url, tmp_path / "s").close()
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("update ihe_meta set value = '99' where key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(UsageError, match="newer"):
        Archive(url, tmp_path / "s")


def test_unwritable_database_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="cannot open the archive database"):
        Archive("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path / "s")


def test_headers_are_kept_compressed_and_read_back(archive, corpus):
    from sqlalchemy import select

    from ihecli.archive import schema
    from ihecli.archive.ingest import pack_header, unpack_header

    raw = corpus[0].read_bytes()
    archive.store(raw)
    with archive.connect() as conn:
        blob = conn.execute(select(schema.instances.c.header)).scalar_one()
    header = unpack_header(blob)
    assert len(blob) < len(header) / 2 and header[128:132] == b"DICM" and raw.startswith(header)
    assert unpack_header(header) == header  # an uncompressed header (older archives) reads as is
    assert unpack_header(pack_header(header)) == header
    (rsp,) = archive.find(_q("IMAGE", SOPInstanceUID="", InstitutionName=""))
    assert rsp.InstitutionName == dcmread(corpus[0]).InstitutionName


def test_db_given_as_a_file_path_is_that_sqlite_file(tmp_path, corpus, monkeypatch):
    """`--db ./index.db` as a user types it: the SQLite file at that path, not an error about
    SQLAlchemy URLs; the same file whether given relative or absolute."""
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    r = run_cli("archive", "import", "--db", "index.db", "--storage", "st", str(corpus[0]))
    assert r.code == 0, r.stderr
    assert (tmp_path / "index.db").is_file()
    r = run_cli("archive", "ls", "-L", "instance", "--db", str(tmp_path / "index.db"), "--storage", "st", "--json")
    assert r.code == 0, r.stderr
    assert [i["SOPInstanceUID"] for i in r.json] == [str(dcmread(corpus[0]).SOPInstanceUID)]


def test_a_resend_with_another_file_meta_is_not_other_content(archive, corpus):
    """The same object imported from its file and received over DICOM (the archive writes its
    own file meta header) is a resend: kept without a warning. Another data set under the same
    SOP Instance UID is still named."""
    import io
    import logging

    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("ihe.archive").addHandler(handler)  # the CLI may have stopped propagation
    try:
        original = corpus[0].read_bytes()
        assert archive.store(original).outcome == "stored"
        ds = dcmread(io.BytesIO(original))
        ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
        ds.file_meta.SourceApplicationEntityTitle = "MODALITY"
        resent = io.BytesIO()
        ds.save_as(resent, enforce_file_format=True)
        assert resent.getvalue() != original
        assert archive.store(resent.getvalue()).outcome == "duplicate"
        assert not [m for m in said if "other content" in m]

        ds.PatientName = "SOMEONE^ELSE"
        changed = io.BytesIO()
        ds.save_as(changed, enforce_file_format=True)
        assert archive.store(changed.getvalue()).outcome == "duplicate"
        assert [m for m in said if "received again with other content" in m]
    finally:
        logging.getLogger("ihe.archive").removeHandler(handler)


def test_a_resend_needs_no_room(archive, corpus):
    """A storage folder that cannot take another file (here its temporary folder is a file, as
    good as a full disk for the write): a resend of an instance the archive holds is still
    answered as the duplicate it is (a modality resending after a lost response is not told
    'failed'); a new object and another data set under a kept UID fail with 0xA700."""
    import io
    import shutil

    from ihecli.errors import ArchiveError

    original = corpus[0].read_bytes()
    assert archive.store(original).outcome == "stored"
    tmp = archive.blobs.tmp
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.write_bytes(b"")  # no temporary file can be made
    try:
        ds = dcmread(io.BytesIO(original))
        ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
        resent = io.BytesIO()
        ds.save_as(resent, enforce_file_format=True)
        assert archive.store(resent.getvalue()).outcome == "duplicate"
        assert archive.store(original, expect_sop_uid=str(ds.SOPInstanceUID)).outcome == "duplicate"
        ds.PatientName = "SOMEONE^ELSE"
        changed = io.BytesIO()
        ds.save_as(changed, enforce_file_format=True)
        with pytest.raises(ArchiveError) as e:
            archive.store(changed.getvalue())
        assert e.value.status == 0xA700
    finally:
        tmp.unlink()
        tmp.mkdir()
    assert archive.counts()["instances"] == 1


def test_import_of_many_files_failing_alike_is_one_line_each_reason(tmp_path, corpus):
    """A folder of broken files (or a storage folder that is full) fails every file for one
    reason: one warning for them, not a line per file; --json still lists each; exit 3."""
    from helpers import run_cli

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.dcm").write_bytes(corpus[0].read_bytes())
    head = corpus[0].read_bytes()[:132]
    for i in range(6):
        (folder / f"broken{i}.dcm").write_bytes(head + bytes(range(256)) * 2)
    (folder / "cut.dcm").write_bytes(corpus[1].read_bytes()[:3000])
    args = ("archive", "import", folder, "--db", f"sqlite:///{tmp_path / 'i.db'}", "--storage", tmp_path / "st")
    r = run_cli(*args)
    assert r.code == 3, r.stderr
    warnings = [w for w in r.stderr.split("ihe: warning:")[1:]]
    assert len(warnings) == 2, r.stderr  # the six alike, and the truncated one
    assert "6 files:" in r.stderr and "cut.dcm" in r.stderr
    r = run_cli(*args, "--json")
    assert r.code == 3 and len(r.json["failed"]) == 7
