"""The `ihe` command: one typer app, a sub-app per command group, one error boundary."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli import __version__
from ihecli.cli import output
from ihecli.cli.options import State
from ihecli.errors import ExitStatus, IheError

app = typer.Typer(
    name="ihe",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        output.out.print(f"ihe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", envvar="IHE_CONFIG", metavar="FILE",
                                                   help="Profile file (default: ihe config path).")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", "-P", envvar="IHE_PROFILE", metavar="NAME",
                                                   help="Named profile of the profile file.")] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="More log output (-vv: protocol detail).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """IHE actors on one command line: a DICOM image archive and the tools around it.

    Example: ihe archive serve --port 11112
    """
    ctx.obj = State(config=config, profile=profile, debug=debug)
    output.configure(quiet=quiet, verbose=verbose)
    try:
        ctx.obj.settings()  # read once; it also points the audit hook (ATNA) at the profile's repository
    except IheError:
        pass  # a command that needs the profile reports what is wrong with it


def _register() -> None:
    from ihecli.cli import archive_cmd, config_cmd, dicom_cmd

    app.add_typer(config_cmd.app, name="config")
    app.add_typer(archive_cmd.app, name="archive")
    app.add_typer(dicom_cmd.app, name="dicom")
    from ihecli.cli import pdi_cmd

    app.add_typer(pdi_cmd.app, name="pdi")
    from ihecli.cli import audit_cmd, time_cmd

    app.add_typer(audit_cmd.app, name="audit")
    app.add_typer(time_cmd.app, name="time")
    from ihecli.cli import iocm_cmd, kin_cmd, tce_cmd

    app.add_typer(kin_cmd.app, name="kin")
    app.add_typer(iocm_cmd.app, name="iocm")
    app.add_typer(tce_cmd.app, name="tce")
    from ihecli.cli import hl7_cmd

    app.add_typer(hl7_cmd.app, name="hl7")
    from ihecli.cli import xds_cmd

    app.add_typer(xds_cmd.app, name="xds")
    from ihecli.cli import wic_cmd

    app.add_typer(wic_cmd.app, name="wic")
    from ihecli.cli import xdsi_cmd

    app.add_typer(xdsi_cmd.app, name="xdsi")
    from ihecli.cli import xca_cmd

    app.add_typer(xca_cmd.app, name="xca")
    from ihecli.cli import xcai_cmd

    app.add_typer(xcai_cmd.app, name="xcai")
    from ihecli.cli import pdq_cmd, pix_cmd

    app.add_typer(pix_cmd.app, name="pix")
    app.add_typer(pdq_cmd.app, name="pdq")


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every error into one line and an exit status."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # without standalone mode click returns the code of typer.Exit instead of raising it
        rv = app(args=args, prog_name="ihe", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except IheError as e:
        if debug:
            import traceback

            traceback.print_exc()
        output.error(str(e))
        code = int(e.exit_status)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        output.error("aborted")
        code = 130
    except typer.TyperException as e:  # typer's own click: usage errors carry exit code 2
        e.show()
        code = getattr(e, "exit_code", ExitStatus.USAGE)
    except KeyboardInterrupt:
        output.error("interrupted")
        code = 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    except Exception as e:  # a bug: say so in one line, traceback with --debug
        if debug:
            raise
        output.error(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
        code = 70
    if argv is None:
        sys.exit(code)
    return code
