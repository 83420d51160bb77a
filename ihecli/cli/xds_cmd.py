"""`ihe xds`: XDS.b Document Source, Consumer and Administrator, and a Registry/Repository server."""
from __future__ import annotations

import mimetypes
import os
import re
from collections import Counter
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (PATIENT_HELP, TITLE_HELP, OptionalTimeout, Bind, Ca, Cert, Db, DryRun, Json, NoTls, Out, Port, Storage, Tls, TlsFloor, TlsKey, Yes,
                                state, tls_config)
from ihecli.errors import ExitStatus, IheError, PeerUnreachable, UsageError
from ihecli.files import write_whole

app = typer.Typer(help="XDS.b: submit, query, retrieve and delete documents; serve a registry and repository.\n\n"
                       "Example: ihe xds query find-documents --patient 'PID1^^^&1.2.3&ISO'", no_args_is_help=True)

Registry = Annotated[Optional[str], typer.Option("--registry", metavar="URL",
                                                 help="Document Registry endpoint (default: the profile's xds.registry).")]
Repository = Annotated[Optional[str], typer.Option(
    "--repository", metavar="URL", help="Document Repository endpoint (default: the profile's xds.repository).")]
Patient = Annotated[Optional[str], typer.Option(
    "--patient", metavar="CX", help=PATIENT_HELP)]
Statuses = Annotated[Optional[list[str]], typer.Option(
    "--status", metavar="STATUS", help="approved (default), deprecated or submitted; repeatable.")]
CODE_HELP = ("{}: CODE^DISPLAY^SCHEME (queries also take CODE^^SCHEME or CODE alone, repeatable: any "
             "of them).")
CodeOpt = lambda name, what: Annotated[Optional[list[str]], typer.Option(  # noqa: E731
    name, metavar="CODE", help=CODE_HELP.format(what))]
CodeOne = lambda name, what: Annotated[Optional[str], typer.Option(  # noqa: E731
    name, metavar="CODE", help=CODE_HELP.format(what))]
ClassOne = CodeOne("--class", "classCode")
TypeOne = CodeOne("--type", "typeCode")
FormatOne = CodeOne("--format", "formatCode")
ConfOne = CodeOne("--confidentiality", "confidentialityCode")
Classes = CodeOpt("--class", "classCode")
Types = CodeOpt("--type", "typeCode")
Formats = CodeOpt("--format", "formatCode")
Confs = CodeOpt("--confidentiality", "confidentialityCode")
EventCodes = CodeOpt("--event-code", "eventCodeList")
Practices = CodeOpt("--practice", "practiceSettingCode")
Facilities = CodeOpt("--facility", "healthcareFacilityTypeCode")
FolderCodes = CodeOpt("--folder-code", "Folder codeList")
ContentTypes = CodeOpt("--content-type", "SubmissionSet contentTypeCode")
RepositoryId = Annotated[Optional[str], typer.Option(
    "--repository-id", metavar="OID",
    help="repositoryUniqueId of the Document Repository (default: the profile's xds.repository_unique_id).")]


Home = Annotated[Optional[str], typer.Option(
    "--home", metavar="URN",
    help="homeCommunityId (urn:oid:OID): of the documents or images asked for (as the query gave it); when "
         "serving, this community's (default: xds.home).")]


Uuids = Annotated[Optional[list[str]], typer.Option("--uuid", metavar="UUID",
                                                    help="entryUUID (urn:uuid:...) of the object(s); repeatable.")]
UniqueIds = Annotated[Optional[list[str]], typer.Option("--unique-id", metavar="UID",
                                                        help="uniqueId of the object(s); repeatable.")]
ObjectRefOnly = Annotated[bool, typer.Option("--object-ref", help="Ask for ObjectRefs (entryUUIDs) only.")]


def _xds(ctx: typer.Context):
    return state(ctx).settings().xds


