#!/usr/bin/env python3
"""HL7 feed of `ihe archive serve --hl7-port`: ADT throughput over one MLLP connection, and how
soon a merge (A40) of a 10,000-instance patient shows in C-FIND.

Fills an archive with one patient of --instances instances (100 per study) and one other
patient, starts `ihe archive serve --hl7-port` on it, then:
1. sends --messages ADT^A08 updates over one MLLP connection, each waiting for its ACK
   (original mode, as senders do), and reports messages per second (goal >= 500);
2. with a DICOM association already open, sends the A40 merging the big patient into the
   other and times the ACK, then the first C-FIND (PATIENT level) that shows the surviving
   patient with every instance (goal < 1 s from sending the A40);
3. moves a 100-instance study of the merged patient (headers coerced on the way out) and one of
   an untouched patient (sent as stored) to a DCMTK storescp, in instances per second.
Every ACK must be AA, the final C-FIND must count every instance and storescp must receive
every instance, or the script fails.

usage: python bench/hl7.py [--instances 10000] [--messages 2000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402


def template() -> bytes:
    """A small CT header-only instance whose UIDs are fixed-width placeholders."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.PatientID, ds.PatientName = "PRIOR", "PRIOR^BIG"
    ds.StudyInstanceUID = "9." + "1" * 62
    ds.SeriesInstanceUID = "9." + "2" * 62
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "9." + "3" * 62
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def uid(kind: int, n: int) -> bytes:
    return f"9.{kind}.1{n:059d}".encode()  # as long as the placeholders


