"""Fixtures: a real archive (SQLite in a temporary folder), its DICOM server on a free loopback
port, a DCMTK storescp as move destination, and an isolated profile and data dir for the CLI."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import DCMTK_ENV, dcmtk, free_port, make_corpus, wait_port
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.config import Node


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads or writes the user's real profile or data."""
    monkeypatch.setenv("IHE_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("IHE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("IHE_PROFILE", raising=False)


@pytest.fixture(scope="session")
def pg_server():
    """One throw-away PostgreSQL server for the whole run; each user asks it for a new database."""
    from pg import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty index database in each back end: the same tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture
def archive(db_url, tmp_path):
    a = Archive(db_url, tmp_path / "storage")
    yield a
    a.close()


class RunningServer:
    def __init__(self, server: DicomServer):
        self.server = server
        self.archive = server.archive
        self.aet = server.aet
        self.port = server.port

    @property
    def node(self) -> Node:
        return Node(self.aet, "127.0.0.1", self.port)

    @property
    def spec(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"


@pytest.fixture
def storescp(tmp_path):
    """DCMTK storescp on a free port: (Node, folder it writes to)."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    p = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)], env=DCMTK_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield Node("STORESCP", "127.0.0.1", port), out
    finally:
        p.terminate()
        p.wait(10)


@pytest.fixture
def server(archive, storescp):
    dest, _ = storescp
    srv = DicomServer(archive, aet="IHE_ARCHIVE", port=0, destinations={"STORESCP": dest})
    srv.start()
    yield RunningServer(srv)
    srv.stop()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[Path]:
    """12 CT instances: 2 studies x 2 series x 3 images."""
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _filled(url: str, storage: Path, objects) -> Archive:
    a = Archive(url, storage)
    for data in objects:
        assert a.store(data).outcome == "stored"
    return a


@pytest.fixture(scope="module")
def sqlite_arc(request, tmp_path_factory):
    """The test module's objects() stored once in a SQLite archive."""
    d = tmp_path_factory.mktemp("arc")
    a = _filled(f"sqlite:///{d / 'index.db'}", d / "storage", request.module.objects())
    yield a
    a.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def arc(request, tmp_path_factory):
    """The test module's objects() in each index back end."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_arc")
        return
    a = _filled(request.getfixturevalue("pg_server").new_database(), tmp_path_factory.mktemp("arc-pg"),
                request.module.objects())
    yield a
    a.close()


@pytest.fixture(scope="module")
def srv(sqlite_arc):
    """The archive's DICOM server over sqlite_arc."""
    server = DicomServer(sqlite_arc, aet="IHE_ARCHIVE", port=0)
    server.start()
    yield server
    server.stop()
