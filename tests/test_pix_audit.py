"""Audit trail of PIX and PDQ (ITI-20 through ihecli.atna.record): a real PIX query (ITI-9), update
notification (ITI-10) and PDQ query (ITI-47) reach an Audit Record Repository, and what it stored
passes the DICOM audit schema and the connectathon Schematron rules (as tests/test_atna.py checks
every builder)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from ihecli import atna
from ihecli.archive import Archive
from ihecli.archive.tables_audit import audit_events
from ihecli.atna.repository import AuditRepository
from ihecli.net.mllp import MllpServer
from ihecli.pdq import PdqQuery, query_demographics
from ihecli.pix import Domain, Identifier, UpdateNotificationReceiver, query_identifiers
from pdqsupplier import PdqSupplier
from pixmgr import A31_FILES, PixManager
from test_atna import problems


@pytest.fixture
def repository(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    repo = AuditRepository(url, tls_port=None, udp_port=0)
    repo.start()
    atna.configure(f"udp://127.0.0.1:{repo.udp_port}", spool=tmp_path / "spool")
    yield repo, url
    atna.configure(None)
    repo.stop()


def test_pix_and_pdq_transactions_are_audited(repository, tmp_path):
    repo, url = repository
    mgr, supplier = PixManager(), PdqSupplier()
    mgr.start()
    supplier.start()
    try:
        ans = query_identifiers("127.0.0.1", mgr.port, Identifier("13278", Domain("HIMSS2005")),
                                sending_app="IHE", sending_facility="FAC")
        assert ans.status == "OK"
        with Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "st") as archive:
            srv = MllpServer(UpdateNotificationReceiver(archive, app="IHE", facility="FAC"), port=0)
            srv.start()
            try:
                assert [a.code for a in PixManager.notify("127.0.0.1", srv.port, A31_FILES[2:])] == ["AA"]
            finally:
                srv.stop()
        res = query_demographics(supplier.url, PdqQuery(family="Jones"), sender="1.2.3.4", receiver="1.2.3.5")
        assert res.patients
    finally:
        mgr.stop()
        supplier.stop()
    assert atna.flush(10) and repo.wait_stored(3)
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.event_types, audit_events.c.message)).all()
    engine.dispose()
    by_type = {r.event_types: r.message for r in rows}
    assert set(by_type) == {"ITI-9", "ITI-10", "ITI-47"}, by_type.keys()
    for tx, sch in (("ITI-9", "ITI-09_110112_mt01DG.sch"), ("ITI-10", "ITI-10_110110_mt02DG.sch"),
                    ("ITI-47", "ITI-47_110112_mt01DG.sch")):
        xml = by_type[tx].lstrip("\ufeff").encode("utf-8")
        assert problems(xml, sch) == [], tx
    assert "13278" in by_type["ITI-9"] and "5555" in by_type["ITI-10"]
