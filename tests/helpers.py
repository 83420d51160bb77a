"""Shared test helpers: DCMTK tools, corpora, free ports, the CLI run in-process."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

DATA = Path(__file__).parent / "data"
# pynetdicom installs Python scripts named like DCMTK's tools; the tests want DCMTK's own.
DCMTK_BIN = Path("/usr/bin")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    assert path.exists(), f"DCMTK's {tool} is missing: run the README's test command (it installs dcmtk)"
    return str(path)


def run_dcmtk(tool: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([dcmtk(tool), *args], capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout,
                       errors="replace")
    if check and p.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def make_corpus(out: Path, studies: int = 2, series: int = 2, images: int = 3, source: str = "CT_small.dcm",
                patients: int = 0) -> list[Path]:
    """Synthetic instances with fresh UIDs from a pydicom test file (as bench/gen_corpus.py does)."""
    out.mkdir(parents=True, exist_ok=True)
    base = dcmread(get_testdata_file(source))
    paths = []
    n = 0
    for st in range(studies):
        pid = st % patients if patients else st
        study_uid = generate_uid()
        for se in range(series):
            series_uid = generate_uid()
            for im in range(images):
                ds = base.copy()
                ds.PatientID = f"PID{pid:06d}"
                ds.PatientName = f"TEST^PATIENT{pid:06d}"
                ds.AccessionNumber = f"ACC{st:06d}"
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.SeriesNumber = se + 1
                ds.InstanceNumber = im + 1
                ds.StudyDate = f"2026{1 + st % 12:02d}{1 + st % 28:02d}"
                uid = generate_uid()
                ds.SOPInstanceUID = uid
                ds.file_meta.MediaStorageSOPInstanceUID = uid
                p = out / f"{n:07d}.dcm"
                ds.save_as(p, enforce_file_format=True)
                paths.append(p)
                n += 1
    return paths


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict | None = None) -> CliResult:
    """Run `ihe ARGS` in-process through the real entry point; returns code, stdout, stderr."""
    from ihecli.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(code, out.getvalue(), err.getvalue())
