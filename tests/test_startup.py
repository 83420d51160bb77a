"""Start-up cost: every `ihe` command imports the whole CLI, so the command modules must not
import the heavy libraries of other actors at module level (the archive must start in < 1 s)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

# imported only inside the functions that need them
LAZY = ("highdicom", "zeep", "pycdlib", "starlette", "uvicorn", "hl7apy", "httpx", "dicomweb_client",
        "requests_toolbelt", "trustme", "psycopg")


def test_cli_import_leaves_other_actors_libraries_unloaded():
    code = "import json, sys, ihecli.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.split(".")[0] for m in json.loads(out)}
    eager = sorted(set(LAZY) & loaded)
    assert not eager, (f"importing ihecli.cli loads {eager}: import them inside the functions that use "
                       "them, so that every command (and the archive's start-up) does not pay for them")


def test_a_command_loads_only_its_own_group():
    """`ihe config path` neither imports the DICOM stack nor builds the other groups' commands."""
    code = ("import contextlib, io, json, sys\n"
            "from ihecli.cli import _registered, main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['config', 'path'])\n"
            "print(json.dumps([sorted(_registered), sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydicom', 'pynetdicom', 'sqlalchemy'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    groups, heavy = json.loads(out.splitlines()[-1])
    assert groups == ["config"] and heavy == []


def test_network_clients_do_not_load_the_archive():
    """A query to another system (XDS, XCA, PIX, PDQ) needs neither the archive database nor the
    DICOM stack: run against a closed port, each command fails fast without importing them."""
    commands = [["xds", "query", "find-documents", "--patient", "X^^^&1.2&ISO", "--registry", "http://127.0.0.1:9/xds"],
                ["xca", "query", "find-documents", "--patient", "X^^^&1.2&ISO",
                 "--community", "urn:oid:1.2=http://127.0.0.1:9/xca"],
                ["pix", "query", "X^^^&1.2&ISO", "--to", "127.0.0.1:9"],
                ["pdq", "query", "--family", "X", "--to", "http://127.0.0.1:9/pdq"]]
    for argv in commands:
        code = ("import contextlib, io, json, sys\n"
                "from ihecli.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
                f"    rc = main({argv!r})\n"
                "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
                "('pydicom', 'pynetdicom', 'sqlalchemy', 'numpy')})]))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "IHE_CONFIG": "/nonexistent/ihe.toml"}).stdout
        rc, heavy = json.loads(out.splitlines()[-1])
        assert rc != 0 and heavy == [], (argv, rc, heavy)


def test_ctrl_c_while_loading_is_one_line():
    """Ctrl-C before the command runs (while Python loads the CLI's libraries) ends like Ctrl-C
    later: one line and exit 130, no traceback. The interrupt is raised by an import hook at the
    import of rich, as the signal would raise it there."""
    code = ("import sys\n"
            "class Hook:\n"
            "    @staticmethod\n"
            "    def find_spec(name, *a):\n"
            "        if name == 'rich':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Hook)\n"
            "sys.argv = ['ihe', 'config', 'path']\n"
            "from ihecli.__main__ import run\n"
            "run()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (130, "ihe: error: interrupted\n")


def test_help_of_groups_that_use_the_archive_does_not_load_it():
    """`ihe kin|iocm|tce|pdi ... --help` builds the group's commands without importing the archive
    (SQLAlchemy, pydicom) or the DICOM network stack: they are loaded when a command runs."""
    for group, command in (("kin", "create"), ("iocm", "reject"), ("tce", "ls"), ("pdi", "burn")):
        code = ("import contextlib, io, json, sys\n"
                "from ihecli.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                f"    rc = main([{group!r}, {command!r}, '--help'])\n"
                "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
                "('pydicom', 'pynetdicom', 'sqlalchemy', 'numpy')})]))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        rc, heavy = json.loads(out.splitlines()[-1])
        assert rc == 0 and heavy == [], (group, heavy)
