"""`ihe audit`: send audit messages, run an Audit Record Repository, query what it stored (ATNA, ITI-20)."""
from __future__ import annotations

import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (PATIENT_HELP, Bind, Ca, Cert, Db, Json, Limit, NoTls, Since, Timeout, Tls, TlsFloor, TlsKey, state,
                                tls_config)
from ihecli.errors import IheError, PeerUnreachable, UsageError, reason

app = typer.Typer(help="Audit trail (ATNA): send audit messages, run an Audit Record Repository, query it.\n\n"
                       "Example: ihe audit serve --tls-port 6514 --cert node.pem --ca ca.pem", no_args_is_help=True)

# one meaning in both commands: the event sent (built from a word) or the events looked for
Event = Annotated[Optional[str], typer.Option(
    "--event", metavar="EVENT",
    help="The audit event: send builds start, stop, login, logout, alert, patient-read or patient-update; query "
         "matches an event ID or type by code or name (110112, Query, ITI-18, 'Application Start').")]
User = Annotated[Optional[str], typer.Option(
    "--user", metavar="USER", help="User ID of a participant: a person, an AE title or an application (query: "
                                   "wildcards * ?).")]


def _db_url(ctx: typer.Context, db: Optional[str]) -> str:
    from ihecli.archive import sqlite_url

    return sqlite_url(db or state(ctx).settings().archive.db_url())


def _built_event(kind: str, *, user: str, patients: list[str], outcome: int, app: str):
    """The event `audit send --event` builds. --user is the person acting, an ActiveParticipant
    (what `audit query --user` matches) in every kind: the launcher of start/stop, the user of
    login/logout and patient-read/-update, and for an alert the performing person (DICOM PS3.15
    A.5.3.11), the alert's subject being this node."""
    from ihecli.atna import events as ev

    if kind.strip().lower() == "alert" and user:
        return ev.security_alert(ev.NODE_AUTHENTICATION, reporter=app, subject=ev.local_host(),
                                 description="security alert", outcome=outcome or ev.MINOR_FAILURE,
                                 performer=ev.Peer(user_id=user))
    return ev.simple_event(kind, user=user, patients=patients, outcome=outcome, app=app)


