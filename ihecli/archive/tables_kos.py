"""Archive tables of the Key Object Selection actors, and the TCE Receiver's ingest step.

Every Key Object Selection Document the archive stores gets a row in ``kos_documents`` (title,
key text); TCE manifests (RAD-53 Export Instances, titles IHERADTF TCE001/2/7/8 and DCM
128710/1/3/4) also get their references in ``kos_references``. A case's completeness is a join
of its references with ``instances``, so instances arriving before or after their manifest
count alike, and storing a non-KOS object costs nothing here.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Table, Text, delete, select
from sqlalchemy.exc import IntegrityError

from ihecli.archive.schema import instances, metadata

log = logging.getLogger("ihe.archive")

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

kos_documents = Table(
    "kos_documents",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("study_uid", String(64)),
    Column("patient_id", String),
    Column("patient_name", String),
    Column("title_value", String, nullable=False, default=""),
    Column("title_scheme", String, nullable=False, default=""),
    Column("title_meaning", String),
    Column("tce", Boolean, nullable=False, default=False),
    Column("description", Text),
    Column("modifiers", Text),  # JSON [[value, scheme, meaning], ...]: delay reasons, quality reasons
    Column("observers", Text),  # JSON list of names
    Column("texts", Text),  # JSON [[concept, text], ...]: other TEXT items
    Column("num_refs", Integer, nullable=False, default=0),
    Column("received", DateTime, nullable=False),
)
Index("ix_kos_documents_tce", kos_documents.c.tce)

kos_references = Table(
    "kos_references",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kos_fk", Integer, ForeignKey("kos_documents.id", ondelete="CASCADE"), nullable=False),
    Column("study_uid", String(64)),
    Column("series_uid", String(64)),
    Column("sop_uid", String(64), nullable=False),
    Column("sop_class", String),
    Column("retrieve_aet", String),
)
Index("ix_kos_references_kos", kos_references.c.kos_fk)
Index("ix_kos_references_sop", kos_references.c.sop_uid)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def record_kos(engine, data: bytes, sop_uid: str, *, replace: bool = True) -> bool:
    """Index one stored Key Object Selection Document; True when it is a TCE manifest.

    Called by the archive after the object is committed. A document that cannot be read is
    recorded without a title, so that it is not read again.
    """
    from ihecli.errors import IheError
    from ihecli.kos.document import load, read_kos

    row: dict = {"sop_uid": sop_uid, "received": _now(), "title_value": "", "title_scheme": "", "tce": False}
    refs = []
    try:
        info = read_kos(load(data))
    except (IheError, RecursionError, MemoryError) as e:
        log.warning("Key Object Selection Document %s not understood: %s", sop_uid, e)
        info = None
    if info is not None:
        row.update(study_uid=info.study_uid[:64] or None, patient_id=info.patient_id, patient_name=info.patient_name,
                   title_value=info.title.value, title_scheme=info.title.scheme_designator,
                   title_meaning=info.title.meaning, tce=info.is_tce, description=info.description or None,
                   modifiers=json.dumps([[m.value, m.scheme_designator, m.meaning] for m in info.modifiers]),
                   observers=json.dumps(info.observers), texts=json.dumps([list(t) for t in info.other_texts]),
                   num_refs=len(info.references))
        if info.is_tce:
            seen = set()
            for r in info.references:
                if r.sop_uid and r.sop_uid not in seen and len(r.sop_uid) <= 64:
                    seen.add(r.sop_uid)
                    refs.append({"study_uid": r.study_uid[:64], "series_uid": r.series_uid[:64], "sop_uid": r.sop_uid,
                                 "sop_class": r.sop_class, "retrieve_aet": r.retrieve_aet})
    try:
        with engine.begin() as conn:
            if replace:
                old = conn.execute(select(kos_documents.c.id).where(kos_documents.c.sop_uid == sop_uid)).scalar()
                if old is not None:
                    conn.execute(delete(kos_references).where(kos_references.c.kos_fk == old))
                    conn.execute(delete(kos_documents).where(kos_documents.c.id == old))
            kos_id = conn.execute(kos_documents.insert().values(**row)).inserted_primary_key[0]
            if refs:
                conn.execute(kos_references.insert(), [{"kos_fk": kos_id, **r} for r in refs])
    except IntegrityError:  # recorded already (the same document stored twice at once)
        pass
    return bool(row["tce"])


def record_missing(archive) -> int:
    """Index the stored KOS that have no row yet (stored before these tables existed, or by a
    process killed between the commit of the instance and its KOS row). Returns how many."""
    with archive.connect() as conn:
        todo = conn.execute(
            select(instances.c.sop_uid, instances.c.path)
            .where(instances.c.sop_class == KOS_SOP_CLASS,
                   ~select(kos_documents.c.id).where(kos_documents.c.sop_uid == instances.c.sop_uid).exists())
        ).all()
    for sop_uid, rel in todo:
        try:
            data = archive.file_path(rel).read_bytes()
        except OSError:
            continue
        record_kos(archive.engine, data, sop_uid)
    return len(todo)
