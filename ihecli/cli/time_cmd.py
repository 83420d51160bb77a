"""`ihe time`: Consistent Time (ITI-1 Maintain Time) against an NTP server."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import Json, Timeout, state
from ihecli.errors import ExitStatus, UsageError

app = typer.Typer(help="Consistent Time (CT): check the local clock against an NTP server.\n\n"
                       "Example: ihe time check --server ntp.example.org", no_args_is_help=True)


def parse_seconds(text: str) -> float:
    """'1s', '500ms', '0.5', '2m' as seconds."""
    t = text.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if t.endswith(suffix):
            t, f = t[: -len(suffix)], factor
            break
    else:
        f = 1.0
    try:
        v = float(t) * f
    except ValueError:
        raise UsageError(f"bad duration {text!r}: such as 1s, 500ms or 0.5") from None
    if v < 0:
        raise UsageError(f"bad duration {text!r}: negative")
    return v


@app.command("check")
def check_cmd(
    ctx: typer.Context,
    server: Annotated[Optional[str], typer.Option(
        "--server", "-s", metavar="HOST[:PORT]", help="NTP server (default: the profile's time.server).")] = None,
    max_offset: Annotated[Optional[str], typer.Option(
        "--max-offset", metavar="DURATION", help="Largest offset tolerated, e.g. 1s or 250ms (default: the "
                                                 "profile's, 1 s); beyond it the exit status is 1.")] = None,
    timeout: Timeout = 5, json: Json = False,
) -> None:
    """Ask an NTP server for the time (ITI-1): the clock's offset and the round-trip delay.

    Example: ihe time check --server ntp.example.org --max-offset 1s
    """
    from ihecli.ct import maintain_time

    st = state(ctx).settings()
    srv = server or st.time.server
    if not srv:
        raise UsageError("no time server: give --server HOST[:PORT] or set time.server in the profile")
    tolerance = parse_seconds(max_offset) if max_offset else st.time.max_offset
    r = maintain_time(srv, max_offset=tolerance, timeout=timeout)
    if json:
        output.print_json(r)
    else:
        output.kv([("server", r.server), ("offset", f"{r.offset * 1000:+.3f} ms"),
                   ("delay", f"{r.delay * 1000:.3f} ms"), ("stratum", r.stratum), ("reference", r.reference)])
        if not r.ok:
            output.warn(f"the clock is {abs(r.offset) * 1000:.3f} ms off, more than the {tolerance * 1000:g} ms allowed")
    if not r.ok:
        raise typer.Exit(ExitStatus.REFUSED)