def _client(ctx: typer.Context, url: Optional[str], which: str, timeout: Optional[float], tls: dict):
    """A SOAP client for the endpoint; https:// endpoints use the profile's TLS (and the TLS options)."""
    from ihecli.net.soap import SoapClient

    x = _xds(ctx)
    endpoint = url or getattr(x, which)
    given = [name for name, k in (("--cert", "cert"), ("--tls-key", "key"), ("--ca", "ca"), ("--tls-floor", "floor"))
             if tls.get(k)]
    if given and endpoint.startswith("http://"):  # else it would go in the clear, the user believing otherwise
        raise UsageError(f"{', '.join(given)} given, but {endpoint} is no TLS link: use https://")
    cfg = tls_config(ctx, **tls, default_on=True) if endpoint.startswith("https://") else None
    return SoapClient(endpoint, timeout=timeout or x.timeout, tls_config=cfg)


def _patient(ctx: typer.Context, patient: Optional[str], required: bool = True) -> Optional[str]:
    from ihecli.xds.model import make_cx

    if not patient:
        if required:
            raise UsageError("--patient is required (ID^^^&OID&ISO)")
        return None
    return make_cx(patient, _xds(ctx).assigning_authority)


# a request that went and got no answer may have been carried out: said where sending it again is not harmless
MAY_HAVE_REGISTERED = " (the repository may have registered it all the same: check with `ihe xds query` before " \
                      "sending it again)"


def _warn(errors) -> None:
    for e in errors:
        if not e.is_error:
            output.warn(f"{e.code}: {e.context}")


# -- serve ----------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(ctx: typer.Context, port: Port = None, bind: Bind = None, db: Db = None, storage: Storage = None,
              repository_id: RepositoryId = None,
              max_body_mb: Annotated[Optional[int], typer.Option(
                  "--max-body-mb", min=1, metavar="MB", help="Refuse larger requests (default 256).")] = None,
              tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
              tls_floor: TlsFloor = None) -> None:
    """Run a Document Registry and Repository (ITI-18/41/42/43/62) in the foreground (Ctrl-C stops it).

    Metadata goes to the archive database, documents to the archive's storage folder. Every
    transaction answers on http://BIND:PORT/xds (also /xds/registry and /xds/repository).

    Example: ihe xds serve --port 8020
    """
    from ihecli.archive import Archive
    from ihecli.xds.server import XdsServer

    from ihecli.net import tls as tlsmod

    st = state(ctx).settings()
    x = st.xds
    our_bind, our_port = bind or x.bind, x.port if port is None else port
    ssl_ctx = tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor),
                             server=True)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Archive.open(st, db=db, storage=str(storage) if storage else None) as archive:
            server = XdsServer(archive, repository_unique_id=repository_id or x.repository_unique_id, bind=our_bind,
                               port=our_port, max_body=(max_body_mb or x.max_body_mb) * 1024 * 1024, home=x.home,
                               ssl_context=ssl_ctx)
            try:
                server.start()
            except OSError as e:
                raise UsageError(f"cannot listen on {our_bind}:{our_port}: {e.strerror or e}") from None
            try:
                output.info(f"XDS.b registry and repository {repository_id or x.repository_unique_id} at "
                            f"{server.url} (storage {archive.blobs.root}; Ctrl-C stops)")
                while not stop.wait(0.5):
                    pass
            finally:
                server.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


TABLE_MAX = 100  # submit: more documents than this are summed up per submission set


