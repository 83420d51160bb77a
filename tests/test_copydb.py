"""`ihe archive copy-db`: an archive outgrows SQLite and moves to PostgreSQL (and back), with the
index and the actors' state (XDS registry, rejection notes), on a real throw-away PostgreSQL."""
from __future__ import annotations

import json

from pydicom import dcmread

from helpers import make_corpus, run_cli
from ihecli.archive import Archive
from ihecli.xds.server import XdsServer

PID = "PIDC^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
REPO = "1.3.6.1.4.1.21367.2017.2.3.7777"


def _js(r):
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def _query(db: str, storage) -> list[dict]:
    """find-documents for PID through a registry running on ``db``."""
    a = Archive(db, storage)
    try:
        with XdsServer(a, repository_unique_id=REPO) as srv:
            return _js(run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", srv.url, "--json"))
    finally:
        a.close()


def test_sqlite_to_postgresql_and_back(pg_server, tmp_path):
    storage = tmp_path / "st"
    lite = f"sqlite:///{tmp_path / 'index.db'}"
    db = ["--db", lite, "--storage", str(storage)]
    corpus = make_corpus(tmp_path / "corpus")
    assert run_cli("archive", "import", str(tmp_path / "corpus"), *db).code == 0
    rejected = str(dcmread(corpus[0]).SOPInstanceUID)
    assert run_cli("iocm", "reject", "--reason", "quality", "--instance", rejected, "--store", "--yes", *db).code == 0
    a = Archive(lite, storage)
    with XdsServer(a, repository_unique_id=REPO) as srv:
        (tmp_path / "note.txt").write_text("a note\n")
        assert run_cli("xds", "submit", str(tmp_path / "note.txt"), "--patient", PID, "--repository", srv.url).code == 0
    a.close()
    before = _js(run_cli("archive", "ls", "-L", "instance", *db, "--json"))
    with Archive(lite, storage) as a:
        held = a.counts()
    assert held["instances"] >= len(corpus)

    pg = pg_server.new_database()
    r = run_cli("archive", "copy-db", pg, "--db", lite, "--json")
    assert r.code == 0, r.stderr
    rows = r.json["rows"]
    assert (rows["instances"], rows["rejected"], r.json["changed"]) == (held["instances"], 1, {})
    assert rows["xds_documents"] == 1
    pgdb = ["--db", pg, "--storage", str(storage)]
    assert _js(run_cli("archive", "ls", "-L", "instance", *pgdb, "--json")) == before  # the rejected one stays hidden
    assert rejected not in json.dumps(before)
    rej = _js(run_cli("archive", "rejected", *pgdb, "--json"))
    assert rejected in json.dumps(rej)
    docs = _query(pg, storage)
    assert [d["title"] for d in docs] == ["note.txt"]

    # the copy is an archive that goes on: new rows get ids after the copied ones
    more = make_corpus(tmp_path / "more", studies=1, series=1, images=2)
    assert run_cli("archive", "import", str(tmp_path / "more"), *pgdb).code == 0
    assert len(_js(run_cli("archive", "ls", *pgdb, "--json"))) == 3
    assert rejected not in json.dumps(_js(run_cli("archive", "ls", "-L", "instance", *pgdb, "--json")))
    assert [p.name for p in more] and len(_js(run_cli("archive", "ls", "-L", "instance", *pgdb, "--json"))) == \
        len(before) + len(more)

    # a target that holds data is refused; the copy goes back to an SQLite file whole
    r = run_cli("archive", "copy-db", pg, "--db", lite)
    assert r.code == 2 and "is not empty (rows in" in r.stderr
    back = tmp_path / "back.db"  # a plain file path
    r = run_cli("archive", "copy-db", str(back), "--db", pg)
    assert r.code == 0, r.stderr
    assert "set archive.db in the profile" in r.stderr
    assert len(_js(run_cli("archive", "ls", "--db", str(back), "--storage", str(storage), "--json"))) == 3
    assert [d["title"] for d in _query(f"sqlite:///{back}", storage)] == ["note.txt"]


def test_copy_refuses_what_is_not_an_archive(tmp_path):
    r = run_cli("archive", "copy-db", str(tmp_path / "b.db"), "--db", str(tmp_path / "none.db"))
    assert r.code == 2 and "no archive database" in r.stderr
    assert not (tmp_path / "b.db").exists()
    lite = f"sqlite:///{tmp_path / 'a.db'}"
    Archive(lite, tmp_path / "st").close()  # an empty archive
    r = run_cli("archive", "copy-db", lite, "--db", lite)
    assert r.code == 2 and "same database" in r.stderr
    r = run_cli("archive", "copy-db", f"sqlite:///{tmp_path / 'no' / 'b.db'}", "--db", lite)
    assert r.code == 2 and "no folder" in r.stderr
