"""Archive tables of the HL7 patient and order feed (RAD-4/12/13, PIR), on ihecli.archive.schema.metadata.

No foreign keys to ``patients``: the archive drops a patient row when its last study goes,
and these rows must not stop that (a stale id is harmless, see ``hl7_reconciled``).
"""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text, UniqueConstraint

from ihecli.archive.schema import metadata

# Messages applied (AA), by sender and control id: a message sent again after a lost ACK is
# acknowledged again without being applied twice.
hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sender", String, nullable=False),  # MSH-3^MSH-4
    Column("control_id", String, nullable=False),  # MSH-10
    Column("type", String, nullable=False),  # MSH-9, e.g. ADT^A40
    Column("received", DateTime, nullable=False),
    UniqueConstraint("sender", "control_id", name="uq_hl7_message"),
)

# Patients whose index demographics were set by HL7 (update, merge, identifier change): C-MOVE
# and C-GET compare the stored headers of their instances with the index and send the index's
# values. The id of a patient row dropped since is harmless: headers that agree go out as stored.
hl7_reconciled = Table(
    "hl7_reconciled",
    metadata,
    Column("patient_fk", Integer, primary_key=True),
    Column("updated", DateTime, nullable=False),
)

# Identifiers retired by a merge (A40) or an identifier change (A47), and the patient they became.
hl7_patient_ids = Table(
    "hl7_patient_ids",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pid", String, nullable=False),
    Column("issuer", String, nullable=False, default=""),
    Column("patient_fk", Integer, nullable=False),
    Column("event", String, nullable=False),  # A40, A47
    Column("control_id", String),
    Column("at", DateTime, nullable=False),
)
Index("ix_hl7_patient_ids_pid", hl7_patient_ids.c.pid, hl7_patient_ids.c.issuer)

# Orders (RAD-4 Procedure Scheduled, RAD-13 Procedure Updated): ORM^O01 and OMI^O23, one row per
# order and scheduled procedure step.
hl7_orders = Table(
    "hl7_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("placer_order", String, nullable=False, default=""),  # ORC-2 / OBR-2
    Column("filler_order", String, nullable=False, default=""),  # ORC-3 / OBR-3
    Column("sps_id", String, nullable=False, default=""),  # IPC-4 / OBR-20
    Column("order_control", String),  # ORC-1 of the last message: NW, XO, CA, DC, SC...
    Column("status", String),  # SCHEDULED, CANCELED, DISCONTINUED, IN PROGRESS, COMPLETED
    Column("pid", String),
    Column("issuer", String),
    Column("patient_name", String),
    Column("accession", String),  # IPC-1 / OBR-18
    Column("requested_procedure_id", String),  # IPC-2 / OBR-19
    Column("study_uid", String(64)),  # IPC-3 / ZDS-1
    Column("modality", String),  # IPC-5 / OBR-24
    Column("procedure_code", String),  # OBR-4.1
    Column("procedure", String),  # OBR-4.2
    Column("scheduled", String),  # TQ1-7 / ORC-7.4 / OBR-27.4 (HL7 TS)
    Column("station_aet", String),  # IPC-9
    Column("message_type", String, nullable=False),  # ORM^O01, OMI^O23
    Column("control_id", String),
    Column("received", DateTime, nullable=False),
    Column("updated", DateTime, nullable=False),
    Column("message", Text),  # the last message about the order, as received (ER7)
    UniqueConstraint("placer_order", "filler_order", "sps_id", name="uq_hl7_order"),
)
Index("ix_hl7_orders_accession", hl7_orders.c.accession)
Index("ix_hl7_orders_pid", hl7_orders.c.pid)
