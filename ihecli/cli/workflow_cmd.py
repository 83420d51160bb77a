"""Workflow commands: `ihe dicom commit`, `ihe dicom mpps create|set` (clients, for testers and
scripts) and `ihe archive mpps ls`, `ihe archive rejected ls` (what the archive received)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import PATIENT_HELP, Bind, CallingAet, Db, Json, Keys, Limit, Node, Storage, Timeout, node_tls, state
from ihecli.errors import ExitStatus, UsageError


def _ctx(ctx: typer.Context, node: str, calling_aet: Optional[str]):
    st = state(ctx).settings()
    return st.node(node), calling_aet or st.calling_aet


# -- ihe dicom commit -------------------------------------------------------------------------------
def commit_cmd(
    ctx: typer.Context,
    node: Node,
    paths: Annotated[Optional[list[Path]], typer.Argument(metavar="[PATH]...",
                                                          help="DICOM files and folders whose instances to commit.")] = None,
    study: Annotated[Optional[list[str]], typer.Option(
        "--study", metavar="UID", help="Study Instance UID.")] = None,
    report_port: Annotated[Optional[int], typer.Option(
        "--report-port", min=0, max=65535, metavar="PORT",
        help="Release the association after the request and wait for the report on a new one, "
             "listening on this port (the peer must know us as a node; over TLS when NODE is marked tls).")] = None,
    bind: Bind = None,
    calling_aet: CallingAet = None, timeout: Timeout = 60,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Ask a node to commit to storing instances (Storage Commitment, RAD-10) and print its report.

    Files and folders, or with --study the instances of studies of the local archive. Waits for
    the N-EVENT-REPORT on the same association, or with --report-port on a new one. Exit 0 when
    every instance is committed, 3 when some failed, 1 when none was committed.

    Example: ihe dicom commit IHE_ARCHIVE@127.0.0.1:11112 ~/Downloads/CT-study/
    """
    from ihecli.workflow import stgcmt

    if not paths and not study:
        raise UsageError("say what to commit: files or folders, or --study UID")
    n, aet = _ctx(ctx, node, calling_aet)
    refs = stgcmt.refs_from_files(paths) if paths else []
    if study:
        from pydicom.dataset import Dataset

        from ihecli.cli.archive_cmd import open_archive

        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = list(study)
        with open_archive(ctx, db, storage) as archive:
            refs += [stgcmt.Ref(r.sop_class, r.sop_uid) for r in archive.instances(ident)]
    if not refs:
        raise UsageError("no DICOM instances found to commit")
    listen = (bind or "127.0.0.1", report_port) if report_port is not None else None
    listen_tls = None
    if listen is not None and n.tls:  # a node reached over TLS reports over TLS: our certificate
        from ihecli.net import tls as tlsmod

        listen_tls = tlsmod.context(state(ctx).settings().tls_config(), server=True)
    res = stgcmt.request_commitment(n, refs, calling_aet=aet, timeout=timeout, listen=listen, tls=node_tls(ctx, n),
                                    listen_tls=listen_tls)
    if json:
        output.print_json({"node": res.node, "transaction_uid": res.transaction_uid,
                           "same_association": res.same_association, "retrieve_aet": res.retrieve_aet,
                           "committed": [{"sop_class": r.sop_class, "sop_uid": r.sop_uid} for r in res.committed],
                           "failed": [{"sop_class": r.sop_class, "sop_uid": r.sop_uid, "reason": r.reason,
                                       "reason_text": r.reason_text} for r in res.failed]})
    else:
        rows = [{"SOPInstanceUID": r.sop_uid, "SOPClassUID": r.sop_class, "result": "committed"}
                for r in res.committed]
        rows += [{"SOPInstanceUID": r.sop_uid, "SOPClassUID": r.sop_class,
                  "result": f"failed 0x{r.reason:04X} {r.reason_text}"} for r in res.failed]
        output.table(rows, ["SOPInstanceUID", "SOPClassUID", "result"])
        how = "same association" if res.same_association else "new association"
        output.info(f"transaction {res.transaction_uid}: {len(res.committed)} committed, {len(res.failed)} failed "
                    f"(report on the {how})")
    if res.failed:
        raise typer.Exit(ExitStatus.PARTIAL if res.committed else ExitStatus.REFUSED)


# -- ihe dicom mpps create|set ---------------------------------------------------------------------
mpps_app = typer.Typer(help="Modality Performed Procedure Step client (RAD-6/7, RAD-20/21): create and "
                            "update steps on a node.\n\n"
                            "Example: ihe dicom mpps create RIS --patient-id P1 --modality CT --study 1.2.3",
                       no_args_is_help=True)

