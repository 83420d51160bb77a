"""Searching the Audit Record Repository's stored events (what `ihe audit query` shows)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select, true

from ihecli.archive.tables_audit import audit_events as ev
from ihecli.archive.tables_audit import audit_participants as ap


@dataclass
class StoredEvent:
    id: int
    received: datetime
    event_time: datetime | None
    event: str  # "110112 Query"
    types: str  # "ITI-18 Registry Stored Query"
    action: str
    outcome: int | None
    users: list[str]
    patients: list[str]
    source: str
    peer: str
    transport: str
    format: str
    error: str
    message: str | None = None


def _like(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
            .replace("?", "_"))


def _participant(kind: str, value: str):
    wild = "*" in value or "?" in value
    cond = ap.c.value.like(_like(value), escape="\\") if wild else ap.c.value == value
    return exists(select(ap.c.id).where(ap.c.event_fk == ev.c.id, ap.c.kind == kind, cond))


def query_events(engine, *, since: datetime | None = None, until: datetime | None = None, event: str | None = None,
                 user: str | None = None, patient: str | None = None, outcome_failed: bool = False,
                 limit: int | None = 1000, with_message: bool = False) -> list[StoredEvent]:
    """Stored events, newest first. ``event``: an EventID code or name, or an EventTypeCode code or
    name (110112, Query, ITI-18, Application Start); ``user``/``patient``: exact, or with ``*``."""
    conds = []
    if since is not None:
        conds.append(func.coalesce(ev.c.event_time, ev.c.received) >= since)
    if until is not None:
        conds.append(func.coalesce(ev.c.event_time, ev.c.received) < until)
    if event:
        low = event.strip().lower()
        wrapped_codes = func.lower(", " + func.coalesce(ev.c.event_types, "") + ", ")
        wrapped_names = func.lower(", " + func.coalesce(ev.c.type_names, "") + ", ")
        pat = "%, " + _like(low) + ", %"
        conds.append(or_(func.lower(ev.c.event_id) == low, func.lower(ev.c.event_name) == low,
                         wrapped_codes.like(pat, escape="\\"), wrapped_names.like(pat, escape="\\")))
    if user:
        conds.append(_participant("user", user))
    if patient:
        conds.append(_participant("patient", patient))
    if outcome_failed:
        conds.append(ev.c.outcome != 0)
    q = select(ev).where(and_(true(), *conds)).order_by(func.coalesce(ev.c.event_time, ev.c.received).desc(), ev.c.id.desc())
    if limit:
        q = q.limit(limit)
    out = []
    with engine.connect() as conn:
        for r in conn.execute(q).mappings():
            codes = [c for c in (r["event_types"] or "").split(", ") if c]
            names = (r["type_names"] or "").split(", ")
            out.append(StoredEvent(
                id=r["id"], received=r["received"], event_time=r["event_time"],
                event=" ".join(x for x in (r["event_id"], r["event_name"]) if x),
                types="; ".join(" ".join(x for x in (c, names[i] if i < len(names) else "") if x)
                                for i, c in enumerate(codes)),
                action=r["action"] or "", outcome=r["outcome"], users=(r["users"] or "").split("\n") if r["users"] else [],
                patients=(r["patients"] or "").split("\n") if r["patients"] else [], source=r["source_id"] or "",
                peer=r["peer"] or "", transport=r["transport"] or "", format=r["format"], error=r["error"] or "",
                message=r["message"] if with_message else None))
    return out
