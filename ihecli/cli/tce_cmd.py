"""`ihe tce`: the TCE Receiver's cases (RAD-53 Export Instances received by the archive)."""
from __future__ import annotations

from typing import Annotated

import typer

from ihecli.cli import output
from ihecli.cli.options import Db, Json, Out, Storage, open_archive
from ihecli.errors import ExitStatus

app = typer.Typer(help="Teaching file and clinical trial export cases received by the archive: list, export.\n\n"
                       "Example: ihe tce ls", no_args_is_help=True)

Case = Annotated[str, typer.Argument(metavar="CASE",
                                     help="Case number (ihe tce ls) or the manifest's SOP Instance UID.")]


@app.command("ls")
def ls_cmd(ctx: typer.Context,
           incomplete: Annotated[bool, typer.Option("--incomplete",
                                                    help="Only cases still waiting for instances.")] = False,
           db: Db = None, storage: Storage = None, json: Json = False) -> None:
    """List the received TCE cases: manifest title, key text, and how many instances arrived.

    Example: ihe tce ls --incomplete
    """
    from ihecli.kos import tce

    with open_archive(ctx, db, storage, existing=True) as archive:
        cases = tce.list_cases(archive, incomplete_only=incomplete)
    if json:
        output.print_json([{**c.__dict__, "missing": c.missing, "complete": c.complete} for c in cases])
        return
    rows = [{"Case": c.case, "PatientID": c.patient_id, "PatientName": c.patient_name, "Title": c.title,
             "Received": f"{c.received_instances}/{c.references}"
                         + (f" ({c.rejected_instances} rejected)" if c.rejected_instances else ""),
             "State": "complete" if c.complete else "waiting",
             "Delay": "; ".join(c.delay_reasons), "Description": c.description.replace("\n", " ")[:80],
             "Manifest": c.manifest_uid} for c in cases]
    output.table(rows, ["Case", "PatientID", "PatientName", "Title", "Received", "State", "Delay", "Description",
                        "Manifest"])
    done = sum(c.complete for c in cases)
    output.info(f"{len(cases)} {'case' if len(cases) == 1 else 'cases'}, {done} complete")


@app.command("show")
def show_cmd(ctx: typer.Context, case: Case, db: Db = None, storage: Storage = None, json: Json = False) -> None:
    """Show one case: its key text and each referenced instance, received or not.

    Example: ihe tce show 3
    """
    from ihecli.kos import tce

    with open_archive(ctx, db, storage, existing=True) as archive:
        c, refs = tce.find_case(archive, case)
    if json:
        output.print_json({**c.__dict__, "missing": c.missing, "complete": c.complete,
                           "instances": [{**{k: v for k, v in r.__dict__.items() if k != "path"}, "state": r.state}
                                         for r in refs]})
        return
    output.kv([("Case", c.case), ("Manifest", c.manifest_uid), ("Patient", f"{c.patient_name} ({c.patient_id})"),
               ("Title", f"{c.title} ({c.title_code})"), ("Description", c.description),
               ("Delay", "; ".join(c.delay_reasons)), ("Observer", ", ".join(c.observers)),
               ("Received", f"{c.received_instances} of {c.references}"
                            + (f", {c.rejected_instances} rejected in the archive" if c.rejected_instances else ""))])
    output.table([{"SOPInstanceUID": r.sop_uid, "SeriesInstanceUID": r.series_uid, "RetrieveAETitle": r.retrieve_aet,
                   "State": r.state} for r in refs],
                 ["SOPInstanceUID", "SeriesInstanceUID", "RetrieveAETitle", "State"])


@app.command("export")
def export_cmd(ctx: typer.Context, case: Case, out: Out, db: Db = None, storage: Storage = None,
               json: Json = False) -> None:
    """Write a case's manifest (MANIFEST.dcm), its instances (Study/Series/SOP.dcm) and case.json.

    Instances rejected in the archive since (IOCM) are left out and named.

    Example: ihe tce export 3 --out ./case-3
    """
    from ihecli.kos import tce

    with open_archive(ctx, db, storage, existing=True) as archive:
        rep = tce.export_case(archive, case, out)
    if json:
        output.print_json(rep)
    else:
        for uid in rep.missing:
            output.warn(f"not received yet: {uid}")
        for uid in rep.rejected:
            output.warn(f"rejected in the archive, left out: {uid}")
        for uid in rep.lost:
            output.warn(f"file missing from the archive's storage (see ihe archive check): {uid}")
        output.info(f"case {rep.case}: manifest and {output.count(rep.written, 'instance')} written to {rep.out}"
                    + (f", {len(rep.missing)} not received yet" if rep.missing else "")
                    + (f", {len(rep.rejected)} rejected and left out" if rep.rejected else "")
                    + (f", {len(rep.lost)} files missing" if rep.lost else ""))
    if rep.missing or rep.lost:
        raise typer.Exit(ExitStatus.PARTIAL)
