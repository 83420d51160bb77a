"""Man pages and shell completions: checked in, current, valid; every command documents an example."""
from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "tools" / "gen_docs.py"


def _load_gen():
    if "gen_docs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_docs", GEN)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_docs"] = module
        spec.loader.exec_module(module)
    return sys.modules["gen_docs"]


gen = _load_gen()
TREE = gen.command_tree()
COMMANDS = list(TREE.walk())
LEAVES = [c for c in COMMANDS if not c.is_group]


def _id(cmd) -> str:
    return cmd.name


# -- the generated files ---------------------------------------------------------------------------

def test_checked_in_files_are_current():
    p = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode == 0, f"generated files are stale; run `python tools/gen_docs.py`:\n{p.stderr}"


def test_check_names_stale_and_missing_files(tmp_path):
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0
    page = tmp_path / "man" / "ihe-dicom.1"
    page.write_text(page.read_text() + '.\\" edited by hand\n')
    (tmp_path / "completions" / "ihe.fish").unlink()
    (tmp_path / "man" / "ihe-gone.1").write_text(".TH IHE-GONE 1\n")
    p = subprocess.run([sys.executable, str(GEN), "--check", "--root", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1
    named = set(re.findall(r"^(?:stale|obsolete): (\S+)$", p.stderr, re.M))
    assert named == {"man/ihe-dicom.1", "completions/ihe.fish", "man/ihe-gone.1"}, p.stderr
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert not (tmp_path / "man" / "ihe-gone.1").exists()
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0


def test_output_is_deterministic_and_host_independent():
    import datetime

    from ihecli import __version__

    today = datetime.date.today()
    first, second = gen.render(), gen.render()
    assert first == second
    expected = {"completions/ihe.bash", "completions/_ihe", "completions/ihe.fish", "man/ihe.1"}
    expected |= {f"man/ihe-{g.path[-1]}.1" for g in TREE.subcommands}
    assert set(first) == expected
    for rel, text in first.items():
        assert f"ihe {__version__}" in text.replace("\\-", "-"), rel
        assert str(ROOT) not in text and str(Path.home()) not in text, rel
        for stamp in (today.isoformat(), today.strftime("%Y%m%d"), today.strftime("%B %Y"),
                      today.strftime("%b %Y")):
            assert stamp not in text, f"{rel} has today's date"


# -- --help and examples ---------------------------------------------------------------------------

def _example_command(example: str) -> list[str]:
    """The command path an example runs; fails on an option that command (or a group on the way) lacks."""
    words = []
    for w in shlex.split(example):
        if w in ("&&", "||", "|", ";"):
            break
        words.append(w)
    assert words and words[0] == "ihe", f"example does not start with ihe: {example}"
    node, path = TREE, ["ihe"]
    i = 1
    while i < len(words):
        w = words[i]
        if w.startswith("-"):
            name = w.split("=", 1)[0]
            opt = next((o for o in node.options if name in o.names), None)
            assert opt is not None, f"{example}: {' '.join(path)} has no option {name}"
            i += 2 if opt.takes_value and "=" not in w else 1
            continue
        sub = next((s for s in node.subcommands if s.path[-1] == w), None)
        if sub is None:
            i += 1
            continue
        node, path = sub, [*path, w]
        i += 1
    return path


@pytest.mark.parametrize("cmd", [TREE, *LEAVES], ids=_id)
def test_help_shows_an_example_of_the_command(cmd):
    r = run_cli(*cmd.path[1:], "--help")
    assert r.code == 0, r.stderr
    assert r.stdout.startswith(f"Usage: {cmd.name} "), r.stdout[:200]
    examples = [ln.strip()[len("Example:"):].strip() for ln in r.stdout.splitlines()
                if ln.strip().startswith("Example:")]
    assert examples, f"`{cmd.name} --help` shows no 'Example: ...' line"
    for ex in examples:
        path = _example_command(ex)
        if cmd is not TREE:
            assert path == list(cmd.path), f"the example of {cmd.name} runs {' '.join(path)}: {ex}"


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.is_group and c is not TREE], ids=_id)
def test_group_help_lists_its_commands(cmd):
    r = run_cli(*cmd.path[1:], "--help")
    assert r.code == 0, r.stderr
    listed = set(re.findall(r"^  (\S+)  ", r.stdout.split("Commands:", 1)[-1], re.M))
    assert listed == {s.path[-1] for s in cmd.subcommands}


# -- man pages -------------------------------------------------------------------------------------

def _groff() -> str:
    groff = shutil.which("groff")
    assert groff, "groff is missing: install the Debian package groff-base (`make test` does)"
    return groff


def test_man_pages_render_without_warnings():
    groff = _groff()
    pages = sorted((ROOT / "man").glob("*.1"))
    assert {p.name for p in pages} == {"ihe.1", *(f"ihe-{g.path[-1]}.1" for g in TREE.subcommands)}
    for page in pages:
        p = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0 and p.stderr == "", f"{page.name}:\n{p.stderr}"


