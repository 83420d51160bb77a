#!/usr/bin/env python3
"""DICOMweb side by side: Orthanc 1.10 with its DICOMweb plugin 1.7 and `ihe archive serve --http-port`.

1. QIDO-RS study search latency over a loaded archive (gen_find_corpus.py: --studies studies of
   one instance each, loaded with DCMTK storescu into both): PatientID exact, PatientName=SMITH*,
   AccessionNumber exact, StudyDate one day; median and p95 over --n queries on one keep-alive
   connection, the number of matches of both, and the ratio ihe/Orthanc (goal <= 1).
2. STOW-RS ingest of a 2,000-image CT corpus (gen_corpus.py) in batches of --batch with
   dicomweb-client, as the peers' stow_bench.py (goal >= 1x Orthanc's rate).
3. WADO-RS throughput: every study of that corpus retrieved as multipart/related (instances/s).

The query corpus and both loaded archives are kept under --cache (a `.done` marker each).

usage: python bench/dicomweb.py [--studies 10000] [--n 30] [--batch 50]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=b.BENCH / "out" / "dicomweb-cache")
    p.add_argument("--studies", type=int, default=10000, help="studies of the query corpus (10000)")
    p.add_argument("--n", type=int, default=30, help="queries per shape (30)")
    p.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request (50)")
    p.add_argument("--skip-stow", action="store_true", help="only the queries")
    b.add_common(p)
    a = p.parse_args(argv)
    b.setup(__file__, a, argv)
    cache = a.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    with b.Workdir(a.workdir, a.keep) as work, b.Procs() as procs:
        corpus = cache / f"find-{a.studies}"
        if not _done(corpus):
            shutil.rmtree(corpus, ignore_errors=True)
            b.note(f"generating {a.studies} studies in {corpus}")
            b.run_py("gen_find_corpus.py", corpus, "--studies", a.studies, "--images", 1)
            _mark(corpus)
        split = None
        odir, idir = cache / f"orthanc-{a.studies}", cache / f"ihe-{a.studies}"
        if not _done(odir):
            shutil.rmtree(odir, ignore_errors=True)
            split = b.split_corpus(corpus, work / "split", 4)
            srv = b.start_orthanc(procs, work, odir)
            time.sleep(1)
            b.load(procs, srv, split, a.studies, lambda: b.orthanc_count(srv), log_dir=work)
            procs.stop(srv.proc)
            _mark(odir)
        if not _done(idir):
            shutil.rmtree(idir, ignore_errors=True)
            split = split or b.split_corpus(corpus, work / "split", 4)
            srv = b.start_ihe(procs, work, idir / "index.db", idir / "storage")
            time.sleep(1)
            b.load(procs, srv, split, a.studies, lambda: b.ihe_count(idir / "index.db"), log_dir=work)
            procs.stop(srv.proc)
            _mark(idir)
        srv = b.start_orthanc(procs, work, odir)
        res["qido orthanc"] = qido(f"http://{b.LOOPBACK}:{srv.http_port}/dicom-web", a)
        procs.stop(srv.proc)
        web = b.free_port()
        srv = b.start_ihe(procs, work, idir / "index.db", idir / "storage", extra=["--http-port", str(web)])
        b.wait_port(web, srv.proc)
        res["qido ihe"] = qido(f"http://{b.LOOPBACK}:{web}/dicom-web", a)
        procs.stop(srv.proc)

        if not a.skip_stow:
            ct = cache / "ct-2000"
            if not _done(ct):
                shutil.rmtree(ct, ignore_errors=True)
                b.gen_corpus(ct, "--studies", 20, "--series", 5, "--images", 20)
                _mark(ct)
            srv = b.start_orthanc(procs, work, work / "orthanc-stow")
            time.sleep(1)
            url = f"http://{b.LOOPBACK}:{srv.http_port}/dicom-web"
            res["stow orthanc"] = stow(url, ct, a.batch)
            res["wado orthanc"] = wado(url)
            procs.stop(srv.proc)
            web = b.free_port()
            srv = b.start_ihe(procs, work, work / "ihe-stow" / "index.db", work / "ihe-stow" / "storage",
                              extra=["--http-port", str(web)])
            b.wait_port(web, srv.proc)
            url = f"http://{b.LOOPBACK}:{web}/dicom-web"
            res["stow ihe"] = stow(url, ct, a.batch)
            res["wado ihe"] = wado(url)
            procs.stop(srv.proc)
    report(a, res)
    return 0


def _done(d: Path) -> bool:
    return d.is_dir() and (d.parent / (d.name + ".done")).exists()


def _mark(d: Path) -> None:
    (d.parent / (d.name + ".done")).write_text("{}")


def qido(url: str, a) -> dict:
    import httpx

    patients = a.studies // 2
    rng = random.Random(1)
    st = 5
    shapes = {
        "PatientID exact": lambda: {"PatientID": f"P{rng.randrange(patients):07d}"},
        "PatientName SMITH*": lambda: {"PatientName": "SMITH*"},
        "AccessionNumber exact": lambda: {"AccessionNumber": f"A{rng.randrange(a.studies):08d}"},
        "StudyDate one day": lambda: {"StudyDate": f"20{10 + st % 16:02d}{1 + st % 12:02d}{1 + st % 28:02d}"},
    }
    out = {}
    with httpx.Client(timeout=300) as c:
        for name, make in shapes.items():
            c.get(url + "/studies", params=make())  # warm
            ts, ns = [], []
            for _ in range(a.n):
                t = time.perf_counter()
                r = c.get(url + "/studies", params=make())
                ts.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                ns.append(len(r.json()) if r.content else 0)
            out[name] = {"p50": b.median(ts), "p95": b.p95(ts), "matches": b.median(ns)}
            b.note(f"{url[:30]:30s} {name:24s} p50 {out[name]['p50']:8.2f} ms  matches {out[name]['matches']:.0f}")
    return out


def stow(url: str, corpus: Path, batch: int) -> dict:
    from dicomweb_client.api import DICOMwebClient
    from pydicom import dcmread

    dss = [dcmread(f) for f in sorted(corpus.iterdir())]
    c = DICOMwebClient(url=url)
    t = time.perf_counter()
    for i in range(0, len(dss), batch):
        c.store_instances(dss[i:i + batch])
    dt = time.perf_counter() - t
    b.note(f"{url[:30]:30s} STOW-RS {len(dss)} in {dt:.1f} s: {len(dss) / dt:.0f} inst/s")
    return {"seconds": dt, "rate": len(dss) / dt}


def wado(url: str) -> dict:
    from dicomweb_client.api import DICOMwebClient

    c = DICOMwebClient(url=url)
    studies = [s["0020000D"]["Value"][0] for s in c.search_for_studies()]
    t = time.perf_counter()
    n = sum(len(c.retrieve_study(s)) for s in studies)
    dt = time.perf_counter() - t
    b.note(f"{url[:30]:30s} WADO-RS {n} instances in {dt:.1f} s: {n / dt:.0f} inst/s")
    return {"seconds": dt, "rate": n / dt, "instances": n}


def report(a, res: dict) -> None:
    print(b.header(f"DICOMweb, {a.studies} studies for QIDO-RS"))
    rows = []
    for shape, o in res["qido orthanc"].items():
        i = res["qido ihe"][shape]
        rows.append([f"QIDO-RS {shape} p50", f"{i['p50']:.1f} ms", f"{o['p50']:.1f} ms", f"{i['p50'] / o['p50']:.2f}",
                     f"{i['matches']:.0f} / {o['matches']:.0f}"])
    if "stow ihe" in res:
        for what in ("stow", "wado"):
            i, o = res[f"{what} ihe"]["rate"], res[f"{what} orthanc"]["rate"]
            rows.append([f"{what.upper()}-RS inst/s", f"{i:.0f}", f"{o:.0f}", f"{i / o:.2f}", ""])
    print(b.table(["measure", "ihe", "Orthanc 1.10", "ihe / Orthanc", "matches ihe / Orthanc"], rows))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    sys.exit(main())
