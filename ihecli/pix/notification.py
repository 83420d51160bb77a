"""PIX Consumer, PIX Update Notification (ITI-10, ITI TF-2a 3.10): ADT^A31^ADT_A05 from the PIX
Manager, the cross-references kept in the archive database (``ihecli.archive.tables_pix``).

``UpdateNotificationReceiver(archive)`` is the handler of an ``ihecli.net.mllp.MllpServer``
(``ihe pix listen``, ``ihe archive serve --pix-port``): message bytes in, acknowledgement bytes
out. PID-3 of an A31 lists every identifier of one patient in the domains we follow; the
identifiers it names leave whatever cross-reference they were in and form a new one, in one
transaction committed before the AA goes back. Refused, with nothing changed: a message that
is not ADT^A31 (AR, 200/201), no PID-3 or an identifier without its assigning authority (AE,
101), an identifier of a domain we do not follow when ``domains`` are given (AE, 204).

``links(conn, pid, domain)`` reads what is known locally (``ihe pix ls``).
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from ihecli.archive.index import now
from ihecli.archive.tables_pix import pix_links as t
from ihecli.hl7 import v2
from ihecli.hl7.v2 import Hl7Error, Message
from ihecli.pix.ids import Domain, Identifier, cx_list

log = logging.getLogger("ihe.pix")


@dataclass
class ReceiverStats:
    accepted: int = 0
    refused: int = 0
    identifiers: int = 0
    errors: list[str] = field(default_factory=list)  # the last few refusals, for the log and tests


def read_notification(msg: Message, domains: list[Domain] = ()) -> list[Identifier]:
    """The identifiers of an ITI-10 message; raises Hl7Error for anything ITI-10 does not allow."""
    if msg.type != "ADT":
        raise Hl7Error(f"unsupported message type {msg.type}: a PIX Consumer takes ADT^A31", ack_code="AR",
                       code=200, location=("MSH", 1, 9, 1))
    if msg.trigger != "A31":
        raise Hl7Error(f"unsupported event {msg.type}^{msg.trigger}: a PIX Update Notification is ADT^A31",
                       ack_code="AR", code=201, location=("MSH", 1, 9, 2))
    pid = msg.segment("PID")
    if pid is None:
        raise Hl7Error("no PID segment", code=100, location=("PID", 1, 0, 0))
    ids = cx_list(msg, pid, 3)
    if not ids:
        raise Hl7Error("PID-3 (patient identifier list) is empty", code=101, location=("PID", 1, 3, 1))
    seen: dict[tuple[str, str], Identifier] = {}
    for i in ids:
        if not i.domain.key:
            raise Hl7Error(f"identifier {i.id!r} in PID-3 has no assigning authority (CX-4)", code=101,
                           location=("PID", 1, 3, 4))
        if domains and not any(i.domain.matches(d) for d in domains):
            raise Hl7Error(f"identifier {i.id!r} is in domain {i.domain}, which we do not follow", code=204,
                           location=("PID", 1, 3, 4))
        seen.setdefault((i.id[:200], i.domain.key[:200]), i)
    return list(seen.values())


def _upsert(dialect: str):
    """INSERT ... ON CONFLICT (pid, domain) DO UPDATE: an identifier seen before changes group
    in the same statement (SQLite and PostgreSQL)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(t)
    cols = ("grp", "namespace", "oid", "oid_type", "id_type", "sender", "control_id", "updated")
    return stmt.on_conflict_do_update(index_elements=[t.c.pid, t.c.domain],
                                      set_={c: getattr(stmt.excluded, c) for c in cols})


_UPSERT: dict[str, object] = {}


def store_cross_reference(conn, ids: list[Identifier], *, sender: str = "", control_id: str = "") -> str:
    """Make ``ids`` one cross-reference (and take them out of any other); returns its group id."""
    name = conn.dialect.name
    stmt = _UPSERT.get(name)
    if stmt is None:
        stmt = _UPSERT[name] = _upsert(name)
    grp = uuid.uuid4().hex
    at = now()
    conn.execute(stmt, [{"grp": grp, "pid": i.id[:200], "domain": i.domain.key[:200],
                         "namespace": i.domain.namespace[:200], "oid": i.domain.oid[:200],
                         "oid_type": i.domain.oid_type[:20], "id_type": i.type_code[:20], "sender": sender[:200],
                         "control_id": control_id[:200], "updated": at} for i in ids])
    return grp


