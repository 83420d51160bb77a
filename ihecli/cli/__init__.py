"""The `ihe` command: one typer app, a sub-app per command group, one error boundary."""
from __future__ import annotations

import os
import re
import sys
import warnings
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
    if _serving:
        output.serving()
    try:
        ctx.obj.settings()  # read once; it also points the audit hook (ATNA) at the profile's repository
    except IheError:
        pass  # a command that needs the profile reports what is wrong with it


# command group -> its module in ihecli.cli; a group's module (and what it imports) is loaded
# only when the command line names that group, or when every group is needed (help, docs)
GROUPS = {"config": "config_cmd", "archive": "archive_cmd", "dicom": "dicom_cmd", "pdi": "pdi_cmd",
          "audit": "audit_cmd", "time": "time_cmd", "kin": "kin_cmd", "iocm": "iocm_cmd", "tce": "tce_cmd",
          "hl7": "hl7_cmd", "xds": "xds_cmd", "wic": "wic_cmd", "xdsi": "xdsi_cmd", "xca": "xca_cmd",
          "xcai": "xcai_cmd", "pix": "pix_cmd", "pdq": "pdq_cmd"}
_registered: set[str] = set()
# the commands that run until stopped: their log (INFO) is their account of their work
SERVERS = {("archive", "serve"), ("xds", "serve"), ("xca", "serve"), ("xca", "gateway"), ("xcai", "serve"),
           ("xcai", "gateway"), ("audit", "serve"), ("pix", "listen")}
_serving = False
# root options that take a value (the group name is the first word that is not an option or one of these values)
_VALUED = {"--config", "-c", "--profile", "-P"}


def register(names=None) -> None:
    """Add the command groups ``names`` (default: all) to the app, in GROUPS order."""
    import importlib

    for name, module in GROUPS.items():
        if (names is None or name in names) and name not in _registered:
            mod = importlib.import_module(f"ihecli.cli.{module}")
            for info in mod.app.registered_commands:
                _keep_examples_whole(info.callback)
            app.add_typer(mod.app, name=name)
            _registered.add(name)


def _keep_examples_whole(fn) -> None:
    """The Example paragraph of a command's help is printed as written, not rewrapped: click
    breaks long lines at hyphens (``--title for-`` / ``surgery``), which breaks a copied example.
    click leaves a paragraph that starts with a \\b line as it is."""
    doc = getattr(fn, "__doc__", None) or ""
    if "Example:" in doc and "\b\n" not in doc:
        fn.__doc__ = re.sub(r"\n([ \t]*)Example:", "\n\\1\b\n\\1Example:", doc, count=1)


def _words(args: list[str]) -> list[str]:
    """The words of a command line that are neither options nor the values of root options:
    the group, then its command."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in _VALUED:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
            if len(out) == 2:
                break
    return out


def _group_of(args: list[str]) -> str | None:
    words = _words(args)
    return words[0] if words else None


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every error into one line and an exit status."""
    args = sys.argv[1:] if argv is None else argv
    global _serving
    debug = "--debug" in args
    group = _group_of(args)
    _serving = tuple(_words(args)) in SERVERS
    try:
        # only the group the command line names (start-up time); every group for help or a typo
        if group in GROUPS and "--help" not in args[:1]:
            register([group])
        elif not (group is None and "--version" in args):
            register()
        # without standalone mode click returns the code of typer.Exit instead of raising it
        with warnings.catch_warnings():
            if not debug:  # what a library finds odd in a value is said by our own checks, in one line
                warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
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
    except UnicodeEncodeError as e:
        if debug or "surrogates" not in str(e):
            raise
        # Python keeps bytes of the command line that are not text in the locale's encoding as
        # surrogates: fine for a file name, not for a name or an ID that goes into a message
        bad = next((a for a in args if any("\udc80" <= ch <= "\udcff" for ch in a)), "")
        shown = bad.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        output.error(f"'{shown}' is not text in this system's encoding ({sys.getfilesystemencoding()}): "
                     "give the value as the terminal's encoding writes it")
        code = ExitStatus.USAGE
    except Exception as e:  # a bug: say so in one line, traceback with --debug
        if debug:
            raise
        output.error(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
        code = 70
    if code == 130 and not output.errors_said():  # Ctrl-C where the command had nothing to add (typer says nothing)
        output.error("interrupted")
    if argv is None:
        sys.exit(code)
    return code