# -- submit ---------------------------------------------------------------------------------------
@app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Documents, or folders of them.")],
    patient: Patient = None,
    title: Annotated[Optional[str], typer.Option("--title", metavar="TEXT", help=TITLE_HELP)] = None,
    class_code: ClassOne = None,
    type_code: TypeOne = None,
    format_code: FormatOne = None,
    confidentiality: ConfOne = None,
    mime: Annotated[Optional[str], typer.Option("--mime", metavar="TYPE",
                                                help="MIME type (default: from the file).")] = None,
    folder: Annotated[Optional[str], typer.Option("--folder", metavar="NAME",
                                                  help="Put the documents in a new folder of this name.")] = None,
    replace: Annotated[Optional[str], typer.Option("--replace", metavar="UUID",
                                                   help="Replace (RPLC) the document with this entryUUID.")] = None,
    metadata: Annotated[Optional[Path], typer.Option(
        "--metadata", metavar="XML", dir_okay=False,
        help="Full ebRIM metadata (SubmitObjectsRequest or RegistryObjectList); FILEs go to its "
             "ExtrinsicObjects in order.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=10000, metavar="N",
                                       help="Documents per submission set, at most (a set also holds at most "
                                            "64 MiB of documents, or one larger document).")] = 100,
    repository: Repository = None,
    timeout: OptionalTimeout = None,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Send documents to a repository: Provide and Register Document Set-b (ITI-41, MTOM).

    DICOM KOS manifests get formatCode 1.2.840.10008.5.1.4.1.1.88.59 and application/dicom.

    Example: ihe xds submit report.pdf --patient 'PID1^^^&1.3.6.1.4.1.21367.2005.3.7&ISO' --title 'CT report'
    """
    from ihecli.net.soap.client import NoAnswer
    from ihecli.xds import client as xc
    from ihecli.xds.source import Options, make_submissions, metadata_submission, read_files

    x = _xds(ctx)
    if metadata is not None:
        ignored = [name for name, given in (("--patient", patient), ("--title", title), ("--class", class_code),
                                            ("--type", type_code), ("--format", format_code),
                                            ("--confidentiality", confidentiality), ("--folder", folder),
                                            ("--replace", replace), ("--mime", mime)) if given]
        if ignored:
            raise UsageError(f"--metadata carries the whole submission: {', '.join(ignored)} would not be used")
    paths = read_files(files)
    cli = _client(ctx, repository, "repository", timeout, dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor))
    rows: list[dict] = []
    failed: list[str] = []
    if metadata is not None:
        subs = [metadata_submission(metadata, paths)]
    else:
        opts = Options(patient=patient or "", title=title or "", class_code=class_code or "",
                       type_code=type_code or "", format_code=format_code or "",
                       confidentiality_code=confidentiality or "", folder=folder or "", replace=replace or "",
                       mime_type=mime or "")
        if not patient:
            raise UsageError("--patient is required (ID^^^&OID&ISO)")
        files_data = []
        for p in paths:
            try:
                files_data.append((file_title(p.name), p.read_bytes()))
            except OSError as e:
                raise UsageError(f"{p}: {e.strerror or e}") from None
        subs = make_submissions(files_data, x, opts, batch=batch)
    total = sum(len(s.documents) or len(s.metadata_documents) for s in subs)
    local = threading.local()

    def send(sub):
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = cli if threading.current_thread() is threading.main_thread() else \
                _client(ctx, repository, "repository", timeout, dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor))
        return xc.provide_and_register(c, sub)

    def names(i: int) -> str:
        """The files of submission set i, for the user to find what to send again."""
        chunk = subs[i].names
        if not chunk:
            return ""
        return f" ({chunk[0]})" if len(chunk) == 1 else f" ({len(chunk)} files, {chunk[0]} .. {chunk[-1]})"

    def registered(sub, res) -> None:
        _warn(res.errors)
        ss = sub.submission_set
        new: list[dict] = []
        for de, data in sub.documents:
            new.append({"entryUUID": de.entry_uuid, "uniqueId": de.unique_id, "patientId": de.patient_id,
                        "title": de.title, "mimeType": de.mime_type, "size": len(data),
                        "submissionSetUniqueId": ss.unique_id if ss else "", "repository": cli.url})
        if sub.metadata is not None:
            from ihecli.xds.ebrim import read_document_entry
            from ihecli.net.soap.xml import RIM, q

            by_id = {el.get("id"): read_document_entry(el) for el in sub.metadata.iter(q(RIM, "ExtrinsicObject"))}
            for k, (d, mime_type) in sub.metadata_documents.items():
                de = by_id.get(k)
                # a symbolic id (not urn:uuid:) is replaced by the registry, which does not say by what
                new.append({"entryUUID": k if k.startswith("urn:uuid:") else f"{k} (symbolic)",
                            "uniqueId": de.unique_id if de else "", "patientId": de.patient_id if de else "",
                            "title": de.title if de else "", "mimeType": mime_type, "size": len(d),
                            "submissionSetUniqueId": "", "repository": cli.url})
        rows.extend(new)

    # Each submission set stands alone: one refused, or lost on the way (the repository went down,
    # a body over its limit), does not hide the ones registered before or after it; the user is
    # told which files to send again. The first set goes alone (it may create the folder the others
    # refer to), the others two at a time: the repository works on one while the next is on the wire.
    errors: list[IheError] = []
    seen: set[int] = set()  # submission sets whose outcome is known

    def outcome(i: int, sub, res) -> None:
        if isinstance(res, IheError):
            errors.append(res)
            failed.append(str(res))
            output.error(f"submission set {i + 1}/{len(subs)}{names(i)}: {res}"
                         + (MAY_HAVE_REGISTERED if isinstance(res, NoAnswer) else ""))
        else:
            registered(sub, res)
        seen.add(i)

    interrupted = False
    with output.progress(total, "submitting", enabled=total > 1) as advance, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="ihe-submit") as pool:
        pending = []
        try:
            for i, sub in enumerate(subs):
                if i == 0:
                    try:
                        first = send(sub)
                    except IheError as e:
                        if isinstance(e, NoAnswer):
                            raise NoAnswer((f"submission set 1/{len(subs)}{names(0)}: " if len(subs) > 1 else "")
                                           + f"{e}{MAY_HAVE_REGISTERED}") from None
                        if len(subs) == 1 or isinstance(e, PeerUnreachable):
                            raise  # nothing went, nothing else will: one line, exit 4
                        if sub.folders:  # the others would put their documents in a folder that is not there
                            raise IheError(f"submission set 1/{len(subs)}{names(0)}, which makes the folder, "
                                           f"failed: {e}; the other {len(subs) - 1} were not sent",
                                           exit_status=e.exit_status) from None
                        first = e
                    pending.append((sub, None, first))
                else:
                    pending.append((sub, pool.submit(send, sub), None))
            for i, (sub, fut, res) in enumerate(pending):
                try:
                    res = fut.result() if fut is not None else res
                except IheError as e:
                    res = e
                outcome(i, sub, res)
                advance(len(sub.documents) or len(sub.metadata_documents))
        except KeyboardInterrupt:
            interrupted = True
            for _sub, fut, _res in pending:
                if fut is not None:
                    fut.cancel()
        except BaseException:
            for _sub, fut, _res in pending:
                if fut is not None:
                    fut.cancel()
            raise
    if interrupted:  # the sets on the wire were let finish (leaving the pool waits for them): say each
        for i, (sub, fut, _res) in enumerate(pending):
            if i not in seen and fut is not None and fut.done() and not fut.cancelled():
                exc = fut.exception()
                if exc is None or isinstance(exc, IheError):
                    outcome(i, sub, exc or fut.result())
    if json:
        output.print_json(rows)
    else:
        if not rows:
            pass  # each failed submission set is said above
        elif len(rows) <= TABLE_MAX:
            output.table(rows, ["uniqueId", "entryUUID", "title", "mimeType", "size"])
        else:  # a table of thousands of rows helps nobody (and takes seconds to draw): --json lists them
            output.table([{"submissionSet": k, "documents": n} for k, n in
                          Counter(r["submissionSetUniqueId"] for r in rows).items()], ["submissionSet", "documents"])
        output.info(f"{len(rows)} documents registered" + (f"; {len(failed)} submission sets failed" if failed else "")
                    + ("; --json lists them" if len(rows) > TABLE_MAX else ""))
    if interrupted:
        left = [i for i in range(len(subs)) if i not in seen]
        # the first set is sent by this thread: stopped on the wire, the repository may have it;
        # the others were let finish (their outcome is said above) or never sent
        unsure = [i for i in left if i == 0 or (i < len(pending) and not pending[i][1].cancelled())]
        unsent = [i for i in left if i not in unsure]
        for i in unsure:
            output.error(f"interrupted while sending submission set {i + 1}/{len(subs)}{names(i)}: "
                         "check with `ihe xds query` whether it was registered before sending it again")
        output.error(f"interrupted: {len(unsent)} of {len(subs)} submission sets not sent, from set "
                     f"{unsent[0] + 1}{names(unsent[0])} on" if unsent else "interrupted")
        raise typer.Exit(130)
    if failed:
        if not rows and all(isinstance(e, PeerUnreachable) for e in errors):
            raise typer.Exit(ExitStatus.UNREACHABLE)
        raise typer.Exit(ExitStatus.PARTIAL if rows else ExitStatus.REFUSED)


# -- query ----------------------------------------------------------------------------------------
QUERY_NAMES = ["find-documents", "find-submission-sets", "find-folders", "get-all", "get-documents", "get-folders",
               "get-associations", "get-documents-and-associations", "get-submission-sets",
               "get-submission-set-and-contents", "get-folder-and-contents", "get-folders-for-document",
               "get-related-documents"]


def _complete_query(incomplete: str):
    return [n for n in QUERY_NAMES if n.startswith(incomplete)]


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="QUERY", autocompletion=_complete_query,
                                        help="Stored query: " + ", ".join(QUERY_NAMES) + ".")],
    patient: Patient = None,
    status: Statuses = None,
    uuid: Uuids = None,
    unique_id: UniqueIds = None,
    class_code: Classes = None,
    type_code: Types = None,
    format_code: Formats = None,
    confidentiality: Confs = None,
    event: EventCodes = None,
    practice: Practices = None,
    facility: Facilities = None,
    folder_code: FolderCodes = None,
    content_type: ContentTypes = None,
    author: Annotated[Optional[list[str]], typer.Option("--author", metavar="PATTERN",
                                                        help="Author person, % and _ as wildcards; repeatable.")] = None,
    since: Annotated[Optional[str], typer.Option(
        "--time-from", metavar="DTM",
        help="creationTime (find-submission-sets: submissionTime; find-folders: lastUpdateTime) at or after "
             "this time, YYYYMMDD[hhmm[ss]].")] = None,
    until: Annotated[Optional[str], typer.Option("--time-to", metavar="DTM",
                                                 help="... before this time (exclusive).")] = None,
    source_id: Annotated[Optional[list[str]], typer.Option("--source-id", metavar="OID",
                                                           help="SubmissionSet sourceId; repeatable.")] = None,
    association_type: Annotated[Optional[list[str]], typer.Option(
        "--association-type", metavar="TYPE", help="For get-related-documents: RPLC, APND, XFRM, XFRM_RPLC, signs "
                                                   "(default: all).")] = None,
    object_ref: ObjectRefOnly = False,
    registry: Registry = None,
    timeout: OptionalTimeout = None,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Ask the registry with a stored query: Registry Stored Query (ITI-18).

    Example: ihe xds query find-documents --patient 'PID1^^^&1.3.6.1.4.1.21367.2005.3.7&ISO' --class REPORTS
    """
    from ihecli.xds import client as xc
    from ihecli.xds import vocabulary as v

    if name not in v.STORED_QUERIES:
        raise UsageError(f"unknown stored query {name!r}: one of {', '.join(QUERY_NAMES)}")
    pid = _patient(ctx, patient, required=name in ("find-documents", "find-submission-sets", "find-folders",
                                                    "get-all"))
    p = xc.stored_query_params(name, xc.QueryOptions(
        patient=pid, statuses=status or ["approved"], uuids=uuid or [], unique_ids=unique_id or [],
        class_codes=class_code or [], type_codes=type_code or [], format_codes=format_code or [],
        confidentiality_codes=confidentiality or [], event_codes=event or [], practice_codes=practice or [],
        facility_codes=facility or [], folder_codes=folder_code or [], content_types=content_type or [],
        authors=author or [], time_from=since, time_to=until, source_ids=source_id or [],
        association_types=association_type or []))
    cli = _client(ctx, registry, "registry", timeout, dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor))
    res = xc.registry_stored_query(cli, name, p, object_ref=object_ref)
    _warn(res.errors)
    rows = [o.as_dict() for o in res.objects]
    if json:
        output.print_json(rows)
    else:
        _print_objects(rows)
    errors = [e for e in res.errors if e.is_error]  # PartialSuccess (e.g. an XCA gateway's community down)
    for e in errors:
        output.error(f"{e.location + ': ' if e.location else ''}{e.code}: {e.context}")
    if errors:
        raise typer.Exit(ExitStatus.PARTIAL)


