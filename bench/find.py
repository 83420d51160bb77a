#!/usr/bin/env python3
"""C-FIND latency on a loaded archive, side by side: Orthanc 1.10 (SQLite) and `ihe archive serve`.

Builds the query-load corpus with gen_find_corpus.py (default 10,000 studies x 10 instances =
100,000 instances, 5,000 patients), loads it into Orthanc and into ihe with four parallel DCMTK
storescu associations, then times STUDY-level C-FINDs over one association (query shapes as
the peers' find_bench.py): PatientID exact, PatientName=SMITH* (1/20 of patients), Accession-
Number exact, StudyDate one day. Shows median and p95 per shape, the ratio ihe/Orthanc, and
checks that both return the same number of matches for every query. Also: ihe's start-up time
on the loaded archive (launch of `ihe archive serve` to the port accepting).

The corpus and both loaded archives are kept under --cache (with a `.done` marker each), so a
rerun skips generating and loading; --reload loads the archives again.

usage: python bench/find.py [--cache bench/out/find-cache] [--studies 10000] [--n 50]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=b.BENCH / "out" / "find-cache",
                   help="keeps corpus and loaded archives between runs (default bench/out/find-cache)")
    p.add_argument("--studies", type=int, default=10000, help="studies in the corpus (10000)")
    p.add_argument("--images", type=int, default=10, help="instances per study (10)")
    p.add_argument("--n", type=int, default=50, help="queries per shape (50)")
    p.add_argument("--startups", type=int, default=3, help="times ihe is started on the loaded archive (3)")
    p.add_argument("--reload", action="store_true", help="load both archives again even if cached")
    p.add_argument("--wide", type=int, default=0, metavar="N",
                   help="also time N queries matching most studies (StudyDate 2015-; 6,875 at full size)")
    b.add_common(p)
    a = p.parse_args(argv)
    b.setup(__file__, a, argv)
    cache = a.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"{a.studies}x{a.images}"
    total = a.studies * a.images

    with b.Workdir(a.workdir, a.keep) as work, b.Procs() as procs:
        corpus = cache / f"corpus-{tag}"
        if not done(corpus):
            shutil.rmtree(corpus, ignore_errors=True)
            b.note(f"generating {total} instances in {corpus} (gen_find_corpus.py)")
            t = time.monotonic()
            b.run_py("gen_find_corpus.py", corpus, "--studies", a.studies, "--images", a.images)
            mark(corpus, {"files": b.count_files(corpus), "seconds": time.monotonic() - t})
        if (got := b.count_files(corpus)) != total:
            raise SystemExit(f"{corpus} holds {got} files, expected {total}: remove it and rerun")
        split = None
        loads = {}
        results = {}
        startups = {}

        # -- Orthanc ----------------------------------------------------------------------------
        odir = cache / f"orthanc-{tag}"
        if a.reload or not done(odir):
            shutil.rmtree(odir, ignore_errors=True)
            split = split or b.split_corpus(corpus, work / "split", 4)
            srv = b.start_orthanc(procs, work, odir)
            try:
                time.sleep(1)
                b.note(f"loading {total} instances into Orthanc (4 associations)")
                loads["orthanc"] = b.load(procs, srv, split, total, lambda: b.orthanc_count(srv), log_dir=work)
            finally:
                procs.stop(srv.proc)
            mark(odir, loads["orthanc"])
            b.note(f"Orthanc loaded in {loads['orthanc']['seconds']:.0f} s ({loads['orthanc']['rate']:.0f} img/s)")
        srv = b.start_orthanc(procs, work, odir)
        try:
            startups["orthanc"] = [srv.startup]
            time.sleep(1)
            results["orthanc"] = queries(srv.port, srv.aet, a)
        finally:
            procs.stop(srv.proc)

        # -- ihe --------------------------------------------------------------------------------
        idir = cache / f"ihe-{tag}"
        db, storage = idir / "index.db", idir / "storage"
        if a.reload or not done(idir):
            shutil.rmtree(idir, ignore_errors=True)
            split = split or b.split_corpus(corpus, work / "split", 4)
            srv = b.start_ihe(procs, work, db, storage)
            try:
                time.sleep(1)
                b.note(f"loading {total} instances into ihe (4 associations)")
                ld = b.load(procs, srv, split, total, lambda: b.ihe_count(db), log_dir=work)
                mem = b.tree_memory(srv.pid)
            finally:
                procs.stop(srv.proc)
            loads["ihe"] = {**ld, "VmRSS_kib": mem["VmRSS"], "VmHWM_kib": mem["VmHWM"], "Pss_kib": mem["Pss"],
                            "version": b.ihe_version(), "options": b.IHE_EXTRA}
            mark(idir, loads["ihe"])
            b.note(f"ihe loaded in {ld['seconds']:.0f} s ({ld['rate']:.0f} img/s)")
        startups["ihe"] = []
        for i in range(a.startups):
            os.sync()
            srv = b.start_ihe(procs, work, db, storage)
            startups["ihe"].append(srv.startup)
            if i < a.startups - 1:
                procs.stop(srv.proc)
        try:
            time.sleep(1)
            results["ihe"] = queries(srv.port, srv.aet, a)
        finally:
            procs.stop(srv.proc)

    report(a, results, startups, loads, cache)
    return 0


def done(d: Path) -> bool:
    return d.is_dir() and (d.parent / (d.name + ".done")).exists()


def mark(d: Path, info: dict) -> None:
    (d.parent / (d.name + ".done")).write_text(json.dumps(info))


def queries(port: int, aet: str, a) -> dict[str, dict]:
    """C-FINDs over one association (after the peers' find_bench.py); times in ms and matches."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt

    from ihecli.net.dimse import hold_reactor
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    warnings.filterwarnings("ignore", message="Invalid value for VR DA")  # a date range such as 2015- is valid here
    patients = a.studies // 2  # gen_find_corpus.py: two studies per patient
    rng = random.Random(1)  # the same queries for every server
    st = 5  # a study whose date exists (gen_find_corpus.py's date formula)
    one_day = f"20{10 + st % 16:02d}{1 + st % 12:02d}{1 + st % 28:02d}"
    shapes = {
        "PatientID exact": lambda: {"PatientID": f"P{rng.randrange(patients):07d}"},
        "PatientName SMITH*": lambda: {"PatientName": "SMITH*"},
        "AccessionNumber exact": lambda: {"AccessionNumber": f"A{rng.randrange(a.studies):08d}"},
        "StudyDate one day": lambda: {"StudyDate": one_day},
    }
    repeats = {name: a.n for name in shapes}
    if a.wide:
        shapes["StudyDate 2015- (wide)"] = lambda: {"StudyDate": "2015-"}
        repeats["StudyDate 2015- (wide)"] = a.wide

    def nodelay(event):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="SCU")  # Orthanc answers C-FIND only from AETs in DicomModalities (orthanc.json: SCU)
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    # pynetdicom's requestor race (see ihecli.net.dimse._HeldReactor) loses a response now and
    # then, whichever archive answers: hold its reactor as ihe's own clients do
    handlers = [(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_ACCEPTED, hold_reactor)]
    assoc = ae.associate(b.LOOPBACK, port, ae_title=aet, evt_handlers=handlers)
    if not assoc.is_established:
        raise SystemExit(f"{aet}: association rejected")

    def query(**keys):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for k in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
                  "ModalitiesInStudy"):
            setattr(ds, k, "")
        for k, v in keys.items():
            setattr(ds, k, v)
        t = time.perf_counter()
        n, final = 0, None
        for status, ident in assoc.send_c_find(ds, FIND):
            if status and status.Status in (0xFF00, 0xFF01):
                n += 1
            elif status:
                final = status.Status
        if final != 0x0000:
            raise SystemExit(f"{aet}: C-FIND {keys} ended with status {final}")
        return (time.perf_counter() - t) * 1000, n

    out = {}
    try:
        for name, make in shapes.items():
            query(**make())  # warm
            ts, counts, keys = [], [], []
            for _ in range(repeats[name]):
                k = make()
                ms, n = query(**k)
                ts.append(ms)
                counts.append(n)
                keys.append(k)
            out[name] = {"ms": ts, "matches": counts, "keys": keys}
            b.note(f"{aet:12s} {name:24s} p50 {b.median(ts):8.2f} ms  p95 {b.p95(ts):8.2f} ms  "
                   f"matches {b.median(counts):.0f}")
    finally:
        assoc.release()
    return out