JsonFile = Annotated[Optional[Path], typer.Option("--from-json", metavar="FILE", exists=True, dir_okay=False,
                                                  help="Attributes from a JSON file: keywords "
                                                       "({\"PatientID\": \"P1\"}) or the DICOM JSON model.")]
Status = Annotated[Optional[str], typer.Option(
    "--state", metavar="STATE", help="Performed Procedure Step Status: IN PROGRESS, COMPLETED or DISCONTINUED.")]
Uid = Annotated[Optional[str], typer.Option("--uid", metavar="UID",
                                            help="SOP Instance UID of the step (default: a new one).")]


def _apply_keys(ds, keys: Optional[list[str]]):
    from pynetdicom.apps.common import ElementPath

    for k in keys or []:
        if "=" not in k:
            raise UsageError(f"bad key {k!r}: give KEY=VALUE")
        try:
            ds = ElementPath(k).update(ds)
        except Exception as e:
            raise UsageError(f"bad key {k!r}: {e}") from None
    return ds


def _now() -> tuple[str, str]:
    t = datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


@mpps_app.command("create")
def mpps_create_cmd(
    ctx: typer.Context,
    node: Node,
    patient_id: Annotated[Optional[str], typer.Option("--patient-id", metavar="ID", help="Patient ID.")] = None,
    patient_name: Annotated[Optional[str], typer.Option("--patient-name", metavar="NAME",
                                                        help="Patient name, e.g. DOE^JOHN.")] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", metavar="UID",
                                                       help="Study Instance UID.")] = None,
    accession: Annotated[Optional[str], typer.Option("--accession", metavar="ACC", help="Accession number.")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", metavar="MOD", help="Modality, e.g. CT.")] = None,
    pps_id: Annotated[Optional[str], typer.Option("--pps-id", metavar="ID",
                                                  help="Performed Procedure Step ID (default: from the time).")] = None,
    description: Annotated[Optional[str], typer.Option(
        "--description", metavar="TEXT", help="Free-text description of what the command creates.")] = None,
    uid: Uid = None, from_json: JsonFile = None, keys: Keys = None,
    calling_aet: CallingAet = None, timeout: Timeout = 30, json: Json = False,
) -> None:
    """Start a step: MPPS N-CREATE with status IN PROGRESS (RAD-6); prints its SOP Instance UID.

    Flags fill the usual attributes (modality OT unless given; --description is the Performed
    Procedure Step Description; without --study a new Study Instance UID); --from-json and -k
    add or override any.

    Example: ihe dicom mpps create RIS --patient-id P1 --patient-name DOE^JOHN --modality CT --accession A1
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from ihecli.workflow import mpps

    n, aet = _ctx(ctx, node, calling_aet)
    day, hour = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient_name or ""
    ds.PatientID = patient_id or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    items = []
    for study_uid in study or [generate_uid()]:  # one scheduled step per study (a group case)
        item = Dataset()
        item.StudyInstanceUID = study_uid
        item.AccessionNumber = accession or ""
        item.RequestedProcedureID = ""
        item.RequestedProcedureDescription = ""
        item.ScheduledProcedureStepID = ""
        item.ScheduledProcedureStepDescription = ""
        item.ScheduledProtocolCodeSequence = []
        item.ReferencedStudySequence = []
        items.append(item)
    ds.ScheduledStepAttributesSequence = items
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = pps_id or (day[2:] + hour)
    ds.PerformedStationAETitle = aet
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = day
    ds.PerformedProcedureStepStartTime = hour
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = description or ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = modality or "OT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    if from_json:
        ds.update(mpps.dataset_from_json(from_json.read_text(encoding="utf-8")))
    ds = _apply_keys(ds, keys)
    sop_uid = uid or generate_uid()
    mpps.send_create(n, sop_uid, ds, calling_aet=aet, timeout=timeout, tls=node_tls(ctx, n))
    if json:
        output.print_json({"node": str(n), "sop_uid": sop_uid, "status": "IN PROGRESS"})
    else:
        output.out.print(sop_uid, markup=False, highlight=False)
        output.info(f"step {sop_uid} IN PROGRESS on {n}")


@mpps_app.command("set")
def mpps_set_cmd(
    ctx: typer.Context,
    node: Node,
    sop_uid: Annotated[str, typer.Argument(metavar="UID", help="SOP Instance UID of the step.")],
    status: Status = None,
    series_from: Annotated[Optional[list[Path]], typer.Option(
        "--series-from", metavar="PATH", help="Performed Series Sequence from these DICOM files or folders "
                                              "(repeatable).")] = None,
    from_json: JsonFile = None, keys: Keys = None,
    calling_aet: CallingAet = None, timeout: Timeout = 30, json: Json = False,
) -> None:
    """Update a step: MPPS N-SET (RAD-7), e.g. to COMPLETED with the series it produced.

    For COMPLETED and DISCONTINUED the end date and time are set to now unless given.

    Example: ihe dicom mpps set RIS 1.2.826.0.1.3680043.2.1 --state COMPLETED --series-from ./study/
    """
    from pydicom.dataset import Dataset

    from ihecli.workflow import mpps

    n, aet = _ctx(ctx, node, calling_aet)
    ds = Dataset()
    if status:
        st = status.strip().upper().replace("_", " ")
        if st not in mpps.STATES:
            raise UsageError(f"bad --state {status!r}: COMPLETED, DISCONTINUED or IN PROGRESS")
        ds.PerformedProcedureStepStatus = st
        if st != mpps.IN_PROGRESS:
            ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = _now()
    about = Dataset()  # the step's patient and studies, for the audit record
    if series_from:
        items = mpps.performed_series(series_from, about)
        if not items:
            raise UsageError("no DICOM instances under --series-from")
        ds.PerformedSeriesSequence = items
    if from_json:
        ds.update(mpps.dataset_from_json(from_json.read_text(encoding="utf-8")))
    ds = _apply_keys(ds, keys)
    if not len(ds):
        raise UsageError("nothing to set: give --state, --series-from, --from-json or -k")
    mpps.send_set(n, sop_uid, ds, calling_aet=aet, timeout=timeout, tls=node_tls(ctx, n), about=about or None)
    if json:
        output.print_json({"node": str(n), "sop_uid": sop_uid, "status": ds.get("PerformedProcedureStepStatus")})
    else:
        output.info(f"step {sop_uid} updated on {n}" + (f": {ds.PerformedProcedureStepStatus}" if status else ""))


# -- ihe archive mpps ls / rejected ls ---------------------------------------------------------------
archive_mpps_app = typer.Typer(help="Performed Procedure Steps the archive received (PPS Manager).\n\n"
                                    "Example: ihe archive mpps ls --state COMPLETED", no_args_is_help=True)


@archive_mpps_app.command("ls")
def archive_mpps_ls_cmd(
    ctx: typer.Context,
    status: Status = None,
    patient: Annotated[Optional[str], typer.Option("--patient", metavar="ID", help=PATIENT_HELP)] = None,
    limit: Limit = None, db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """List the steps received (newest first), with their forwarding and IAN state.

    Example: ihe archive mpps ls --state 'IN PROGRESS'
    """
    from ihecli.cli.archive_cmd import open_archive
    from ihecli.workflow import mpps

    with open_archive(ctx, db, storage, existing=True) as archive:
        steps = mpps.list_steps(archive.engine, status=status, patient=patient, limit=limit)
    rows = [s.__dict__ for s in steps]
    if json:
        output.print_json(rows)
        return
    output.table([{**r, "created": r["created"].strftime("%Y-%m-%d %H:%M:%S")} for r in rows],
                 ["created", "status", "patient_id", "modality", "accession", "pps_id", "calling_aet", "forwarded",
                  "ian", "sop_uid"])
    output.found(len(rows), "step", limit=limit)


def rejected_ls_cmd(ctx: typer.Context, limit: Limit = None, db: Db = None, storage: Storage = None,
                    json: Json = False) -> None:
    """List instances hidden or deleted by rejection notes (IOCM), newest first.

    Example: ihe archive rejected --limit 20
    """
    from ihecli.cli.archive_cmd import open_archive
    from ihecli.workflow import iocm

    with open_archive(ctx, db, storage, existing=True) as archive:
        rows = iocm.list_rejected(archive.engine, limit=limit)
    if json:
        output.print_json(rows)
        return
    output.table([{**r, "rejected": r["rejected"].strftime("%Y-%m-%d %H:%M:%S"),
                   "state": "deleted" if r["path"] is None else "hidden"} for r in rows],
                 ["rejected", "code", "state", "study_uid", "sop_uid", "note_uid"])
    output.found(len(rows), "rejected instance", limit=limit)


def add_dicom_commands(app: typer.Typer) -> None:
    app.command("commit")(commit_cmd)
    app.add_typer(mpps_app, name="mpps")


def add_archive_commands(app: typer.Typer) -> None:
    app.add_typer(archive_mpps_app, name="mpps")
    app.command("rejected")(rejected_ls_cmd)
