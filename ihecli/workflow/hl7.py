"""The archive's HL7 v2 feed (Image Manager as HL7 receiver): Patient Update (RAD-12, ADT
A01/A04/A08/A31/A40/A47) and Procedure Scheduled/Updated (RAD-4/13, ORM^O01, OMI^O23).

``Hl7Feed(archive)`` is the handler of an ``ihecli.net.mllp.MllpServer``: message bytes in,
acknowledgement bytes out. Each message is applied in one database transaction, committed
before the AA goes back (nothing acknowledged is lost); a refused message (AE/AR with ERR)
changes nothing. A message sent again with the same sender and control id (MSH-3/4, MSH-10)
after it was applied is acknowledged again without being applied twice.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from ihecli.archive import tables_hl7 as t
from ihecli.archive.index import now
from ihecli.hl7 import v2
from ihecli.hl7.v2 import Hl7Error, Message
from ihecli.workflow import adt, orders

log = logging.getLogger("ihe.hl7")
I_MESSAGE = insert(t.hl7_messages)

HANDLERS: dict[tuple[str, str], Callable] = {
    ("ADT", "A01"): adt.update_patient,
    ("ADT", "A04"): adt.update_patient,
    ("ADT", "A08"): adt.update_patient,
    ("ADT", "A31"): adt.update_patient,
    ("ADT", "A40"): adt.merge_patients,
    ("ADT", "A47"): adt.change_patient_identifier,
    ("ORM", "O01"): orders.record_order,
    ("OMI", "O23"): orders.record_order,
}


class _Repeat(Exception):
    pass


@dataclass
class FeedStats:
    accepted: int = 0
    refused: int = 0
    duplicates: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Hl7Feed:
    """RAD-4/12/13 into the archive index: a handler for MllpServer."""

    def __init__(self, archive, *, app: str = "IHE_ARCHIVE", facility: str = ""):
        self.archive = archive
        self.app, self.facility = app, facility
        # the archive's writing engine: on SQLite its transactions take the write lock first
        self.engine = archive.writer.engine
        self.stats = FeedStats()
        self._lock = threading.Lock()

    def __call__(self, raw: bytes) -> bytes:
        try:
            msg = v2.parse(raw)
        except Hl7Error as e:
            self._count(None, refused=True)
            log.warning("HL7 message refused (%s %d): %s", e.ack_code, e.code, e)
            return v2.nak(raw, e, app=self.app, facility=self.facility)
        try:
            text, duplicate = self.apply(msg)
        except Hl7Error as e:
            self._count(msg, refused=True)
            log.warning("HL7 %s^%s %s refused (%s %d): %s", msg.type, msg.trigger, msg.control_id, e.ack_code,
                        e.code, e)
            return v2.ack(msg, e.ack_code, error=e, app=self.app, facility=self.facility)
        self._count(msg, duplicate=duplicate)
        # merges and identifier changes are worth a line in the log; routine updates only with -vv
        log.log(logging.INFO if msg.trigger in ("A40", "A47") else logging.DEBUG, "HL7 %s^%s %s: %s", msg.type,
                msg.trigger, msg.control_id, text)
        if msg.type == "ADT" and not duplicate:
            self._audit(msg)
        return v2.ack(msg, "AA", app=self.app, facility=self.facility)

    def _audit(self, msg: Message) -> None:
        """Patient Record event (DICOM PS3.15 A.5.3.9) for an applied RAD-12 message."""
        from ihecli import atna

        if not atna.enabled():
            return
        ids = [i.pid for seg in msg.all("PID") for i in adt.identifiers(msg, seg, 3)[:1]]
        ids += [i.pid for seg in msg.all("MRG") for i in adt.identifiers(msg, seg, 1)[:1]]
        atna.record(atna.events.patient_record("U", patients=list(dict.fromkeys(ids)), user=self.app,
                                               transaction=atna.events.iti("RAD-12", "Patient Update")))

    def apply(self, msg: Message) -> tuple[str, bool]:
        """Apply one message in one transaction: (what happened, whether it was a repeat).
        Raises Hl7Error (nothing changed)."""
        handler = HANDLERS.get((msg.type, msg.trigger))
        if handler is None:
            known_types = {k[0] for k in HANDLERS}
            if msg.type not in known_types:
                raise Hl7Error(f"unsupported message type {msg.type}", ack_code="AR", code=200,
                               location=("MSH", 1, 9, 1))
            raise Hl7Error(f"unsupported event {msg.type}^{msg.trigger}", ack_code="AR", code=201,
                           location=("MSH", 1, 9, 2))
        sender = f"{msg.raw('MSH', 3)}^{msg.raw('MSH', 4)}"[:200]
        for attempt in range(3):
            at = now()
            try:
                with self.engine.begin() as conn:
                    try:  # first, so that a repeat fails here, before anything else is written
                        conn.execute(I_MESSAGE, {"sender": sender, "control_id": msg.control_id[:200],
                                                 "type": f"{msg.type}^{msg.trigger}", "received": at})
                    except IntegrityError:
                        raise _Repeat() from None  # leaves the transaction, rolled back
                    text = handler(conn, msg, at)
                return text, False
            except _Repeat:
                return f"already applied (control id {msg.control_id})", True
            except Hl7Error:
                raise
            except IntegrityError as e:  # two writers at once created the same patient or order
                if attempt == 2:
                    raise Hl7Error(f"the archive database refused the change: {e.orig}", code=206) from None
        raise AssertionError("unreachable")

    def _count(self, msg: Message | None, *, refused: bool = False, duplicate: bool = False) -> None:
        with self._lock:
            if refused:
                self.stats.refused += 1
            elif duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.accepted += 1
            if msg is not None:
                k = f"{msg.type}^{msg.trigger}"
                self.stats.by_type[k] = self.stats.by_type.get(k, 0) + 1
