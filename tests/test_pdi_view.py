"""`ihe pdi view`: what a medium holds (table, JSON), and the local web view, read by headless Chromium;
mammograms shown in their display orientation."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from helpers import free_port, make_corpus, run_cli, wait_port
from ihecli.pdi import MediaViewServer, open_medium
from ihecli.pdi.render import mammo_target, orient
from pdi_helpers import CHARSET_DATA, PDI_DATA, dump_dom, links

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A folder medium: the charset DICOMDIR and images less one (a dangling reference), plus an
    object of a SOP class no reader supports, and a README."""
    d = tmp_path_factory.mktemp("view") / "cd"
    d.mkdir()
    shutil.copy(PDI_DATA / "charset-media" / "DICOMDIR", d / "DICOMDIR")
    for n in ("SCSARAB", "SCSFREN", "SCSHBRW"):
        shutil.copy(PDI_DATA / "charset-media" / n, d / n)
    for n in ("SCSGERM", "SCSGREEK", "SCSH31", "SCSH32", "SCSI2", "SCSRUSS", "SCSX1"):  # SCSX2 is missing
        shutil.copy(CHARSET_DATA / n, d / n)
    odd = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"  # a private class
    odd.save_as(d / "PRIVATE1")
    (d / "README.TXT").write_text("made elsewhere")
    return d


def test_list_as_json(medium):
    r = run_cli("pdi", "view", medium, "--json")
    assert r.code == 0, r.stderr
    v = r.json
    assert v["counts"] == {"patients": 11, "studies": 11, "series": 11, "objects": 10, "unsupported": 1,
                           "problems": 1, "files_skipped": 1}
    (dangling,) = v["problems"]
    assert dangling["path"] == "SCSX2" and dangling["status"] == "dangling"
    (odd,) = v["unsupported"]
    assert odd["path"] == "PRIVATE1" and "not supported" in odd["reason"]
    names = {p["name"] for p in v["patients"]}
    assert "שרון^דבורה" in names and "Buc^Jérôme" in names


def test_list_as_table(medium):
    r = run_cli("pdi", "view", medium)
    assert r.code == 0, r.stderr
    assert "Люкceмбypг" in r.stdout and "Äneas^Rüdiger" in r.stdout
    err = " ".join(r.stderr.split())
    assert "PRIVATE1: unsupported" in err and "SCSX2: dangling" in err
    assert "10 objects; 1 unsupported, 1 missing or unreadable" in err


def test_mammogram_display_orientation():
    # Patient Orientation R\P of a left breast: turned to A\R (chest wall left, as the pair hangs back to back)
    assert mammo_target("L", ["R", "P"]) == ("A", "R")
    assert mammo_target("R", ["L", "P"]) == ("P", "L")
    assert mammo_target("L", ["P", "F"]) == ("A", "F")
    a = np.arange(6).reshape(2, 3)
    assert np.array_equal(orient(a, ["R", "P"], ("A", "R")), np.rot90(a, -1))  # down was P: chest wall to the left
    assert np.array_equal(orient(a, ["A", "R"], ("A", "R")), a)
    assert np.array_equal(orient(a, ["P", "R"], ("A", "R")), a[:, ::-1])


@pytest.fixture
def served(tmp_path):
    files = make_corpus(tmp_path / "ct", studies=1, series=1, images=2)
    iso = tmp_path / "m.iso"
    r = run_cli("pdi", "burn", *files, PDI_DATA / "OutOfBoundsOverlay.dcm", "--iso", iso, "--media", "dvd", "--no-web")
    assert r.code == 0, r.stderr
    with open_medium(iso) as m:
        server = MediaViewServer(m, port=0)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            server.stop()  # idempotent


def test_web_view_in_chromium(served):
    index = dump_dom(served.url)
    assert "This page contains the following errors" not in index  # served as XHTML: well-formed
    study_links = [l for l in links(index) if l.startswith("/study/")]
    assert len(study_links) == 4  # two per study: date and description
    pages = {}
    with httpx.Client(base_url=served.url) as http:
        for link in sorted(set(study_links)):
            page = http.get(link)
            assert page.status_code == 200
            for sl in links(page.text):
                if sl.startswith("/series/"):
                    pages[sl] = http.get(sl).text
        assert len(pages) == 2
        mg_page = next(p for p in pages if "L CC" in pages[p])
        dom = dump_dom(served.url.rstrip("/") + mg_page)
        (src,) = [l for l in links(dom) if l.startswith("/image/")]
        rsp = http.get(src)
        assert rsp.status_code == 200 and rsp.headers["content-type"] == "image/jpeg"
        img = np.asarray(Image.open(io.BytesIO(rsp.content)).convert("L"), dtype=float)
        # stored 788 rows x 1318 columns, chest wall at the bottom; shown upright, chest wall on the left
        assert img.shape == (1024, 612)
        assert img[:, :306].mean() > img[:, 306:].mean() + 15
        for p in pages.values():
            for l in links(p):
                if l.startswith("/image/"):
                    assert http.get(l).status_code == 200
        assert http.get("/image/99.jpg").status_code == 404
        assert http.get("/series/nope").status_code == 404


