"""`ihe archive`: run the archive and manage what it holds."""
from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli import atna
from ihecli.archive import Archive
from ihecli.cli import output
from ihecli.cli.options import (PATIENT_HELP, InstanceOpt, SeriesOpt, StudyOpt, Aet, Bind, Ca, CallingAet, Cert, Db, Dest, Json, Level, Limit, NoTls, OptionalOut, Port,
                                Since, Storage, Timeout, Tls, TlsFloor, TlsKey, Yes, node_tls, state, tls_config)
from ihecli.cli.hl7_cmd import HL7_PORT_HELP, Hl7Service
from ihecli.cli.pix_cmd import PIX_PORT_HELP, PixService, parse_domains
from ihecli.config import Node, resolve_node
from ihecli.dicom import scu
from ihecli.errors import ExitStatus, IheError, UsageError
from ihecli.files import write_whole

app = typer.Typer(help="The local archive: serve it over DICOM, import, list, remove, export, check.\n\n"
                       "Example: ihe archive serve --port 11112", no_args_is_help=True)

Duplicates = Annotated[Optional[str], typer.Option("--duplicates", metavar="POLICY",
                                                   help="Same SOP Instance UID again: keep (default) or overwrite.")]


def open_archive(ctx: typer.Context, db: Optional[str], storage: Optional[Path], *, existing: bool = False,
                 **over) -> Archive:
    """The archive of the profile and options; ``existing``: for a command that only reads or
    removes (a named database file that is not there is a mistake, not a new archive)."""
    st = state(ctx).settings()
    if over.get("duplicates"):
        st.archive.duplicates = over["duplicates"]
    if over.get("fuzzy_names"):
        st.archive.fuzzy_names = True
    archive = Archive.open(st, db=db, storage=str(storage) if storage else None, existing=existing)
    from ihecli.workflow.service import attach  # rejection notes (IOCM) act on import too

    attach(archive, hide_quality=st.archive.hide_quality_rejects)
    return archive


def check_storage(ctx: typer.Context, storage: Optional[Path]) -> None:
    """A storage folder that cannot be created or written is a usage error naming it, said before
    the server starts (opening the archive makes the folder; only a write shows it is usable)."""
    folder = (Path(storage) if storage else state(ctx).settings().archive.storage_dir()).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ihe-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot create or write the storage folder {folder}: {e.strerror or e}") from None


