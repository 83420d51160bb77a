"""TCE Receiver: the cases received by RAD-53 Export Instances (IHE RAD TF-2 4.53).

The archive indexes each TCE manifest when it is stored (ihecli.archive.tables_kos); a case is
a manifest with the instances it references, complete once all of them are in the archive,
whichever arrived first.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from ihecli.archive import schema as s
from ihecli.archive import tables_kos as t
from ihecli.archive.tables_workflow import rejected as rj
from ihecli.errors import IheError, UsageError
from ihecli.files import write_whole
from ihecli.kos import codes


@dataclass
class TceCase:
    case: int
    manifest_uid: str
    study_uid: str
    patient_id: str
    patient_name: str
    title: str  # meaning
    title_code: str  # SCHEME:VALUE
    description: str
    delay_reasons: list[str]
    modifiers: list[str]
    observers: list[str]
    references: int
    received_instances: int
    received: datetime | None
    rejected_instances: int = 0  # rejected in the archive (IOCM) since: they will not come

    @property
    def missing(self) -> int:
        return self.references - self.received_instances - self.rejected_instances

    @property
    def complete(self) -> bool:
        return self.references > 0 and self.missing == 0


@dataclass
class CaseReference:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    retrieve_aet: str
    received: bool
    path: str = ""
    rejected: str = ""  # the rejection note's title code, when the instance was rejected

    @property
    def state(self) -> str:
        return f"rejected ({self.rejected})" if self.rejected else "received" if self.received else "waiting"


@dataclass
class ExportReport:
    case: int
    out: str
    manifest: str
    written: int = 0
    missing: list[str] = field(default_factory=list)  # referenced, not received
    rejected: list[str] = field(default_factory=list)  # referenced, rejected in the archive: not written
    lost: list[str] = field(default_factory=list)  # received, but the file is gone (see ihe archive check)


def _case(row, refs: int, have: int, rejected: int = 0) -> TceCase:
    mods = json.loads(row.modifiers or "[]")
    delay = [m[2] or m[0] for m in mods if m[0] in codes.TCE_DELAY_REASONS or "delay" in (m[2] or "").lower()]
    return TceCase(case=row.id, manifest_uid=row.sop_uid, study_uid=row.study_uid or "",
                   patient_id=row.patient_id or "", patient_name=row.patient_name or "",
                   title=row.title_meaning or row.title_value, title_code=f"{row.title_scheme}:{row.title_value}",
                   description=row.description or "", delay_reasons=delay,
                   modifiers=[f"{m[1]}:{m[0]} {m[2]}".strip() for m in mods],
                   observers=json.loads(row.observers or "[]"), references=refs, received_instances=have,
                   received=row.received, rejected_instances=rejected)


def list_cases(archive, *, incomplete_only: bool = False) -> list[TceCase]:
    """Every TCE case whose manifest the archive holds, oldest first, with its completeness."""
    t.record_missing(archive)
    kd, kr, inst = t.kos_documents, t.kos_references, s.instances
    not_rejected = ~select(rj.c.sop_uid).where(rj.c.sop_uid == kr.c.sop_uid).exists()
    have = select(func.count()).select_from(kr.join(inst, inst.c.sop_uid == kr.c.sop_uid)) \
        .where(kr.c.kos_fk == kd.c.id, not_rejected).scalar_subquery()
    gone = select(func.count()).select_from(kr.join(rj, rj.c.sop_uid == kr.c.sop_uid)) \
        .where(kr.c.kos_fk == kd.c.id).scalar_subquery()
    total = select(func.count()).select_from(kr).where(kr.c.kos_fk == kd.c.id).scalar_subquery()
    q = (select(kd, total.label("n_refs"), have.label("n_have"), gone.label("n_rejected"))
         .where(kd.c.tce.is_(True), select(inst.c.id).where(inst.c.sop_uid == kd.c.sop_uid).exists())
         .order_by(kd.c.id))
    with archive.connect() as conn:
        cases = [_case(r, r.n_refs, r.n_have, r.n_rejected) for r in conn.execute(q)]
    return [c for c in cases if not c.complete] if incomplete_only else cases


def find_case(archive, case: str) -> tuple[TceCase, list[CaseReference]]:
    """One case by its number or its manifest's SOP Instance UID, with each reference's state."""
    cases = list_cases(archive)
    match = [c for c in cases if str(c.case) == case.strip() or c.manifest_uid == case.strip()]
    if not match:
        raise UsageError(f"no TCE case {case!r} in the archive (ihe tce ls lists them)")
    c = match[0]
    kr, inst = t.kos_references, s.instances
    q = (select(kr.c.study_uid, kr.c.series_uid, kr.c.sop_uid, kr.c.sop_class, kr.c.retrieve_aet, inst.c.path,
                rj.c.code)
         .select_from(kr.outerjoin(inst, inst.c.sop_uid == kr.c.sop_uid).outerjoin(rj, rj.c.sop_uid == kr.c.sop_uid))
         .where(kr.c.kos_fk == c.case).order_by(kr.c.id))
    with archive.connect() as conn:
        refs = [CaseReference(r.study_uid or "", r.series_uid or "", r.sop_uid, r.sop_class or "",
                              r.retrieve_aet or "", r.path is not None and not r.code, r.path or "", r.code or "")
                for r in conn.execute(q)]
    return c, refs


def export_case(archive, case: str, out: Path) -> ExportReport:
    """Write a case: DIR/MANIFEST.dcm, DIR/<Study>/<Series>/<SOP>.dcm for each received instance
    and DIR/case.json with the key text; references not received are listed as missing."""
    try:
        return _export_case(archive, case, out)
    except OSError as e:  # our side: a full or read-only disk, a folder we may not write
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        raise IheError(f"cannot write case {case} to {out}: {where}{e.strerror or e}") from None


def _export_case(archive, case: str, out: Path) -> ExportReport:
    from ihecli.archive.store import safe_name

    c, refs = find_case(archive, case)
    with archive.connect() as conn:
        rel = conn.execute(select(s.instances.c.path).where(s.instances.c.sop_uid == c.manifest_uid)).scalar()
    if rel is None:
        raise IheError(f"the manifest of case {c.case} is no longer in the archive")
    out.mkdir(parents=True, exist_ok=True)
    rep = ExportReport(case=c.case, out=str(out), manifest=str(out / "MANIFEST.dcm"))
    try:
        shutil.copyfile(archive.file_path(rel), out / "MANIFEST.dcm")
    except FileNotFoundError:
        raise IheError(f"the manifest of case {c.case} is indexed but its file is missing (see ihe archive check)") \
            from None
    from ihecli.workflow.pir import Reconciler

    rec = Reconciler(archive, [r for r in refs if r.received])  # PIR: the index's patient
    for r in refs:
        if r.rejected:
            rep.rejected.append(r.sop_uid)
            continue
        if not r.received:
            rep.missing.append(r.sop_uid)
            continue
        target = out / safe_name(r.study_uid) / safe_name(r.series_uid) / f"{safe_name(r.sop_uid)}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        src = archive.file_path(r.path)
        try:
            data = rec.part10(r, src) if rec else None
            write_whole(target, data, copy_from=src if data is None else None)
        except FileNotFoundError as e:
            if e.filename and Path(e.filename) != Path(src):  # not the stored file: the case's folder
                raise
            rep.lost.append(r.sop_uid)
            continue
        rep.written += 1
    doc = {"case": c.case, "manifest": c.manifest_uid, "title": c.title, "title_code": c.title_code,
           "description": c.description, "delay_reasons": c.delay_reasons, "observers": c.observers,
           "patient_id": c.patient_id, "patient_name": c.patient_name, "study": c.study_uid,
           "references": c.references, "written": rep.written, "missing": rep.missing + rep.lost,
           "rejected": rep.rejected}
    (out / "case.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return rep
