"""`ihe pdi`: Portable Data for Imaging media: burn (Creator), import (Importer), view (Image Display)."""
from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (PATIENT_HELP, Bind, CallingAet, Db, DryRun, Json, Port, Storage, StudyOpt, Timeout, Yes,
                                node_tls, state, open_archive)
from ihecli.errors import ExitStatus, IheError, UsageError

app = typer.Typer(help="Portable Data for Imaging (CD, DVD, USB): write media, import them, look at them.\n\n"
                       "Example: ihe pdi burn --patient PID0001 --iso patient.iso", no_args_is_help=True)

# as `ihe archive` has them; not imported from there, whose module loads the DICOM network stack
# (writing a medium from files needs neither that nor the archive: start-up is part of a burn)
Patient = Annotated[Optional[str], typer.Option("--patient", metavar="ID", help=PATIENT_HELP)]
Accession = Annotated[Optional[str], typer.Option("--accession", metavar="ACC", help="Accession number.")]


Source = Annotated[Path, typer.Argument(metavar="SOURCE", help="The medium: a mounted folder, an .iso file or a zip.")]


def parse_size(text: str) -> int:
    """'700M', '4.7G', '650MB', '123456' -> bytes (decimal units, as media are sold)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", text or "")
    if not m:
        raise UsageError(f"bad --size {text!r}: bytes, or a number with K, M, G (e.g. 650M, 4.7G)")
    mult = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12}[m.group(2).lower()]
    n = int(float(m.group(1)) * mult)
    if n < 4_000_000:
        raise UsageError(f"--size {text}: too small for a medium (at least 4M)")
    return n


@app.command("burn")
def burn_cmd(
    ctx: typer.Context,
    paths: Annotated[Optional[list[Path]], typer.Argument(metavar="[PATH...]",
                                                          help="DICOM files and folders (instead of a selection "
                                                               "from the archive).")] = None,
    patient: Patient = None,
    study: StudyOpt = None,
    accession: Accession = None,
    iso: Annotated[Optional[Path], typer.Option("--iso", metavar="FILE", dir_okay=False,
                                                help="Write an ISO 9660 image (with Joliet names).")] = None,
    usb: Annotated[Optional[Path], typer.Option("--usb", metavar="DIR", file_okay=False,
                                                help="Write the folder tree of a USB stick (a new or empty folder).")
                   ] = None,
    media: Annotated[Optional[str], typer.Option(
        "--media", metavar="KIND",
        help="cd (700 MB, uncompressed only: STD-GEN-CD), dvd (4.7 GB) or usb (JPEG allowed). "
             "Default: usb with --usb, else cd.")] = None,
    web: Annotated[bool, typer.Option("--web/--no-web", help="Add the IHE_PDI web pages and JPEG renderings.")] = True,
    size: Annotated[Optional[str], typer.Option("--size", metavar="SIZE",
                                                help="Capacity of one medium, e.g. 650M (default: the medium's).")
                    ] = None,
    institution: Annotated[Optional[str], typer.Option("--institution", metavar="NAME",
                                                       help="Creating institution, for README.TXT.")] = None,
    volume_id: Annotated[Optional[str], typer.Option("--volume-id", metavar="ID",
                                                     help="File-set ID and volume label (A-Z 0-9 _, up to 13; default: "
                                                          "patient ID and date).")] = None,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Write studies to an ISO image or a USB folder: DICOMDIR, README.TXT, INDEX.HTM, web pages.

    Too much for one medium is split by study over several volumes (FILE_1.iso, FILE_2.iso or
    DIR/VOLUME1, DIR/VOLUME2), each complete.

    Example: ihe pdi burn --patient PID0001 --iso patient.iso --media cd
    """
    from ihecli.pdi import burn, select_from_archive
    from ihecli.pdi.creator import check_target
    from ihecli.pdi.part10 import iter_files

    capacity = parse_size(size) if size else None
    if paths and (patient or study or accession):
        raise UsageError("give files or an archive selection (--patient, --study, --accession), not both")
    if bool(iso) == bool(usb):
        raise UsageError("give exactly one of --iso FILE or --usb DIR")
    check_target(iso, usb)  # said before the archive is read
    if volume_id:
        from ihecli.pdi.dicomdir import clean_volume_id

        written = clean_volume_id(volume_id)
        if written != volume_id:
            output.warn(f"--volume-id {volume_id!r} is written as {written} (A-Z, 0-9 and _, up to 13 characters)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ihe-burn-") as reconciled:
        if paths:
            files = list(iter_files(paths))
        else:
            with open_archive(ctx, db, storage) as archive:
                files = select_from_archive(archive, patient=patient, study=study, accession=accession,
                                            reconcile_into=Path(reconciled))
        units = len(files) * (3 if web else 2)
        try:
            with output.progress(units, "writing media", enabled=not json) as advance:
                rep = burn(files, iso=iso, usb=usb, media=media, web=web, size=capacity, institution=institution,
                           fileset_id=volume_id, progress=advance)
        except KeyboardInterrupt:
            output.error(f"interrupted: nothing of the medium is left at {iso or usb}")
            raise typer.Exit(130) from None
    if json:
        output.print_json({"media": rep.media, "profile": rep.profile, "objects": rep.objects, "files": rep.files,
                           "bytes": rep.bytes, "volumes": rep.volumes, "converted": rep.converted,
                           "rendered": rep.rendered, "render_rate": rep.render_rate, "seconds": rep.seconds,
                           "skipped": rep.skipped, "failed": rep.failed, "unrendered": rep.unrendered})
    else:
        for path, why in rep.skipped:
            output.warn(f"{path}: skipped: {why}")
        for path, why in rep.failed:
            output.warn(f"{path}: {why}")
        for path, why in rep.unrendered:
            output.warn(f"{path}: no web rendering: {why}")
        for vol in rep.volumes:
            output.info(f"{vol.path}: {vol.fileset_id}, {output.count(vol.objects, 'object')} in "
                        f"{output.count(len(vol.studies), 'study', 'studies')}, "
                        f"{vol.files} files, {vol.bytes / 1e6:.1f} MB")
        extra = f", {output.count(rep.rendered, 'image')} rendered ({rep.render_rate} images/s)" if web else ""
        output.info(f"{output.count(rep.objects, 'object')} on {len(rep.volumes)} {rep.profile} volume"
                    f"{'s' if len(rep.volumes) != 1 else ''}{extra}, {rep.converted} converted, {rep.seconds} s")
        if usb is not None:
            output.info(f"{usb}: written through to the device; unmount it (eject) before pulling it out")
    if rep.failed:
        raise typer.Exit(ExitStatus.PARTIAL if rep.objects else ExitStatus.REFUSED)


