"""A success status means the object is on disk and in the index, even when the server is killed."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

from pydicom import dcmread

from helpers import DCMTK_ENV, dcmtk, free_port, make_corpus, wait_port
from ihecli.archive import Archive


def test_kill_9_during_ingest_loses_nothing_acknowledged(tmp_path):
    files = make_corpus(tmp_path / "corpus", studies=4, series=5, images=20)  # 400 instances
    db, storage = tmp_path / "index.db", tmp_path / "storage"
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port),
                            "--db", f"sqlite:///{db}", "--storage", str(storage)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, 20)
        scu = subprocess.Popen([dcmtk("storescu"), "-v", "-aec", "IHE_ARCHIVE", "127.0.0.1", str(port),
                                *map(str, files)], env=DCMTK_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        # kill -9 once some instances were acknowledged, while storescu is still sending
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.05)
            n = sum(1 for p in storage.rglob("*.dcm"))
            if n >= 40:
                break
        os.kill(srv.pid, signal.SIGKILL)
        srv.wait(10)
        log, _ = scu.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
    # storescu -v: "Sending file: PATH" ... "Received Store Response (Success)"
    acked = []
    current = None
    for line in log.splitlines():
        m = re.search(r"Sending file: (.*)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response" in line and "Success" in line and current:
            acked.append(current)
            current = None
    assert 0 < len(acked) < len(files), f"the kill came too late or too early: {len(acked)} acknowledged"

    with Archive(f"sqlite:///{db}", storage) as archive:
        report = archive.check()
        assert report.missing_files == [], "an index row points to a missing file"
        stored = set()
        from sqlalchemy import select

        from ihecli.archive import schema

        with archive.connect() as conn:
            stored = set(conn.execute(select(schema.instances.c.sop_uid)).scalars())
        for path in acked:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert uid in stored, f"acknowledged instance {uid} was lost"
        # whatever the kill left half-done is repaired without losing acknowledged data
        archive.check(repair=True)
        after = archive.check()
        assert not after.missing_files and not after.orphan_files and after.temp_files == 0
        assert archive.counts()["instances"] >= len(acked)


def test_workers_share_the_port_and_die_with_the_server(tmp_path, corpus):
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port), "--workers", "3",
                            "--db", f"sqlite:///{tmp_path / 'i.db'}", "--storage", str(tmp_path / 's')],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 20)
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(srv.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 3
        # several associations at once, spread over the workers, all stored once
        scus = [subprocess.Popen([dcmtk("storescu"), "-aec", "IHE_ARCHIVE", "127.0.0.1", str(port), str(p)],
                                 env=DCMTK_ENV) for p in corpus]
        assert all(s.wait(60) == 0 for s in scus)
        with Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "s") as archive:
            assert archive.counts()["instances"] == len(corpus)
        # a second server on the same port must fail, not quietly share the associations
        for workers in ("1", "2"):
            second = subprocess.run([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(port),
                                     "--workers", workers, "--db", f"sqlite:///{tmp_path / 'other.db'}",
                                     "--storage", str(tmp_path / "other")], capture_output=True, text=True,
                                    timeout=30)
            assert second.returncode == 2 and "cannot listen" in second.stderr
        os.kill(srv.pid, signal.SIGKILL)
        srv.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{c}") for c in children):
            time.sleep(0.1)
        alive = [c for c in children if os.path.exists(f"/proc/{c}")
                 and "zombie" not in open(f"/proc/{c}/status").read().lower()]
        assert alive == [], "workers outlived the server"
    finally:
        if srv.poll() is None:
            srv.kill()


def _interrupted_export(tmp_path, *dest, watch):
    """`ihe archive export --since 24h DEST...` in its own process, Ctrl-C (SIGINT) once `watch()`
    says it is under way; the completed process."""
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "export", "--since", "24h", "--db",
                          f"sqlite:///{tmp_path / 'index.db'}", "--storage", str(tmp_path / "st"), *dest],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TCP_NODELAY": "1"})
    while not watch() and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def test_ctrl_c_of_an_export_says_how_far_it_got_and_leaves_no_partial_file(tmp_path):
    """A nightly export stopped by Ctrl-C: exit 130 with one line saying how many went out, and
    every file under its final name in the folder is whole (copied under another name first)."""
    files = make_corpus(tmp_path / "c", studies=6, series=5, images=50)
    with Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "st") as a:
        for f in files:
            a.store(f.read_bytes())
    out = tmp_path / "out"
    code, _, err = _interrupted_export(tmp_path, "--out", str(out),
                                       watch=lambda: out.exists() and any(out.glob("*/*/*.dcm")))
    assert code == 130, err
    copied = list(out.glob("*/*/*.dcm"))
    assert 0 < len(copied) < len(files), "the export ended before Ctrl-C: make the corpus larger"
    assert re.search(rf"interrupted: {len(copied)} instances? of {len(files)} exported to ", err), err
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    originals = {f.name: f for f in files}
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in originals.values()}
    for p in copied:
        assert p.read_bytes() == by_uid[p.stem].read_bytes()


@contextlib.contextmanager
def _stalling_peer(takes: int):
    """A pynetdicom storage SCP (CT) that takes ``takes`` objects, then holds the response to the
    next one until the test is done; yields (port, holding: set once it holds)."""
    import threading

    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt

    got, hold, holding = [], threading.Event(), threading.Event()

    def on_store(event):
        if len(got) >= takes:  # the client has taken the last response: it sent the next object
            holding.set()
            hold.wait(60)
            return 0xA700
        got.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="SLOW")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, holding
    finally:
        hold.set()
        scp.shutdown()


def test_ctrl_c_of_an_export_to_a_node_says_how_far_it_got(tmp_path):
    """The same with --to: a pynetdicom storage SCP that stops answering after 5 objects."""
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=20)
    with Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "st") as a:
        for f in files:
            a.store(f.read_bytes())
    with _stalling_peer(5) as (port, holding):
        code, _, err = _interrupted_export(tmp_path, "--to", f"SLOW@127.0.0.1:{port}", watch=holding.is_set)
    assert code == 130, err
    assert re.search(rf"interrupted: 5 instances of {len(files)} exported to SLOW@127.0.0.1:{port}", err), err


def test_ctrl_c_of_dicom_store_says_how_far_it_got(tmp_path):
    """`ihe dicom store` stopped by Ctrl-C: exit 130 and one line with what the peer took."""
    make_corpus(tmp_path / "c", studies=1, series=1, images=20)
    with _stalling_peer(3) as (port, holding):
        p = subprocess.Popen([sys.executable, "-m", "ihecli", "dicom", "store", f"SLOW@127.0.0.1:{port}",
                              str(tmp_path / "c")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TCP_NODELAY": "1"})
        while not holding.is_set() and p.poll() is None:
            time.sleep(0.005)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip() == f"ihe: error: interrupted: 3 of 20 files sent to SLOW@127.0.0.1:{port}", err