def test_groff_check_catches_bad_roff(tmp_path):
    bad = tmp_path / "bad.1"
    bad.write_text(".TH BAD 1\n.SH NAME\nbad \\- x\n.XYZ undefined macro\n\\f(ZZbroken font\n")
    p = subprocess.run([_groff(), "-man", "-Tutf8", "-ww", "-z", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert p.stderr != ""


def _render(page: Path) -> str:
    p = subprocess.run([_groff(), "-man", "-Tutf8", "-P-c", "-P-b", "-P-u", str(page)], capture_output=True,
                       text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert p.returncode == 0, p.stderr
    return re.sub(r"\s+", " ", p.stdout.replace("\u2010", "-").replace("\u2212", "-"))


def test_overview_page_sections():
    text = _render(ROOT / "man" / "ihe.1")
    for needle in ("SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES",
                   "IHE_CONFIG", "IHE_PROFILE", "IHE_DATA_DIR", "--config FILE", "--profile NAME"):
        assert needle in text, needle
    from ihecli.errors import ExitStatus

    section = text.split("EXIT STATUS", 1)[1].split("ENVIRONMENT", 1)[0]
    for status in ExitStatus:
        assert re.search(rf"(^| ){int(status)} [A-Z]", section), status
    for g in TREE.subcommands:
        assert f"ihe-{g.path[-1]}(1)" in text


@pytest.mark.parametrize("cmd", LEAVES, ids=_id)
def test_group_page_documents_the_command(cmd):
    text = _render(ROOT / "man" / f"ihe-{cmd.path[1]}.1")
    assert cmd.name in text
    for o in cmd.options:
        for n in o.names:
            assert re.search(rf"(^|[\s,]){re.escape(n)}([\s,]|$)", text), f"{cmd.name} {n}"
    for ex in cmd.examples:
        assert " ".join(ex.split()) in text


# -- bash completion -------------------------------------------------------------------------------

def _complete(*words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY of the checked-in bash completion for a command line; the last word is being completed."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _ihe; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script, "bash", str(ROOT / "completions/ihe.bash"),
                        *words], capture_output=True, text=True, cwd=cwd, timeout=30)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return sorted(w for w in p.stdout.splitlines() if w)


def test_bash_completes_groups_and_subcommands():
    assert _complete("ihe", "") == sorted(g.path[-1] for g in TREE.subcommands)
    assert _complete("ihe", "arch") == ["archive"]
    assert _complete("ihe", "-q", "--profile", "x", "di") == ["dicom"]
    for g in TREE.subcommands:
        assert _complete("ihe", g.path[-1], "") == sorted(s.path[-1] for s in g.subcommands)


@pytest.mark.parametrize("cmd", COMMANDS, ids=_id)
def test_bash_completes_every_option(cmd):
    expected = sorted(n for o in cmd.options for n in o.names)
    assert expected
    assert _complete(*cmd.path, "-") == expected
    longs = sorted(n for n in expected if n.startswith("--"))
    assert _complete(*cmd.path, "--") == longs


def test_bash_completes_paths_and_free_text(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "scan.dcm").write_bytes(b"")
    assert _complete("ihe", "--config", "sc", cwd=tmp_path) == ["scan.dcm"]
    assert _complete("ihe", "archive", "import", "", cwd=tmp_path) == ["scan.dcm", "study"]
    assert _complete("ihe", "dicom", "get", "PACS", "--out=st", cwd=tmp_path) == ["--out=study"]
    # NODE is free text; the paths come after it
    assert _complete("ihe", "dicom", "store", "", cwd=tmp_path) == []
    assert _complete("ihe", "dicom", "store", "PACS", "s", cwd=tmp_path) == ["scan.dcm", "study"]
    # the value of an option is not taken for a positional argument
    assert _complete("ihe", "dicom", "store", "-aet", "ME", "", cwd=tmp_path) == []
    assert _complete("ihe", "archive", "ls", "--patient", "", cwd=tmp_path) == []


def test_bash_completes_choices_and_dirs():
    """Fixed sets of values and directory-only options, as the generator writes them."""
    from dataclasses import replace

    tree = gen.command_tree()
    ls = next(c for c in tree.walk() if c.name == "ihe archive ls")
    level = next(o for o in ls.options if "--level" in o.names)
    storage = next(o for o in ls.options if "--storage" in o.names)
    ls.options[ls.options.index(level)] = replace(level, complete=gen.Completion("choice", ("patient", "study")))
    ls.options[ls.options.index(storage)] = replace(storage, complete=gen.Completion("dir"))
    script = gen.bash(tree, "0")
    words = ["ihe", "archive", "ls"]
    body = ('source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _ihe; '
            'printf "%s\\n" "${COMPREPLY[@]}"')

    def complete(*more: str, cwd: Path) -> list[str]:
        p = subprocess.run(["bash", "--norc", "--noprofile", "-c", body, "bash", *words, *more], input=script,
                           capture_output=True, text=True, cwd=cwd, timeout=30)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        return sorted(w for w in p.stdout.splitlines() if w)

    here = ROOT
    assert complete("--level", "", cwd=here) == ["patient", "study"]
    assert complete("-L", "st", cwd=here) == ["study"]
    assert complete("--level=p", cwd=here) == ["--level=patient"]
    assert complete("--level", "=", "", cwd=here) == ["patient", "study"]
    dirs = complete("--storage", "", cwd=here)
    assert "tools" in dirs and "pyproject.toml" not in dirs
