"""Patient Update (RAD-12, RAD TF-2 4.12) into the archive index, for Patient Information
Reconciliation (PIR, RAD TF-1 4): ADT A01/A04/A08/A31 set demographics, A40 merges a patient
into another, A47 changes a patient's identifier.

Reconciliation happens in the index only (patients rows and studies.patient_fk), in one
transaction per message: C-FIND answers with the new identity at once, whatever the number of
instances. Stored files are not rewritten; ``ihecli.workflow.pir`` coerces their headers when
they are retrieved.

Patient lookup: PID-3 (or MRG-1) identifiers in order; an identifier matches the archive's
patient with that ID and the assigning authority's namespace or universal id as issuer, else
the one with that ID and no issuer (objects often carry none).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from ihecli.archive import schema as s
from ihecli.archive import tables_hl7 as t
from ihecli.archive.ingest import fold
from ihecli.hl7.v2 import Hl7Error, Message

NULL = '""'  # HL7's explicit null: delete the value

# Statements built once (a feed runs them hundreds of times a second); an UPDATE without
# .values() sets the columns its parameters name
Q_BY_PID = select(s.patients.c.id, s.patients.c.pid, s.patients.c.issuer).where(s.patients.c.pid == bindparam("q_pid"))
U_PATIENT = update(s.patients).where(s.patients.c.id == bindparam("q_id"))
U_MARK = update(t.hl7_reconciled).where(t.hl7_reconciled.c.patient_fk == bindparam("q_id"))
I_MARK = insert(t.hl7_reconciled)


@dataclass(frozen=True)
class PatientIdent:
    """One CX identifier: ID and assigning authority (namespace, universal id)."""

    pid: str
    namespace: str = ""
    universal: str = ""

    @property
    def issuers(self) -> list[str]:
        return [i for i in dict.fromkeys((self.namespace, self.universal)) if i]

    @property
    def issuer(self) -> str:
        """The issuer a new index row gets (DICOM Issuer of Patient ID: the namespace first)."""
        return self.namespace or self.universal

    def __str__(self) -> str:
        return self.pid + (f" ({self.issuer})" if self.issuer else "")


def identifiers(msg: Message, seg: list[str] | None, field: int) -> list[PatientIdent]:
    """The CX identifiers of a field (PID-3, MRG-1), nulls and empty IDs left out."""
    out = []
    for rep in msg.repetitions(seg, field):
        comps = rep.split(msg.sep.component)
        pid = msg.unescape(comps[0]).strip()
        if not pid or pid == NULL:
            continue
        hd = comps[3].split(msg.sep.subcomponent) if len(comps) > 3 else []
        ns = msg.unescape(hd[0]).strip() if hd else ""
        uid = msg.unescape(hd[1]).strip() if len(hd) > 1 else ""
        out.append(PatientIdent(pid[:64], ns[:64], uid[:64]))
    return out


_PN_BAD = re.compile(r"[\^=\\]")


def person_name(msg: Message, seg: list[str] | None, field: int) -> str | None:
    """An XPN field as a DICOM PN: alphabetic, ideographic and phonetic groups from the
    repetitions' name representation codes (XPN-8). None: not sent; '': HL7 null."""
    raw = msg.raw(seg, field)
    if not raw:
        return None
    if raw == NULL:
        return ""
    groups: dict[str, str] = {}
    for rep in msg.repetitions(seg, field):
        comps = rep.split(msg.sep.component)

        def c(n: int) -> str:
            if n > len(comps):
                return ""
            v = msg.unescape(comps[n - 1].split(msg.sep.subcomponent)[0]).strip()
            return "" if v == NULL else _PN_BAD.sub(" ", v)[:64]

        # XPN: family^given^further given^suffix^prefix; DICOM PN: family^given^middle^prefix^suffix
        pn = "^".join((c(1), c(2), c(3), c(5), c(4))).rstrip("^")
        kind = {"I": "I", "P": "P"}.get(c(8).upper(), "A")
        if pn and kind not in groups:
            groups[kind] = pn
    if not groups:
        return ""
    return "=".join((groups.get("A", ""), groups.get("I", ""), groups.get("P", ""))).rstrip("=")


