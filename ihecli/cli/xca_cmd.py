"""`ihe xca`: XCA Initiating Gateway (query, retrieve) and Responding Gateway (serve)."""
from __future__ import annotations

import signal
import threading
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (Bind, Ca, Cert, Db, Json, NoTls, OptionalTimeout, Out, Port, Storage, Tls, TlsFloor,
                                TlsKey, tls_config)
from ihecli.cli.xds_cmd import (Classes, EventCodes, Formats, Home, ObjectRefOnly, Patient, RepositoryId, Statuses,
                                Types, UniqueIds, Uuids, _patient, _print_objects, _xds, write_documents)
from ihecli.errors import ExitStatus, UsageError

app = typer.Typer(help="XCA: query and retrieve across communities; serve this community as a responding "
                       "gateway.\n\nExample: ihe xca query find-documents --patient 'PID1^^^&1.2.3&ISO'",
                  no_args_is_help=True)

Community = Annotated[Optional[list[str]], typer.Option(
    "--community", metavar="HOME=URL",
    help="A responding gateway, urn:oid:OID=http://host:port/xca (repeatable; default: the profile's "
         "xds.communities).")]


def _communities(ctx: typer.Context, given: Optional[list[str]]) -> dict[str, str]:
    from ihecli.errors import IheError
    from ihecli.xca.initiating import parse_communities

    try:
        found = parse_communities(given or _xds(ctx).communities)
    except IheError as e:
        raise UsageError(str(e)) from None
    if not found:
        raise UsageError("no responding gateway: give --community urn:oid:OID=URL or set xds.communities")
    return found


def _report(results) -> int:
    """Per-community errors on stderr; the exit status: 0 all answered, 3 some, 1 none, 4 none could be
    reached."""
    failed = [r for r in results if r.failed]
    for r in results:
        for e in r.errors:
            say = output.error if e.is_error else output.warn
            say(f"{r.home}: {e.code}: {e.context}")
    if failed and len(failed) == len(results):
        # no community could be reached (down or slow) is not the same as every one saying no
        if all(e.code == "XDSUnavailableCommunity" for r in failed for e in r.errors):
            return ExitStatus.UNREACHABLE
        return ExitStatus.REFUSED
    if failed or any(e.is_error for r in results for e in r.errors):
        return ExitStatus.PARTIAL
    return ExitStatus.OK


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="QUERY", help="Stored query, as for ihe xds query.")],
    patient: Patient = None,
    status: Statuses = None,
    uuid: Uuids = None,
    unique_id: UniqueIds = None,
    class_code: Classes = None,
    type_code: Types = None,
    format_code: Formats = None,
    event: EventCodes = None,
    object_ref: ObjectRefOnly = False,
    community: Community = None,
    timeout: OptionalTimeout = None,
    json: Json = False,
) -> None:
    """Ask every community at once: Cross Gateway Query (ITI-38).

    The answers are merged; each object carries the homeCommunityId its gateway gave it (home)
    and the community whose gateway answered (community). Exit
    status 3 when some communities failed or did not answer (each is named), 1 when all did.

    Example: ihe xca query find-documents --patient 'PID1^^^&1.2.3&ISO' --community urn:oid:1.2.3=http://gw:8021/xca
    """
    from ihecli.xca.initiating import cross_gateway_query
    from ihecli.xds import client as xc
    from ihecli.xds import vocabulary as v

    if name not in v.STORED_QUERIES:
        raise UsageError(f"unknown stored query {name!r}: one of {', '.join(v.STORED_QUERIES)}")
    comms = _communities(ctx, community)
    pid = _patient(ctx, patient, required=name in ("find-documents", "find-submission-sets", "find-folders", "get-all"))
    params = xc.stored_query_params(name, xc.QueryOptions(
        patient=pid, statuses=status or ["approved"], uuids=uuid or [], unique_ids=unique_id or [],
        class_codes=class_code or [], type_codes=type_code or [], format_codes=format_code or [],
        event_codes=event or []))
    results = cross_gateway_query(comms, v.STORED_QUERIES[name][0], params, object_ref=object_ref,
                                  timeout=timeout or _xds(ctx).timeout)
    rows = [dict(o.as_dict(), community=r.home) for r in results for o in r.objects]
    if json:
        output.print_json(rows)
    elif rows or not all(r.failed for r in results):  # no community answered: no "no matches" either
        _print_objects(rows)
    code = _report(results)
    if code:
        raise typer.Exit(code)


