"""Options shared by every command, defined once so that each long option means one thing."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli import config as cfg

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout, nothing else.")]
Db = Annotated[Optional[str], typer.Option("--db", metavar="URL",
                                           help="Archive database URL (default: the profile's, else SQLite "
                                                "in the data dir).")]
Storage = Annotated[Optional[Path], typer.Option("--storage", metavar="DIR", file_okay=False,
                                                 help="Archive storage folder (default: the profile's).")]
Bind = Annotated[Optional[str], typer.Option("--bind", metavar="ADDR",
                                             help="Address to listen on (default 127.0.0.1; 0.0.0.0 for all).")]
Port = Annotated[Optional[int], typer.Option("--port", "-p", min=0, max=65535,
                                             help="Port to listen on (0: any free port).")]
Aet = Annotated[Optional[str], typer.Option("--aet", metavar="AET", help="Our AE title.")]
CallingAet = Annotated[Optional[str], typer.Option("--calling-aet", "-aet", metavar="AET",
                                                   help="Calling AE title (default: the profile's, IHE).")]
Timeout = Annotated[float, typer.Option("--timeout", min=0.1, metavar="SECONDS",
                                        help="Network timeout in seconds.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Keys = Annotated[Optional[list[str]], typer.Option(
    "--key", "-k", metavar="KEY=VALUE",
    help="Query key: keyword or (gggg,eeee), '=' and a value (empty: return it). Repeatable. "
         "Sequences as Seq[0].Keyword=.")]
Level = Annotated[str, typer.Option("--level", "-L", metavar="LEVEL",
                                    help="Level: patient, study, series or instance (image).")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, metavar="N", help="Show at most N matches.")]
_out = typer.Option("--out", "-o", metavar="DIR", help="Folder to write the instances to.", file_okay=False)
Out = Annotated[Path, _out]
OptionalOut = Annotated[Optional[Path], _out]
Root = Annotated[str, typer.Option("--root", metavar="MODEL", help="Information model: study or patient (root).")]
Node = Annotated[str, typer.Argument(
                                     help="A node of the profile by name, or AET@host:port.")]
DEST_HELP = "C-MOVE destination: AET@host:port, a profile node name, or (for a move) an AE title."
Dest = Annotated[Optional[list[str]], typer.Option("--dest", metavar="DEST", help=DEST_HELP)]


@dataclass
class State:
    """What the root options chose; settings are read on first use."""

    config: Optional[Path] = None
    profile: Optional[str] = None
    debug: bool = False
    _settings: Optional[cfg.Settings] = field(default=None, repr=False)

    def settings(self) -> cfg.Settings:
        if self._settings is None:
            self._settings = cfg.load(self.config, self.profile)
        return self._settings


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj
