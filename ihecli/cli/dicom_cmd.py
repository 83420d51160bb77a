"""`ihe dicom`: echo, store, find, move, get against any DICOM node."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydicom.dataset import Dataset

from ihecli.cli import output
from ihecli.cli.options import (DEST_HELP, Ca, CallingAet, Cert, Json, Keys, Level, Limit, Node, NoTls, Out, Root,
                                Timeout, Tls, TlsFloor, TlsKey, state, tls_config)
from ihecli.config import AET_RE, resolve_node
from ihecli.dicom import scu
from ihecli.errors import ExitStatus, UsageError

app = typer.Typer(help="DICOM client: echo, store, find, move, get (like DCMTK's *scu tools).\n\n"
                       "Example: ihe dicom echo PACS", no_args_is_help=True)

HIDDEN = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}


def _ctx(ctx: typer.Context, node: str, calling_aet: Optional[str]):
    st = state(ctx).settings()
    return st.node(node), calling_aet or st.calling_aet


def _tls(ctx: typer.Context, node, tls: bool, no_tls: bool, cert, key, ca, floor):
    """The client TLS context the options, the profile and the node (``tls = true``,
    ``tls://AET@host:port``) ask for (ITI-19), or None."""
    from ihecli.net import tls as tlsmod

    return tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=key, ca=ca, floor=floor,
                                     default_on=node.tls), server=False)


def element_json(elem) -> Any:
    """A value as JSON users expect: str, number, list for multiple values, list of objects for SQ."""
    if elem.VR == "SQ":
        return [dataset_json(item) for item in elem.value]
    v = elem.value
    if v is None or v == "":
        return None
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if type(v).__name__ == "MultiValue" or isinstance(v, list):
        return [str(x) if not isinstance(x, (int, float)) else x for x in v]
    if isinstance(v, (int, float)):
        return v
    return str(v)


def dataset_json(ds: Dataset) -> dict:
    out = {}
    for elem in ds:
        key = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if key in HIDDEN:
            continue
        out[key] = element_json(elem)
    return out


def warn_failures(failed, node) -> None:
    """A warning per file that failed; files that failed for one same reason (a lost
    association, a full disk) beyond a few are one line: a peer or a disk that goes away leaves
    thousands. --json lists every one."""
    by_reason: dict[str, list] = {}
    for f in failed:
        by_reason.setdefault(f.reason, []).append(f)
    for reason, fs in by_reason.items():
        if reason == scu.LOST:
            output.warn(f"the association with {node} was lost: {output.count(len(fs), 'file')} not sent "
                        f"(from {fs[0].path}; --json lists them)")
        elif len(fs) <= 3:
            for f in fs:
                output.warn(f"{f.path}: {reason}")
        else:
            output.warn(f"{output.count(len(fs), 'file')}: {reason} (from {fs[0].path}; --json lists them)")


@app.command("echo")
def echo_cmd(ctx: typer.Context, node: Node, calling_aet: CallingAet = None, timeout: Timeout = 30,
             json: Json = False,
             tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
             tls_floor: TlsFloor = None) -> None:
    """Verify a node answers (C-ECHO).

    Example: ihe dicom echo ORTHANC@127.0.0.1:4242
    """
    n, aet = _ctx(ctx, node, calling_aet)
    r = scu.echo(n, calling_aet=aet, timeout=timeout, tls=_tls(ctx, n, tls, no_tls, cert, tls_key, ca, tls_floor))
    if json:
        output.print_json(r)
    else:
        output.out.print(f"C-ECHO {r.node}: success ({r.ms} ms)", markup=False)