def _check_port_free(bind: str, port: int, what: str) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as e:
            raise UsageError(f"cannot listen for {what} on {bind}:{port}: {e.strerror or e}") from None


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    port: Port = None,
    aet: Aet = None,
    bind: Bind = None,
    dest: Dest = None,
    db: Db = None,
    storage: Storage = None,
    allow: Annotated[Optional[list[str]], typer.Option(
        "--allow", metavar="AET", help="Accept associations only from these calling AE titles (repeatable).")] = None,
    duplicates: Duplicates = None,
    fuzzy_names: Annotated[bool, typer.Option("--fuzzy-names",
                                              help="Person names match regardless of accents too (always regardless of case).")] = False,
    max_pdu: Annotated[Optional[int], typer.Option("--max-pdu", min=0, metavar="BYTES",
                                                   help="Largest PDU we accept (0: no limit).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, max=64, metavar="N",
        help="Server processes sharing the port (default: the profile's, else one per CPU up to 4).")] = None,
    hl7_port: Annotated[Optional[int], typer.Option("--hl7-port", min=0, max=65535, metavar="PORT",
                                                    help=HL7_PORT_HELP)] = None,
    pix_port: Annotated[Optional[int], typer.Option("--pix-port", min=0, max=65535, metavar="PORT",
                                                    help=PIX_PORT_HELP)] = None,
    http_port: Annotated[Optional[int], typer.Option(
        "--http-port", min=0, max=65535, metavar="PORT",
        help="Also serve DICOMweb on this port: QIDO-RS, WADO-RS, STOW-RS under /dicom-web/, WADO-URI at /wado.")] = None,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
) -> None:
    """Run the archive's DICOM services in the foreground (Ctrl-C stops it).

    Verification, Storage (every SOP class), Query/Retrieve FIND/MOVE/GET, Patient and Study Root;
    Storage Commitment, MPPS (forwarded to the profile's mpps_forward nodes), IAN to
    ian_subscribers, and rejection notes (IOCM).

    Example: ihe archive serve --port 11112 --dest VIEWER@127.0.0.1:11113
    """
    from ihecli.archive.server import DicomServer
    from ihecli.archive.workers import reserve_port, serve_workers

    st = state(ctx).settings()
    check_storage(ctx, storage)
    a = st.archive
    dests: dict[str, Node] = {n.aet: n for n in st.nodes.values()}
    for spec in [*a.dest, *(dest or [])]:
        n = resolve_node(spec, st.nodes)
        dests[n.aet] = n
    n_workers = workers or a.workers or min(os.cpu_count() or 1, 4)
    our_aet, our_bind = aet or a.aet, bind or a.bind
    our_port = a.port if port is None else port

    def make_server(archive: Archive, at_port: int, shared: bool) -> DicomServer:
        from ihecli.workflow.service import WorkflowServices

        return DicomServer(archive, aet=our_aet, bind=our_bind, port=at_port, destinations=dests,
                           allow=allow or a.allow, max_pdu=a.max_pdu if max_pdu is None else max_pdu,
                           reuse_port=shared, services=[WorkflowServices(archive, workflow)], ssl_context=ssl_context,
                           client_tls=client_tls)

    def announce(archive: Archive, at_port: int) -> None:
        counts = archive.counts()
        procs = f"{n_workers} processes; " if n_workers > 1 else ""
        output.info(f"{our_aet} listening on {our_bind}:{at_port}{' with TLS' if ssl_context else ''} "
                    f"({output.count(counts['instances'], 'instance')} in {output.count(counts['studies'], 'study', 'studies')}; "
                    f"storage {archive.blobs.root}; {procs}Ctrl-C stops)")
        if dests:
            output.info("move destinations: " + ", ".join(str(n) for n in dests.values()))

    def announce_web(web: DicomWebService) -> None:
        root = web.start()
        host = web.server.url
        output.info(f"DICOMweb on {root} (WADO-URI at {host}/wado); XDS-I.b Retrieve Imaging Document Set "
                    f"(RAD-69) at {host}/xdsi as repositoryUniqueId {web.imaging_source_uid}")

    from ihecli.net import tls as tlsmod
    from ihecli.web import DicomWebService
    from ihecli.xdsi.manifest import default_repository_uid

    # one TLS context (ITI-19) for the DICOM, HL7 and DICOMweb listeners
    ssl_context = tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca,
                                            floor=tls_floor), server=True)
    # associations the archive opens to nodes marked tls (C-MOVE, storage commitment reports, MPPS
    # forwarding, IAN): the profile's [tls] and this command's certificate options; --no-tls is
    # about the listeners, a node marked tls is never reached without it
    client_tls = st.tls_config().with_(cert=str(cert) if cert else None, key=str(tls_key) if tls_key else None,
                                       ca=str(ca) if ca else None, floor=tls_floor)
    from ihecli.workflow.service import WorkflowConfig

    workflow = WorkflowConfig.from_settings(st, aet=our_aet, nodes=dests, tls_config=client_tls)
    for n in {*dests.values(), *workflow.nodes.values(), *workflow.mpps_forward, *workflow.ian_subscribers,
              *workflow.commit_reply.values()}:
        tlsmod.for_node(n, client_tls)  # a certificate or CA that cannot be used: said now, in one line
    _check_time(st)
    web = None if http_port is None else DicomWebService(
        lambda: open_archive(ctx, db, storage, duplicates=duplicates, fuzzy_names=fuzzy_names), our_bind, http_port,
        ssl_context=ssl_context, imaging_source_uid=a.repository_uid or default_repository_uid(our_aet))
    hl7 = None if hl7_port is None else Hl7Service(lambda: open_archive(ctx, db, storage), our_bind, hl7_port, our_aet,
                                                   ssl_context=ssl_context)
    pix = None if pix_port is None else PixService(
        lambda: open_archive(ctx, db, storage), our_bind, pix_port, app=st.pix.application, facility=st.pix.facility,
        domains=parse_domains(st.pix.domains), ssl_context=ssl_context)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if n_workers == 1:
            if hl7:
                hl7.start()
            if pix:
                pix.start()
            if web:
                announce_web(web)
            with open_archive(ctx, db, storage, duplicates=duplicates, fuzzy_names=fuzzy_names) as archive:
                server = make_server(archive, our_port, False)
                try:
                    server.start()
                except OSError as e:
                    raise UsageError(f"cannot listen on {our_bind}:{our_port}: {e.strerror or e}") from None
                try:
                    announce(archive, server.port)
                    _audit_application(True, our_aet)
                    while not stop.wait(0.5):
                        pass
                finally:
                    server.stop()
        else:
            # the HL7, PIX and HTTP listeners start after the workers fork: a port taken is said now
            for what, p in (("HL7", hl7_port), ("PIX", pix_port), ("HTTP", http_port)):
                if p:
                    _check_port_free(our_bind, p, what)
            reserved, lock_fd = reserve_port(our_bind, our_port)
            shared_port = reserved.getsockname()[1]
            # open once before forking: the schema is created by one process, and errors show here
            open_archive(ctx, db, storage).close()

            def run(worker_stop: threading.Event, ready) -> None:
                with open_archive(ctx, db, storage, duplicates=duplicates, fuzzy_names=fuzzy_names) as archive:
                    server = make_server(archive, shared_port, True)
                    server.start()
                    ready()
                    worker_stop.wait()
                    server.stop()
                atna.shutdown(5)  # the worker ends with os._exit: send (or spool) its audit events first

            def all_ready() -> None:
                reserved.close()
                if hl7:  # after the workers forked: they do not inherit its threads
                    hl7.start()
                if pix:
                    pix.start()
                with open_archive(ctx, db, storage) as archive:
                    announce(archive, shared_port)
                _audit_application(True, our_aet)
                if web:
                    announce_web(web)

            try:
                serve_workers(run, n_workers, stop, on_ready=all_ready)
            finally:
                reserved.close()
                os.close(lock_fd)
    finally:
        if hl7:
            hl7.stop()
        if pix:
            pix.stop()
        if web:
            web.stop()
        for s, h in old.items():
            signal.signal(s, h)
        _audit_application(False, our_aet)
    output.info("stopped")


