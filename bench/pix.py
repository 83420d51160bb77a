#!/usr/bin/env python3
"""PIX Update Notification (ITI-10) into `ihe pix listen`: ADT^A31 acknowledged per second over one
MLLP connection (goal >= 500), each message committed (fsync) before its ACK.

Starts `ihe pix listen` on an empty SQLite archive, then per repeat sends --messages A31s over
one connection, each waiting for its ACK (original mode, as PIX Managers send): three
identifiers per message, every tenth one relinking identifiers of an earlier message. Every ACK
must be AA and the database must hold every identifier, or the script fails. No other PIX
Consumer runs here to compare with, so the same run also measures the disk's floor: bare SQLite
commits per second (WAL, synchronous=FULL, one row each) from this process.

usage: python bench/pix.py [--messages 2000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402


def a31(n: int, r: int) -> bytes:
    k = n - 5 if n % 10 == 0 and n >= 5 else n  # every tenth: a new cross-reference for older ids
    return (f"MSH|^~\\&|PIXMGR|HOSP|IHE|HOSP|20260101120000||ADT^A31^ADT_A05|r{r}n{n}|P|2.5\r"
            f"EVN|A31|20260101120000\r"
            f"PID|||E{r}-{k}^^^&1.3.6.1.4.1.21367.2005.3.7&ISO^PI~L{r}-{n}^^^LOCAL&1.2.9&ISO^PI~"
            f"X{r}-{n}^^^XREF&1.2.10&ISO^PI||DOE^JOHN\rPV1||N\r").encode()


def throughput(port: int, n: int, r: int) -> float:
    from ihecli.hl7 import v2
    from ihecli.net.mllp import MllpClient

    with MllpClient(b.LOOPBACK, port) as c:
        c.send(a31(0, r))  # connection set up outside the timing
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            ack = v2.read_ack(c.send(a31(i, r)))
            if ack.code != "AA":
                raise SystemExit(f"A31 refused: {ack.code} {ack.text} {ack.errors}")
        return n / (time.perf_counter() - t0)


def commit_floor(work: Path, n: int = 500) -> float:
    c = sqlite3.connect(work / "floor.db", isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE t (a TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO t VALUES (?)", (str(i),))
        c.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    c.close()
    return rate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    b.add_common(p)
    a = p.parse_args(argv)
    b.setup(__file__, a, argv)
    results = []
    with b.Workdir(a.workdir, a.keep) as work, b.Procs() as procs:
        db = work / "index.db"
        port = b.free_port()
        log = work / "pix.log"
        env = {**os.environ, "IHE_CONFIG": str(work / "none.toml"), "IHE_DATA_DIR": str(work / "data")}
        srv = procs.start([*b.ihe_command(), "pix", "listen", "--port", port, "--db", f"sqlite:///{db}",
                           "--storage", work / "storage"], log=log, env=env)
        b.wait_port(port, srv, log=log)
        for r in range(a.repeat):
            load = os.getloadavg()[0]
            rate = throughput(port, a.messages, r)
            floor = commit_floor(work)
            (work / "floor.db").unlink()
            results.append({"a31_per_s": round(rate), "sqlite_commits_per_s": round(floor),
                            "ratio": round(rate / floor, 2), "load": round(load, 1)})
            b.note(f"run {r + 1}: {rate:.0f} A31/s, bare commits {floor:.0f}/s, load {load:.1f}")
        procs.stop(srv)
        con = sqlite3.connect(db)
        rows = con.execute("SELECT count(*) FROM pix_links").fetchone()[0]
        con.close()
        expected = a.repeat * (3 * (a.messages + 1) - sum(1 for n in range(1, a.messages + 1) if n % 10 == 0
                                                           and n >= 5))
        if rows != expected:
            raise SystemExit(f"pix_links holds {rows} identifiers, expected {expected}")
    med = statistics.median(x["a31_per_s"] for x in results)
    print(b.header(f"{a.messages} ADT^A31 per run over one MLLP connection, SQLite, fsync on"))
    print(b.table(["run", "A31/s", "bare SQLite commits/s", "A31 / commits", "load avg"],
                  [[i + 1, x["a31_per_s"], x["sqlite_commits_per_s"], x["ratio"], x["load"]]
                   for i, x in enumerate(results)]))
    print(f"median {med:.0f} A31/s (goal >= 500)")
    if a.json:
        a.json.write_text(json.dumps({"runs": results, "median_a31_per_s": med}, indent=2))


if __name__ == "__main__":
    main()