def _chooser():
    """Ask on the terminal which local patient is the medium's (None: not on a terminal)."""
    if not output.err.is_terminal:
        return None

    def choose(mp, cands):
        output.err.print(f"Medium patient: {mp.name or 'unnamed'}, ID {mp.patient_id or '-'}"
                         f"{' (' + mp.issuer + ')' if mp.issuer else ''}, born {mp.birth_date or '-'}, "
                         f"{output.count(mp.objects, 'object')}", markup=False)
        for k, c in enumerate(cands, 1):
            output.err.print(f"  {k}. {c.name or 'unnamed'}, ID {c.patient_id}{' (' + c.issuer + ')' if c.issuer else ''}"
                             f", born {c.birth_date or '-'}; same {', '.join(c.matches)}", markup=False)
        k = typer.prompt(f"Local patient (1-{len(cands)}, 0: none)", type=int, default=1, err=True)
        return cands[k - 1] if 1 <= k <= len(cands) else None

    return choose


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    source: Source,
    to: Annotated[Optional[str], typer.Option("--to", metavar="NODE", help="Send to a DICOM node (C-STORE).")] = None,
    patient_id: Annotated[Optional[str], typer.Option("--patient-id", metavar="ID", help="Patient ID.")] = None,
    issuer: Annotated[Optional[str], typer.Option("--issuer", metavar="ISSUER",
                                                  help="Issuer of the local Patient ID (with --patient-id).")] = None,
    patient_name: Annotated[Optional[str], typer.Option("--patient-name", metavar="NAME",
                                                        help="Patient name, e.g. DOE^JOHN.")
                            ] = None,
    name_alias: Annotated[Optional[str], typer.Option("--name", hidden=True)] = None,
    accession: Annotated[Optional[str], typer.Option("--accession", metavar="ACC", help="Accession number.")] = None,
    match_local: Annotated[bool, typer.Option("--match-local",
                                              help="Find the patient in the local archive by ID, name and birth "
                                                   "date (asks when ambiguous).")] = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    calling_aet: CallingAet = None,
    timeout: Timeout = 30,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Import a CD, DVD, USB stick, ISO image or zip into the archive (or a node), reconciling the patient.

    Reads the DICOMDIR (anywhere on the medium; file names in any case) and every other file;
    viewer folders and non-DICOM files are skipped; missing, refused and unsupported objects are
    reported. --patient-id, --issuer, --patient-name and --accession are the local values the
    objects get; the medium's patient ID and the replaced values are kept in the objects.

    Example: ihe pdi import /media/cdrom --patient-id 123456 --issuer HOSP --yes
    """
    from ihecli.pdi import import_media, open_medium

    name = patient_name or name_alias
    node = None
    st = state(ctx).settings()
    if to:
        node = st.node(to)
    with open_medium(source) as medium:
        archive = None
        try:
            if node is None or match_local:
                archive = open_archive(ctx, db, storage)
            try:
                with output.progress(None, "importing", enabled=not json) as advance:
                    rep = import_media(medium, archive=archive, node=node,
                                       calling_aet=calling_aet or st.calling_aet, timeout=timeout,
                                       patient_id=patient_id, issuer=issuer, name=name, accession=accession,
                                       match=match_local, yes=yes, choose=None if yes else _chooser(),
                                       dry_run=dry_run, progress=advance,
                                       tls=node_tls(ctx, node) if node is not None else None)
            except KeyboardInterrupt:
                output.error("interrupted: " + ("nothing was changed" if dry_run else
                             "what was stored stays; import the medium again for the rest (what is there is "
                             "found already there)"))
                raise typer.Exit(130) from None
        finally:
            if archive is not None:
                archive.close()
    if json:
        output.print_json(rep)
    else:
        for note in rep.notes:
            output.info(note)
        for r in rep.reconciled:
            f, t = r["from"], r["to"]
            output.info(f"patient {f['PatientName'] or 'unnamed'} ID {f['PatientID'] or '-'}"
                        f"{' (' + f['IssuerOfPatientID'] + ')' if f['IssuerOfPatientID'] else ''} -> ID {t['PatientID']}"
                        f"{' (' + t['IssuerOfPatientID'] + ')' if t['IssuerOfPatientID'] else ''}"
                        f"{', ' + t['PatientName'] if t['PatientName'] else ''}"
                        f"{', accession ' + t['AccessionNumber'] if t['AccessionNumber'] else ''}")
        for path, why in rep.skipped_files:
            output.info(f"{path}: skipped: {why}")
        rows = [{"Path": o.path, "Outcome": o.outcome, "Why": o.reason, "SOPInstanceUID": o.sop_uid or ""}
                for o in rep.objects if o.outcome not in ("stored", "sent") or o.reason or dry_run]
        if rows:
            output.table(rows, ["Path", "Outcome", "Why", "SOPInstanceUID"])
        c = rep.counts
        verb = "would be stored" if dry_run else ("sent" if node else "stored")
        n_ok = c.get("planned", 0) if dry_run else c.get("sent", 0) + c.get("stored", 0)
        found = sum(v for k, v in c.items() if k != 'files_skipped')
        output.info(f"{output.count(found, 'object')}: {n_ok} {verb}, "
                    f"{c.get('duplicate', 0)} already there, {c.get('skipped', 0)} skipped, "
                    f"{c.get('failed', 0)} failed, {c.get('dangling', 0)} missing from the medium, "
                    f"{c.get('refused', 0)} refused; {c.get('files_skipped', 0)} other files skipped; {rep.seconds} s")
    problems = rep.problems
    ok = rep.ok + rep.counts.get("sent", 0)
    if problems:
        raise typer.Exit(ExitStatus.PARTIAL if ok else ExitStatus.REFUSED)
    if not ok and not rep.counts.get("skipped"):
        raise IheError(f"{source}: no DICOM objects found")


@app.command("view")
def view_cmd(
    ctx: typer.Context,
    source: Source,
    serve: Annotated[bool, typer.Option("--serve", help="Serve a read-only web view of the medium until Ctrl-C.")
                     ] = False,
    bind: Bind = None,
    port: Port = None,
    json: Json = False,
) -> None:
    """List what a medium holds (patients, studies, series, objects, unsupported objects), or show it in a browser.

    Example: ihe pdi view /media/cdrom --serve --port 8080
    """
    from ihecli.pdi import MediaViewServer, list_media, open_medium

    with open_medium(source) as medium:
        if serve:
            server = MediaViewServer(medium, bind=bind or "127.0.0.1", port=port if port is not None else 0)
            try:
                server.start()
            except OSError as e:
                raise UsageError(f"cannot listen on {bind or '127.0.0.1'}:{port}: {e.strerror or e}") from None
            stop = threading.Event()
            old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                c = server.contents.counts
                output.info(f"{server.url} shows {output.count(c['objects'], 'object')} of "
                            f"{output.count(c['studies'], 'study', 'studies')} (Ctrl-C stops)")
                if json:
                    output.print_json({"url": server.url, **c})
                while not stop.wait(0.5):
                    pass
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
                server.stop()
            return
        contents = list_media(medium)
    if json:
        output.print_json({**{k: getattr(contents, k) for k in ("source", "kind", "dicomdirs", "fileset_id", "notes",
                                                                  "patients", "unsupported", "problems", "skipped",
                                                                  "objects")}, "counts": contents.counts})
        return
    from ihecli.pdi.values import pretty_date

    rows = []
    for p in contents.patients:
        for s in p.studies:
            for se in s.series:
                rows.append({"PatientID": p.patient_id, "PatientName": p.name, "StudyDate": pretty_date(s.date),
                             "Study": s.description, "Series": se.number, "Modality": se.modality,
                             "Description": se.description, "Objects": se.objects})
    if rows:  # none: the summary below says what there is instead (not a query's 'no matches')
        output.table(rows, ["PatientID", "PatientName", "StudyDate", "Study", "Series", "Modality", "Description",
                            "Objects"], headers={"Series": "Series", "Description": "Series description"})
    for note in contents.notes:
        output.warn(note)
    for o in contents.unsupported:
        output.warn(f"{o['path']}: unsupported: {o['reason']}")
    for o in contents.problems:
        output.warn(f"{o['path']}: {o['status']}: {o['reason']}")
    c = contents.counts
    output.info(f"{output.count(c['patients'], 'patient')}, {output.count(c['studies'], 'study', 'studies')}, "
                f"{c['series']} series, {output.count(c['objects'], 'object')}; "
                f"{c['unsupported']} unsupported, {c['problems']} missing or unreadable, "
                f"{c['files_skipped']} other files skipped"
                + (f"; read from {', '.join(contents.dicomdirs)}" if contents.dicomdirs else "; no DICOMDIR"))