def _audit_application(started: bool, aet: str) -> None:
    """Application Activity (start or stop) for the audit trail (ITI-20)."""
    from ihecli.atna import events as ev

    atna.record(ev.application_activity(started, app=aet, aets=[aet], launcher=os.environ.get("USER", "")))


def _check_time(st) -> None:
    """Consistent Time (ITI-1): with a time server in the profile, warn when the clock is off."""
    if not st.time.server:
        return
    from ihecli.ct import maintain_time

    try:
        r = maintain_time(st.time.server, max_offset=st.time.max_offset, timeout=3)
    except IheError as e:
        output.warn(f"clock not checked: {e}")
        return
    if not r.ok:
        output.warn(f"the clock is {r.offset:+.3f} s off {r.server}, more than {st.time.max_offset:g} s")
    else:
        output.info(f"clock within {abs(r.offset) * 1000:.0f} ms of {r.server}")


@app.command("import")
def import_cmd(ctx: typer.Context,
               paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Files and folders.")],
               db: Db = None, storage: Storage = None, duplicates: Duplicates = None, json: Json = False) -> None:
    """Store DICOM files and folders in the archive (non-DICOM files are skipped).

    Example: ihe archive import /media/usb/DICOM
    """
    with open_archive(ctx, db, storage, duplicates=duplicates) as archive:
        with output.progress(None, "importing", enabled=not json) as advance:
            rep = archive.import_paths(paths, progress=lambda p, o: advance())
    if json:
        output.print_json(rep)
    else:
        from ihecli.cli.dicom_cmd import warn_failures
        from ihecli.dicom.scu import FileFailure

        warn_failures([FileFailure(path, why) for path, why in rep.failed], "the archive")
        dirs = f", {rep.dicomdirs} DICOMDIR skipped" if rep.dicomdirs else ""
        output.info(f"{rep.stored} stored, {rep.duplicates} already there, {rep.overwritten} overwritten, "
                    f"{rep.skipped} not DICOM{dirs}, {len(rep.failed)} failed")
    ok = rep.stored + rep.duplicates + rep.overwritten
    if rep.failed:
        raise typer.Exit(ExitStatus.PARTIAL if ok else ExitStatus.REFUSED)
    if not ok and not rep.dicomdirs:  # not one DICOM object where DICOM was to be imported
        if not json:
            output.error("nothing imported: no DICOM object found")
        raise typer.Exit(ExitStatus.REFUSED)


