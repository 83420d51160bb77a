"""XDS.b: `ihe xds serve` answering find-documents in a large registry, and `ihe xds submit` throughput.

1. Submit: 1,000 documents of 10 KB with the `ihe xds submit` command (a folder, one process,
   ITI-41 over MTOM in submission sets of 100) to `ihe xds serve`, end to end; documents/s.
2. Find: a registry of N document entries (default 100,000; 10 per patient, each patient's in
   one submission set) made by the registry's own code, served by `ihe xds serve` in its own
   process, then ITI-18 FindDocuments for one patient at a time over HTTP; p50/p95.

No XDS peer runs here (there is no packaged XDS registry for Debian); the goals are absolute:
find-documents p50 < 50 ms, submit >= 100 documents/s.

    python bench/xds.py [--entries 100000] [--queries 200] [--documents 1000]   (--entries 0: submit only)
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ihecli.archive import Archive  # noqa: E402
from ihecli.config import XdsSettings  # noqa: E402
from ihecli.net.soap import SoapClient  # noqa: E402
from ihecli.xds import client as xc  # noqa: E402
from ihecli.xds import vocabulary as v  # noqa: E402
from ihecli.xds.server import XdsServer  # noqa: E402
from ihecli.xds.source import Options, make_submissions  # noqa: E402

AUTH = "1.3.6.1.4.1.21367.2005.3.7"
DOMAIN = XdsSettings(assigning_authority=AUTH)


def ihe_bin() -> str:
    return str(Path(sys.executable).with_name("ihe"))


def bench_submit(tmp: Path, n: int = 1000, size: int = 10 * 1024) -> float:
    folder = tmp / "docs"
    folder.mkdir()
    rnd = random.Random(1)
    for i in range(n):
        (folder / f"doc{i:05d}.txt").write_bytes(bytes(rnd.getrandbits(8) for _ in range(size)))
    env = {**os.environ, "IHE_CONFIG": str(tmp / "none.toml"), "IHE_DATA_DIR": str(tmp / "data")}
    with Archive(f"sqlite:///{tmp / 'submit.db'}", tmp / "submit-storage") as a:
        srv = XdsServer(a, repository_unique_id="1.2.3.4")
        srv.start()
        try:
            t = time.perf_counter()
            subprocess.run([ihe_bin(), "-q", "xds", "submit", str(folder), "--patient", f"SUBMIT^^^&{AUTH}&ISO",
                            "--repository", srv.url], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            dt = time.perf_counter() - t
        finally:
            srv.stop()
    return n / dt


def fill(db_url: str, entries: int, per_patient: int = 10, batch: int = 1000) -> list[str]:
    """``entries`` document entries (``per_patient`` each, one submission set per patient): the
    registry normalizes each submission and makes its rows, which go in by the thousand."""
    from lxml import etree
    from sqlalchemy import insert

    from ihecli.archive.index import now
    from ihecli.archive.tables_xds import xds_objects, xds_values
    from ihecli.net.soap.xml import LCM, q
    from ihecli.xds.registry import Registry, _row, _values

    with Archive(db_url, Path(tempfile.mkdtemp(prefix="ihe-bench-xds-fill-"))) as archive:
        reg = Registry(archive.engine, archive.db_url)
        patients, rows, values = [], [], []
        for pno in range(entries // per_patient):
            pid = f"P{pno:06d}^^^&{AUTH}&ISO"
            patients.append(pid)
            (sub,) = make_submissions([(f"d{i}.txt", b"x") for i in range(per_patient)], DOMAIN, Options(patient=pid),
                                      batch=per_patient)
            for de, _ in sub.documents:
                de.hash, de.size, de.repository_unique_id = "0" * 40, 1, "1.2.3.4"
            sor = etree.Element(q(LCM, "SubmitObjectsRequest"))
            sor.append(sub.object_list())
            n = reg.normalize(sor)
            t = now()
            for obj, el, kind in ([(n.ss, n.ss_el, "SS")] + [(d, e, "DE") for d, e in n.docs]
                                  + [(a, e, "AS") for a, e in n.assocs]):
                rows.append(_row(obj, kind, el, t))
                values += _values(obj, kind)
            if len(rows) >= batch * 2 or pno == entries // per_patient - 1:
                with reg.wengine.begin() as conn:
                    conn.execute(insert(xds_objects), rows)
                    if values:
                        conn.execute(insert(xds_values), values)
                rows, values = [], []
                print(f"\r  registered {(pno + 1) * per_patient}/{entries}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        reg.close()
    return patients


def bench_find(tmp: Path, entries: int, queries: int) -> tuple[float, float, int]:
    """Fill a registry, run `ihe xds serve` on it in its own process, query it from here."""
    db = f"sqlite:///{tmp / 'find.db'}"
    t = time.perf_counter()
    patients = fill(db, entries)
    print(f"  filled in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    port = free_port()
    env = {**os.environ, "IHE_CONFIG": str(tmp / "none.toml"), "IHE_DATA_DIR": str(tmp / "data")}
    p = subprocess.Popen([ihe_bin(), "-q", "xds", "serve", "--port", str(port), "--db", db, "--storage",
                          str(tmp / "find-storage")], env=env)
    try:
        url = f"http://127.0.0.1:{port}/xds"
        client = SoapClient(url)
        end = time.monotonic() + 60
        while True:
            try:
                xc.registry_stored_query(client, "find-documents", {
                    "$XDSDocumentEntryPatientId": patients[0], "$XDSDocumentEntryStatus": [v.APPROVED]})
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        rnd = random.Random(2)
        times, found = [], 0
        for _ in range(queries):
            pid = rnd.choice(patients)
            t = time.perf_counter()
            res = xc.registry_stored_query(client, "find-documents", {
                "$XDSDocumentEntryPatientId": pid, "$XDSDocumentEntryStatus": [v.APPROVED]})
            times.append(time.perf_counter() - t)
            found += len(res.objects)
    finally:
        p.terminate()
        p.wait(20)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.95)] * 1000, found // queries


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--documents", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ihe-bench-xds-") as d:
        tmp = Path(d)
        rate = bench_submit(tmp, args.documents)
        print(f"submit: {args.documents} documents of 10 KB: {rate:.0f} documents/s (goal >= 100)")
        if not args.entries:
            return
        p50, p95, per = bench_find(tmp, args.entries, args.queries)
        print(f"find-documents, one patient ({per} entries) of {args.entries}: p50 {p50:.1f} ms, p95 {p95:.1f} ms "
              f"(goal p50 < 50 ms)")


if __name__ == "__main__":
    main()
