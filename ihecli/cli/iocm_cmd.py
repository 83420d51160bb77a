"""`ihe iocm`: rejection notes (IOCM Change Requester, RAD-66 Rejection Note Stored)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.kin_cmd import FromFiles, Observer, RetrieveAet, StoreOpt, To, deliver, kos_result
from ihecli.cli.options import (CallingAet, Db, Description, InstanceOpt, Json, SeriesOpt, Storage, StudyOpt,
                                Timeout, Yes, node_tls, open_archive, state)
from ihecli.errors import IheError, PeerUnreachable, UsageError

app = typer.Typer(help="Image Object Change Management: reject instances with a rejection note.\n\n"
                       "Example: ihe iocm reject --reason quality --instance 1.2.3.4 --to PACS", no_args_is_help=True)


@app.command("reject")
def reject_cmd(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(
        "--reason", metavar="REASON", help="quality (113001), patient-safety (113037), incorrect-mpps (113038), "
                                           "data-retention (113039), or the code.")],
    study: StudyOpt = None,
    series: SeriesOpt = None,
    instance: InstanceOpt = None,
    quality_reason: Annotated[Optional[list[str]], typer.Option(
        "--quality-reason", metavar="WHY", help="With --reason quality: image-artifacts, grid-artifacts, positioning, "
                                                "motion-blur, under-exposed, over-exposed or 111207-111212 "
                                                "(repeatable).")] = None,
    description: Description = None,
    observer: Observer = None,
    to: To = None,
    store: StoreOpt = False,
    from_files: FromFiles = None,
    from_archive: Annotated[bool, typer.Option(
        "--from-archive", help="With --to: find what is rejected in the local archive rather than on the node.")
    ] = False,
    retrieve_aet: RetrieveAet = None,
    yes: Yes = False,
    calling_aet: CallingAet = None,
    timeout: Timeout = 30,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Reject studies, series or instances: shows what will be rejected, asks, then sends the note.

    With --to, what is rejected is found on that Image Manager by C-FIND (or, with
    --from-archive, in the local archive); with --store, in the local archive. One rejection
    note per study references every rejected instance; the Image Manager that receives it
    hides (or, for data-retention, deletes) them.

    Example: ihe iocm reject --reason quality --quality-reason motion-blur --instance 1.2.3.4 --to PACS --yes
    """
    from ihecli.kos import iocm, selection

    if bool(to) == bool(store):
        raise UsageError("give exactly one of --to NODE or --store")
    code = iocm.reason_code(reason)
    mods = [iocm.quality_reason_code(q) for q in quality_reason or []]
    if mods and code.value != "113001":
        raise UsageError("--quality-reason goes with --reason quality only")
    sel = selection.Selection(list(study or []), list(series or []), list(instance or []))
    if sel.empty:
        raise UsageError("say what to reject: --study, --series or --instance UIDs")
    st = state(ctx).settings()
    if from_files:
        selection.from_files(from_files, sel)
    elif to and not from_archive:
        node = st.node(to)  # an unknown node is said as it is
        try:
            selection.from_node(node, sel, calling_aet=calling_aet or st.calling_aet, timeout=timeout,
                                tls=node_tls(ctx, node))
        except PeerUnreachable:
            raise
        except IheError as e:
            raise IheError(f"{e}; cannot find what to reject there: --from-archive or --from-files "
                           "take it from elsewhere") from None
    else:
        with open_archive(ctx, db, storage) as archive:
            selection.from_archive(archive, sel)
            sel.found = iocm.drop_rejection_notes(archive, sel.found)
            if sel.missing:
                _already_rejected(archive, sel.missing)
    sel.check()
    rows = sel.summary()
    n_studies = len({r["StudyInstanceUID"] for r in rows})
    what = (f"{output.count(len(sel.found), 'instance')} in {len(rows)} series of "
            f"{output.count(n_studies, 'study', 'studies')}")
    if not json:
        output.table(rows, ["PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                            "Instances"])
        output.info(f"to reject ({code.meaning}): {what}")
    for uid in sel.missing:
        output.warn(f"not found, not rejected: {uid}")
    if not yes:
        if not output.err.is_terminal:
            raise UsageError(f"would reject {what}: add --yes to confirm when not on a terminal")
        typer.confirm(f"Reject {what}?", abort=True, err=True)
    docs = iocm.rejection_notes(sel.found, code, quality_reasons=mods, description=description, observer=observer,
                                retrieve_aet=retrieve_aet)
    where = deliver(ctx, docs, iocm.store_rejection_notes, to=to, store=store, out_file=None, db=db,
                    storage=storage, calling_aet=calling_aet, timeout=timeout)
    result = kos_result(docs, where=where)
    result["rejected"] = [str(ds.SOPInstanceUID) for ds in sel.found]
    if json:
        output.print_json(result)
        return
    for d in result["documents"]:
        output.out.print(d["sop_instance_uid"], markup=False)
    output.info(f"rejected {what}: {len(docs)} rejection {'note' if len(docs) == 1 else 'notes'} "
                f"{'stored in' if store else 'sent to'} {where}")


def _already_rejected(archive, uids: list[str]) -> None:
    """Say so when what was asked for is missing because a rejection note took it already."""
    from sqlalchemy import or_, select

    from ihecli.archive.tables_workflow import rejected as rj

    with archive.connect() as conn:
        row = conn.execute(select(rj.c.sop_uid, rj.c.series_uid, rj.c.study_uid, rj.c.code, rj.c.rejected).where(
            or_(rj.c.sop_uid.in_(uids), rj.c.series_uid.in_(uids), rj.c.study_uid.in_(uids))).limit(1)).first()
    if row is not None:
        asked = next(u for u in uids if u in (row.sop_uid, row.series_uid, row.study_uid))
        raise IheError(f"{asked} was already rejected ({row.code}, {row.rejected:%Y-%m-%d %H:%M}): nothing is left "
                       "of it to reject")