def report(a, results, startups, loads, cache) -> None:
    total = a.studies * a.images
    print(f"\n## C-FIND, STUDY level, one association: {total} instances / {a.studies} studies / "
          f"{a.studies // 2} patients (gen_find_corpus.py)")
    wide = f" ({a.wide} of the wide one)" if a.wide else ""
    print(b.header(f"{a.n} queries per shape{wide} after one warm-up; pynetdicom SCU, TCP_NODELAY") + "\n")
    o, i = results["orthanc"], results["ihe"]
    rows, mismatches = [], []
    for shape in o:
        om, im = o[shape]["ms"], i[shape]["ms"]
        rows.append([shape, f"{b.median(o[shape]['matches']):.0f}",
                     f"{b.median(om):.1f}", f"{b.p95(om):.1f}", f"{b.median(im):.1f}", f"{b.p95(im):.1f}",
                     f"{b.median(im) / b.median(om):.2f}"])
        for k, x, y in zip(o[shape]["keys"], o[shape]["matches"], i[shape]["matches"]):
            if x != y:
                mismatches.append(f"{shape} {k}: Orthanc {x}, ihe {y}")
    print(b.table(["query", "matches", "Orthanc p50 ms", "Orthanc p95 ms", "ihe p50 ms", "ihe p95 ms",
                   "ihe/Orthanc p50"], rows))
    print("\nmatch counts: " + ("identical for every query" if not mismatches else
                                f"{len(mismatches)} differ, e.g. " + "; ".join(mismatches[:5])))
    s = startups["ihe"]
    print(f"\nihe start-up on this archive (launch to port accepting): median {b.median(s) * 1000:.0f} ms "
          f"({', '.join(f'{x * 1000:.0f}' for x in s)} ms); Orthanc 1.10: {startups['orthanc'][0] * 1000:.0f} ms")
    for name in ("orthanc", "ihe"):
        f = cache / f"{name}-{a.studies}x{a.images}.done"
        ld, when = (loads[name], "") if name in loads else (
            (json.loads(f.read_text()), ", earlier run") if f.exists() else (None, ""))
        if ld:
            extra = (f"; ihe memory after the load: RSS {b.mib(ld['VmRSS_kib'])}, PSS {b.mib(ld['Pss_kib'])}, "
                     f"peak {b.mib(ld['VmHWM_kib'])} (summed over its processes)") if "Pss_kib" in ld else ""
            if ld.get("missing_first_pass"):
                extra += f"; {ld['missing_first_pass']} images refused on the first pass, stored by a second"
            print(f"load into {name} (4 associations{when}): {ld['seconds']:.0f} s, {ld['rate']:.0f} img/s{extra}")
    if a.json:
        a.json.write_text(json.dumps({"studies": a.studies, "images": a.images, "n": a.n, "machine": b.machine(),
                                      "ihe_version": b.VERSION[0], "ihe_options": b.IHE_EXTRA,
                                      "results": results, "startups": startups, "loads": loads}, indent=1))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
