"""PIX Consumer, PIX Query (ITI-9, ITI TF-2a 3.9): QBP^Q23^QBP_Q21 to the PIX Manager over
MLLP, RSP^K23 back.

``query_identifiers(host, port, Identifier, targets=[Domain...])`` returns a ``PixAnswer``:
``status`` OK (the cross-referenced identifiers in ``identifiers``), NF (the Manager knows the
identifier but has nothing in the domains asked for, or does not know it: QAK-2 NF), AE (an
error with ERR segments, e.g. 204 on QPD-3 for an unknown identifier or QPD-4 for an unknown
domain) or AR (the query rejected, often by a plain ACK). The query is built with hl7apy (v2.5);
the answer is read with ``ihecli.hl7.v2``.
"""
from __future__ import annotations

import ssl
import time
import uuid
from dataclasses import dataclass, field

from ihecli.errors import IheError
from ihecli.hl7 import v2
from ihecli.net.mllp import MllpClient
from ihecli.pix.ids import Domain, Identifier, cx_list

QUERY_NAME = "IHE PIX Query"


@dataclass
class PixAnswer:
    """What the PIX Manager said about one identifier."""

    query: Identifier
    status: str  # OK, NF, AE, AR
    identifiers: list[Identifier] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""  # MSA-3
    control_id: str = ""  # our MSH-10
    query_tag: str = ""  # our QPD-2
    ms: float = 0.0
    response: str = ""  # the answer as ER7 (CR between segments)

    @property
    def found(self) -> bool:
        return self.status == "OK" and bool(self.identifiers)

    def as_dict(self) -> dict:
        return {"query": self.query.as_dict(), "status": self.status,
                "identifiers": [i.as_dict() for i in self.identifiers], "errors": self.errors, "text": self.text,
                "control_id": self.control_id, "ms": self.ms}


def build_query(pid: Identifier, targets: list[Domain] = (), *, sending_app: str = "IHE", sending_facility: str = "",
                receiving_app: str = "", receiving_facility: str = "", control_id: str | None = None,
                query_tag: str | None = None) -> bytes:
    """The QBP^Q23^QBP_Q21 message (HL7 v2.5, ER7 with CR segment ends) asking for the
    identifiers cross-referenced with ``pid``, in ``targets`` (none: every domain)."""
    from hl7apy.core import Message

    sep = v2.DEFAULT
    m = Message("QBP_Q21", version="2.5")
    m.msh.msh_3 = v2.escape(sending_app, sep)
    if sending_facility:
        m.msh.msh_4 = v2.escape(sending_facility, sep)
    if receiving_app:
        m.msh.msh_5 = v2.escape(receiving_app, sep)
    if receiving_facility:
        m.msh.msh_6 = v2.escape(receiving_facility, sep)
    m.msh.msh_7 = v2.timestamp()
    m.msh.msh_9 = "QBP^Q23^QBP_Q21"
    m.msh.msh_10 = control_id or v2.control_id()
    m.msh.msh_11 = "P"
    m.msh.msh_18 = "UNICODE UTF-8"
    m.qpd.qpd_1 = QUERY_NAME
    m.qpd.qpd_2 = query_tag or uuid.uuid4().hex[:32]
    m.qpd.qpd_3 = pid.er7(sep, with_type=False)
    for d in targets:
        m.qpd.add_field("qpd_4").value = "^^^" + d.er7(sep)
    m.rcp.rcp_1 = "I"
    return m.to_er7().encode("utf-8")


