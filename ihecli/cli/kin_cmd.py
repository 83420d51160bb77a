"""`ihe kin`: Key Image Notes (KIN Evidence Creator, RAD-29 Store Key Image Note)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (CallingAet, Db, Description, InstanceOpt, Json, OptionalOut, SeriesOpt, Storage,
                                StudyOpt, TITLE_HELP, Timeout, node_tls, open_archive, state)
from ihecli.errors import IheError, UsageError
from ihecli.files import write_whole

app = typer.Typer(help="Key Image Notes: select key images of a study, title and describe them, send or store.\n\n"
                       "Example: ihe kin create --study 1.2.3 --instance 1.2.3.4 --to PACS", no_args_is_help=True)

To = Annotated[Optional[str], typer.Option("--to", metavar="NODE", help="Send to a DICOM node (C-STORE).")]
StoreOpt = Annotated[bool, typer.Option("--store", help="Store them in the local archive.")]
FromFiles = Annotated[Optional[list[Path]], typer.Option(
    "--from-files", metavar="PATH", help="Take the referenced instances from these files or folders instead of "
                                         "the local archive (repeatable).")]
RetrieveAet = Annotated[Optional[str], typer.Option(
    "--retrieve-aet", metavar="AET", help="Retrieve AE Title of the references (default: where they were found: the "
                                          "archive's AE title, or the files' own).")]
Observer = Annotated[Optional[str], typer.Option("--observer", metavar="NAME",
                                                 help="Person observer, e.g. 'Doe^Jane'.")]


def kos_result(docs, *, where: str) -> dict:
    """The JSON / summary of created key objects."""
    from ihecli.kos.document import read_kos

    out = []
    for ds in docs:
        info = read_kos(ds)
        out.append({"sop_instance_uid": info.sop_uid, "series_instance_uid": info.series_uid,
                    "study_instance_uid": info.study_uid, "title": info.title.meaning,
                    "title_code": f"{info.title.scheme_designator}:{info.title.value}",
                    "modifiers": [m.meaning for m in info.modifiers],
                    "references": len(info.references),
                    "series": len({r.series_uid for r in info.references})})
    return {"documents": out, "to": where}


def deliver(ctx: typer.Context, docs, send, *, to, store, out_file, db, storage, calling_aet, timeout) -> str:
    """Send (``send``: the transaction's function), store or write the documents; returns where
    they went."""
    from ihecli.kos.document import encode

    if to:
        st = state(ctx).settings()
        node = st.node(to)
        send(docs, node=node, calling_aet=calling_aet or st.calling_aet, timeout=timeout, tls=node_tls(ctx, node))
        return str(node)
    if store:
        with open_archive(ctx, db, storage) as archive:
            send(docs, archive=archive)
        return "the local archive"
    assert out_file is not None
    from ihecli.archive.store import safe_name

    paths = []
    try:
        out_file.mkdir(parents=True, exist_ok=True)
        for ds in docs:  # DIR/SOPInstanceUID.dcm
            p = out_file / f"{safe_name(str(ds.SOPInstanceUID))}.dcm"
            write_whole(p, encode(ds))
            paths.append(str(p))
    except OSError as e:
        raise IheError(f"cannot write to {out_file}: {e.strerror or e}") from None
    return ", ".join(paths)


def one_destination(to, store, out_file) -> None:
    if sum(bool(x) for x in (to, store, out_file)) != 1:
        raise UsageError("give exactly one of --to NODE, --store or --out DIR")


@app.command("create")
def create_cmd(
    ctx: typer.Context,
    study: StudyOpt = None,
    instance: InstanceOpt = None,
    series: SeriesOpt = None,
    title: Annotated[Optional[str], typer.Option(
        "--title", metavar="TITLE", help=TITLE_HELP)
    ] = None,
    description: Description = None,
    observer: Observer = None,
    to: To = None,
    store: StoreOpt = False,
    out_file: OptionalOut = None,
    from_files: FromFiles = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing",
                                                help="Leave out references that cannot be found instead of failing.")
                             ] = False,
    retrieve_aet: RetrieveAet = None,
    calling_aet: CallingAet = None,
    timeout: Timeout = 30,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Create a Key Image Note for images of one study and send, store or write it.

    The references are checked against the local archive (or --from-files); each series is
    referenced with the AE title to retrieve it from. With --out DIR the note is written as
    DIR/SOPInstanceUID.dcm.

    Example: ihe kin create --study 1.2.3 --instance 1.2.3.4.5 --title for-surgery --description 'Fracture' --to PACS
    """
    from ihecli.kos import kin, selection

    one_destination(to, store, out_file)
    if not study or len(study) != 1:
        raise UsageError("give the study of the key images: one --study UID")
    study_uid = study[0]
    code = kin.title_for(title)
    if not (instance or series):
        raise UsageError("select key images: --instance UID ... or --series UID ...")
    sel = selection.Selection([study_uid], list(series or []), list(instance or []))
    if from_files:
        selection.from_files(from_files, sel)
    else:
        with open_archive(ctx, db, storage) as archive:
            selection.from_archive(archive, sel)
    sel.check(allow_missing=allow_missing, study=study_uid)
    for uid in sel.missing:
        output.warn(f"left out, not found: {uid}")
    doc = kin.key_image_note(sel.found, title=code, description=description, observer=observer,
                             retrieve_aet=retrieve_aet)
    where = deliver(ctx, [doc], lambda docs, **kw: kin.store_key_image_note(docs[0], **kw), to=to, store=store,
                    out_file=out_file, db=db, storage=storage, calling_aet=calling_aet, timeout=timeout)
    result = kos_result([doc], where=where)
    if json:
        output.print_json(result)
        return
    d = result["documents"][0]
    output.out.print(d["sop_instance_uid"], markup=False)
    output.info(f"Key Image Note '{d['title']}' ({output.count(d['references'], 'image')} in {d['series']} series) "
                f"{'written to' if out_file else 'stored in' if store else 'sent to'} {where}")


@app.command("show")
def show_cmd(files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Key Object Selection files.",
                                                        exists=True, dir_okay=False)],
             json: Json = False) -> None:
    """Show what key object files say: title, modifiers, text, observer, references per series.

    Example: ihe kin show ./kin/1.2.826.0.1.3680043.8.498.1.dcm
    """
    from ihecli.kos.document import load, read_kos

    docs = []
    for f in files:
        try:
            info = read_kos(load(str(f)))
        except IheError as e:
            msg = str(e)
            raise IheError(msg if msg.startswith(str(f)) else f"{f}: {msg}") from None
        series: dict[str, dict] = {}
        for r in info.references:
            s = series.setdefault(r.series_uid, {"series_instance_uid": r.series_uid, "study_instance_uid": r.study_uid,
                                                 "retrieve_aet": r.retrieve_aet, "instances": []})
            s["instances"].append(r.sop_uid)
        docs.append({"file": str(f), "sop_instance_uid": info.sop_uid, "study_instance_uid": info.study_uid,
                     "patient_id": info.patient_id, "patient_name": info.patient_name, "title": info.title.meaning,
                     "title_code": f"{info.title.scheme_designator}:{info.title.value}",
                     "modifiers": [m.meaning for m in info.modifiers], "description": info.description,
                     "observers": info.observers, "references": len(info.references),
                     "series": list(series.values())})
    if json:
        output.print_json(docs)
        return
    for d in docs:
        output.kv([("File", d["file"]), ("Title", f"{d['title']} ({d['title_code']})"),
                   ("Modifiers", "; ".join(d["modifiers"])), ("Description", d["description"]),
                   ("Observer", ", ".join(d["observers"])), ("Patient", f"{d['patient_name']} ({d['patient_id']})"),
                   ("Study", d["study_instance_uid"]), ("References", d["references"])])
        output.table([{"SeriesInstanceUID": s["series_instance_uid"], "RetrieveAETitle": s["retrieve_aet"],
                       "Instances": len(s["instances"])} for s in d["series"]],
                     ["SeriesInstanceUID", "RetrieveAETitle", "Instances"])