COLUMNS = {
    "DocumentEntry": ["entryUUID", "uniqueId", "status", "title", "classCode", "creationTime", "mimeType", "size"],
    "SubmissionSet": ["entryUUID", "uniqueId", "status", "submissionTime", "sourceId", "title"],
    "Folder": ["entryUUID", "uniqueId", "status", "title", "lastUpdateTime"],
    "Association": ["entryUUID", "associationType", "sourceObject", "targetObject", "SubmissionSetStatus"],
    "ObjectRef": ["entryUUID"],
}
TITLES = {"DocumentEntry": "Documents", "SubmissionSet": "Submission sets", "Folder": "Folders",
          "Association": "Associations", "ObjectRef": "Objects"}


def _print_objects(rows: list[dict]) -> None:
    if not rows:
        output.info("no matches")
        return
    kinds = [k for k in COLUMNS if any(r["objectType"] == k for r in rows)]
    extra = ["community"] if any("community" in r for r in rows) else []  # XCA: who answered what
    for k in kinds:
        sel = [dict(r, classCode=(r.get("classCode") or "").split("^")[0]) for r in rows if r["objectType"] == k]
        output.table(sel, COLUMNS[k] + extra, title=TITLES[k] if len(kinds) > 1 else None)


# -- retrieve -------------------------------------------------------------------------------------
EXT = {"application/dicom": ".dcm", "text/plain": ".txt", "application/pdf": ".pdf", "text/xml": ".xml",
       "application/xml": ".xml"}