def read_answer(raw: bytes, query: Identifier, control_id: str = "") -> PixAnswer:
    """Read an RSP^K23 (or the ACK rejecting the query)."""
    try:
        msg = v2.parse(raw)
        a = v2.read_ack(raw)
    except v2.Hl7Error as e:
        raise IheError(f"the PIX Manager's answer cannot be read: {e}") from None
    if control_id and a.control_id and a.control_id != control_id:
        raise IheError(f"the PIX Manager answered another message (MSA-2 {a.control_id!r}, "
                       f"we sent {control_id!r})")
    out = PixAnswer(query, a.code, errors=errors(msg), text=a.text, control_id=control_id, response=msg.text)
    if a.code in ("AR", "CR"):
        out.status = "AR"
        return out
    if a.code in ("AE", "CE"):
        out.status = "AE"
        return out
    if a.code not in ("AA", "CA"):
        raise IheError(f"the PIX Manager's answer has an unknown acknowledgment code MSA-1 {a.code!r}")
    if msg.type != "RSP":
        raise IheError(f"the PIX Manager answered {msg.type}^{msg.trigger} with AA, not an RSP^K23")
    qak = msg.value("QAK", 2).strip().upper()
    if qak == "NF":
        out.status = "NF"
        return out
    if qak not in ("OK", ""):
        out.status = "AE"
        out.errors.append(f"query response status QAK-2 {qak}")
        return out
    pid = msg.segment("PID")
    ids = cx_list(msg, pid, 3) if pid is not None else []
    out.identifiers = [i for i in ids if not (i.id == query.id and i.domain.matches(query.domain))]
    out.status = "OK"
    return out


_WHERE = {("QPD", "3"): "the patient identifier (QPD-3)", ("QPD", "4"): "the domains asked for (QPD-4)"}


def errors(msg: v2.Message) -> list[str]:
    """The ERR segments in words: code, its meaning, where, and the peer's text (v2.5 and older)."""
    out = []
    for err in msg.all("ERR"):
        if msg.value(err, 2) or msg.value(err, 3):  # v2.5: ERR-2 location(s), ERR-3 code
            code, desc = msg.value(err, 3, 1), msg.value(err, 3, 2)
            locs = [r.split(msg.sep.component) for r in msg.repetitions(err, 2)]
            texts = [msg.value(err, n) for n in (8, 7, 6, 5)]
        else:  # ERR-1 ELD: segment^sequence^field^code&text
            code, desc = msg.value(err, 1, 4, 1), msg.value(err, 1, 4, 2)
            locs = [msg.raw(err, 1).split(msg.sep.component)[:3]]
            texts = []
        if not desc and code.isdigit():
            desc = v2.ERROR_CODES.get(int(code), "")
        where = []
        for loc in locs:
            seg, fld = (loc[0] if loc else ""), (loc[2] if len(loc) > 2 else "")
            w = _WHERE.get((seg, fld)) or (f"{seg}-{fld}" if seg and fld else seg)
            if w and w not in where:
                where.append(w)
        words = " ".join(x for x in (code, desc) if x)
        if where:
            words += f" in {', '.join(where)}"
        extra = "; ".join(t for t in texts if t)
        out.append(words + (f": {extra}" if extra else ""))
    return out


def query_identifiers(host: str, port: int, pid: Identifier, targets: list[Domain] = (), *, timeout: float = 30,
                      ssl_context: ssl.SSLContext | None = None, sending_app: str = "IHE",
                      sending_facility: str = "", receiving_app: str = "", receiving_facility: str = "") -> PixAnswer:
    """PIX Query (ITI-9): the identifiers the PIX Manager at host:port cross-references with
    ``pid``. Raises PeerUnreachable (no connection, no answer within ``timeout``) or IheError
    (an answer that is no RSP^K23 or ACK)."""
    from ihecli import atna

    control_id = v2.control_id()
    tag = uuid.uuid4().hex[:32]
    raw = build_query(pid, list(targets), sending_app=sending_app, sending_facility=sending_facility,
                      receiving_app=receiving_app, receiving_facility=receiving_facility, control_id=control_id,
                      query_tag=tag)
    started = time.perf_counter()
    outcome = atna.events.SERIOUS_FAILURE
    try:
        with MllpClient(host, port, timeout=timeout, ssl_context=ssl_context) as c:
            answer = c.send(raw)
        out = read_answer(answer, pid, control_id)
        out.query_tag = tag
        out.ms = round((time.perf_counter() - started) * 1000, 1)
        outcome = atna.events.SUCCESS if out.status in ("OK", "NF") else atna.events.MINOR_FAILURE
        return out
    finally:
        atna.record(atna.events.pix_query(
            source=atna.events.Peer.local(f"{sending_app}|{sending_facility}"),
            destination=atna.events.Peer(f"{receiving_app}|{receiving_facility}", host=host),
            query=raw, message_id=control_id, patient_ids=[str(pid)], outcome=outcome))