@app.command("retrieve")
def retrieve_cmd(
    ctx: typer.Context,
    unique_ids: Annotated[list[str], typer.Argument(metavar="UNIQUE_ID...", help="Document uniqueIds.")],
    out: Out,
    home: Home = None,
    repository_id: RepositoryId = None,
    community: Community = None,
    timeout: OptionalTimeout = None,
    json: Json = False,
) -> None:
    """Fetch documents of another community: Cross Gateway Retrieve (ITI-39).

    Without --home and --repository-id the communities are asked first where each document is
    kept (GetDocuments, ITI-38): its community and repository come from its entry.

    Example: ihe xca retrieve 2.25.1234 --out ./docs
    """
    from ihecli.xca.initiating import cross_gateway_retrieve, locate_documents
    from ihecli.xds.messages import DocumentRequest

    comms = _communities(ctx, community)
    wait = timeout or _xds(ctx).timeout
    uids = [u.strip() for u in unique_ids]
    unknown: list[str] = []
    lookup = ExitStatus.REFUSED  # the status when nothing could be asked for
    if home and repository_id:
        reqs = [DocumentRequest(repository_id, u, home) for u in uids]
    else:  # ask the community (or every one) where the documents are
        reqs, found_by, unknown = locate_documents(comms, uids, home=home or "", timeout=wait)
        if repository_id:
            reqs = [DocumentRequest(repository_id, r.document_unique_id, r.home) for r in reqs]
        silent = [r for r in found_by if r.failed]  # a community that did not answer may hold them
        answered = [r.home for r in found_by if not r.failed]
        if unknown and answered:
            for u in unknown:
                output.error(f"{u}: no document with this uniqueId in {', '.join(answered)}")
        if unknown and silent:
            lookup = _report(silent)  # each said; 4 when they could not be reached
    results = cross_gateway_retrieve(comms, reqs, timeout=wait) if reqs else []
    rows = write_documents(out, [d for r in results for d in r.documents])
    if json:
        output.print_json(rows)
    elif rows:
        output.table(rows, ["uniqueId", "home", "mimeType", "size", "path"])
    code = _report(results) if results else lookup
    if unknown and code == ExitStatus.OK:
        code = ExitStatus.PARTIAL
    if code:
        raise typer.Exit(code)


@app.command("gateway")
def gateway_cmd(ctx: typer.Context, community: Community = None, port: Port = None, bind: Bind = None,
                timeout: OptionalTimeout = None, tls: Tls = False, no_tls: NoTls = False, cert: Cert = None,
                tls_key: TlsKey = None, ca: Ca = None, tls_floor: TlsFloor = None) -> None:
    """Initiating Gateway with the XDS Affinity Domain option: local consumers send Registry
    Stored Query (ITI-18) and Retrieve Document Set (ITI-43) to /xds as to a registry and
    repository; it asks every community (ITI-38, ITI-39) in parallel and merges the answers.

    Consumers retrieve with the homeCommunityId the query gave (`ihe xds retrieve --home`).

    Example: ihe xca gateway --community urn:oid:1.3.6.1.4.1.21367.13.70.101=http://gw-a:8021/xca --port 8022
    """
    from ihecli.net import tls as tlsmod
    from ihecli.xca.gateway import AffinityDomainGateway, AffinityGatewayServer

    x = _xds(ctx)
    gw = AffinityDomainGateway(_communities(ctx, community), timeout=timeout or x.timeout)
    ssl_context = tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca,
                                            floor=tls_floor), server=True)
    srv = AffinityGatewayServer(gw, bind=bind or x.bind, port=8022 if port is None else port, ssl_context=ssl_context)
    _serve(srv, f"XCA Initiating Gateway (XDS Affinity Domain option) on {{url}} for "
                f"{output.count(len(gw.communities), 'community', 'communities')} (Ctrl-C stops)", port)


def _serve(srv, banner: str, port) -> None:
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            srv.start()
        except OSError as e:
            raise UsageError(f"cannot listen on port {port}: {e.strerror or e}") from None
        output.info(banner.format(url=srv.url))
        try:
            while not stop.wait(0.5):
                pass
        finally:
            srv.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    output.info("stopped")


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    home: Home = None,
    port: Port = None,
    bind: Bind = None,
    db: Db = None,
    storage: Storage = None,
    repository_id: RepositoryId = None,
    tls: Tls = False,
    no_tls: NoTls = False,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
) -> None:
    """Answer other communities: a Responding Gateway for ITI-38 and ITI-39 at /xca, over the
    registry and repository data of `ihe xds serve` (the same archive database).

    Example: ihe xca serve --home urn:oid:1.3.6.1.4.1.21367.13.70.101 --port 8021
    """
    from ihecli.cli.archive_cmd import open_archive
    from ihecli.net import tls as tlsmod
    from ihecli.xca.responding import XcaServer

    x = _xds(ctx)
    home = home or x.home
    if not home or not home.startswith("urn:oid:"):
        raise UsageError("give this community's homeCommunityId: --home urn:oid:OID (or set xds.home)")
    ssl_context = tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca,
                                            floor=tls_floor), server=True)
    with open_archive(ctx, db, storage) as archive:
        srv = XcaServer(archive, home=home, repository_unique_id=repository_id or x.repository_unique_id,
                        bind=bind or x.bind, port=8021 if port is None else port, ssl_context=ssl_context)
        _serve(srv, f"XCA Responding Gateway of {home} on {{url}} (Ctrl-C stops)", port)
