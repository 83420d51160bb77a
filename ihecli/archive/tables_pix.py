"""Archive table of the PIX Consumer (ITI-10 PIX Update Notification, ``ihe pix listen``):
patient identifier cross-references, on ihecli.archive.schema.metadata.

``pix_links`` holds one row per identifier the PIX Manager reported; identifiers with the same
``grp`` are the same patient. An A31 names the whole cross-reference of a patient in PID-3, so
applying it moves each identifier it names out of its old group into a new one; the identifiers
left behind stay linked to each other (the Manager notifies their new cross-reference too).

``domain`` is the key of an identifier's assigning authority: the universal id (OID) when the
Manager sent one, else the namespace. Queries of the archive by Patient ID (C-FIND, ``ihe
archive ls``) also match the patients holding a linked identifier: ``linked_patient_ids(pid)``
is the indexed subquery ``query.py`` uses. The merged-away identifiers of the HL7 feed
(``hl7_patient_ids``) are another thing: those name a patient that no longer exists.
"""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, UniqueConstraint, and_, or_, select

from ihecli.archive.schema import metadata, patients

pix_links = Table(
    "pix_links",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("grp", String(36), nullable=False),  # the cross-reference this identifier belongs to
    Column("pid", String, nullable=False),  # CX-1
    Column("domain", String, nullable=False),  # CX-4.2 (universal id) or else CX-4.1 (namespace)
    Column("namespace", String, nullable=False, default=""),  # CX-4.1
    Column("oid", String, nullable=False, default=""),  # CX-4.2
    Column("oid_type", String, nullable=False, default=""),  # CX-4.3, ISO
    Column("id_type", String, nullable=False, default=""),  # CX-5, PI
    Column("sender", String),  # MSH-3^MSH-4 of the notification
    Column("control_id", String),  # MSH-10
    Column("updated", DateTime, nullable=False),
    UniqueConstraint("pid", "domain", name="uq_pix_link"),
)
Index("ix_pix_links_grp", pix_links.c.grp)


def linked_patient_ids(pid: str):
    """SELECT of the ``patients.id`` whose identifier is cross-referenced with ``pid`` (in any
    domain): the patient's Issuer of Patient ID must be the linked identifier's namespace or
    OID, or empty. Indexed both ways (uq_pix_link by pid, ix_pix_links_grp, uq_patient)."""
    mine = pix_links.alias("pix_mine")
    other = pix_links.alias("pix_other")
    pat = patients.alias("pix_patient")  # an alias: the subquery must not correlate with the outer patients
    return (select(pat.c.id)
            .select_from(mine.join(other, other.c.grp == mine.c.grp)
                         .join(pat, and_(pat.c.pid == other.c.pid,
                                         or_(pat.c.issuer == "", pat.c.issuer == other.c.namespace,
                                             pat.c.issuer == other.c.oid))))
            .where(mine.c.pid == pid))


def linked_cx(cx: str):
    """SELECT of the XDS patient IDs (``ID^^^&OID&ISO``) cross-referenced with the XDS patient ID
    ``cx``: what a Registry Stored Query by one identifier also matches (indexed by uq_pix_link)."""
    parts = cx.split("^")
    pid = parts[0]
    hd = parts[3].split("&") if len(parts) > 3 else []
    oid = hd[1] if len(hd) > 1 else ""
    mine = pix_links.alias("pix_mine")
    other = pix_links.alias("pix_other")
    return (select(other.c.pid + "^^^&" + other.c.oid + "&ISO")
            .select_from(mine.join(other, other.c.grp == mine.c.grp))
            .where(mine.c.pid == pid, mine.c.domain == oid, other.c.oid != ""))