@app.command("store")
def store_cmd(ctx: typer.Context, node: Node,
              paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Files and folders to send.")],
              calling_aet: CallingAet = None, timeout: Timeout = 30, json: Json = False,
             tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
             tls_floor: TlsFloor = None) -> None:
    """Send DICOM files and folders over one association (C-STORE).

    Example: ihe dicom store PACS /media/cdrom --calling-aet MODALITY
    """
    n, aet = _ctx(ctx, node, calling_aet)
    holder: dict = {}

    def plan(total: int) -> None:
        holder["total"] = total
        holder["bar"] = bar_cm = output.progress(total, f"sending to {n}", enabled=not json)
        holder["advance"] = bar_cm.__enter__()

    def step(path: str, outcome: str) -> None:
        holder["sent"] = holder.get("sent", 0) + (outcome in ("success", "warning"))
        holder["advance"]()

    try:
        rep = scu.store(n, paths, calling_aet=aet, timeout=timeout, progress=step, on_plan=plan,
                        tls=_tls(ctx, n, tls, no_tls, cert, tls_key, ca, tls_floor))
    except KeyboardInterrupt:
        if "bar" in holder:
            holder.pop("bar").__exit__(None, None, None)
        done = holder.get("sent", 0)
        of = f"{done} of {output.count(holder['total'], 'file')}" if "total" in holder else output.count(done, "file")
        output.error(f"interrupted: {of} sent to {n}")
        raise typer.Exit(130) from None
    finally:
        if "bar" in holder:
            holder["bar"].__exit__(None, None, None)
    if json:
        output.print_json(rep)
    else:
        warn_failures(rep.failed, rep.node)
        rate = f", {rep.sent / rep.seconds:.0f} files/s" if rep.seconds and rep.sent else ""
        dirs = f", {len(rep.dicomdirs)} DICOMDIR skipped" if rep.dicomdirs else ""
        output.info(f"{rep.sent} sent to {rep.node}, {len(rep.failed)} failed, {len(rep.skipped)} not DICOM{dirs}"
                    f" ({rep.bytes / 1e6:.1f} MB in {rep.seconds:.1f} s{rate})")
    if rep.failed:
        raise typer.Exit(ExitStatus.PARTIAL if rep.sent else ExitStatus.REFUSED)
    if not rep.sent:  # nothing to send is nothing done (storescu fails too)
        where = ", ".join(map(str, paths)) if len(paths) <= 3 else f"the {len(paths)} paths given"
        output.error(f"nothing sent: no DICOM object in {where}")
        raise typer.Exit(ExitStatus.REFUSED)


@app.command("find")
def find_cmd(ctx: typer.Context, node: Node, level: Level = "study", keys: Keys = None, root: Root = None,
             limit: Limit = None,
             calling_aet: CallingAet = None, timeout: Timeout = 30, json: Json = False,
             tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
             tls_floor: TlsFloor = None) -> None:
    """Query a node (C-FIND); the level's usual keys are always returned.

    -L patient queries the Patient Root model (Study Root has no patient level) unless --root says so.

    Example: ihe dicom find PACS -L study -k PatientName='SMITH*' -k StudyDate=20240101-20241231
    """
    lvl, model = choose_root(level, root)
    ident = scu.build_identifier(lvl, keys, defaults=scu.LEVEL_DEFAULTS.get(lvl, ()))
    n, aet = _ctx(ctx, node, calling_aet)
    results = scu.find(n, ident, root=model, calling_aet=aet, timeout=timeout, limit=limit,
                       tls=_tls(ctx, n, tls, no_tls, cert, tls_key, ca, tls_floor))
    rows = [dataset_json(r) for r in results]
    if json:
        output.print_json(rows)
        return
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    output.table([{k: _cell(v) for k, v in r.items()} for r in rows], columns)
    output.found(len(rows), "match", "matches", limit=limit)


def move_destination_aet(spec: str, nodes) -> str:
    """The AE title a C-MOVE names: a bare AE title, a profile node's, or that of AET@host:port."""
    if spec in nodes or "@" in spec:
        return resolve_node(spec, nodes).aet
    if not AET_RE.match(spec):
        raise UsageError(f"bad move destination {spec!r}")
    return spec


# unique keys a C-MOVE / C-GET names, per model and level, from the top (PS3.4 C.4.2.2.1, C.6)
UNIQUE_KEYS = {"PATIENT": ("PatientID",), "STUDY": ("StudyInstanceUID",), "SERIES": ("SeriesInstanceUID",),
               "IMAGE": ("SOPInstanceUID",)}
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def choose_root(level: str, root: Optional[str]) -> tuple[str, str]:
    """(level, model): -L patient takes the Patient Root model unless --root says otherwise (the
    Study Root model has no PATIENT level, PS3.4 C.6.2); everything else Study Root."""
    lvl = level.strip().upper()
    lvl = "IMAGE" if lvl == "INSTANCE" else lvl
    if lvl not in LEVELS:
        raise UsageError(f"bad level {level!r}: patient, study, series or instance (image)")
    if root is None:
        return lvl, "patient" if lvl == "PATIENT" else "study"
    model = root.strip().lower()
    if model not in ("study", "patient"):
        raise UsageError(f"bad --root {root!r}: study or patient")
    if model == "study" and lvl == "PATIENT":
        raise UsageError("the Study Root model has no PATIENT level: use -L study, or --root patient")
    return lvl, model


