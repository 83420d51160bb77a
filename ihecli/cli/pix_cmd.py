"""`ihe pix`: PIX Consumer: query a PIX Manager (ITI-9), receive its update notifications (ITI-10)
into the archive database, list the cross-references known here."""
from __future__ import annotations

import signal
import threading
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (Bind, Ca, Cert, Db, Json, Limit, NoTls, Port, Storage, Timeout, Tls, TlsFloor,
                                TlsKey, state, tls_config)
from ihecli.errors import IheError, UsageError

app = typer.Typer(help="PIX Consumer: cross-referenced patient identifiers (ITI-9 query, ITI-10 updates).\n\n"
                       "Example: ihe pix query 79471 --domain HZLN --target-domain PKLN", no_args_is_help=True)

Domain = Annotated[Optional[str], typer.Option(
    "--domain", metavar="DOMAIN",
    help="Assigning authority of the patient ID: NAMESPACE, OID or NAMESPACE&OID&ISO (default: the profile's).")]
PIX_PORT_HELP = ("Also receive PIX Update Notifications (ITI-10, ADT^A31 over MLLP) on this port and keep the "
                 "cross-references (0: any free port).")


def parse_domains(spec: str) -> list:
    """The domains of a comma-separated list (``pix.domains``, --domains)."""
    from ihecli.pix import Domain as D

    return [D.parse(x) for x in (spec or "").split(",") if x.strip()]


class PixService:
    """The PIX Update Notification listener on its own MLLP port with its own connection to the
    archive (`ihe pix listen`, and `ihe archive serve --pix-port`)."""

    def __init__(self, open_archive, bind: str, port: int, *, app: str = "IHE", facility: str = "",
                 domains: list = (), ssl_context=None):
        self._open, self.bind, self.port = open_archive, bind, port
        self.app, self.facility, self.domains = app, facility, list(domains)
        self.ssl_context = ssl_context
        self.archive = None
        self.server = None
        self.receiver = None

    def start(self) -> int:
        from ihecli.net.mllp import MllpServer
        from ihecli.pix import UpdateNotificationReceiver

        self.archive = self._open()
        self.receiver = UpdateNotificationReceiver(self.archive, app=self.app, facility=self.facility,
                                                   domains=self.domains)
        self.server = MllpServer(self.receiver, bind=self.bind, port=self.port, ssl_context=self.ssl_context,
                                 name="PIX")
        try:
            self.port = self.server.start()
        except OSError as e:
            self.archive.close()
            self.archive = self.server = None
            raise UsageError(f"cannot listen for PIX updates on {self.bind}:{self.port}: {e.strerror or e}") from None
        output.info(f"PIX Update Notification (MLLP) listening on {self.bind}:{self.port}"
                    + (" with TLS" if self.ssl_context is not None else ""))
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.archive is not None:
            self.archive.close()
            self.archive = None


def query_identifier(patient_id: str, domain: str | None, default_domain: str = ""):
    """The identifier to ask about: ``ID`` in --domain (else the profile's), or a CX
    ``ID^^^NS&OID&ISO`` in its own domain. A CX whose assigning authority is not the one --domain
    names is a usage error: taking either would silently ask about another patient."""
    from ihecli.pix import Domain as D
    from ihecli.pix import Identifier

    if "^" not in patient_id:
        return Identifier.parse(patient_id, domain or default_domain or None)
    comps = patient_id.strip().split("^")
    if not domain or len(comps) < 4 or not comps[3].strip():
        return Identifier.parse(patient_id, domain)  # one domain at most: as given
    own, given = Identifier.parse(patient_id), D.parse(domain)
    if not own.domain.matches(given):
        raise UsageError(f"patient identifier {patient_id!r} is of domain {own.domain}, but --domain says "
                         f"{given}: give one of them, or the same domain in both")
    # the same domain: keep what either of them says of it (namespace and OID)
    dom = own.domain
    merged = D(dom.namespace or given.namespace, dom.oid or given.oid,
               dom.oid_type or (given.oid_type if given.oid else ""))
    return Identifier(own.id, merged, own.type_code)


