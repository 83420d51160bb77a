"""Archive tables of the workflow actors (defined on ihecli.archive.schema.metadata).

- ``mpps``: Modality Performed Procedure Steps received (RAD-6/7/20/21), their state and attributes.
- ``mpps_refs``: the instances a completed step references (what IAN waits for, RAD-49).
- ``outbox``: the persistent queue of DIMSE requests to send (MPPS forwarding, IAN, storage
  commitment reports on a new association); survives restarts.
- ``rejected``: instances hidden or deleted by a rejection note (IOCM, RAD-66).
"""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, LargeBinary, String, Table, Text

from ihecli.archive.schema import metadata

mpps = Table(
    "mpps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # IN PROGRESS | COMPLETED | DISCONTINUED
    Column("patient_id", String),
    Column("patient_name", String),
    Column("study_uid", String(64)),  # first Scheduled Step Attributes item
    Column("accession", String),
    Column("modality", String),
    Column("pps_id", String),
    Column("description", String),
    Column("started", String),  # PerformedProcedureStepStartDate + Time
    Column("ended", String),
    Column("calling_aet", String),
    Column("created", DateTime, nullable=False),
    Column("updated", DateTime, nullable=False),
    Column("ian", String(8), nullable=False, default="none"),  # none | waiting | queued
    Column("attrs", LargeBinary, nullable=False),  # the whole step, Explicit VR Little Endian
)
Index("ix_mpps_ian", mpps.c.ian)

mpps_refs = Table(
    "mpps_refs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mpps_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("sop_class", String(64), nullable=False),
)
Index("ix_mpps_refs_mpps", mpps_refs.c.mpps_uid)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),  # mpps-create | mpps-set | ian | stgcmt-report
    Column("target", String, nullable=False),  # AET@host:port
    Column("ref", String(64)),  # the SOP Instance UID it is about (for listings)
    Column("payload", LargeBinary, nullable=False),
    Column("state", String(8), nullable=False),  # pending | sending | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try", DateTime, nullable=False),
    Column("last_error", Text),
    Column("created", DateTime, nullable=False),
    Column("done_at", DateTime),
)
Index("ix_outbox_state", outbox.c.state, outbox.c.next_try)
Index("ix_outbox_ref", outbox.c.ref)

rejected = Table(
    "rejected",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("sop_class", String(64)),
    Column("study_uid", String(64)),
    Column("series_uid", String(64)),
    Column("code", String(16), nullable=False),  # the note's title: 113001, 113037, 113038, 113039
    Column("note_uid", String(64), nullable=False),  # SOP Instance UID of the rejection note
    Column("path", String),  # the kept file (under the storage's .rejected/), None once deleted
    Column("rejected", DateTime, nullable=False),
)
Index("ix_rejected_note", rejected.c.note_uid)