def fill(db: Path, storage: Path, instances: int) -> None:
    from ihecli.archive import Archive

    tpl = template()
    with Archive(f"sqlite:///{db}", storage) as archive:
        def one(i: int) -> None:
            data = (tpl.replace(b"9." + b"1" * 62, uid(1, i // 100)).replace(b"9." + b"2" * 62, uid(2, i // 100))
                    .replace(b"9." + b"3" * 62, uid(3, i)))
            assert archive.store(data).outcome == "stored"

        with ThreadPoolExecutor(8) as pool:  # concurrent stores share index commits
            list(pool.map(one, range(instances)))
        other = tpl.replace(b"PRIOR^BIG", b"TARGET^T ").replace(b"PRIOR", b"TARGT")
        other = other.replace(b"9." + b"1" * 62, uid(1, 10**9)).replace(b"9." + b"2" * 62, uid(2, 10**9)) \
            .replace(b"9." + b"3" * 62, uid(3, 10**9))
        archive.store(other)
        for i in range(100):  # a patient HL7 never touches: its study is moved as stored
            data = (tpl.replace(b"PRIOR^BIG", b"OTHER^P  ").replace(b"PRIOR", b"OTHER")
                    .replace(b"9." + b"1" * 62, uid(1, 2 * 10**9)).replace(b"9." + b"2" * 62, uid(2, 2 * 10**9))
                    .replace(b"9." + b"3" * 62, uid(3, 2 * 10**9 + i)))
            archive.store(data)
        assert archive.counts()["instances"] == instances + 101


def a08(n: int) -> bytes:
    return (f"MSH|^~\\&|HIS|HOSP|IHE_ARCHIVE|RAD|20240101120000||ADT^A08^ADT_A01|u{n}|P|2.5\r"
            f"EVN|A08|20240101120000\rPID|1||TARGT^^^HOSP||TARGET^T^{n % 10}||19700101|F\r").encode()


def a40(n: int) -> bytes:
    return (f"MSH|^~\\&|HIS|HOSP|IHE_ARCHIVE|RAD|20240101120000||ADT^A40^ADT_A39|m{n}|P|2.5\r"
            f"EVN|A40|20240101120000\rPID|1||TARGT^^^HOSP||TARGET^T||19700101|F\rMRG|PRIOR^^^HOSP\r").encode()


def throughput(port: int, n: int, offset: int) -> float:
    from ihecli.hl7 import v2
    from ihecli.net.mllp import MllpClient

    with MllpClient(b.LOOPBACK, port) as c:
        c.send(a08(offset))  # connection set up outside the timing
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            ack = v2.read_ack(c.send(a08(offset + i)))
            if ack.code != "AA":
                raise SystemExit(f"A08 refused: {ack.code} {ack.text}")
        return n / (time.perf_counter() - t0)


def merge_visible(dicom_port: int, hl7_port: int, expected: int, n: int) -> tuple[float, float]:
    """(seconds to the A40's ACK, seconds until C-FIND shows the merged patient)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind as FIND

    from ihecli.hl7 import v2
    from ihecli.net import dimse
    from ihecli.net.mllp import MllpClient

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(FIND)
    assoc = ae.associate(b.LOOPBACK, dicom_port, ae_title="IHE_ARCHIVE",
                         evt_handlers=[dimse.NODELAY_HANDLER])
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel, q.PatientID, q.NumberOfPatientRelatedInstances = "PATIENT", "TARGT", ""
    try:
        with MllpClient(b.LOOPBACK, hl7_port) as c:
            t0 = time.perf_counter()
            ack = v2.read_ack(c.send(a40(n)))
            t_ack = time.perf_counter() - t0
            if ack.code != "AA":
                raise SystemExit(f"A40 refused: {ack.code} {ack.text}")
        while True:
            found = [int(ds.NumberOfPatientRelatedInstances) for st, ds in assoc.send_c_find(q, FIND)
                     if st and st.Status in (0xFF00, 0xFF01) and ds is not None]
            if found == [expected]:
                return t_ack, time.perf_counter() - t0
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"merge not visible after 30 s: C-FIND found {found}")
    finally:
        assoc.release()


def move_rate(dicom_port: int, study_uid: str, dest_aet: str) -> float:
    """Instances per second of one C-MOVE of a study to the DCMTK storescp."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    from ihecli.net import dimse

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(MOVE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    assoc = ae.associate(b.LOOPBACK, dicom_port, ae_title="IHE_ARCHIVE", evt_handlers=[dimse.NODELAY_HANDLER])
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", study_uid
    try:
        t0 = time.perf_counter()
        final = None
        for status, _ in assoc.send_c_move(ds, dest_aet, MOVE):
            if status and status.Status != 0xFF00:
                final = status
        took = time.perf_counter() - t0
    finally:
        assoc.release()
    done = int(final.get("NumberOfCompletedSuboperations", 0) or 0) if final else 0
    if final is None or final.Status != 0 or done != 100:
        raise SystemExit(f"C-MOVE of {study_uid} failed: {final}")
    return done / took


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=10000, help="instances of the merged patient (10000)")
    p.add_argument("--messages", type=int, default=2000, help="A08 messages per throughput run (2000)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement (3)")
    b.add_common(p)
    a = p.parse_args(argv)
    b.setup(__file__, a, argv)
    procs = b.Procs()
    results: dict = {}
    try:
        with b.Workdir(a.workdir, a.keep) as work:
            rates, acks, visible, moved_reconciled, moved_plain = [], [], [], [], []
            for r in range(a.repeat):
                db, storage = work / f"ihe-{r}.db", work / f"storage-{r}"
                t = time.perf_counter()
                fill(db, storage, a.instances)
                b.note(f"run {r + 1}: archive of {a.instances + 1} instances filled in {time.perf_counter() - t:.1f} s")
                hl7_port = b.free_port()
                scp = b.start_storescp(procs, work / f"storescp-{r}")
                srv = b.start_ihe(procs, work, db, storage, extra=["--hl7-port", str(hl7_port)],
                                  dests=[f"STORESCP@{b.LOOPBACK}:{scp.port}"])
                b.wait_port(hl7_port, srv.proc, log=srv.log)
                rates.append(throughput(hl7_port, a.messages, r * 10**6))
                t_ack, t_vis = merge_visible(srv.port, hl7_port, a.instances + 1, r)
                acks.append(t_ack)
                visible.append(t_vis)
                moved_reconciled.append(move_rate(srv.port, uid(1, 0).decode(), "STORESCP"))
                moved_plain.append(move_rate(srv.port, uid(1, 2 * 10**9).decode(), "STORESCP"))
                check = sorted((work / f"storescp-{r}").iterdir())
                if len(check) != 200:
                    raise SystemExit(f"storescp received {len(check)} instances, not 200")
                procs.stop(srv.proc)
                procs.stop(scp.proc)
            results = {
                "a08_per_s": {"median": round(statistics.median(rates)), "min": round(min(rates)),
                              "max": round(max(rates))},
                "a40_ack_s": round(statistics.median(acks), 3),
                "merge_visible_s": {"median": round(statistics.median(visible), 3), "max": round(max(visible), 3)},
                "move_reconciled_per_s": round(statistics.median(moved_reconciled)),
                "move_unchanged_per_s": round(statistics.median(moved_plain)),
                "instances": a.instances + 1, "messages": a.messages, "runs": a.repeat,
            }
    finally:
        procs.stop_all()
    print(b.header("HL7 feed of ihe archive serve (SQLite index, fsync on)"))
    print(b.table(["measure", "result", "goal"], [
        [f"ADT^A08 over one MLLP connection ({a.messages} messages, ACK each)",
         f"{results['a08_per_s']['median']} msg/s ({results['a08_per_s']['min']}–{results['a08_per_s']['max']})",
         ">= 500 msg/s"],
        ["A40 merge of a patient with %d instances: ACK" % a.instances, f"{results['a40_ack_s']:.3f} s", ""],
        ["A40 sent -> C-FIND shows the merged patient",
         f"{results['merge_visible_s']['median']:.3f} s (max {results['merge_visible_s']['max']:.3f})", "< 1 s"],
        ["C-MOVE of 100 instances of the merged patient (headers coerced)",
         f"{results['move_reconciled_per_s']} img/s", ""],
        ["C-MOVE of 100 instances of an untouched patient (sent as stored)",
         f"{results['move_unchanged_per_s']} img/s", ""],
    ]))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
