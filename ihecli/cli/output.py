"""The one place that prints: tables and JSON on stdout, messages and progress on stderr."""
from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # a message is one line, also in a pipe

# Column headers for long DICOM keywords
SHORT = {
    "NumberOfStudyRelatedInstances": "Instances",
    "NumberOfStudyRelatedSeries": "Series",
    "NumberOfSeriesRelatedInstances": "Instances",
    "NumberOfPatientRelatedStudies": "Studies",
    "NumberOfPatientRelatedSeries": "Series",
    "NumberOfPatientRelatedInstances": "Instances",
    "ModalitiesInStudy": "Modalities",
    "StudyInstanceUID": "StudyUID",
    "SeriesInstanceUID": "SeriesUID",
    "SOPInstanceUID": "SOPInstanceUID",
    "AccessionNumber": "Accession",
    "PatientBirthDate": "BirthDate",
    "StudyDescription": "Description",
    "SeriesDescription": "Description",
    "InstanceNumber": "Number",
    "SeriesNumber": "Number",
}

_state = {"quiet": False, "verbose": 0, "json": False}


def configure(*, quiet: bool = False, verbose: int = 0) -> None:
    _state["quiet"], _state["verbose"], _state["errors"] = quiet, verbose, 0
    # a one-shot command says what it did in its own lines: the log shows only what went wrong,
    # unless -v; a server's log is its account of its work (serving() below)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger("ihe")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    if verbose > 1:
        pyn = logging.getLogger("pynetdicom")
        pyn.handlers[:] = [RichHandler(console=err, show_path=False)]
        pyn.setLevel(logging.DEBUG if verbose > 2 else logging.INFO)


def serving() -> None:
    """A server's activity is logged at INFO (associations, messages, what was stored), unless -q."""
    root = logging.getLogger("ihe")
    if not _state["quiet"] and root.level > logging.INFO:
        root.setLevel(logging.INFO)


def count(n: int, word: str, words: str | None = None) -> str:
    """``1 study``, ``2 studies``: a number with its noun in the right number."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def found(n: int, word: str, words: str | None = None, *, limit: int | None = None, extra: str = "") -> None:
    """The closing line of a listing: how many, and that there may be more when --limit cut it
    (nothing when the table already said "no matches")."""
    if not n:
        return
    more = f" (the first {limit}: --limit; more may match)" if limit and n >= limit else ""
    info(f"{count(n, word, words)}{more}{extra}")


def info(message: str) -> None:
    """A line for the user on stderr (silent with -q)."""
    if not _state["quiet"]:
        err.print(message, markup=False, highlight=False)


def warn(message: str) -> None:
    err.print(f"ihe: warning: {message}", markup=False, style="yellow")


def errors_said() -> int:
    """How many error lines this run has printed."""
    return _state.get("errors", 0)


def error(message: str) -> None:
    _state["errors"] = _state.get("errors", 0) + 1
    err.print(f"ihe: error: {message}", markup=False, style="bold red")


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def print_json(obj: Any) -> None:
    """One JSON document on stdout (the only thing printed there with --json)."""
    sys.stdout.write(json.dumps(_plain(obj), ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def table(rows: Sequence[dict], columns: Sequence[str], *, title: str | None = None,
          headers: dict[str, str] | None = None) -> None:
    if not rows:
        info("no matches")
        return
    tty = out.is_terminal
    t = Table(title=title, show_lines=False, header_style="bold", title_justify="left",
              box=box.SIMPLE_HEAD if tty else None, pad_edge=False)
    for c in columns:
        t.add_column((headers or {}).get(c, SHORT.get(c, c)), overflow="fold", no_wrap=not tty)
    for r in rows:
        t.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in columns])
    # Not on a terminal: never wrap, so each row stays one line for grep and awk
    (out if tty else Console(width=100_000, soft_wrap=True, highlight=False)).print(t)


def kv(pairs: Iterable[tuple[str, Any]]) -> None:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(k, "" if v is None else str(v))
    out.print(t)


@contextmanager
def progress(total: int | None, description: str, *, enabled: bool = True):
    """A progress bar on stderr (only on a terminal, not with -q); yields advance(n=1)."""
    show = enabled and not _state["quiet"] and err.is_terminal
    if not show:
        yield lambda n=1, **kw: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=True)
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, **kw) -> None:
            bar.advance(task, n)

        yield advance
