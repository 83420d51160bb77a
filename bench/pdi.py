#!/usr/bin/env python3
"""PDI media: `ihe pdi burn` against DCMTK dcmmkdir + xorriso, web content rendering, import of the ISO.

usage: python bench/pdi.py [--repeat N] [--studies 20 --series 5 --images 20] [--keep] [--json FILE]

Per repetition, in turns on the same corpus (2,000 CT images by default):
  - DCMTK: `dcmmkdir +r` over a folder of conformant file names, then `xorriso -as mkisofs -J` to an ISO;
  - `ihe pdi burn FILES --iso X --no-web` (DICOMDIR, README.TXT, INDEX.HTM, ISO 9660 with Joliet);
  - `ihe pdi burn FILES --iso X` with the IHE_PDI web content (its rendering rate as it reports it);
  - `ihe pdi import X.iso` into an empty archive (SQLite, fsync on).
Every step is a command line run as a user runs it (process start-up included).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402


CPU: dict[str, list[float]] = {}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None, key: str = "") -> tuple[float, str]:
    """Wall time of a command; its CPU time (user + system, its children included) goes to CPU[key]."""
    subprocess.run(["sync"])
    c = _cpu()
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    dt = time.perf_counter() - t
    if key:
        CPU.setdefault(key, []).append(_cpu() - c)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... exited {p.returncode}:\n{p.stderr[-3000:]}")
    return dt, p.stdout


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--series", type=int, default=5)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--workdir", help="where temporary folders go (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args(argv)
    xorriso = shutil.which("xorriso") or sys.exit("xorriso is missing: apt-get install xorriso")
    dcmmkdir = bl.dcmtk("dcmmkdir")
    work = Path(tempfile.mkdtemp(prefix="ihe-bench-pdi-", dir=a.workdir))
    try:
        corpus = work / "corpus"
        bl.gen_corpus(corpus, "--studies", a.studies, "--series", a.series, "--images", a.images)
        files = sorted(str(p) for p in corpus.iterdir())
        n = len(files)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        # DCMTK wants conformant file names: the same files under DICOM/IMnnnnnn (copied before timing)
        stage = work / "dcmtk"
        (stage / "DICOM").mkdir(parents=True)
        for k, f in enumerate(files):
            shutil.copyfile(f, stage / "DICOM" / f"IM{k:06d}")
        ihe = bl.ihe_command()
        env = {**os.environ, "IHE_CONFIG": str(work / "config.toml"), "IHE_DATA_DIR": str(work / "data")}
        lists = {k: [] for k in ("dcmtk", "burn", "burn_web", "import")}
        rates = {"render": [], "import": []}
        print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        for r in range(a.repeat):
            (stage / "DICOMDIR").unlink(missing_ok=True)
            iso_d = work / f"dcmtk-{r}.iso"
            t1, _ = timed([dcmmkdir, "+r", "-q", "+id", str(stage), "--output-file", str(stage / "DICOMDIR")],
                          cwd=stage, key="dcmmkdir")
            t2, _ = timed([xorriso, "-as", "mkisofs", "-quiet", "-J", "-V", "DCMTK", "-o", str(iso_d), str(stage)],
                          key="xorriso")
            lists["dcmtk"].append(t1 + t2)
            CPU.setdefault("dcmtk", []).append(CPU["dcmmkdir"][-1] + CPU["xorriso"][-1])
            iso = work / f"ihe-{r}.iso"
            dt, out = timed([*ihe, "pdi", "burn", "--iso", str(iso), "--no-web", "--json", str(corpus)], env=env,
                            key="burn")
            assert json.loads(out)["objects"] == n
            lists["burn"].append(dt)
            iso_w = work / f"ihe-web-{r}.iso"
            dt, out = timed([*ihe, "pdi", "burn", "--iso", str(iso_w), "--json", str(corpus)], env=env,
                            key="burn_web")
            rep = json.loads(out)
            assert rep["rendered"] == n, rep["unrendered"][:3]
            lists["burn_web"].append(dt)
            rates["render"].append(rep["render_rate"])
            db = work / f"import-{r}"
            dt, out = timed([*ihe, "pdi", "import", str(iso), "--db", f"sqlite:///{db / 'index.db'}", "--storage",
                             str(db / "storage"), "--json"], env=env, key="import")
            rep = json.loads(out)
            assert rep["counts"]["stored"] == n
            lists["import"].append(dt)
            rates["import"].append(n / dt)
            rates.setdefault("import_own", []).append(n / rep["seconds"])  # without the process start-up
            for p in (iso_d, iso, iso_w):
                p.unlink(missing_ok=True)
            shutil.rmtree(db, ignore_errors=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)

        def rng(xs, fmt="{:.2f}"):
            return f"{fmt.format(bl.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"

        ratios = [b / d for b, d in zip(lists["burn"], lists["dcmtk"])]
        cpu_ratios = [b / d for b, d in zip(CPU["burn"], CPU["dcmtk"])]
        rows = [
            ["DCMTK dcmmkdir +r, xorriso -as mkisofs -J", rng(lists["dcmtk"]) + " s", rng(CPU["dcmtk"]) + " s", "",
             "1.00"],
            ["ihe pdi burn --no-web (ISO, DICOMDIR, README, INDEX.HTM)", rng(lists["burn"]) + " s",
             rng(CPU["burn"]) + " s", "", f"{rng(ratios)} (CPU {rng(cpu_ratios)})"],
            ["ihe pdi burn with IHE_PDI web content", rng(lists["burn_web"]) + " s", rng(CPU["burn_web"]) + " s",
             rng(rates["render"], "{:.0f}") + " renderings/s", ""],
            ["ihe pdi import of the ISO into the archive", rng(lists["import"]) + " s", rng(CPU["import"]) + " s",
             rng(rates["import"], "{:.0f}") + " img/s", ""],
            ["  the same, its own time (no process start-up)", "", "",
             rng(rates["import_own"], "{:.0f}") + " img/s", ""],
        ]
        print(bl.header(f"{n} CT images ({mb:.0f} MB), {a.repeat} runs, median (range)"))
        print(bl.table(["step", "time", "CPU", "rate", "ihe / DCMTK"], rows, "lrrrr"))
        if a.json:
            a.json.write_text(json.dumps({"images": n, "mb": mb, "seconds": lists, "rates": rates,
                                          "burn_ratio": ratios, "cpu": CPU}, indent=2))
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