LS_COLUMNS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies",
                "NumberOfPatientRelatedInstances"],
    "STUDY": ["PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedInstances", "StudyInstanceUID"],
    "SERIES": ["PatientID", "StudyInstanceUID", "SeriesNumber", "Modality", "SeriesDescription",
               "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"],
    "IMAGE": ["PatientID", "SeriesInstanceUID", "InstanceNumber", "SOPClassUID", "SOPInstanceUID"],
}


def _selection(level: str, patient, name, study, series, instance, accession, modality, date):
    from pydicom.dataset import Dataset

    lvl = level.strip().upper()
    lvl = "IMAGE" if lvl == "INSTANCE" else lvl
    if lvl not in LS_COLUMNS:
        raise UsageError(f"bad level {level!r}: patient, study, series or instance")
    ds = Dataset()
    ds.QueryRetrieveLevel = lvl
    for kw in LS_COLUMNS[lvl]:
        setattr(ds, kw, "")
    for kw, v in (("PatientID", patient), ("PatientName", name), ("StudyInstanceUID", study),
                  ("SeriesInstanceUID", series), ("SOPInstanceUID", instance), ("AccessionNumber", accession),
                  ("StudyDate", date)):
        if v:
            setattr(ds, kw, "\\".join(v) if isinstance(v, list) else v)
    if modality:
        setattr(ds, "ModalitiesInStudy" if lvl == "STUDY" else "Modality", modality)
    return ds, lvl


Patient = Annotated[Optional[str], typer.Option("--patient", metavar="ID", help=PATIENT_HELP)]
Name = Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Patient name (wildcards * ?).")]
Accession = Annotated[Optional[str], typer.Option("--accession", metavar="ACC", help="Accession number.")]
Modality = Annotated[Optional[str], typer.Option("--modality", metavar="MOD", help="Modality, e.g. CT.")]
DateOpt = Annotated[Optional[str], typer.Option("--date", metavar="RANGE", help="Study date or range, e.g. 20240101-.")]


def _uids(option: str, values: Optional[list[str]]) -> Optional[list[str]]:
    """UIDs given to an option, each checked (a usage error names the bad one)."""
    return [scu.match_value(option, "UI", v) for v in values] if values else values


@app.command("ls")
def ls_cmd(ctx: typer.Context,
           level: Level = "study",
           patient: Patient = None, name: Name = None, study: StudyOpt = None, series: SeriesOpt = None,
           instance: InstanceOpt = None, accession: Accession = None, modality: Modality = None,
           date: DateOpt = None,
           limit: Limit = None,
           db: Db = None, storage: Storage = None, json: Json = False) -> None:
    """List what the archive holds, at any level.

    Example: ihe archive ls --level series --patient 'PID00*'
    """
    from ihecli.cli.dicom_cmd import dataset_json

    # checked here as matching keys: a malformed one is a usage error, not a library warning and "0 studies"
    study, series, instance = (_uids(kw, v) for kw, v in (("--study", study), ("--series", series),
                                                          ("--instance", instance)))
    patient, name, accession, date, modality = (
        scu.key_value(option, kw, v) if v else v  # --modality ct: CT (code strings are upper case)
        for option, kw, v in (("--patient", "PatientID", patient), ("--name", "PatientName", name),
                              ("--accession", "AccessionNumber", accession), ("--date", "StudyDate", date),
                              ("--modality", "Modality", modality)))
    ident, lvl = _selection(level, patient, name, study, series, instance, accession, modality, date)
    with open_archive(ctx, db, storage, existing=True) as archive:
        rows = [dataset_json(r) for r in archive.find(ident, "patient" if lvl == "PATIENT" else "study", limit)]
    if json:
        output.print_json(rows)
        return
    output.table([{k: ("\\".join(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows],
                 LS_COLUMNS[lvl])
    noun = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}[lvl]
    output.found(len(rows), noun, {"study": "studies", "series": "series"}.get(noun), limit=limit)


@app.command("rm")
def rm_cmd(ctx: typer.Context, patient: Patient = None, study: StudyOpt = None, series: SeriesOpt = None,
           instance: InstanceOpt = None, yes: Yes = False, db: Db = None, storage: Storage = None,
           json: Json = False) -> None:
    """Delete patients, studies, series or instances (index rows and files).

    Example: ihe archive rm --study 1.2.840.113619.2.55.3 --yes
    """
    if not any((patient, study, series, instance)):
        raise UsageError("say what to remove: --patient, --study, --series or --instance")
    level = "IMAGE" if instance else "SERIES" if series else "STUDY" if study else "PATIENT"
    ident, lvl = _selection(level, patient, None, study, series, instance, None, None, None)
    with open_archive(ctx, db, storage, existing=True) as archive:
        refs = archive.instances(ident, "patient" if lvl == "PATIENT" else "study")
        if not refs:
            raise IheError("nothing matches; nothing removed")
        studies = {r.study_uid for r in refs}
        series_n = {r.series_uid for r in refs}
        what = (f"{output.count(len(refs), 'instance')} in {len(series_n)} series of "
                f"{output.count(len(studies), 'study', 'studies')}")
        if not yes:
            if not output.err.is_terminal:
                raise UsageError(f"would remove {what}: add --yes to confirm when not on a terminal")
            typer.confirm(f"Remove {what}?", abort=True, err=True)
        n = archive.remove(refs)
    if json:
        output.print_json({"removed": n, "studies": sorted(studies)})
    else:
        output.info(f"removed {what}")


def parse_since(text: str) -> datetime:
    """'2024-05-01', '20240501', '2024-05-01T12:00', or relative: '24h', '7d', '30m' (UTC)."""
    t = text.strip()
    m = re.fullmatch(r"(\d+)\s*([mhdw])", t)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(**{unit: int(m.group(1))})
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(t, fmt)
        except ValueError:
            pass
    raise UsageError(f"bad --since {text!r}: a date (2024-05-01), a time (2024-05-01T12:00) or an age (24h, 7d)")


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    since: Since = None,  # studies received since
    study: StudyOpt = None,
    to: Annotated[Optional[str], typer.Option("--to", metavar="NODE", help="Send to a DICOM node (C-STORE).")] = None,
    out: OptionalOut = None,
    calling_aet: CallingAet = None,
    timeout: Timeout = 60,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Export studies (by date received or UID) to a node or a folder: the nightly job.

    With --out, files are copied as DIR/StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm.

    Example: ihe archive export --since 24h --to BACKUP
    """
    if bool(to) == bool(out):
        raise UsageError("give exactly one of --to NODE or --out DIR")
    if not since and not study:
        raise UsageError("say what to export: --since WHEN and/or --study UID")
    study = _uids("--study", study)
    when = parse_since(since) if since else None
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"{out} is not a folder")
    from pydicom.dataset import Dataset

    from ihecli.archive.store import safe_name

    import tempfile

    from ihecli.workflow.pir import reconciled_copies

    with open_archive(ctx, db, storage, existing=True) as archive, tempfile.TemporaryDirectory(prefix="ihe-export-") as reconciled:
        unknown: list[str] = []
        if study:
            asked = list(dict.fromkeys(study))
            ident = Dataset()
            ident.QueryRetrieveLevel = "STUDY"
            ident.StudyInstanceUID = asked
            refs = archive.instances(ident)
            known = {r.study_uid for r in refs}
            unknown = [u for u in asked if u not in known]
            if unknown and not known:
                raise IheError(f"no such {'study' if len(unknown) == 1 else 'studies'} in the archive: "
                               + ", ".join(unknown))
            uids = [u for u in asked if u in known]
            if when is not None:
                recent = set(archive.studies_since(when))
                uids = sorted(set(uids) & recent)
                refs = [r for r in refs if r.study_uid in recent]
        else:
            uids = archive.studies_since(when)
            refs = []
            if uids:
                ident = Dataset()
                ident.QueryRetrieveLevel = "STUDY"
                ident.StudyInstanceUID = uids
                refs = archive.instances(ident)
        # an indexed instance whose file is gone fails alone: the nightly job exports the rest
        refs_paths, gone = archive.with_files(refs)
        lost = [scu.FileFailure(str(archive.file_path(r)), f"file of {r.sop_uid} is missing (see ihe archive check)")
                for r in gone]
        # PIR: instances of patients HL7 changed go out with the index's patient, as C-MOVE sends them
        copies = reconciled_copies(archive, refs_paths, reconciled)
        refs_paths = [(r, Path(copies[r.sop_uid]) if r.sop_uid in copies else p) for r, p in refs_paths]
        paths = [p for _, p in refs_paths]
        sent = [0]  # for the line Ctrl-C leaves

        def interrupted(dest: str):
            output.error(f"interrupted: {output.count(sent[0], 'instance')} of {len(paths)} exported to {dest} "
                         "(run the same export again to send them all)")
            return typer.Exit(130)

        if to:
            st = state(ctx).settings()
            node = st.node(to)
            if not paths:
                rep = scu.StoreReport(str(node))
            else:
                def step(_path, outcome, advance=None) -> None:
                    sent[0] += outcome in ("success", "warning")
                    advance()

                try:
                    with output.progress(len(paths), f"exporting to {node}", enabled=not json) as advance:
                        rep = scu.store(node, paths, calling_aet=calling_aet or st.calling_aet, timeout=timeout,
                                        progress=lambda p, o: step(p, o, advance), tls=node_tls(ctx, node))
                except KeyboardInterrupt:
                    raise interrupted(str(node)) from None
            failures = lost + rep.failed
            done = rep.sent
            dest = str(node)
        else:
            failures = list(lost)
            # Ctrl-C ends the copy between two files, so the count it prints is exact
            stop = threading.Event()
            old_handler = signal.signal(signal.SIGINT, lambda *_: stop.set())
            try:
                with output.progress(len(paths), f"exporting to {out}", enabled=not json) as advance:
                    for i, (r, p) in enumerate(refs_paths):  # folders made as files arrive
                        if stop.is_set():
                            raise KeyboardInterrupt
                        target = out / safe_name(r.study_uid) / safe_name(r.series_uid) / f"{safe_name(r.sop_uid)}.dcm"
                        try:
                            target.parent.mkdir(parents=True, exist_ok=True)
                            write_whole(target, copy_from=p)
                            sent[0] += 1
                        except OSError as e:
                            if e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):  # the rest would fail too
                                why = f"not exported: {out}: {e.strerror}"
                                failures.extend(scu.FileFailure(str(q), why) for _, q in refs_paths[i:])
                                break
                            failures.append(scu.FileFailure(str(p), f"cannot copy to {target}: {e.strerror or e}"))
                        advance()
            except KeyboardInterrupt:
                raise interrupted(str(out)) from None
            finally:
                signal.signal(signal.SIGINT, old_handler)
            done = sent[0]
            dest = str(out)
        failed = len(failures)
        result = {"studies": len(uids), "instances": done, "failed": [f.__dict__ for f in failures], "to": dest,
                  "unknown": unknown}
    if json:
        output.print_json(result)
    else:
        for u in unknown:
            output.warn(f"no such study in the archive: {u}")
        from ihecli.cli.dicom_cmd import warn_failures

        warn_failures(failures, dest)
        output.info(f"exported {output.count(done, 'instance')} of {output.count(len(uids), 'study', 'studies')} "
                    f"to {result['to']}"
                    + (f", {failed} failed" if failed else "")
                    + (f", {output.count(len(unknown), 'study', 'studies')} not in the archive" if unknown else ""))
    if failed or unknown:
        raise typer.Exit(ExitStatus.PARTIAL if done else ExitStatus.REFUSED)


@app.command("check")
def check_cmd(ctx: typer.Context,
              repair: Annotated[bool, typer.Option("--repair", help="Fix what is found: drop rows whose file is "
                                                   "gone, index files that have no row (a second copy of an indexed "
                                                   "instance goes, anything else moves to .quarantine/), remove "
                                                   "leftover temporary files.")] = False,
              verify: Annotated[bool, typer.Option("--verify", help="Also re-read every file and compare its "
                                                   "checksum with the one taken at ingest.")] = False,
              db: Db = None, storage: Storage = None, json: Json = False) -> None:
    """Check that index and files agree (after a crash, a disk problem or manual changes).

    Example: ihe archive check --repair
    """
    with open_archive(ctx, db, storage, existing=True) as archive:
        rep = archive.check(repair=repair, verify=verify)
    if json:
        output.print_json(rep)
    else:
        output.info(f"{rep.instances} instances checked: {len(rep.missing_files)} missing files, "
                    f"{len(rep.orphan_files)} files not indexed, {len(rep.corrupt)} checksum mismatches, "
                    f"{rep.temp_files} leftover temporary files" + (" (repaired)" if rep.repaired else ""))
        for uid in rep.missing_files[:20]:
            output.warn(f"missing file for {uid}")
        done = dict(rep.repairs)
        for rel in rep.orphan_files[:20]:
            output.warn(f"not indexed: {rel}" + (f": {done[rel]}" if rel in done else ""))
        for uid in rep.corrupt[:20]:
            output.warn(f"checksum mismatch: {uid}")
    problems = rep.missing_files or rep.orphan_files or rep.corrupt
    if problems and not repair:
        raise typer.Exit(ExitStatus.REFUSED)
    if rep.corrupt:
        raise typer.Exit(ExitStatus.REFUSED)


from ihecli.cli import workflow_cmd as _workflow  # noqa: E402  (mpps ls, rejected)

_workflow.add_archive_commands(app)


@app.command("copy-db")
def copy_db_cmd(ctx: typer.Context,
                target: Annotated[str, typer.Argument(metavar="TARGET", help="The empty database to copy into: "
                                                      "postgresql+psycopg://user:password@host/name, or an "
                                                      "SQLite file.")],
                db: Db = None, json: Json = False) -> None:
    """Copy the archive database (index, XDS registry, audit records, every actor's state) into
    another, empty one: SQLite to PostgreSQL when a site outgrows one machine, or back. Stop the
    servers first, then point archive.db (or --db) at the copy. The storage folder stays as it is.

    Example: ihe archive copy-db postgresql+psycopg://ihe@dbhost/ihe
    """
    from ihecli.archive import sqlite_url
    from ihecli.archive.copydb import copy_database
    from ihecli.config import mask_url

    source, target = sqlite_url(db or state(ctx).settings().archive.db_url()), sqlite_url(target)
    with output.progress(None, "copying rows", enabled=not json) as advance:
        done: dict[str, int] = {}

        def step(table: str, n: int) -> None:
            advance(n - done.get(table, 0))
            done[table] = n

        rep = copy_database(source, target, progress=step)
    changed = {k: {"copied": a, "now": b} for k, (a, b) in rep.changed.items()}
    if json:
        output.print_json({"source": mask_url(source), "target": mask_url(target), "rows": rep.rows,
                           "changed": changed})
    else:
        held = ", ".join(f"{k} {n}" for k, n in rep.rows.items() if n)
        output.info(f"{output.count(rep.total, 'row')} copied from {mask_url(source)} to {mask_url(target)}"
                    + (f" ({held})" if held else ""))
    for k, c in changed.items():
        output.warn(f"{k} changed in the source during the copy ({c['copied']} rows copied, {c['now']} there now): "
                    "stop the servers and copy again into an empty database")
    if changed:
        raise typer.Exit(ExitStatus.PARTIAL)
    if not json:
        output.info("to use it, set archive.db in the profile to that database (or give it as --db); "
                    "the storage folder stays as it is")