@app.command("send")
def send_cmd(
    ctx: typer.Context,
    files: Annotated[Optional[list[Path]], typer.Argument(
        metavar="[FILE...]", help="Audit messages (XML, DICOM or RFC 3881 format); '-' reads standard input.")] = None,
    to: Annotated[Optional[str], typer.Option(
        "--arr", metavar="URL", help="Audit Record Repository (ARR): tls://HOST:6514, udp://HOST:514 or "
                                     "tcp://HOST:PORT (default: the profile's audit.repository).")] = None,
    event: Event = None,
    user: User = None,
    patient: Annotated[Optional[list[str]], typer.Option(
        "--patient", metavar="ID", help=PATIENT_HELP)] = None,
    outcome: Annotated[int, typer.Option("--outcome", metavar="N",
                                         help="EventOutcomeIndicator of the built event: 0, 4, 8 or 12.")] = 0,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None, timeout: Timeout = 10, json: Json = False,
) -> None:
    """Send audit messages to an Audit Record Repository now (ITI-20), as RFC 5424 syslog.

    Example: ihe audit send --arr tls://arr.example.org:6514 --ca ca.pem --event login --user alice
    """
    from ihecli.atna import events as ev
    from ihecli.atna import syslog
    from ihecli.atna.parse import AuditParseError, parse_audit
    from ihecli.atna.sender import MessageTooLarge, RepositoryRefused, parse_target, send_messages

    st = state(ctx).settings()
    url = to or st.audit.repository
    if not url:
        raise UsageError("no repository: give --arr tls://HOST:6514 (or udp://HOST:514), or set audit.repository "
                         "in the profile")
    target = parse_target(url)
    if target.scheme == "tls" and no_tls:
        raise UsageError(f"{url} is a TLS repository but --no-tls was given: use tcp:// or udp:// for no TLS")
    given = [name for name, v in (("--tls", tls), ("--cert", cert), ("--tls-key", tls_key), ("--ca", ca),
                                  ("--tls-floor", tls_floor)) if v]
    if target.scheme != "tls" and given:  # else the message would go in the clear, the user believing otherwise
        raise UsageError(f"{', '.join(given)} given, but {target} is no TLS link: use tls://{target.host}:"
                         f"{target.port if target.scheme == 'tcp' else 6514}")
    cfg = tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor,
                     default_on=target.scheme == "tls")
    if files and event:
        raise UsageError("give files or --event, not both")
    bodies: list[tuple[str, bytes]] = []
    for f in files or []:
        try:
            data = sys.stdin.buffer.read() if str(f) == "-" else f.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {f}: {e.strerror or e}") from None
        try:
            parse_audit(data)
        except AuditParseError as e:
            raise IheError(f"{f}: not an audit message: {e}") from None
        bodies.append((str(f), data))
    if not files:
        if not event:
            raise UsageError("nothing to send: give audit message files or --event (start, stop, login, ...)")
        if outcome not in (0, 4, 8, 12):
            raise UsageError("--outcome is 0, 4, 8 or 12")
        if event.strip().lower() in ("patient-read", "patient-update") and not patient:
            raise UsageError(f"--event {event.strip().lower()} needs --patient ID (the patient whose record it is)")
        try:
            e = _built_event(event, user=user or "", patients=patient or [], outcome=outcome, app=st.audit.app_name)
        except ValueError as x:
            raise UsageError(str(x)) from None
        bodies.append((event, ev.to_xml(e, default_source=ev.AuditSource(
            source_id=st.audit.source_id or ev.local_host(), site_id=st.audit.site_id))))
    msgs = [syslog.message(b, app=st.audit.app_name) for _, b in bodies]
    try:
        n = send_messages(target, msgs, tls_config=cfg, timeout=timeout)
    except RepositoryRefused as e:
        raise IheError(f"{target}: {e}") from None
    except MessageTooLarge as e:
        i = getattr(e, "index", 0)
        raise IheError(f"{bodies[i][0]}: {e}" + (f" ({i} sent before it)" if i else "")) from None
    except ssl.SSLError as e:
        from ihecli.net.tls import describe

        raise IheError(f"{target} refused the TLS connection: {describe(e)}") from None
    except OSError as e:
        raise PeerUnreachable(f"cannot reach {target}: {reason(e)}") from None
    if json:
        output.print_json({"repository": str(target), "sent": n, "messages": [name for name, _ in bodies]})
    else:
        output.info(f"{n} audit message{'s' if n != 1 else ''} sent to {target}")


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    tls_port: Annotated[Optional[int], typer.Option(
        "--tls-port", min=0, max=65535, metavar="PORT",
        help="TLS syslog port (RFC 5425; default the profile's, 6514; 0: any free port).")] = None,
    udp_port: Annotated[Optional[int], typer.Option(
        "--udp-port", min=0, max=65535, metavar="PORT",
        help="UDP syslog port (RFC 5426; default the profile's, 514; 0: any free port).")] = None,
    tcp_port: Annotated[Optional[int], typer.Option(
        "--tcp-port", min=0, max=65535, metavar="PORT",
        help="Also listen on plain TCP, octet-counted, without TLS (off unless given).")] = None,
    no_udp: Annotated[bool, typer.Option("--no-udp", help="No UDP listener.")] = False,
    bind: Bind = None, db: Db = None,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
) -> None:
    """Run an Audit Record Repository in the foreground: syslog over TLS and UDP into the archive database.

    Accepts DICOM and RFC 3881 audit messages (junk before the XML is tolerated); --no-tls turns the
    TLS listener off, --no-udp the UDP one. With --ca, senders must present a certificate that CA signed.

    Example: ihe audit serve --tls-port 6514 --udp-port 5514 --cert node.pem --ca ca.pem
    """
    from ihecli.atna.repository import AuditRepository

    st = state(ctx).settings()
    a = st.audit
    cfg = tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor, default_on=True)
    if cfg is not None and not cfg.cert:
        raise UsageError("the TLS listener needs a certificate: give --cert (and --tls-key when the key is in "
                         "another file; or tls.cert and tls.key in the profile), or --no-tls for UDP and TCP only")
    t_port = None if cfg is None else (a.tls_port if tls_port is None else tls_port)
    u_port = None if no_udp else (a.udp_port if udp_port is None else udp_port)
    if t_port is None and u_port is None and tcp_port is None:
        raise UsageError("every listener is off: drop --no-tls or --no-udp, or give --tcp-port")
    url = _db_url(ctx, db)
    repo = AuditRepository(url, bind=bind or a.bind, tls_port=t_port, udp_port=u_port, tcp_port=tcp_port,
                           tls_config=cfg)
    try:
        ports = repo.start()
    except OSError as e:
        raise UsageError(f"cannot listen on {e.strerror or e}") from None
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from ihecli.config import mask_url

        listening = ", ".join(f"{k} {bind or a.bind}:{p}" for k, p in ports.items())
        output.info(f"audit repository listening on {listening} (database {mask_url(url)}; Ctrl-C stops)")
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        repo.stop()
    s = repo.stats
    output.info(f"stopped: {s.stored} messages stored ({s.invalid} not audit messages), "
                f"{s.refused_tls} TLS peers refused, {s.refused_frames} connections cut")


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    since: Since = None,
    event: Event = None,
    user: User = None,
    patient: Annotated[Optional[str], typer.Option("--patient", metavar="ID", help=PATIENT_HELP)
                       ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only events whose outcome is not success.")] = False,
    limit: Limit = None, db: Db = None, json: Json = False,
) -> None:
    """List the audit events the repository stored, newest first.

    Example: ihe audit query --since 24h --event ITI-18 --patient 'PID0001*'
    """
    from ihecli.archive import check_named_db
    from ihecli.archive.index import make_engine
    from ihecli.archive.schema import metadata
    from ihecli.atna.query import query_events
    from ihecli.cli.archive_cmd import parse_since

    when = parse_since(since) if since else None
    url = _db_url(ctx, db)
    check_named_db(url, named=bool(db or state(ctx).settings().archive.db), existing=True)
    try:
        engine = make_engine(url)
        metadata.create_all(engine)
    except Exception as e:
        from ihecli.config import mask_url

        raise UsageError(f"cannot open the archive database {mask_url(url)}: {e}") from None
    cap = limit or 1000  # without --limit, the newest 1000: said when there may be more
    try:
        rows = query_events(engine, since=when, event=event, user=user, patient=patient, outcome_failed=failed,
                            limit=cap, with_message=json)
    finally:
        engine.dispose()
    if json:
        output.print_json(rows)
        if len(rows) >= cap and not limit:
            output.warn(f"only the newest {cap} events: --limit N for more")
        return
    table = [{"time": (r.event_time or r.received).strftime("%Y-%m-%d %H:%M:%S"), "event": r.event or "(invalid)",
              "type": r.types, "act": r.action, "outcome": r.outcome, "users": ", ".join(r.users),
              "patients": ", ".join(r.patients), "from": r.peer} for r in rows]
    output.table(table, ["time", "event", "type", "act", "outcome", "users", "patients", "from"])
    output.found(len(rows), "event", limit=cap, extra=" (times in UTC)")
