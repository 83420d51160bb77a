#!/usr/bin/env python3
"""C-STORE ingest, side by side: DCMTK storescp, Orthanc 1.10 (SQLite) and `ihe archive serve`.

DCMTK storescu sends one corpus (default: gen_corpus.py's 2,000 CT images) over one
association, then over four at once (corpus split in four, as the peers' parallel_bench.sh;
storescp runs with --fork there). Every measurement starts a fresh receiver on empty storage,
checks that it holds every image afterwards and is repeated --repeat times; the table shows
medians. Also: ihe's start-up time (launch to accepting connections), its peak RSS (VmHWM)
during each ingest, and its RSS after 500, 1,000, 1,500 and 2,000 images sent in chunks (all
summed over ihe's processes when it runs several workers).

usage: python bench/ingest.py [--corpus DIR] [--repeat 3] [--receivers dcmtk,orthanc,ihe]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

RECEIVERS = ("dcmtk", "orthanc", "ihe")
LABEL = {"dcmtk": "DCMTK storescp (files only, no index)", "orthanc": "Orthanc 1.10, SQLite index",
         "ihe": "ihe archive serve, SQLite index"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, help="existing folder of DICOM files (default: generate 2,000 CT)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is shown (3)")
    p.add_argument("--receivers", default=",".join(RECEIVERS), help="comma-separated subset of dcmtk,orthanc,ihe")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait after a receiver listens (1)")
    p.add_argument("--no-memory", action="store_true", help="skip the chunked ihe memory run")
    b.add_common(p)
    a = p.parse_args(argv)
    receivers = [r.strip() for r in a.receivers.split(",") if r.strip()]
    if bad := [r for r in receivers if r not in RECEIVERS]:
        p.error(f"unknown receivers {bad}")
    b.setup(__file__, a, argv)

    with b.Workdir(a.workdir, a.keep) as work, b.Procs() as procs:
        if a.corpus:
            corpus = a.corpus.resolve()
        else:
            corpus = work / "corpus"
            b.note("generating 2,000 CT images (gen_corpus.py defaults)")
            b.gen_corpus(corpus)
        n = b.count_files(corpus)
        size = sum(f.stat().st_size for f in corpus.iterdir() if f.is_file())
        split = b.split_corpus(corpus, work / "split", 4)
        modes = {1: [corpus], 4: split}

        load0 = os.getloadavg()[0]
        rates: dict[tuple[str, int], list[float]] = {}
        startups: list[float] = []
        hwm: dict[int, list[int]] = {1: [], 4: []}  # ihe: sum of its processes' VmHWM, KiB
        short: dict[tuple[str, int], list[int]] = {}  # images a receiver did not hold after a run
        for r in range(a.repeat):
            for mode, folders in modes.items():
                for rx in receivers:
                    d = work / f"{rx}-{mode}-{r}"
                    os.sync()  # the previous run's dirty pages must not be written back during this one
                    srv = start(rx, procs, work, d, fork=mode > 1)
                    try:
                        if rx == "ihe":
                            startups.append(srv.startup)
                        time.sleep(a.settle)
                        dt = b.storescu(procs, folders, srv.port, srv.aet, log_dir=work)
                        if rx == "ihe":
                            hwm[mode].append(b.tree_memory(srv.pid)["VmHWM"])
                        got = held(rx, srv, d)
                    finally:
                        procs.stop(srv.proc)
                    shutil.rmtree(d, ignore_errors=True)
                    if got != n:
                        b.note(f"{rx}: only {got} of {n} images stored ({mode} associations)" + b.tail(srv.log, 5))
                        short.setdefault((rx, mode), []).append(n - got)
                    rates.setdefault((rx, mode), []).append(n / dt)
                    b.note(f"run {r + 1}/{a.repeat}  {rx:8s} {mode} assoc  {dt:6.2f} s  {n / dt:7.1f} img/s"
                           f"  (load {os.getloadavg()[0]:.1f})")

        memory = [] if a.no_memory or "ihe" not in receivers else memory_run(procs, work, corpus)

    # -- report ---------------------------------------------------------------------------------
    med = {k: b.median(v) for k, v in rates.items()}

    def ratio(rx, mode):
        o = med.get(("orthanc", mode))
        return f"{med[(rx, mode)] / o:.2f}" if o else "—"

    def spread(rx, mode):
        v = rates[(rx, mode)]
        return f"{min(v):.0f}–{max(v):.0f}"

    def rate(rx, mode):
        miss = short.get((rx, mode))
        return f"{med[(rx, mode)]:.0f}" + (" *" if miss else "")

    print(f"\n## C-STORE ingest: {n} images ({size / n / 1024:.0f} KB each), DCMTK storescu, TCP_NODELAY=1")
    print(b.header(f"median of {a.repeat} runs, fresh receiver each run; "
                   f"1-min load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after") + "\n")
    rows = []
    for rx in receivers:
        rows.append([LABEL[rx],
                     rate(rx, 1), spread(rx, 1), ratio(rx, 1),
                     rate(rx, 4), spread(rx, 4), ratio(rx, 4)])
    print(b.table(["receiver", "1 assoc img/s", "range", "vs Orthanc", "4 assoc img/s", "range", "vs Orthanc"],
                  rows))
    for (rx, mode), miss in short.items():
        print(f"* {LABEL[rx]}, {mode} association(s): images missing after {len(miss)} of {a.repeat} runs "
              f"({', '.join(map(str, miss))} missing; refused C-STOREs, see the notes above)")
    if "ihe" in receivers:
        print(f"\nihe start-up (launch of `ihe archive serve` to port accepting, empty archive): "
              f"median {b.median(startups) * 1000:.0f} ms (min {min(startups) * 1000:.0f}, "
              f"max {max(startups) * 1000:.0f}, {len(startups)} starts)")
        print(f"ihe peak RSS during the ingest (VmHWM, summed over its processes): 1 assoc median "
              f"{b.mib(b.median(hwm[1]))}, 4 assoc median {b.mib(b.median(hwm[4]))}")
    if memory:
        np = memory[-1]["processes"]
        print(f"\nihe memory while one archive takes the corpus in chunks of 500 (one association each"
              + (f"; {np} processes, figures summed over them" if np > 1 else "") + "):\n")
        print(b.table(["images stored", "RSS", "PSS", "peak RSS (VmHWM)"],
                      [[m["images"], b.mib(m["VmRSS"]), b.mib(m["Pss"]), b.mib(m["VmHWM"])] for m in memory]))
    if a.json:
        a.json.write_text(json.dumps({
            "images": n, "bytes": size, "repeat": a.repeat, "machine": b.machine(),
            "rates": {f"{rx}/{mode}": v for (rx, mode), v in rates.items()},
            "median": {f"{rx}/{mode}": v for (rx, mode), v in med.items()},
            "ihe_version": b.VERSION[0], "ihe_options": b.IHE_EXTRA,
            "missing": {f"{rx}/{m}": v for (rx, m), v in short.items()},
            "ihe_startup_s": startups, "ihe_vmhwm_kib": hwm, "ihe_memory": memory}, indent=2))
    return 0


def start(rx: str, procs: b.Procs, work: Path, d: Path, fork: bool) -> b.Server:
    if rx == "dcmtk":
        return b.start_storescp(procs, d, fork=fork)
    if rx == "orthanc":
        return b.start_orthanc(procs, work, d)
    return b.start_ihe(procs, work, d / "index.db", d / "storage")


def held(rx: str, srv: b.Server, d: Path) -> int:
    if rx == "dcmtk":
        return b.count_files(d)
    if rx == "orthanc":
        return b.orthanc_count(srv)
    return b.ihe_count(d / "index.db")


def memory_run(procs: b.Procs, work: Path, corpus: Path, chunk: int = 500) -> list[dict]:
    """One ihe archive takes the corpus in chunks; RSS after each."""
    files = sorted(f for f in os.listdir(corpus) if not f.startswith("."))
    chunks = []
    for i in range(0, len(files), chunk):
        c = work / "chunks" / str(i // chunk)
        c.mkdir(parents=True)
        for f in files[i:i + chunk]:
            os.symlink(corpus / f, c / f)
        chunks.append(c)
    d = work / "ihe-memory"
    srv = b.start_ihe(procs, work, d / "index.db", d / "storage")
    out = []
    try:
        time.sleep(0.5)
        out.append({"images": 0, **b.tree_memory(srv.pid)})
        done = 0
        for c in chunks:
            b.storescu(procs, [c], srv.port, srv.aet, log_dir=work)
            done += b.count_files(c)
            time.sleep(0.2)
            out.append({"images": done, **b.tree_memory(srv.pid)})
        got = b.ihe_count(d / "index.db")
        if got != done:
            b.note(f"ihe memory run: {got} of {done} images stored")
    finally:
        procs.stop(srv.proc)
        shutil.rmtree(d, ignore_errors=True)
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
