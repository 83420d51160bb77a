"""Archive tables of the XDS.b Document Registry and Repository (``ihe xds serve``).

``xds_objects``: one row per registry object (DocumentEntry, SubmissionSet, Folder,
Association) with the columns stored queries match on and the object's ebRIM XML as
registered (its status is kept in the column, not the XML). ``xds_values``: the multi-valued
query keys (confidentiality and event codes, author persons, folder codes). ``xds_documents``:
the repository's documents, whose bytes live under ``xds/`` in the archive's storage folder.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text

from ihecli.archive.schema import metadata

xds_objects = Table(
    "xds_objects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_uuid", String(128), nullable=False, unique=True),
    Column("kind", String(2), nullable=False),  # DE, SS, FD, AS
    Column("unique_id", String),
    Column("lid", String),
    Column("patient_id", String),
    Column("status", String, nullable=False),  # Approved | Deprecated
    Column("title", String),
    Column("object_type", String),  # DE stable / on-demand
    Column("class_code", String),  # codes as CODE^^SCHEME
    Column("type_code", String),
    Column("format_code", String),
    Column("hcft_code", String),
    Column("practice_code", String),
    Column("content_type_code", String),
    Column("creation_time", String),
    Column("service_start", String),
    Column("service_stop", String),
    Column("submission_time", String),
    Column("last_update_time", String),
    Column("source_id", String),
    Column("mime_type", String),
    Column("repository_uid", String),
    Column("hash", String),
    Column("size", BigInteger),
    Column("assoc_type", String),
    Column("source", String(128)),
    Column("target", String(128)),
    Column("registered", DateTime, nullable=False),
    Column("xml", Text, nullable=False),
)
Index("ix_xds_objects_patient", xds_objects.c.patient_id, xds_objects.c.kind, xds_objects.c.status)
Index("ix_xds_objects_unique", xds_objects.c.unique_id)
Index("ix_xds_objects_source", xds_objects.c.source)
Index("ix_xds_objects_target", xds_objects.c.target)

xds_values = Table(
    "xds_values",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_uuid", String(128), nullable=False),
    Column("name", String(16), nullable=False),  # conf, event, author, fdcode
    Column("value", String, nullable=False),
)
Index("ix_xds_values_object", xds_values.c.entry_uuid)
Index("ix_xds_values_value", xds_values.c.name, xds_values.c.value)

xds_documents = Table(
    "xds_documents",
    metadata,
    Column("unique_id", String(128), primary_key=True),
    Column("repository_uid", String, nullable=False),
    Column("mime_type", String, nullable=False),
    Column("path", String, nullable=False),  # relative to the storage folder
    Column("size", BigInteger, nullable=False),
    Column("hash", String, nullable=False),  # SHA-1, hex
    Column("stored", DateTime, nullable=False),
)
