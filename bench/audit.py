#!/usr/bin/env python3
"""Audit Record Repository throughput: `ihe audit serve` against rsyslog, same stream, same run.

One TLS connection sends N octet-counted RFC 5424 audit messages (RFC 5425); the time runs from
the connection's first message to the moment the receiver holds all N: ihe stored in its SQLite
index (parsed, with the fields `ihe audit query` filters on), rsyslog written to a file (imtcp
with gnutls, omfile). Prints messages per second and ihe / rsyslog.

    python bench/audit.py [--messages 5000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ihecli.atna import events as ev  # noqa: E402
from ihecli.atna import syslog  # noqa: E402
from ihecli.net import tls  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def make_stream(n: int) -> bytes:
    frames = []
    for i in range(n):
        e = ev.instances_transferred(source=ev.Peer("MODALITY", "127.0.0.1"), destination=ev.Peer("IHE", "127.0.0.1"),
                                     studies={f"1.2.3.{i}": {"sop_classes": {"1.2.840.10008.5.1.4.1.1.2": 3}}},
                                     patients=[f"PID{i:06d}"])
        frames.append(syslog.frame(syslog.message(ev.to_xml(e), hostname="bench", procid="1")))
    return b"".join(frames)


def send(port: int, stream: bytes, client: tls.TlsConfig) -> float:
    s = tls.connect("127.0.0.1", port, tls.context(client, server=False))
    t0 = time.perf_counter()
    s.sendall(stream)
    return t0, s


def run_ihe(work: Path, stream: bytes, n: int, pki: dict) -> float:
    port = free_port()
    db = work / "arr.db"
    env = {**os.environ, "IHE_CONFIG": str(work / "none.toml"), "IHE_DATA_DIR": str(work / "data")}
    ihe = shutil.which("ihe", path=str(Path(sys.executable).parent)) or "ihe"
    p = subprocess.Popen([ihe, "-q", "audit", "serve", "--tls-port", str(port), "--no-udp", "--cert", pki["server"],
                          "--ca", pki["ca"], "--db", f"sqlite:///{db}"], env=env)
    try:
        wait_port(port)
        t0, s = send(port, stream, tls.TlsConfig(cert=pki["client"], ca=pki["ca"]))
        con = None
        while True:
            if db.exists():
                con = con or sqlite3.connect(db, timeout=30)
                try:
                    if con.execute("select count(*) from audit_events").fetchone()[0] >= n:
                        break
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        s.close()
        return dt
    finally:
        p.terminate()
        p.wait(30)


def run_rsyslog(work: Path, stream: bytes, n: int, pki: dict) -> float:
    port = free_port()
    out = work / "rsyslog.log"
    conf = work / "rsyslog.conf"
    conf.write_text(f'''global(workDirectory="{work}" maxMessageSize="64k" DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{pki['ca']}" DefaultNetstreamDriverCertFile="{pki['server_cert']}"
  DefaultNetstreamDriverKeyFile="{pki['server_key']}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="x509/certvalid")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{out}" template="raw")
''')
    p = subprocess.Popen(["/usr/sbin/rsyslogd", "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")])
    try:
        wait_port(port)
        t0, s = send(port, stream, tls.TlsConfig(cert=pki["client"], ca=pki["ca"]))
        while True:
            if out.exists():
                with open(out, "rb") as fh:
                    if sum(chunk.count(b"\n<85>") for chunk in iter(lambda: fh.read(1 << 20), b"")) + 1 >= n:
                        break
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        s.close()
        return dt
    finally:
        p.terminate()
        p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import trustme

    with tempfile.TemporaryDirectory(prefix="ihe-bench-audit-") as tmp:
        tmpd = Path(tmp)
        ca = trustme.CA()
        pki = {"ca": str(tmpd / "ca.pem")}
        ca.cert_pem.write_to_path(pki["ca"])
        for name in ("server", "client"):
            c = ca.issue_cert("localhost", "127.0.0.1")
            c.private_key_and_cert_chain_pem.write_to_path(str(tmpd / f"{name}.pem"))
            c.private_key_pem.write_to_path(str(tmpd / f"{name}-key.pem"))
            c.cert_chain_pems[0].write_to_path(str(tmpd / f"{name}-cert.pem"))
            pki[name], pki[name + "_key"], pki[name + "_cert"] = (str(tmpd / f"{name}.pem"),
                                                                   str(tmpd / f"{name}-key.pem"),
                                                                   str(tmpd / f"{name}-cert.pem"))
        stream = make_stream(args.messages)
        print(f"{args.messages} audit messages, {len(stream) / 1e6:.1f} MB, one TLS connection; "
              f"load average {os.getloadavg()[0]:.2f}")
        rates = {"ihe": [], "rsyslog": []}
        for i in range(args.repeat):
            for name, fn in (("ihe", run_ihe), ("rsyslog", run_rsyslog)):
                work = tmpd / f"{name}-{i}"
                work.mkdir()
                dt = fn(work, stream, args.messages, pki)
                rates[name].append(args.messages / dt)
                print(f"  run {i + 1} {name:8} {args.messages / dt:8.0f} msg/s")
        ihe, rs = statistics.median(rates["ihe"]), statistics.median(rates["rsyslog"])
        print(f"ihe audit serve: {ihe:.0f} msg/s ({min(rates['ihe']):.0f}-{max(rates['ihe']):.0f}), "
              f"rsyslog to a file: {rs:.0f} msg/s ({min(rates['rsyslog']):.0f}-{max(rates['rsyslog']):.0f}); "
              f"ihe / rsyslog {ihe / rs:.2f}; goal ihe >= 1000 msg/s")


if __name__ == "__main__":
    main()
