#!/usr/bin/env python3
"""C-MOVE throughput, side by side: Orthanc 1.10 (SQLite) and `ihe archive serve` send 20 studies
(gen_corpus.py's 2,000 CT images) to a DCMTK storescp (TCP_NODELAY=1).

Both archives are loaded with the same corpus (four DCMTK storescu associations), then a
pynetdicom SCU asks each for all 20 studies over one association: one C-MOVE per study (or,
with --one-move, one C-MOVE whose StudyInstanceUID lists all 20). Each run starts from an
empty destination folder and checks that every image arrived and every C-MOVE ended with
Success; a run that did not is counted as failed, said why, and left out of the median. Runs
alternate between the two archives, --repeat times, and the table shows medians.

usage: python bench/move.py [--corpus DIR] [--repeat 3] [--one-move]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

DEST_AET = "STORESCP"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, help="existing folder of DICOM files (default: generate 2,000 CT)")
    p.add_argument("--repeat", type=int, default=3, help="runs per archive; the median is shown (3)")
    p.add_argument("--one-move", action="store_true", help="one C-MOVE listing every study, not one per study")
    b.add_common(p)
    a = p.parse_args(argv)
    b.setup(__file__, a, argv)

    with b.Workdir(a.workdir, a.keep) as work, b.Procs() as procs:
        if a.corpus:
            corpus = a.corpus.resolve()
        else:
            corpus = work / "corpus"
            b.note("generating 2,000 CT images (gen_corpus.py defaults)")
            b.gen_corpus(corpus)
        n = b.count_files(corpus)
        studies = study_uids(corpus)
        split = b.split_corpus(corpus, work / "split", 4)

        dest_dir = work / "dest"
        # --fork: Orthanc keeps its association to the destination open a few seconds after a
        # move (DicomAssociationCloseDelay); a single-process storescp would make the next
        # archive's sub-association wait for it.
        dest = b.start_storescp(procs, dest_dir, aet=DEST_AET, fork=True)
        servers = {}
        orthanc = b.start_orthanc(procs, work, work / "orthanc",
                                  modalities={"storescp": [DEST_AET, b.LOOPBACK, dest.port]})
        servers["orthanc"] = orthanc
        ihe = b.start_ihe(procs, work, work / "ihe" / "index.db", work / "ihe" / "storage",
                          dests=[f"{DEST_AET}@{b.LOOPBACK}:{dest.port}"])
        servers["ihe"] = ihe
        time.sleep(1)
        loads = {}
        for name, srv in servers.items():
            count = (lambda: b.orthanc_count(orthanc)) if name == "orthanc" else (
                lambda: b.ihe_count(work / "ihe" / "index.db"))
            loads[name] = b.load(procs, srv, split, n, count, log_dir=work)
            b.note(f"{name} loaded: {n} images in {loads[name]['seconds']:.1f} s")
        time.sleep(2)  # let Orthanc's stable-resource events (StableAge 1) pass

        times: dict[str, list[float]] = {k: [] for k in servers}
        failed: dict[str, list[str]] = {k: [] for k in servers}  # runs that did not move everything
        for r in range(a.repeat):
            for name, srv in servers.items():
                clear(dest_dir)
                os.sync()
                dt, done, problem = move(srv, studies, a.one_move)
                got = b.count_files(dest_dir)
                if problem or got != n or done != n:
                    why = f"{problem or 'success'}; {done} sub-operations completed, {got} of {n} images arrived, " \
                          f"after {dt:.1f} s"
                    failed[name].append(why)
                    b.note(f"run {r + 1}/{a.repeat}  {name:8s} FAILED: {why}" + b.tail(srv.log, 4))
                    continue
                times[name].append(dt)
                b.note(f"run {r + 1}/{a.repeat}  {name:8s} {dt:6.2f} s  {n / dt:7.1f} img/s "
                       f"(load {os.getloadavg()[0]:.1f})")
        clear(dest_dir)

    med = {k: b.median(v) for k, v in times.items()}
    how = "one C-MOVE listing all studies" if a.one_move else "one C-MOVE per study"
    print(f"\n## C-MOVE of {len(studies)} studies ({n} images) to DCMTK storescp, {how}, one association")
    print(b.header(f"median of the successful runs out of {a.repeat}; destination storescp --fork") + "\n")
    rows = []
    label = {"orthanc": "Orthanc 1.10, SQLite index", "ihe": "ihe archive serve, SQLite index"}
    for name in servers:
        t = times[name]
        if not t:
            rows.append([label[name], "—", "—", "—", "—", f"{len(failed[name])} of {a.repeat}"])
            continue
        ratio = f"{med['orthanc'] / med[name]:.2f}" if times["orthanc"] else "—"
        rows.append([label[name], f"{med[name]:.2f}", f"{n / med[name]:.0f}",
                     f"{n / max(t):.0f}–{n / min(t):.0f}", ratio, f"{len(failed[name])} of {a.repeat}"])
    print(b.table(["archive", "seconds", "img/s", "range img/s", "vs Orthanc", "failed runs"], rows))
    for name, whys in failed.items():
        for why in whys:
            print(f"failed run, {label[name]}: {why}")
    for name, ld in loads.items():
        if ld["missing_first_pass"]:
            print(f"\nloading {name}: {ld['missing_first_pass']} of {n} images refused on the first pass "
                  f"(4 associations), stored by a second pass")
    if a.json:
        a.json.write_text(json.dumps({"images": n, "studies": len(studies), "one_move": a.one_move,
                                      "machine": b.machine(), "ihe_version": b.VERSION[0],
                                      "ihe_options": b.IHE_EXTRA, "loads": loads, "seconds": times,
                                      "failed": failed}, indent=2))
    return 0


def study_uids(corpus: Path) -> list[str]:
    from pydicom import dcmread

    uids = {}
    for f in sorted(corpus.iterdir()):
        if f.is_file():
            uids.setdefault(str(dcmread(f, specific_tags=["StudyInstanceUID"]).StudyInstanceUID), None)
    return list(uids)


def clear(d: Path) -> None:
    for f in d.iterdir():
        if f.is_dir():
            shutil.rmtree(f)
        else:
            f.unlink()


def move(srv: b.Server, studies: list[str], one_move: bool) -> tuple[float, int, str | None]:
    """Seconds for the C-MOVE(s) over one association, the sub-operations completed, and what
    went wrong (None when every C-MOVE ended with Success)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt

    from ihecli.net.dimse import hold_reactor
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    def nodelay(event):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="SCU")  # a modality Orthanc knows (orthanc.json)
    ae.add_requested_context(MOVE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    groups = [studies] if one_move else [[u] for u in studies]
    t0 = time.perf_counter()
    # pynetdicom's requestor race (see ihecli.net.dimse._HeldReactor) loses a response now and
    # then, whichever archive answers: hold its reactor as ihe's own clients do
    handlers = [(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_ACCEPTED, hold_reactor)]
    assoc = ae.associate(b.LOOPBACK, srv.port, ae_title=srv.aet, evt_handlers=handlers)
    if not assoc.is_established:
        raise SystemExit(f"{srv.aet}: association rejected")
    completed, problem = 0, None
    try:
        for uids in groups:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = uids if len(uids) > 1 else uids[0]
            final = None
            for status, _ in assoc.send_c_move(ds, DEST_AET, MOVE):
                if status and status.Status not in (0xFF00,):
                    final = status
            if final is not None:
                completed += int(final.get("NumberOfCompletedSuboperations", 0) or 0)
            if final is None or final.Status != 0x0000:
                if final is None:
                    problem = "no final C-MOVE response"
                else:
                    problem = (f"final status 0x{final.Status:04X} "
                               f"({final.get('NumberOfFailedSuboperations', '?')} failed sub-operations)")
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return time.perf_counter() - t0, completed, problem


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