def test_web_view_of_a_multi_frame_object(tmp_path):
    """The view's series page links an 8-frame ultrasound to a page of its 8 frames, each served."""
    iso = tmp_path / "us.iso"
    r = run_cli("pdi", "burn", PDI_DATA / "xdsi" / "us022.dcm", "--iso", iso, "--no-web")
    assert r.code == 0, r.stderr
    with open_medium(iso) as m:
        server = MediaViewServer(m, port=0)
        server.start()
        try:
            with httpx.Client(base_url=server.url.rstrip("/")) as http:
                studies = {l for l in links(http.get("/").text) if l.startswith("/study/")}
                (series,) = {l for st in studies for l in links(http.get(st).text) if l.startswith("/series/")}
                (obj,) = {l for l in links(http.get(series).text) if l.startswith("/object/")}
                page = dump_dom(server.url.rstrip("/") + obj)
                assert page.count("<img") == 8 and "frame 8 of 8" in page
                frames = [l for l in links(page) if l.startswith("/image/")]
                got = [http.get(f) for f in frames]
                assert [g.status_code for g in got] == [200] * 8
                assert len({g.content for g in got}) == 8  # eight renderings, not one eight times
                assert http.get(frames[-1].replace("/7.jpg", "/8.jpg")).status_code == 404
        finally:
            server.stop()


def test_serve_from_the_command_line(medium, tmp_path):
    port = free_port()
    env = {**os.environ, "IHE_CONFIG": str(tmp_path / "c.toml"), "IHE_DATA_DIR": str(tmp_path / "d")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "pdi", "view", str(medium), "--serve", "--port", str(port)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 30)
        rsp = httpx.get(f"http://127.0.0.1:{port}/")
        assert rsp.status_code == 200 and "Yamada" in rsp.text
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in err and "Ctrl-C" in err


def test_a_medium_with_nothing_readable(tmp_path):
    """A DICOMDIR whose files are all missing: each is named and the summary counts them; no
    query's 'no matches' (was printed before the summary, as if a search had found nothing)."""
    r = run_cli("pdi", "view", PDI_DATA / "dicomdir-dangling")
    assert r.code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "no matches" not in err and r.stdout == ""
    assert "0 objects; 0 unsupported, 20 missing or unreadable" in err and err.count(": dangling:") == 20


def test_serving_a_huge_multi_frame_object_reads_a_frame_at_a_time(tmp_path):
    """A 250 MB cine loop on an ISO: the view serves its frames (each its own), reading each
    from the medium alone; the server stays far smaller than the object (it held the object
    read, parsed and decoded: three times its size, for each of the two last shown)."""
    import pydicom

    ds = pydicom.dcmread(PDI_DATA / "xdsi" / "us022.dcm")
    n, rows, cols = 1000, 500, 500
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ramp = (np.add.outer(np.arange(rows), np.arange(cols)) % 256).astype(np.uint8)
    ds.PixelData = b"".join(np.roll(ramp, 2 * k, axis=1).tobytes() for k in range(n))
    src = tmp_path / "src"
    src.mkdir()
    ds.save_as(src / "cine.dcm")
    del ds
    size_kib = (src / "cine.dcm").stat().st_size // 1024
    iso = tmp_path / "cine.iso"
    assert run_cli("pdi", "burn", src / "cine.dcm", "--iso", iso, "--no-web", "--media", "dvd").code == 0
    port = free_port()
    env = {**os.environ, "IHE_CONFIG": str(tmp_path / "c.toml"), "IHE_DATA_DIR": str(tmp_path / "d")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "pdi", "view", str(iso), "--serve", "--port", str(port)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            got = [http.get(f"/image/0/{k}.jpg") for k in (0, 1, 333, 999)]
            assert [g.status_code for g in got] == [200] * 4 and len({g.content for g in got}) == 4
            assert http.get("/image/0/1000.jpg").status_code == 404
            first = np.asarray(Image.open(io.BytesIO(got[0].content)).convert("L"), dtype=float)
            assert np.abs(first - ramp).mean() < 8  # frame 1 as it is
        status = open(f"/proc/{p.pid}/status").read()
        peak_kib = int(status.split("VmHWM:")[1].split()[0])
        assert peak_kib < size_kib // 2, f"{peak_kib} KiB to serve a {size_kib} KiB object"
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
