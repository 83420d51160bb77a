#!/usr/bin/env python3
"""XCA fan-out and XDS-I retrieve rates: three `ihe xca serve` responding gateways (each its own
process and registry of --docs documents for one patient), asked one at a time and then all at
once by the Initiating Gateway's parallel fan-out (ITI-38 find-documents); and Retrieve Imaging
Document Set (RAD-69) of a 100-image study from `ihe archive serve --http-port`. The queries
are timed over the bare loopback and again with each gateway behind a link of a given
round-trip time (bench/wanlink.py), as communities are in other places.

Goals: the fan-out over three gateways answers in < 1.5x the slowest single gateway; RAD-69
moves >= 50 images/s.

usage: python bench/xca.py [--docs 200] [--n 20] [--images 100] [--rtt-ms 0,40]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

PID = "PIDX^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
HOMES = [f"urn:oid:1.3.6.1.4.1.21367.13.70.{100 + i}" for i in range(1, 4)]
REPO = "1.3.6.1.4.1.21367.13.71.100"


def fill_registry(db: Path, storage: Path, docs: int) -> None:
    """``docs`` text documents for PID, submitted over ITI-41 to an in-process `ihe xds serve`."""
    from ihecli.archive import Archive
    from ihecli.config import XdsSettings
    from ihecli.net.soap import SoapClient
    from ihecli.xds.client import provide_and_register
    from ihecli.xds.server import XdsServer
    from ihecli.xds.source import Options, make_submissions

    arc = Archive(f"sqlite:///{db}", storage)
    with XdsServer(arc, repository_unique_id=REPO) as srv:
        files = [(f"doc{i}.txt", f"document {i}\n".encode()) for i in range(docs)]
        domain = XdsSettings(assigning_authority="1.3.6.1.4.1.21367.2005.3.7")
        cli = SoapClient(srv.url, timeout=120)
        for sub in make_submissions(files, domain, Options(patient=PID), batch=100):
            provide_and_register(cli, sub)
    arc.close()


def proc_cpu(pid: int) -> float:
    """CPU seconds a process's threads have run so far, in nanoseconds from /proc/PID/task/*/schedstat
    (/proc/PID/stat counts in clock ticks of 10 ms, longer than a query)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended
    return total / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=200, help="documents per community (200)")
    p.add_argument("--n", type=int, default=20, help="queries per measurement (20)")
    p.add_argument("--images", type=int, default=100, help="images in the RAD-69 study (100)")
    p.add_argument("--rtt-ms", default="0,40", help="round-trip times of the link to each gateway to measure "
                                                    "with, comma-separated; 0 is the bare loopback (0,40)")
    b.add_common(p)
    a = p.parse_args(argv)
    b.setup(__file__, a, argv)
    rtts = [float(x) for x in a.rtt_ms.split(",") if x.strip()]

    from ihecli.net.soap import SoapClient
    from ihecli.xca.initiating import cross_gateway_query
    from ihecli.xds.vocabulary import ITI38
    from ihecli.xds import ebrim
    from ihecli.xds import vocabulary as v
    from ihecli.xds.client import QueryOptions, stored_query_params
    from ihecli.xds.messages import adhoc_query_request

    qid = v.STORED_QUERIES["find-documents"][0]
    params = stored_query_params("find-documents", QueryOptions(patient=PID, statuses=["approved"]))
    with b.Workdir(a.workdir, a.keep) as work, b.Procs() as procs:
        comms, gateways = {}, []
        for i, home in enumerate(HOMES):
            db, storage = work / f"c{i}.db", work / f"c{i}-storage"
            fill_registry(db, storage, a.docs)
            port = b.free_port()
            gateways.append(procs.start(
                [*b.ihe_command(), "xca", "serve", "--home", home, "--port", port, "--bind", b.LOOPBACK,
                 "--db", f"sqlite:///{db}", "--storage", storage, "--repository-id", REPO],
                log=work / f"c{i}.log", env={**b.DCMTK_ENV, "IHE_CONFIG": str(work / "none.toml"),
                                              "IHE_DATA_DIR": str(work)}))
            b.wait_port(port, log=work / f"c{i}.log")
            comms[home] = f"http://{b.LOOPBACK}:{port}/xca"
        b.note(f"3 responding gateways with {a.docs} documents each")

        def measure(urls: dict[str, str]):
            def single(home: str) -> float:
                cli = SoapClient(urls[home], timeout=120)
                t = time.perf_counter()
                msg = cli.call(ITI38, adhoc_query_request(qid, params, home=home))
                objects = ebrim.from_rim(msg.body.find("{*}RegistryObjectList"))  # as the fan-out does
                dt = time.perf_counter() - t
                assert len(objects) == a.docs
                return dt

            def fan() -> float:
                t = time.perf_counter()
                res = cross_gateway_query(urls, qid, params, timeout=120)
                dt = time.perf_counter() - t
                assert sum(len(r.objects) for r in res) == 3 * a.docs and not any(r.failed for r in res)
                return dt

            def cpu() -> tuple[float, float]:
                """CPU seconds used so far by this process (the consumer) and by the three gateways."""
                return time.process_time(), sum(proc_cpu(g.pid) for g in gateways)

            for f in (lambda: [single(h) for h in HOMES], fan):  # warm-up
                f()
            singles = {h: [] for h in HOMES}
            fans = []
            used = {"single": [0.0, 0.0], "fan": [0.0, 0.0]}  # CPU seconds: consumer, gateways
            load = os.getloadavg()[0]
            for _ in range(a.n):
                for h in HOMES:
                    c0 = cpu()
                    singles[h].append(single(h))
                    c1 = cpu()
                    used["single"] = [u + y - x for u, x, y in zip(used["single"], c0, c1)]
                c0 = cpu()
                fans.append(fan())
                c1 = cpu()
                used["fan"] = [u + y - x for u, x, y in zip(used["fan"], c0, c1)]
            load = (load, os.getloadavg()[0])
            per_single = [u / (a.n * len(HOMES)) * 1000 for u in used["single"]]
            per_fan = [u / a.n * 1000 for u in used["fan"]]
            return singles, fans, per_single, per_fan, load

        runs = {}
        for rtt in rtts:
            urls = comms
            if rtt:
                ports = {h: b.free_port() for h in HOMES}
                procs.start([sys.executable, str(Path(__file__).resolve().parent / "wanlink.py"), "--rtt-ms",
                             f"{rtt:g}", *(f"{ports[h]}:{comms[h].split(':')[2].split('/')[0]}" for h in HOMES)],
                            log=work / f"wanlink-{rtt:g}.log")
                for h in HOMES:
                    b.wait_port(ports[h], log=work / f"wanlink-{rtt:g}.log")
                urls = {h: f"http://{b.LOOPBACK}:{ports[h]}/xca" for h in HOMES}
            runs[rtt] = measure(urls)

        # RAD-69 of one study
        from pydicom import dcmread

        corpus = work / "corpus"
        b.gen_corpus(corpus, "--studies", "1", "--series", "4", "--images", str(a.images // 4))
        img_db, img_storage = work / "img.db", work / "img-storage"
        from ihecli.archive import Archive

        arc = Archive(f"sqlite:///{img_db}", img_storage)
        arc.import_paths([corpus])
        arc.close()
        port, dport = b.free_port(), b.free_port()
        procs.start([*b.ihe_command(), "archive", "serve", "--port", dport, "--http-port", port, "--bind", b.LOOPBACK,
                     "--db", f"sqlite:///{img_db}", "--storage", img_storage, "--workers", "1"],
                    log=work / "archive.log", env={**b.DCMTK_ENV, "IHE_CONFIG": str(work / "none.toml"),
                                                     "IHE_DATA_DIR": str(work)})
        b.wait_port(port, log=work / "archive.log")
        from ihecli.xdsi.manifest import default_repository_uid
        from ihecli.xdsi.rad69 import ImageRequest, retrieve_imaging_document_set

        images = []
        for f in sorted(corpus.rglob("*.dcm")):
            ds = dcmread(f, stop_before_pixels=True)
            images.append(ImageRequest(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                       default_repository_uid("IHE_ARCHIVE")))
        cli = SoapClient(f"http://{b.LOOPBACK}:{port}/xdsi", timeout=120)
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            res = retrieve_imaging_document_set(cli, images, ["1.2.840.10008.1.2.1"])
            dt = time.perf_counter() - t
            assert len(res.documents) == len(images), res.errors[:3]
            rates.append(len(images) / dt)

    print("\n## XCA fan-out and XDS-I retrieve")
    print(b.header(f"{a.n} queries per measurement; find-documents returning {a.docs} entries per community") + "\n")
    rows = []
    for rtt, (singles, fans, _ps, _pf, _load) in runs.items():
        link = f"{rtt:g} ms round trip" if rtt else "loopback"
        slowest = max(b.median(x) for x in singles.values())
        rows += [[link, f"ITI-38 to {h.rsplit('.', 1)[1]} alone", f"{b.median(singles[h]) * 1000:.0f}",
                  f"{b.p95(singles[h]) * 1000:.0f}", ""] for h in HOMES]
        rows.append([link, "fan-out to all three (parallel)", f"{b.median(fans) * 1000:.0f}",
                     f"{b.p95(fans) * 1000:.0f}", f"{b.median(fans) / slowest:.2f}x the slowest (goal < 1.5)"])
    print(b.table(["link to each gateway", "query", "p50 ms", "p95 ms", ""], rows))
    print(f"\nGateways {', '.join(h.rsplit('.', 1)[1] + ' = ' + h for h in HOMES)}. A link with a round-trip "
          f"time is the loopback through bench/wanlink.py, which holds every piece of data for half that time "
          f"in each direction (a stand-in for the network between communities).")
    cores = os.cpu_count() or 1
    for rtt, (singles, _fans, per_single, per_fan, load) in runs.items():
        slowest = max(b.median(x) for x in singles.values())
        floor = sum(per_fan) / min(cores, 1 + len(HOMES))  # ms
        print(f"\n{f'{rtt:g} ms round trip' if rtt else 'Loopback'}: CPU per query (mean): alone "
              f"{per_single[0]:.1f} ms in the consumer + {per_single[1]:.1f} ms in the gateway; fan-out "
              f"{per_fan[0]:.1f} ms in the consumer + {per_fan[1]:.1f} ms in the gateways. On {cores} cores that "
              f"CPU alone takes >= {floor:.0f} ms ({floor / (slowest * 1000):.2f}x the slowest alone). Load "
              f"average {load[0]:.2f} at the start of the measurements, {load[1]:.2f} at the end.")
    print(f"\nRAD-69 of a {len(images)}-image study (CT, 39 KB each): median {b.median(rates):.0f} images/s "
          f"(runs: {', '.join(f'{r:.0f}' for r in rates)}; goal >= 50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