def _peer(spec: str) -> tuple[str, int]:
    from ihecli.cli.hl7_cmd import parse_peer

    return parse_peer(spec)


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    patient_id: Annotated[str, typer.Argument(metavar="ID", help="The patient ID (or a CX: ID^^^NS&OID&ISO).")],
    domain: Domain = None,
    target_domain: Annotated[Optional[list[str]], typer.Option(
        "--target-domain", metavar="DOMAIN",
        help="Only identifiers of this domain (NAMESPACE, OID or NS&OID&ISO; repeatable; default: all).")] = None,
    manager: Annotated[Optional[str], typer.Option(
        "--manager", metavar="HOST:PORT",
        help="The PIX Manager (default: the profile's pix.manager; --to is the same).")] = None,
    timeout: Timeout = 30,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
    to_alias: Annotated[Optional[str], typer.Option("--to", hidden=True)] = None,
) -> None:
    """Ask the PIX Manager which identifiers it cross-references with a patient ID (ITI-9,
    QBP^Q23 -> RSP^K23) and print them.

    Exit status 1 when the Manager finds none (NF) or answers with an error (AE/AR, shown),
    4 when it cannot be reached or does not answer within --timeout.

    Example: ihe pix query 79471 --domain 'HZLN&2.16.840.1.113883.3.37.4.1.1.2.411.1&ISO' --manager pix.example.org:3600
    """
    from ihecli.pix import query_identifiers

    st = state(ctx).settings()
    p = st.pix
    pid = query_identifier(patient_id, domain, p.domain)
    targets = parse_domains(",".join(target_domain or []))
    host, port = _peer(manager or to_alias or p.manager)
    cfg = tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor)
    ssl_context = None
    if cfg is not None:
        from ihecli.net.tls import context

        ssl_context = context(cfg, server=False)
    ans = query_identifiers(host, port, pid, targets, timeout=timeout if timeout != 30 else p.timeout,
                            ssl_context=ssl_context, sending_app=p.application, sending_facility=p.facility,
                            receiving_app=p.manager_application, receiving_facility=p.manager_facility)
    where = f" in {', '.join(str(d) for d in targets)}" if targets else ""
    if ans.status in ("AE", "AR"):
        # MSA-3 is often repeated as ERR-8, the user message: said once
        said = [e for e in ans.errors if e]
        if ans.text and not any(ans.text in e for e in said):
            said.insert(0, ans.text)
        why = "; ".join(said) or "no reason given"
        raise IheError(f"the PIX Manager refused the query ({ans.status}): {why}")
    if not ans.identifiers:
        raise IheError(f"the PIX Manager has no identifier{where} for {pid} (status {ans.status})")
    if json:
        output.print_json(ans.as_dict())
        return
    output.table([i.as_dict() for i in ans.identifiers], ["id", "namespace", "oid", "type"],
                 headers={"id": "ID", "namespace": "Namespace", "oid": "Universal ID", "type": "Type"})
    output.info(f"{len(ans.identifiers)} identifier(s) cross-referenced with {pid} ({ans.ms:g} ms)")


@app.command("listen")
def listen_cmd(
    ctx: typer.Context,
    port: Port = None,
    bind: Bind = None,
    domains: Annotated[Optional[str], typer.Option(
        "--domains", metavar="DOMAIN,...",
        help="Accept identifiers of these domains only (comma-separated; default: the profile's, else all).")] = None,
    db: Db = None, storage: Storage = None,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
) -> None:
    """Receive PIX Update Notifications (ITI-10, ADT^A31 over MLLP) in the foreground (Ctrl-C
    stops) and keep the cross-references in the archive database, where C-FIND, `ihe archive ls`
    and `ihe pix ls` find them.

    Example: ihe pix listen --port 3600
    """
    from ihecli.cli.archive_cmd import open_archive
    from ihecli.net import tls as tlsmod

    st = state(ctx).settings()
    p = st.pix
    ssl_context = tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca,
                                            floor=tls_floor), server=True)
    svc = PixService(lambda: open_archive(ctx, db, storage), bind or p.bind, p.port if port is None else port,
                     app=p.application, facility=p.facility,
                     domains=parse_domains(p.domains if domains is None else domains),
                     ssl_context=ssl_context)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        svc.start()
        output.info("Ctrl-C stops")
        while not stop.wait(0.5):
            pass
    finally:
        stats = svc.receiver.stats if svc.receiver else None
        svc.stop()
        for s, h in old.items():
            signal.signal(s, h)
    if stats is not None:
        output.info(f"stopped: {stats.accepted} notifications applied, {stats.refused} refused")


@app.command("ls")
def ls_cmd(
    ctx: typer.Context,
    patient_id: Annotated[Optional[str], typer.Argument(metavar="[ID]",
                                                        help="A patient ID (default: every cross-reference).")] = None,
    domain: Domain = None,
    limit: Limit = None,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """Show the cross-references known here (from PIX Update Notifications): the identifiers
    linked with ID, or all of them.

    Example: ihe pix ls 52231059
    """
    from ihecli.cli.archive_cmd import open_archive
    from ihecli.pix import Domain as D
    from ihecli.pix import links

    dom = D.parse(domain) if domain else None
    with open_archive(ctx, db, storage, existing=True) as archive:
        with archive.connect() as conn:
            found = links(conn, patient_id, dom, limit=limit)
    if patient_id is not None and not found:
        raise IheError(f"no cross-reference holds {patient_id}" + (f" in {dom}" if dom else ""))
    if json:
        output.print_json([lk.as_dict() for lk in found])
        return
    groups: dict[str, int] = {}
    rows = []
    for lk in found:
        n = groups.setdefault(lk.group, len(groups) + 1)
        rows.append({"n": n, **lk.identifier.as_dict(), "updated": lk.updated, "sender": lk.sender})
    output.table(rows, ["n", "id", "namespace", "oid", "type", "updated", "sender"],
                 headers={"n": "#", "id": "ID", "namespace": "Namespace", "oid": "Universal ID", "type": "Type",
                          "updated": "Updated (UTC)", "sender": "From"})
