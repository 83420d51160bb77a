"""Procedure Scheduled (RAD-4) and Procedure Updated (RAD-13), RAD TF-2 4.4 and 4.13: ORM^O01
(HL7 v2.3.1) and OMI^O23 (HL7 v2.5.1 option) kept as orders in the archive database
(``hl7_orders``), one row per order and scheduled procedure step.

ORC-1 says what happens: NW (new) and XO (changed) write the order, SC a status change (ORC-5),
CA and DC cancel or discontinue it; cancelling an order the archive does not know is refused
(AE 204).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from ihecli.archive import tables_hl7 as t
from ihecli.hl7.v2 import Hl7Error, Message
from ihecli.workflow.adt import identifiers, person_name

# ORC-5 order status (HL7 table 0038) and ORC-1 order control (table 0119) -> our status
STATUS = {"SC": "SCHEDULED", "IP": "IN PROGRESS", "CM": "COMPLETED", "CA": "CANCELED", "DC": "DISCONTINUED",
          "HD": "ON HOLD", "A": "SCHEDULED"}
CONTROL_STATUS = {"NW": "SCHEDULED", "CA": "CANCELED", "DC": "DISCONTINUED", "OC": "CANCELED",
                  "CR": "CANCELED", "OD": "DISCONTINUED"}
CONTROLS = {"NW", "XO", "SC", "CA", "DC", "OC", "CR", "OD", "SN", "NA", "OK", "XX", "HD", "RL"}


def _groups(msg: Message) -> list[dict[str, list]]:
    """Each ORC with the OBR, TQ1, IPC and ZDS segments that follow it."""
    groups: list[dict[str, list]] = []
    for seg in msg.segments:
        name = seg[0]
        if name == "ORC":
            groups.append({"ORC": seg, "OBR": None, "TQ1": None, "IPC": [], "ZDS": None})
        elif groups and name in ("OBR", "TQ1", "ZDS") and groups[-1][name] is None:
            groups[-1][name] = seg
        elif groups and name == "IPC":
            groups[-1]["IPC"].append(seg)
    return groups


def record_order(conn: Connection, msg: Message, at: datetime) -> str:
    """RAD-4/RAD-13: write the orders of an ORM^O01 or OMI^O23 message. Returns what happened."""
    groups = _groups(msg)
    if not groups:
        raise Hl7Error("no ORC segment: not an order", code=100, location=("ORC", 1, 0, 0))
    pid_seg = msg.segment("PID")
    ids = identifiers(msg, pid_seg, 3) if pid_seg else []
    name = person_name(msg, pid_seg, 5) if pid_seg else None
    patient = {"pid": ids[0].pid if ids else None, "issuer": ids[0].issuer if ids else None,
               "patient_name": name or None}
    done = []
    for seq, g in enumerate(groups, 1):
        orc, obr, tq1, zds = g["ORC"], g["OBR"], g["TQ1"], g["ZDS"]
        control = msg.value(orc, 1).strip().upper()
        if control not in CONTROLS:
            raise Hl7Error(f"unknown order control {control!r} in ORC-1", code=103, location=("ORC", seq, 1, 0))
        placer = msg.value(orc, 2) or msg.value(obr, 2)
        filler = msg.value(orc, 3) or msg.value(obr, 3)
        if not placer and not filler:
            raise Hl7Error("neither placer (ORC-2) nor filler order number (ORC-3)", code=101,
                           location=("ORC", seq, 2, 1))
        key = and_(t.hl7_orders.c.placer_order == placer, t.hl7_orders.c.filler_order == filler)
        status = STATUS.get(msg.value(orc, 5).strip().upper()) or CONTROL_STATUS.get(control)
        if control in ("CA", "DC", "OC", "CR", "OD", "SC", "HD", "RL"):  # about an order already known
            found = conn.execute(update(t.hl7_orders).where(key).values(
                order_control=control, updated=at, control_id=msg.control_id, message=msg.text,
                **({"status": status} if status else {}))).rowcount
            if not found:
                raise Hl7Error(f"unknown order {placer or '-'}/{filler or '-'}: nothing changed", code=204,
                               location=("ORC", seq, 2, 1))
            done.append(f"order {placer or filler} {status or control}".lower())
            continue
        steps = g["IPC"] or [None]
        for ipc in steps:
            scheduled = msg.value(tq1, 7) or msg.value(orc, 7, 4) or msg.value(obr, 27, 4)
            row = dict(
                placer_order=placer, filler_order=filler,
                sps_id=msg.value(ipc, 4) if ipc else msg.value(obr, 20),
                order_control=control, status=status or "SCHEDULED", **patient,
                accession=(msg.value(ipc, 1) if ipc else "") or msg.value(obr, 18) or None,
                requested_procedure_id=(msg.value(ipc, 2) if ipc else "") or msg.value(obr, 19) or None,
                study_uid=((msg.value(ipc, 3) if ipc else "") or msg.value(zds, 1))[:64] or None,
                modality=(msg.value(ipc, 5) if ipc else "") or msg.value(obr, 24) or None,
                procedure_code=msg.value(obr, 4, 1) or None, procedure=msg.value(obr, 4, 2) or None,
                scheduled=scheduled or None, station_aet=(msg.value(ipc, 9) if ipc else "") or None,
                message_type=f"{msg.type}^{msg.trigger}", control_id=msg.control_id, updated=at, message=msg.text)
            exists = conn.execute(select(t.hl7_orders.c.id).where(
                key, t.hl7_orders.c.sps_id == row["sps_id"])).scalar()
            if exists is None:
                conn.execute(insert(t.hl7_orders).values(received=at, **row))
                done.append(f"order {placer or filler} scheduled")
            else:
                conn.execute(update(t.hl7_orders).where(t.hl7_orders.c.id == exists).values(**row))
                done.append(f"order {placer or filler} updated")
    return "; ".join(dict.fromkeys(done))


def list_orders(conn: Connection, *, pid: str | None = None, accession: str | None = None,
                limit: int | None = None) -> list[dict]:
    """Orders kept, newest first."""
    o = t.hl7_orders
    q = select(o.c.placer_order, o.c.filler_order, o.c.accession, o.c.status, o.c.pid, o.c.patient_name,
               o.c.modality, o.c.procedure, o.c.scheduled, o.c.study_uid, o.c.sps_id, o.c.message_type,
               o.c.updated).order_by(o.c.updated.desc(), o.c.id.desc())
    if pid:  # DICOM-style wildcards
        if "*" in pid or "?" in pid:
            pattern = pid.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(o.c.pid.like(pattern.replace("*", "%").replace("?", "_"), escape="\\"))
        else:
            q = q.where(o.c.pid == pid)
    if accession:
        q = q.where(o.c.accession == accession)
    if limit:
        q = q.limit(limit)
    return [dict(r._mapping) for r in conn.execute(q)]
