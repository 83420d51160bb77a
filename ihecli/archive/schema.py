"""The archive's index: typed, indexed columns for every key C-FIND and QIDO match on.

One row per patient, study, series and instance. Each instance row also keeps the encoded
header (everything before Pixel Data), so any other requested key is answered from the index
without opening the file.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

SCHEMA_VERSION = 1

metadata = MetaData()
# Only the UID keys carry a length (checked at ingest): real-world values exceed the VR maximums,
# and PostgreSQL enforces VARCHAR lengths where SQLite does not.

meta = Table(
    "ihe_meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pid", String, nullable=False, default=""),
    Column("issuer", String, nullable=False, default=""),
    Column("name", String),
    Column("name_ci", String),  # upper case: default PN matching is case-insensitive
    Column("name_fold", String),  # upper case, accents removed: --fuzzy-names
    Column("birth_date", String),
    Column("sex", String),
    Column("charset", String),
    UniqueConstraint("pid", "issuer", name="uq_patient"),
)
# text_pattern_ops: PostgreSQL uses the index for LIKE 'SMITH%' whatever the database collation
Index("ix_patients_name_ci", patients.c.name_ci, postgresql_ops={"name_ci": "text_pattern_ops"})
Index("ix_patients_name_fold", patients.c.name_fold, postgresql_ops={"name_fold": "text_pattern_ops"})

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_fk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("study_date", String),
    Column("study_time", String),
    Column("accession", String),
    Column("study_id", String),
    Column("ref_physician", String),
    Column("ref_physician_ci", String),
    Column("ref_physician_fold", String),
    Column("description", String),
    Column("charset", String),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("received", DateTime, nullable=False),  # first instance received (UTC)
    Column("updated", DateTime, nullable=False),  # last instance received (UTC)
)
Index("ix_studies_patient", studies.c.patient_fk)
Index("ix_studies_date", studies.c.study_date)
Index("ix_studies_accession", studies.c.accession)
Index("ix_studies_updated", studies.c.updated)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_fk", Integer, ForeignKey("studies.id"), nullable=False),
    Column("modality", String),
    Column("series_number", Integer),
    Column("description", String),
    Column("body_part", String),
    Column("series_date", String),
    Column("series_time", String),
    Column("charset", String),
    Column("num_instances", Integer, nullable=False, default=0),
)
Index("ix_series_study", series.c.study_fk)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("series_fk", Integer, ForeignKey("series.id"), nullable=False),
    Column("sop_class", String, nullable=False),
    Column("instance_number", Integer),
    Column("content_date", String),
    Column("content_time", String),
    Column("transfer_syntax", String, nullable=False),
    Column("path", String, nullable=False),  # relative to the storage folder
    Column("size", BigInteger, nullable=False),
    Column("sha256", String, nullable=False),
    Column("charset", String),
    Column("received", DateTime, nullable=False),
    Column("header", LargeBinary),  # Part-10 bytes up to Pixel Data; None: read the file
)
Index("ix_instances_series", instances.c.series_fk)

# Tables of the actors that keep their own state in the archive database, one module each; they
# add themselves to `metadata` above, so create_all makes them on a new or older database.
from ihecli.archive import tables_audit, tables_hl7, tables_kos, tables_pix, tables_workflow, tables_xds  # noqa: E402,F401,E501
