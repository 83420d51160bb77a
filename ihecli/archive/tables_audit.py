"""Archive tables of the Audit Record Repository (ITI-20 receiver; defined on schema.metadata).

One row per received syslog message in ``audit_events`` (the message as received, its syslog
header and the fields `ihe audit query` filters on), and one row per user and patient it names
in ``audit_participants``, so that queries by user or patient use an index.
"""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, Table, Text

from ihecli.archive.schema import metadata

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("received", DateTime, nullable=False),  # UTC, when the repository got it
    Column("event_time", DateTime),  # UTC, EventDateTime of the message
    Column("peer", String),  # sender address host:port
    Column("transport", String),  # tls | tcp | udp
    Column("syslog_host", String),
    Column("syslog_app", String),
    Column("msgid", String),
    Column("format", String, nullable=False),  # DICOM | RFC3881 | invalid
    Column("event_id", String),  # EventID code, e.g. 110112
    Column("event_name", String),  # its display name, e.g. Query
    Column("action", String),  # EventActionCode C R U D E
    Column("outcome", Integer),  # EventOutcomeIndicator 0 4 8 12
    Column("event_types", String),  # EventTypeCode codes, comma-separated (ITI-18, 110120, ...)
    Column("type_names", String),
    Column("source_id", String),  # AuditSourceID
    Column("users", String),  # ActiveParticipant UserIDs, newline-separated
    Column("patients", String),  # patient ParticipantObjectIDs, newline-separated
    Column("error", String),  # why an invalid message could not be read
    Column("message", Text, nullable=False),  # the syslog MSG as received (decoded as UTF-8)
)
Index("ix_audit_events_received", audit_events.c.received)
Index("ix_audit_events_event_time", audit_events.c.event_time)
Index("ix_audit_events_event_id", audit_events.c.event_id)

audit_participants = Table(
    "audit_participants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("event_fk", Integer, ForeignKey("audit_events.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String, nullable=False),  # user | patient
    Column("value", String, nullable=False),  # a UserID, or a patient ID (full CX and bare ID)
)
Index("ix_audit_participants_value", audit_participants.c.kind, audit_participants.c.value)
Index("ix_audit_participants_event", audit_participants.c.event_fk)
