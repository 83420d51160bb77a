"""`ihe config`: where the profile file is, a commented starter file, the effective settings."""
from __future__ import annotations

from typing import Annotated

import typer

from ihecli import config as cfg
from ihecli.cli import output
from ihecli.cli.options import Json, state

app = typer.Typer(help="The profile file: path, starter file, effective settings.\n\n"
                       "Example: ihe config init", no_args_is_help=True)


@app.command("path")
def path_cmd(ctx: typer.Context) -> None:
    """Print where the profile file is read from.

    Example: ihe config path
    """
    output.out.print(str(cfg.config_path(state(ctx).config)), markup=False)


@app.command("init")
def init_cmd(ctx: typer.Context,
             force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False) -> None:
    """Write a commented starter profile file.

    Example: ihe config init && $EDITOR "$(ihe config path)"
    """
    p = cfg.init(state(ctx).config, force=force)
    output.info(f"wrote {p}")


@app.command("show")
def show_cmd(ctx: typer.Context, json: Json = False) -> None:
    """Print the effective settings of the chosen profile (secrets masked).

    Example: ihe --profile test config show --json
    """
    st = state(ctx).settings()
    d = st.as_dict()
    if json:
        output.print_json(d)
        return
    rows = [("config", d["config"] + ("" if d["config_exists"] else " (not present: defaults)")),
            ("profile", d["profile"])]
    for key, value in d.items():  # every section, in the order of the profile file
        if key in ("config", "config_exists", "profile", "nodes"):
            continue
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            rows.append((key, value))
    if not d["archive"].get("repository_uid"):
        from ihecli.xdsi.manifest import default_repository_uid

        rows = [(k, f"{default_repository_uid(d['archive']['aet'])} (fixed for the AE title)")
                if k == "archive.repository_uid" else (k, v) for k, v in rows]
    rows += [(f"nodes.{k}", f"{'tls://' if v.get('tls') else ''}{v['aet']}@{v['host']}:{v['port']}")
             for k, v in d["nodes"].items()]
    output.kv(rows)