def _date(msg: Message, seg, field: int) -> str | None:
    raw = msg.raw(seg, field)
    if not raw:
        return None
    if raw == NULL:
        return ""
    v = msg.value(seg, field, 1)
    m = re.match(r"(\d{8})", v)
    return m.group(1) if m else None


def _sex(msg: Message, seg, field: int) -> str | None:
    raw = msg.raw(seg, field)
    if not raw:
        return None
    if raw == NULL:
        return ""
    v = msg.value(seg, field, 1).strip().upper()
    return v if v in ("M", "F", "O") else ""  # HL7 U, A, N: unknown in DICOM (empty)


def demographics(msg: Message, pid_seg: list[str] | None) -> dict:
    """Index column values from a PID segment; only what the message sends (None: left alone)."""
    values: dict = {}
    name = person_name(msg, pid_seg, 5)
    if name is not None:
        values.update(name=name or None, name_ci=name.upper() if name else None, name_fold=fold(name) if name else None)
        if name and not name.isascii():
            values["charset"] = "ISO_IR 192"
    bd = _date(msg, pid_seg, 7)
    if bd is not None:
        values["birth_date"] = bd or None
    sex = _sex(msg, pid_seg, 8)
    if sex is not None:
        values["sex"] = sex or None
    return values


def find_patient(conn: Connection, idents: list[PatientIdent]):
    """The archive's patient row (id, pid, issuer) for the first identifier that has one."""
    for ident in idents:
        rows = conn.execute(Q_BY_PID, {"q_pid": ident.pid}).all()
        if not rows:
            continue
        for issuer in ident.issuers:
            for r in rows:
                if r.issuer == issuer:
                    return r
        for r in rows:
            if r.issuer == "":
                return r
        if not ident.issuers and len(rows) == 1:
            return rows[0]
    return None


def _mark(conn: Connection, patient_id: int, at: datetime) -> None:
    """Retrieves of this patient's instances compare their headers with the index from now on."""
    if not conn.execute(U_MARK, {"q_id": patient_id, "updated": at}).rowcount:
        conn.execute(I_MARK, {"patient_fk": patient_id, "updated": at})


def _pid_segments(msg: Message) -> list[list[str]]:
    pids = msg.all("PID")
    if not pids:
        raise Hl7Error("no PID segment", code=100, location=("PID", 1, 0, 0))
    return pids


def _require_ids(msg: Message, seg, field: int, name: str, seq: int = 1) -> list[PatientIdent]:
    ids = identifiers(msg, seg, field)
    if not ids:
        raise Hl7Error(f"{name}-{field} has no patient identifier", code=101, location=(name, seq, field, 1))
    return ids


def update_patient(conn: Connection, msg: Message, at: datetime) -> str:
    """RAD-12 A01/A04/A08/A31: the demographics of PID-5/7/8 replace the archive's (a patient
    not known yet is created). Returns a line saying what happened."""
    pid_seg = _pid_segments(msg)[0]
    ids = _require_ids(msg, pid_seg, 3, "PID")
    values = demographics(msg, pid_seg)
    row = find_patient(conn, ids)
    if row is None:
        first = ids[0]
        new_id = conn.execute(insert(s.patients).values(pid=first.pid, issuer=first.issuer, **values)) \
            .inserted_primary_key[0]
        _mark(conn, new_id, at)
        return f"patient {first} created"
    if values:
        conn.execute(U_PATIENT, {"q_id": row.id, **values})
        _mark(conn, row.id, at)
    return f"patient {row.pid} updated"


def _retire(conn: Connection, row, patient_id: int, event: str, msg: Message, at: datetime) -> None:
    conn.execute(insert(t.hl7_patient_ids).values(pid=row.pid, issuer=row.issuer, patient_fk=patient_id,
                                                  event=event, control_id=msg.control_id, at=at))


def _move_orders(conn: Connection, old_pid: str, new: PatientIdent, at: datetime) -> None:
    """The orders of a merged or renamed patient follow it (RAD-4/13 orders kept by the feed)."""
    o = t.hl7_orders
    conn.execute(update(o).where(o.c.pid == old_pid).values(pid=new.pid, issuer=new.issuer, updated=at))


def merge_patients(conn: Connection, msg: Message, at: datetime) -> str:
    """RAD-12 A40: each MRG-1 patient (prior) merges into its PID-3 patient (surviving): the
    prior's studies move to the surviving patient, whose demographics come from the PID
    segment; the prior ID is retired. A surviving patient the archive does not know yet is the
    prior one under its new ID. An unknown prior patient refuses the whole message (AE 204)."""
    pids, mrgs = _pid_segments(msg), msg.all("MRG")
    if not mrgs:
        raise Hl7Error("A40 without an MRG segment", code=100, location=("MRG", 1, 0, 0))
    done = []
    for seq, (pid_seg, mrg_seg) in enumerate(zip(pids, mrgs), 1):
        target_ids = _require_ids(msg, pid_seg, 3, "PID", seq)
        prior_ids = _require_ids(msg, mrg_seg, 1, "MRG", seq)
        prior = find_patient(conn, prior_ids)
        if prior is None:
            raise Hl7Error(f"unknown patient {prior_ids[0]} in MRG-1: nothing merged", code=204,
                           location=("MRG", seq, 1, 1))
        target = find_patient(conn, target_ids)
        values = demographics(msg, pid_seg)
        if target is not None and target.id == prior.id:
            raise Hl7Error(f"MRG-1 and PID-3 name the same patient {prior.pid}: nothing merged", code=205,
                           location=("MRG", seq, 1, 1))
        if target is None:
            new = target_ids[0]
            issuer = "" if prior.issuer == "" else new.issuer  # keep the form the patient's objects use
            conn.execute(update(s.patients).where(s.patients.c.id == prior.id)
                         .values(pid=new.pid, issuer=issuer, **values))
            _retire(conn, prior, prior.id, "A40", msg, at)
            _move_orders(conn, prior.pid, new, at)
            _mark(conn, prior.id, at)
            done.append(f"patient {prior.pid} merged into {new.pid} (new ID)")
            continue
        moved = conn.execute(update(s.studies).where(s.studies.c.patient_fk == prior.id)
                             .values(patient_fk=target.id)).rowcount
        if values:
            conn.execute(update(s.patients).where(s.patients.c.id == target.id).values(**values))
        conn.execute(delete(s.patients).where(s.patients.c.id == prior.id))
        conn.execute(update(t.hl7_patient_ids).where(t.hl7_patient_ids.c.patient_fk == prior.id)
                     .values(patient_fk=target.id))
        _retire(conn, prior, target.id, "A40", msg, at)
        _move_orders(conn, prior.pid, target_ids[0], at)
        conn.execute(delete(t.hl7_reconciled).where(t.hl7_reconciled.c.patient_fk == prior.id))
        _mark(conn, target.id, at)
        done.append(f"patient {prior.pid} merged into {target.pid} ({moved} studies moved)")
    return "; ".join(done)


def change_patient_identifier(conn: Connection, msg: Message, at: datetime) -> str:
    """RAD-12 A47: the patient of MRG-1 gets the identifier of PID-3 (and the demographics the
    PID segment sends). Unknown MRG-1 patient: AE 204; PID-3 already in use: AE 205 (a merge is
    an A40)."""
    pid_seg = _pid_segments(msg)[0]
    mrg_seg = msg.segment("MRG")
    if mrg_seg is None:
        raise Hl7Error("A47 without an MRG segment", code=100, location=("MRG", 1, 0, 0))
    new_ids = _require_ids(msg, pid_seg, 3, "PID")
    old_ids = _require_ids(msg, mrg_seg, 1, "MRG")
    row = find_patient(conn, old_ids)
    if row is None:
        raise Hl7Error(f"unknown patient {old_ids[0]} in MRG-1: identifier not changed", code=204,
                       location=("MRG", 1, 1, 1))
    clash = find_patient(conn, new_ids)
    if clash is not None and clash.id != row.id:
        raise Hl7Error(f"patient {new_ids[0]} already exists: identifier not changed (A40 merges)", code=205,
                       location=("PID", 1, 3, 1))
    new = new_ids[0]
    issuer = "" if row.issuer == "" else new.issuer
    conn.execute(update(s.patients).where(s.patients.c.id == row.id)
                 .values(pid=new.pid, issuer=issuer, **demographics(msg, pid_seg)))
    _retire(conn, row, row.id, "A47", msg, at)
    _move_orders(conn, row.pid, new, at)
    _mark(conn, row.id, at)
    return f"patient {row.pid} is now {new.pid}"