def retrieve_identifier(op: str, level: str, keys: Optional[list[str]], root: Optional[str]):
    """(identifier, model) of a C-MOVE or C-GET; without any -k, a usage error naming the keys the
    level needs (a bare identifier would only earn a failure status from the peer)."""
    lvl, model = choose_root(level, root)
    if not keys:
        top = 0 if model == "patient" else 1
        need = [k for lv in LEVELS[top:LEVELS.index(lvl) + 1] for k in UNIQUE_KEYS[lv]]
        raise UsageError(f"say what to retrieve: {op} at {lvl} level ({model.capitalize()} Root) needs "
                         + " ".join(f"-k {k}=..." for k in need))
    return scu.build_identifier(lvl, keys), model


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return "\\".join(_cell(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def _retrieve_exit(r: scu.RetrieveResult, json: bool, what: str) -> None:
    if json:
        output.print_json({**r.__dict__})
    else:
        output.info(f"{what}: {r.completed} completed, {r.failed} failed, {r.warning} warnings "
                    f"(status 0x{r.status:04X}, {r.seconds:.1f} s)")
        for uid in r.failed_uids[:5]:
            output.warn(f"failed: {uid}")
        if len(r.failed_uids) > 5:  # a destination that went away fails thousands
            output.warn(f"failed: {len(r.failed_uids) - 5} more (--json lists them)")
        if r.write_error:
            output.warn(r.write_error)
    if r.failed:
        raise typer.Exit(ExitStatus.PARTIAL if r.completed else ExitStatus.REFUSED)


@app.command("move")
def move_cmd(ctx: typer.Context, node: Node,
             dest: Annotated[str, typer.Option("--dest", metavar="DEST", help=DEST_HELP)],
             level: Level = "study", keys: Keys = None, root: Root = None, calling_aet: CallingAet = None,
             timeout: Timeout = 600, json: Json = False,
             tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
             tls_floor: TlsFloor = None) -> None:
    """Ask a node to send matching instances to a destination (C-MOVE).

    Example: ihe dicom move PACS --dest VIEWER -k StudyInstanceUID=1.2.3.4
    """
    ident, model = retrieve_identifier("C-MOVE", level, keys, root)
    n, aet = _ctx(ctx, node, calling_aet)
    dest = move_destination_aet(dest, state(ctx).settings().nodes)
    with output.progress(None, f"moving to {dest}", enabled=not json) as advance:
        seen = {"done": 0}

        def prog(done: int, total: int) -> None:
            advance(done - seen["done"])
            seen["done"] = done

        r = scu.move(n, dest, ident, root=model, calling_aet=aet, timeout=timeout, progress=prog,
                     tls=_tls(ctx, n, tls, no_tls, cert, tls_key, ca, tls_floor))
    _retrieve_exit(r, json, f"C-MOVE to {dest}")


@app.command("get")
def get_cmd(ctx: typer.Context, node: Node,
            out: Out,
            level: Level = "study", keys: Keys = None, root: Root = None, calling_aet: CallingAet = None,
            timeout: Timeout = 600, json: Json = False,
            tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
            tls_floor: TlsFloor = None) -> None:
    """Retrieve matching instances over the same association into a folder (C-GET).

    Files are written as DIR/SOPInstanceUID.dcm.

    Example: ihe dicom get PACS --out ./study -k StudyInstanceUID=1.2.3.4
    """
    ident, model = retrieve_identifier("C-GET", level, keys, root)
    n, aet = _ctx(ctx, node, calling_aet)
    with output.progress(None, "receiving", enabled=not json) as advance:
        r = scu.get(n, ident, out, root=model, calling_aet=aet, timeout=timeout, progress=lambda p: advance(),
                    tls=_tls(ctx, n, tls, no_tls, cert, tls_key, ca, tls_floor))
    _retrieve_exit(r, json, f"C-GET into {out}")


from ihecli.cli import workflow_cmd as _workflow  # noqa: E402  (commit, mpps create|set)

_workflow.add_dicom_commands(app)
