"""`ihe hl7`: send HL7 v2 messages over MLLP; the orders the archive's HL7 feed keeps."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import PATIENT_HELP, Ca, Cert, Db, Json, Limit, NoTls, Storage, Timeout, Tls, TlsFloor, TlsKey, tls_config
from ihecli.errors import ExitStatus, UsageError

app = typer.Typer(help="HL7 v2 over MLLP: send messages, list the orders the archive received.\n\n"
                       "Example: ihe hl7 send 127.0.0.1:2575 adt-a08.hl7", no_args_is_help=True)


def parse_peer(spec: str) -> tuple[str, int]:
    """HOST:PORT (or mllp://HOST:PORT, [v6]:PORT)."""
    m = re.fullmatch(r"(?:mllps?://)?(\[[^\]]+\]|[^:/\s]+):(\d{1,5})/?", spec.strip())
    if not m or not 0 < int(m.group(2)) < 65536:
        raise UsageError(f"bad peer {spec!r}: give HOST:PORT, e.g. 127.0.0.1:2575")
    return m.group(1).strip("[]"), int(m.group(2))


HL7_PORT_HELP = ("Also receive HL7 v2 over MLLP on this port: ADT A01/A04/A08/A31/A40/A47 patient updates, "
                 "merges and ID changes, ORM^O01/OMI^O23 orders (0: any free port).")


class Hl7Service:
    """The archive's HL7 feed on its own MLLP port, with its own connection to the archive
    (started by `ihe archive serve --hl7-port`, in the process that supervises the DICOM workers)."""

    def __init__(self, open_archive, bind: str, port: int, aet: str, ssl_context=None):
        self._open, self.bind, self.port, self.aet = open_archive, bind, port, aet
        self.ssl_context = ssl_context
        self.archive = None
        self.server = None

    def start(self) -> int:
        from ihecli.net.mllp import MllpServer
        from ihecli.workflow.hl7 import Hl7Feed

        self.archive = self._open()
        self.server = MllpServer(Hl7Feed(self.archive, app=self.aet), bind=self.bind, port=self.port,
                                 ssl_context=self.ssl_context, name="HL7")
        try:
            self.port = self.server.start()
        except OSError as e:
            self.archive.close()
            raise UsageError(f"cannot listen for HL7 on {self.bind}:{self.port}: {e.strerror or e}") from None
        output.info(f"HL7 (MLLP) listening on {self.bind}:{self.port}"
                    + (" with TLS" if self.ssl_context is not None else ""))
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.archive is not None:
            self.archive.close()
            self.archive = None


@app.command("send")
def send_cmd(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(metavar="HOST:PORT", help="The MLLP receiver.")],
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="ER7 files ('-': standard input); a file "
                                                "may hold several messages, each starting with MSH.")],
    timeout: Timeout = 30,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Send HL7 v2 messages over one MLLP connection and print each acknowledgement.

    Exit status 1 when the receiver answers AE or AR (3 when only some were refused), 4 when it
    cannot be reached or does not answer.

    Example: ihe hl7 send 127.0.0.1:2575 adt-a08.hl7 adt-a40.hl7
    """
    from ihecli.hl7.client import read_messages, send_messages

    host, port = parse_peer(peer)
    named = []
    for f in files:
        if str(f) == "-":
            named.append(("-", sys.stdin.buffer.read()))
            continue
        try:
            named.append((str(f), f.read_bytes()))
        except OSError as e:
            raise UsageError(f"{f}: {e.strerror or e}") from None
    messages = read_messages(named)
    cfg = tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor)
    ssl_context = None
    if cfg is not None:
        from ihecli.net.tls import context

        ssl_context = context(cfg, server=False)

    def shown(r) -> None:
        if json:
            return
        output.out.print(r.ack.replace("\r", "\n").rstrip("\n"), markup=False, highlight=False)
        why = "; ".join(x for x in [r.text, *r.errors] if x)
        line = f"{r.source}: {r.message_type} {r.control_id} -> {r.ack_code or 'no ACK'} ({r.ms:g} ms)"
        if r.ok:
            output.info(line)
        else:
            output.warn(line + (f": {why}" if why else ""))

    results = send_messages(host, port, messages, timeout=timeout, ssl_context=ssl_context, progress=shown)
    if json:
        output.print_json(results)
    refused = sum(1 for r in results if not r.ok)
    if refused:
        raise typer.Exit(ExitStatus.PARTIAL if refused < len(results) else ExitStatus.REFUSED)


@app.command("orders")
def orders_cmd(
    ctx: typer.Context,
    patient: Annotated[Optional[str], typer.Option("--patient", metavar="ID", help=PATIENT_HELP)] = None,
    accession: Annotated[Optional[str], typer.Option("--accession", metavar="ACC", help="Accession number.")] = None,
    limit: Limit = None,
    db: Db = None, storage: Storage = None, json: Json = False,
) -> None:
    """List the orders (ORM^O01, OMI^O23) the archive's HL7 feed received, newest first.

    Example: ihe hl7 orders --patient PID0001
    """
    from ihecli.cli.archive_cmd import open_archive
    from ihecli.workflow.orders import list_orders

    with open_archive(ctx, db, storage, existing=True) as archive:
        with archive.connect() as conn:
            rows = list_orders(conn, pid=patient, accession=accession, limit=limit)
    if json:
        output.print_json(rows)
        return
    output.table(rows, ["placer_order", "filler_order", "accession", "status", "pid", "patient_name", "modality",
                        "procedure", "scheduled"],
                 headers={"placer_order": "Placer", "filler_order": "Filler", "accession": "Accession",
                          "status": "Status", "pid": "PatientID", "patient_name": "PatientName",
                          "modality": "Modality", "procedure": "Procedure", "scheduled": "Scheduled"})
