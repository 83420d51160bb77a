"""Options shared by every command, defined once so that each long option means one thing."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli import config as cfg

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout, nothing else.")]
Db = Annotated[Optional[str], typer.Option("--db", metavar="URL",
                                           help="Archive database: a URL, or an SQLite file (default: the "
                                                "profile's, else SQLite in the data dir).")]
Storage = Annotated[Optional[Path], typer.Option("--storage", metavar="DIR", file_okay=False,
                                                 help="Archive storage folder (default: the profile's).")]
Bind = Annotated[Optional[str], typer.Option("--bind", metavar="ADDR",
                                             help="Address to listen on (default 127.0.0.1; 0.0.0.0 for all).")]
Port = Annotated[Optional[int], typer.Option("--port", "-p", min=0, max=65535,
                                             help="Port to listen on (0: any free port).")]
Aet = Annotated[Optional[str], typer.Option("--aet", metavar="AET", help="Our AE title.")]
CallingAet = Annotated[Optional[str], typer.Option("--calling-aet", "-aet", metavar="AET",
                                                   help="Calling AE title (default: the profile's, IHE).")]
_timeout = typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Network timeout in seconds.")
Timeout = Annotated[float, _timeout]
OptionalTimeout = Annotated[Optional[float], _timeout]  # None: the profile's
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Description = Annotated[Optional[str], typer.Option("--description", metavar="TEXT",
                                                    help="Free-text description of what the command creates.")]
Keys = Annotated[Optional[list[str]], typer.Option(
    "--key", "-k", metavar="KEY=VALUE",
    help="Attribute: keyword or (gggg,eeee), '=' and a value (a query: empty returns it; mpps: the value "
         "sent). Repeatable. Sequences as Seq[0].Keyword=.")]
Level = Annotated[str, typer.Option("--level", "-L", metavar="LEVEL",
                                    help="Level: patient, study, series or instance (image).")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, metavar="N", help="Show at most N matches.")]
# --patient, wherever it is: searches take wildcards, XDS commands a CX
PATIENT_HELP = ("Patient ID (the archive's searches take wildcards * ?; XDS commands want ID^^^&OID&ISO, or the "
                "ID alone with xds.assigning_authority set).")
# --title: the title of what a command makes, a text or (key objects) a code
TITLE_HELP = ("Document title: for XDS a text (default: the file name); for a key object a CID 7010 title by "
              "name (of-interest, for-referring-provider, for-surgery, for-teaching, quality-issue, ...) or code "
              "(113000; default of-interest).")
_out = typer.Option("--out", "-o", metavar="DIR", help="Folder to write the files to.", file_okay=False)
Out = Annotated[Path, _out]
OptionalOut = Annotated[Optional[Path], _out]
Root = Annotated[str, typer.Option("--root", metavar="MODEL",
                                    help="Information model: study or patient (root); default: patient for -L "
                                         "patient, else study.")]
Node = Annotated[str, typer.Argument(
                                     help="A node of the profile by name, or AET@host:port (tls://AET@host:port: "
                                          "over TLS).")]
DEST_HELP = ("C-MOVE destination: AET@host:port (tls://AET@host:port: sent over TLS), a profile node name, or "
             "(for a move) an AE title.")
Dest = Annotated[Optional[list[str]], typer.Option("--dest", metavar="DEST", help=DEST_HELP)]
Since = Annotated[Optional[str], typer.Option("--since", metavar="WHEN",
                                              help="Since a date (2024-05-01), a time (2024-05-01T12:00) or an age "
                                                   "(24h, 7d), in UTC.")]

# TLS (ITI-19): the same six options on every command that opens or accepts a link
Tls = Annotated[bool, typer.Option("--tls", help="Secure the link with TLS (the profile's certificate and CA unless "
                                                 "--cert/--tls-key/--ca are given).")]
NoTls = Annotated[bool, typer.Option("--no-tls", help="No secure transport, even when the profile turns TLS on.")]
Cert = Annotated[Optional[Path], typer.Option("--cert", metavar="PEM", dir_okay=False,
                                              help="Our TLS certificate chain (PEM; may hold the key). Implies --tls.")]
# --key is the query key of C-FIND and friends: the private key is --tls-key
TlsKey = Annotated[Optional[Path], typer.Option("--tls-key", metavar="PEM", dir_okay=False,
                                                help="Private key of --cert (PEM), when not in the same file.")]
Ca = Annotated[Optional[Path], typer.Option("--ca", metavar="PEM", dir_okay=False,
                                            help="CA certificates to trust (PEM); servers then require client "
                                                 "certificates. Implies --tls.")]
TlsFloor = Annotated[Optional[str], typer.Option("--tls-floor", metavar="VERSION",
                                                 help="Lowest TLS version: 1.2 (BCP195, the default) or 1.0 "
                                                      "(legacy peers only).")]


def tls_config(ctx: typer.Context, *, tls: bool = False, no_tls: bool = False, cert: Optional[Path] = None,
               key: Optional[Path] = None, ca: Optional[Path] = None, floor: Optional[str] = None,
               default_on: bool = False):
    """The TlsConfig the TLS options and the profile's [tls] ask for, or None (no secure transport).

    TLS is on with --tls, with any of --cert/--tls-key/--ca, when the profile enables it, or when the
    command's link is secure by default (``default_on``); --no-tls turns it off."""
    if no_tls and (tls or cert or key or ca):
        from ihecli.errors import UsageError

        raise UsageError("--no-tls contradicts --tls, --cert, --tls-key and --ca: give one or the other")
    st = state(ctx).settings()
    if no_tls or not (tls or cert or key or ca or st.tls.enabled or default_on):
        return None
    return st.tls_config().with_(cert=str(cert) if cert else None, key=str(key) if key else None,
                                 ca=str(ca) if ca else None, floor=floor)


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
            import logging

            from ihecli import atna
            from ihecli.errors import IheError

            try:
                atna.configure_from(self._settings)  # audit events go to the profile's repository, if any
            except IheError as e:  # say so, but let the command run
                logging.getLogger("ihe.audit").warning("no audit trail: %s", e)
        return self._settings


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def node_tls(ctx: typer.Context, node):
    """A client TLS context with the profile's [tls] when the node asks for TLS (``tls = true``,
    ``tls://AET@host:port``), else None."""
    from ihecli.net import tls

    return tls.for_node(node, state(ctx).settings().tls_config())


# the objects a command acts on, by UID
StudyOpt = Annotated[Optional[list[str]], typer.Option("--study", metavar="UID", help="Study Instance UID.")]
SeriesOpt = Annotated[Optional[list[str]], typer.Option("--series", metavar="UID",
                                                        help="Series Instance UID (repeatable).")]
InstanceOpt = Annotated[Optional[list[str]], typer.Option("--instance", metavar="UID",
                                                          help="SOP Instance UID (repeatable).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]


def open_archive(ctx: typer.Context, db, storage, **kw):
    """The archive of the profile and options (``archive_cmd.open_archive``), imported when a
    command runs: a group whose commands use the archive does not load it, and the DICOM
    network stack of `ihe archive`, for its --help or for a command that does not need it."""
    from ihecli.cli.archive_cmd import open_archive as open_it

    return open_it(ctx, db, storage, **kw)