@app.command("retrieve")
def retrieve_cmd(
    ctx: typer.Context,
    unique_ids: Annotated[list[str], typer.Argument(metavar="UNIQUE_ID...", help="Document uniqueIds.")],
    out: Out,
    repository_id: RepositoryId = None,
    repository: Repository = None,
    home: Home = None,
    timeout: OptionalTimeout = None,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Fetch documents from a repository: Retrieve Document Set (ITI-43).

    Each document is written as DIR/<uniqueId><extension of its MIME type>.

    Example: ihe xds retrieve 2.25.1234 2.25.5678 --out ./docs
    """
    from ihecli.xds import client as xc
    from ihecli.xds.messages import DocumentRequest, XdsError

    repo = repository_id or _xds(ctx).repository_unique_id
    reqs = [DocumentRequest(repo, u.strip(), home or "") for u in unique_ids]
    out_folder(out)  # before anything is fetched
    cli = _client(ctx, repository, "repository", timeout, dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor))
    try:
        res = xc.retrieve_document_set(cli, reqs)
        documents, all_errors = res.documents, res.errors
    except XdsError as e:  # Failure: nothing came, each error said below
        documents, all_errors = [], e.errors
    rows = write_documents(out, documents)
    errors = [e for e in all_errors if e.is_error]
    if json:
        output.print_json(rows)
    elif rows:
        output.table(rows, ["uniqueId", "mimeType", "size", "path"])
    for e in errors:
        output.error(f"{e.location or ''} {e.code}: {e.context}".strip())
    if any(e.code == "XDSUnknownRepositoryId" for e in errors) and not repository_id:
        output.info("give the repository the document entry names: --repository-id OID "
                    "(repositoryUniqueId in `ihe xds query ... --json`)")
    if errors or not documents:
        raise typer.Exit(ExitStatus.PARTIAL if documents else ExitStatus.REFUSED)


def file_title(name: str) -> str:
    """A file name as text: names that are not UTF-8 (Latin-1 media, old shares) arrive with
    surrogate escapes, which no XML or terminal takes; they are read as Latin-1."""
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def out_folder(out: Path) -> None:
    """The --out folder, made if need be; a usage error when it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot make the folder {out}: {e.strerror or e}") from None


def write_documents(out: Path, documents) -> list[dict]:
    """Each retrieved document as DIR/<uniqueId><extension of its MIME type>; a row for each.

    Written under a temporary name and renamed: a file with a document's name is whole (an
    interrupted run or a full disk leaves no truncated document behind)."""
    from ihecli.xds.model import OID_RE

    out_folder(out)
    rows = []
    for d in documents:
        safe = d.document_unique_id if OID_RE.match(d.document_unique_id) else \
            "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in d.document_unique_id)[:120] or "document"
        ext = EXT.get(d.mime_type) or mimetypes.guess_extension(d.mime_type or "") or ".bin"
        path = out / (safe + ext)
        try:
            write_whole(path, d.data)
        except OSError as e:
            raise IheError(f"cannot write {path}: {e.strerror or e} ({len(rows)} of {len(documents)} "
                           f"documents written)") from None
        rows.append({"uniqueId": d.document_unique_id, "repositoryUniqueId": d.repository_unique_id,
                     "home": d.home, "mimeType": d.mime_type, "size": len(d.data), "path": str(path)})
    return rows


# -- delete ---------------------------------------------------------------------------------------
@app.command("delete")
def delete_cmd(
    ctx: typer.Context,
    uuids: Annotated[list[str], typer.Argument(metavar="UUID...", help="entryUUIDs (urn:uuid:...) to remove.")],
    dry_run: DryRun = False,
    yes: Yes = False,
    registry: Registry = None,
    timeout: OptionalTimeout = None,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Remove metadata from the registry: Delete Document Set (ITI-62, Remove Metadata).

    The associations that refer to the objects go too, and so does a submission set that would be
    left without members; a submission set named goes with the document entries and folders it
    submitted. What will go is shown first (--dry-run: only that, nothing is removed). The
    documents themselves stay in their repository (ITI-62 removes metadata).

    Example: ihe xds delete urn:uuid:4c8d9a52-1e2f-4a6b-9c3d-0e1f2a3b4c5d --yes
    """
    from ihecli.net.soap.client import NoAnswer
    from ihecli.xds import client as xc

    for u in uuids:
        if not re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", u.lower()):
            raise UsageError(f"{u!r} is not an entryUUID (urn:uuid: and a UUID)")
    cli = _client(ctx, registry, "registry", timeout, dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor))
    plan = xc.removal_plan(cli, [u.lower() for u in uuids])
    rows = [o.as_dict() for o in plan]
    # an id no stored query found: an association (no query looks one up by its own id) or unknown
    unknown = [r["entryUUID"] for r in rows if r["objectType"] == "ObjectRef"]
    if json and dry_run:
        output.print_json(rows)
        return
    if not json:
        output.table([dict(r, what=_describe(r)) for r in rows], ["entryUUID", "objectType", "what"])
    n = output.count(len(rows), "object")
    if unknown:
        output.warn(f"{output.count(len(unknown), 'id')} found as no document entry, folder or submission set "
                    f"(an association, or not in the registry): {', '.join(unknown)}")
    if dry_run:
        output.info(f"{n} would be removed (dry run: nothing removed)")
        return
    if not yes:
        if not output.err.is_terminal:
            raise UsageError(f"would remove {n}: add --yes to confirm when not on a terminal")
        if not typer.confirm(f"Remove {'this' if len(rows) == 1 else 'these'} {n}?", err=True):
            output.info("nothing removed")
            raise typer.Exit(ExitStatus.REFUSED)
    try:
        res = xc.remove_metadata(cli, [r["entryUUID"] for r in rows])
    except NoAnswer as e:
        raise NoAnswer(f"{e} (the registry may have removed them all the same: --dry-run shows what is "
                       "left)") from None
    _warn(res.errors)
    if json:
        output.print_json(rows)
    else:
        output.info(f"{n} removed from the registry (ITI-62 removes metadata: the documents stay in their "
                    f"repository)")


def _describe(r: dict) -> str:
    if r["objectType"] == "Association":
        return f"{r['associationType']} {r['sourceObject']} -> {r['targetObject']}"
    if r["objectType"] == "ObjectRef":
        return "not found by stored query (an association, or unknown)"
    return " ".join(str(r.get(k) or "") for k in ("uniqueId", "title", "status")).strip()