@dataclass
class Link:
    """One identifier of a cross-reference known locally."""

    group: str
    identifier: Identifier
    updated: str
    sender: str

    def as_dict(self) -> dict:
        return {"group": self.group, **self.identifier.as_dict(), "updated": self.updated, "sender": self.sender}


def links(conn, pid: str | None = None, domain: Domain | None = None, *, limit: int | None = None) -> list[Link]:
    """The cross-references that hold ``pid`` (in ``domain`` when given), or all of them; each
    group's identifiers together, the one asked for first."""
    q = select(t)
    if pid is not None:
        mine = select(t.c.grp).where(t.c.pid == pid)
        if domain is not None:  # the namespace or the OID the user knows the domain by
            conds = [t.c.domain == domain.key]
            if domain.namespace:
                conds.append(t.c.namespace == domain.namespace)
            if domain.oid:
                conds.append(t.c.oid == domain.oid)
            mine = mine.where(or_(*conds))
        q = q.where(t.c.grp.in_(mine))
    q = q.order_by(t.c.grp, t.c.id)
    rows = conn.execute(q).all()
    out = [Link(r.grp, Identifier(r.pid, Domain(r.namespace, r.oid, r.oid_type), r.id_type),
                r.updated.isoformat(timespec="seconds") if r.updated else "", r.sender or "") for r in rows]
    if pid is not None:
        out.sort(key=lambda lk: (lk.group, lk.identifier.id != pid))
    groups = list(dict.fromkeys(lk.group for lk in out))
    if limit:
        keep = set(groups[:limit])
        out = [lk for lk in out if lk.group in keep]
    return out


class UpdateNotificationReceiver:
    """ITI-10 into the archive database: a handler for MllpServer."""

    def __init__(self, archive, *, app: str = "IHE", facility: str = "", domains: list[Domain] = ()):
        self.archive = archive
        self.app, self.facility = app, facility
        self.domains = list(domains)
        # the archive's writing engine: on SQLite its transactions take the write lock first
        self.engine = archive.writer.engine
        self.stats = ReceiverStats()
        self._lock = threading.Lock()

    def __call__(self, raw: bytes) -> bytes:
        try:
            msg = v2.parse(raw)
        except Hl7Error as e:
            self._refused(str(e))
            return v2.nak(raw, e, app=self.app, facility=self.facility)
        try:
            ids = read_notification(msg, self.domains)
            sender = f"{msg.raw('MSH', 3)}^{msg.raw('MSH', 4)}"
            with self.engine.begin() as conn:
                store_cross_reference(conn, ids, sender=sender, control_id=msg.control_id)
        except Hl7Error as e:
            self._refused(f"{msg.type}^{msg.trigger} {msg.control_id}: {e}")
            return v2.ack(msg, e.ack_code, error=e, app=self.app, facility=self.facility)
        with self._lock:
            self.stats.accepted += 1
            self.stats.identifiers += len(ids)
        log.debug("PIX update %s: %s", msg.control_id, ", ".join(str(i) for i in ids))
        self._audit(msg, ids)
        return v2.ack(msg, "AA", app=self.app, facility=self.facility)

    def _refused(self, text: str) -> None:
        log.warning("PIX update notification refused: %s", text)
        with self._lock:
            self.stats.refused += 1
            self.stats.errors = (self.stats.errors + [text])[-20:]

    def _audit(self, msg: Message, ids: list[Identifier]) -> None:
        from ihecli import atna

        if not atna.enabled():
            return
        from ihecli.net.mllp import current_peer

        ev = atna.events
        host = current_peer().rsplit(":", 1)[0].strip("[]")
        atna.record(ev.pix_update_notification(
            source=ev.Peer(f"{msg.value('MSH', 3)}|{msg.value('MSH', 4)}", host=host),
            destination=ev.Peer.local(f"{self.app}|{self.facility}"),
            patient_ids=[str(i) for i in ids], message_id=msg.control_id))
