"""DICOMweb on the archive: QIDO-RS, WADO-RS, WADO-URI and STOW-RS driven by dicomweb-client (a
client nobody here wrote) and httpx, against the real server on a free port, with DCMTK's
findscu and storescu on the same archive."""
from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from helpers import make_corpus, run_dcmtk
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.web import DicomWebServer

HTTP = httpx.Client(timeout=60)  # one client: creating one per request costs ~50 ms
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR", "ignore::UserWarning")


def _multiframe(out: Path) -> Path:
    """A 3-frame MR made from pydicom's MR_small (frame k: the pixels plus k)."""
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    arr = ds.pixel_array
    frames = [(arr + k).astype(arr.dtype).tobytes() for k in range(3)]
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(frames)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "MF1", "Frame^Multi", "ACCMF"
    p = out / "mf.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("web")
    files = make_corpus(d / "corpus")  # 2 studies x 2 series x 3 CT
    extra = [_multiframe(d), Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))]
    a = Archive(f"sqlite:///{d / 'index.db'}", d / "storage")
    for f in files[:9] + extra:
        a.store(f.read_bytes())
    web = DicomWebServer(a)
    web.start()
    dimse = DicomServer(a, aet="IHE_ARCHIVE", port=0)
    dimse.start()
    yield {"archive": a, "web": web, "dimse": dimse, "files": files, "mf": extra[0], "jpeg": extra[1],
           "client": DICOMwebClient(url=web.base_url), "url": web.base_url}
    dimse.stop()
    web.stop()
    a.close()


def _uids(results, tag="0020000D"):
    return sorted(r[tag]["Value"][0] for r in results)


def findscu(port: int, level: str, *keys: str) -> list[dict]:
    """DCMTK findscu (Study Root) against the archive: each response's key=value lines."""
    args = ["-S", "-aec", "IHE_ARCHIVE", "-k", f"QueryRetrieveLevel={level}"]
    for k in keys:
        args += ["-k", k]
    p = run_dcmtk("findscu", *args, "127.0.0.1", str(port))
    out, cur = [], None
    for line in p.stderr.splitlines():
        if "Find Response:" in line:
            cur = {}
            out.append(cur)
        elif cur is not None and line.startswith("I: (") and "[" in line:
            tag = line[4:13].replace(",", "").upper()
            cur[tag] = line[line.index("[") + 1:line.rindex("]")].strip().rstrip("\x00")
    return out


# -- QIDO-RS --------------------------------------------------------------------------------
def test_qido_studies_answers_as_cfind_does(world):
    c = world["client"]
    studies = c.search_for_studies()
    assert len(studies) == 4  # two corpus studies, the multi-frame MR, the JPEG SC
    for query, keys in [({"PatientID": "PID000000"}, ["PatientID=PID000000"]),
                        ({"PatientName": "test^pat*"}, ["PatientName=test^pat*"]),
                        ({"StudyDate": "20260101-20260131"}, ["StudyDate=20260101-20260131"]),
                        ({"ModalitiesInStudy": "MR"}, ["ModalitiesInStudy=MR"])]:
        web = _uids(c.search_for_studies(search_filters=query))
        dimse = sorted(r["0020000D"] for r in findscu(world["dimse"].port, "STUDY", "StudyInstanceUID", *keys))
        assert web == dimse and web, query
    one = c.search_for_studies(search_filters={"PatientID": "PID000001"})[0]
    assert one["00100010"]["Value"][0]["Alphabetic"] == "TEST^PATIENT000001"
    assert one["00201208"]["Value"] == [3]  # instances of study 2 stored: files 6..8
    assert one["00080061"]["Value"] == ["CT"]
    assert one["00081190"]["Value"][0] == f"{world['url']}/studies/{one['0020000D']['Value'][0]}"


def test_qido_series_instances_limit_offset_includefield(world):
    c = world["client"]
    study = c.search_for_studies(search_filters={"PatientID": "PID000000"})[0]["0020000D"]["Value"][0]
    series = c.search_for_series(study)
    assert len(series) == 2 and {s["00080060"]["Value"][0] for s in series} == {"CT"}
    inst = c.search_for_instances(study, series[0]["0020000E"]["Value"][0])
    assert len(inst) == 3 and all(i["00280010"]["Value"] == [128] for i in inst)  # Rows from the header
    page1 = c.search_for_instances(study, limit=2)
    page2 = c.search_for_instances(study, limit=2, offset=2)
    assert len(page1) == 2 and len(page2) == 2
    assert not set(_uids(page1, "00080018")) & set(_uids(page2, "00080018"))
    r = c.search_for_studies(search_filters={"PatientID": "PID000000"}, fields=["StationName", "00181030"])[0]
    assert "00081010" in r and "00181030" in r
    every = c.search_for_studies(search_filters={"PatientID": "PID000000"}, fields=["all"])[0]
    assert "00100030" in every and "00080062" in every  # SOP Classes in Study, from includefield=all
    across = c.search_for_series(search_filters={"Modality": "MR"})
    assert len(across) == 1 and across[0]["00100020"]["Value"] == ["MF1"]  # study attributes across studies
    uid_list = HTTP.get(world["url"] + "/studies", params={"StudyInstanceUID": f"{study},1.2.3"}).json()
    assert _uids(uid_list) == [study]


def test_qido_fuzzy_and_case(world):
    c = world["client"]
    assert len(c.search_for_studies(search_filters={"PatientName": "frame^multi"})) == 1
    assert len(c.search_for_studies(search_filters={"PatientName": "Frame^Multi"}, fuzzymatching=True)) == 1


def test_qido_bad_queries(world):
    url = world["url"]
    r = HTTP.get(url + "/studies", params={"NoSuchAttribute": "x"})
    assert r.status_code == 400 and "NoSuchAttribute" in r.text
    assert HTTP.get(url + "/studies", params={"limit": "-1"}).status_code == 400
    assert HTTP.get(url + "/studies", params={"StudyInstanceUID": "1.2;drop"}).status_code == 400
    assert HTTP.get(url + "/studies/1.2.x/series").status_code == 400
    r = HTTP.get(url + "/studies", params={"StudyDate": "2026"})  # not a date: matches nothing, as in C-FIND
    assert r.status_code == 200 and r.json() == []
    assert HTTP.get(url + "/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406
    assert HTTP.get(url + "/studies", headers={"Accept": "application/json"}).status_code == 200


# -- WADO-RS --------------------------------------------------------------------------------
def _ref(world, path: Path):
    ds = dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_wado_retrieves_as_stored(world):
    c = world["client"]
    f = world["files"][0]
    st, se, sop = _ref(world, f)
    got = c.retrieve_instance(st, se, sop)
    want = dcmread(f)
    assert got.SOPInstanceUID == sop and got.PixelData == want.PixelData
    assert len(c.retrieve_series(st, se)) == 3
    assert len(c.retrieve_study(st)) == 6
    r = HTTP.get(f"{world['url']}/studies/{st}/series/{se}/instances/{sop}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200 and f.read_bytes() in r.content  # byte for byte as stored
    # a JPEG-compressed instance, decompressed on request
    st2, se2, sop2 = _ref(world, world["jpeg"])
    native = c.retrieve_instance(st2, se2, sop2, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    jds = dcmread(world["jpeg"])
    assert native.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert len(native.PixelData) == jds.Rows * jds.Columns * 3
    assert native.SOPInstanceUID == sop2 == native.file_meta.MediaStorageSOPInstanceUID  # the same instance
    r = HTTP.get(f"{world['url']}/studies/{st2}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'})
    assert r.status_code == 406


def test_wado_metadata_and_bulkdata(world):
    c = world["client"]
    st, se, sop = _ref(world, world["files"][0])
    meta = c.retrieve_instance_metadata(st, se, sop)
    assert meta["00080018"]["Value"] == [sop]
    uri = meta["7FE00010"]["BulkDataURI"]
    pixels = c.retrieve_bulkdata(uri)[0]
    assert pixels == dcmread(world["files"][0]).PixelData
    study_meta = c.retrieve_study_metadata(st)
    assert len(study_meta) == 6 and all("7FE00010" in m for m in study_meta)


def test_wado_frames_and_rendered(world):
    c = world["client"]
    st, se, sop = _ref(world, world["mf"])
    mf = dcmread(world["mf"])
    size = mf.Rows * mf.Columns * 2
    frames = c.retrieve_instance_frames(st, se, sop, [2, 3])
    assert frames == [mf.PixelData[size:2 * size], mf.PixelData[2 * size:]]
    png = c.retrieve_instance_rendered(st, se, sop, media_types=("image/png",), params={"window": "600,800"})
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (mf.Columns, mf.Rows)
    jpg = c.retrieve_instance_frames_rendered(st, se, sop, [3], media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpg)).format == "JPEG"
    for path in (f"/studies/{st}/thumbnail", f"/studies/{st}/series/{se}/thumbnail",
                 f"/studies/{st}/series/{se}/instances/{sop}/frames/2/thumbnail"):
        r = HTTP.get(world["url"] + path, params={"viewport": "32,32"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (32, 32), path
    # JPEG-compressed instance: frames in their stored encoding, or decompressed
    st2, se2, sop2 = _ref(world, world["jpeg"])
    jpeg_frame = c.retrieve_instance_frames(st2, se2, sop2, [1], media_types=("image/jpeg",))[0]
    assert jpeg_frame[:2] == b"\xff\xd8"
    raw = c.retrieve_instance_frames(st2, se2, sop2, [1],
                                     media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))[0]
    jds = dcmread(world["jpeg"])
    assert len(raw) == jds.Rows * jds.Columns * 3
    assert HTTP.get(f"{world['url']}/studies/{st}/series/{se}/instances/{sop}/frames/9").status_code == 404
    assert HTTP.get(f"{world['url']}/studies/{st}/series/{se}/instances/{sop}/frames/x").status_code == 400


def test_wado_refusals(world):
    url = world["url"]
    st, se, sop = _ref(world, world["files"][0])
    assert HTTP.get(f"{url}/studies/1.2.3").status_code == 404
    r = HTTP.get(f"{url}/studies/{st}", headers={"Accept": "text/html"})
    assert r.status_code == 406
    for path in ("/studies/..%2F..%2Fetc%2Fpasswd", "/studies/%2e%2e/series/1", f"/studies/{st}/series/..%2f..",
                 f"/studies/{st}/series/{se}/instances/{sop}/bulkdata/..%2F..%2F..%2Fetc%2Fpasswd"):
        r = HTTP.get(url + path)
        assert r.status_code in (400, 404), path
        assert "root:" not in r.text


# -- WADO-URI (RAD-55) --------------------------------------------------------------------------
def test_wado_uri(world):
    st, se, sop = _ref(world, world["files"][0])
    base = world["web"].url + "/wado"
    q = {"requestType": "WADO", "studyUID": st, "seriesUID": se, "objectUID": sop}
    r = HTTP.get(base, params={**q, "contentType": "application/dicom"})
    assert r.status_code == 200 and r.content == world["files"][0].read_bytes()
    r = HTTP.get(base, params={**q, "windowCenter": "40", "windowWidth": "400", "rows": "64"})
    img = Image.open(io.BytesIO(r.content))
    assert r.headers["content-type"] == "image/jpeg" and img.size == (64, 64)
    assert HTTP.get(base, params={**q, "contentType": "image/png"}).content[:4] == b"\x89PNG"
    assert HTTP.get(base, params={"requestType": "WADO", "studyUID": st}).status_code == 400
    assert HTTP.get(base, params={**q, "requestType": "OTHER"}).status_code == 400
    assert HTTP.get(base, params={**q, "objectUID": "1.2.3"}).status_code == 404


# -- STOW-RS --------------------------------------------------------------------------------
def test_stow_then_findscu_and_storescu_then_qido(world):
    c = world["client"]
    files = world["files"][9:]  # the second corpus study's second series, not stored yet
    res = c.store_instances([dcmread(f) for f in files])
    assert len(res.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in res
    st, se, _ = _ref(world, files[0])
    found = findscu(world["dimse"].port, "SERIES", f"SeriesInstanceUID={se}", "NumberOfSeriesRelatedInstances")
    assert found and found[0]["00201209"] == "3"
    # and the other way round: DCMTK storescu in, QIDO-RS out
    d = Path(files[0]).parent.parent / "dcmtk"
    new = make_corpus(d, studies=1, series=1, images=2)
    run_dcmtk("storescu", "-aec", "IHE_ARCHIVE", "127.0.0.1", str(world["dimse"].port), *map(str, new))
    st2 = dcmread(new[0]).StudyInstanceUID
    got = c.search_for_instances(st2)
    assert sorted(_uids(got, "00080018")) == sorted(dcmread(p).SOPInstanceUID for p in new)


def _multipart(parts: list[tuple[str, bytes]], boundary="b0undary", part_type="application/dicom"):
    body = b"".join(f"--{boundary}\r\nContent-Type: {t}\r\n\r\n".encode() + d + b"\r\n" for t, d in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="{part_type}"; boundary={boundary}'


def test_stow_statuses(world):
    url = world["url"] + "/studies"
    a = world["archive"]
    new = make_corpus(Path(world["files"][0]).parent.parent / "stow", studies=1, series=1, images=3)
    good, other, broken = new[0].read_bytes(), new[1].read_bytes(), new[2].read_bytes()[:400]
    st = dcmread(new[0]).StudyInstanceUID
    before = a.counts()["instances"]
    # one good, one broken: 202 with both lists
    body, ct = _multipart([("application/dicom", good), ("application/dicom", broken)])
    r = HTTP.post(url, content=body, headers={"Content-Type": ct})
    assert r.status_code == 202, r.text
    j = r.json()
    assert len(j["00081199"]["Value"]) == 1
    assert j["00081198"]["Value"][0]["00081197"]["Value"][0] in (0xC000, 0xA900)  # truncated: no SOP Instance UID
    assert "Warning" in r.headers
    # to another study's URL: 409, 0xA900, nothing stored
    body, ct = _multipart([("application/dicom", other)])
    r = HTTP.post(f"{url}/{_ref(world, world['files'][0])[0]}", content=body,
                   headers={"Content-Type": ct})
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    # to its own study's URL: 200
    r = HTTP.post(f"{url}/{st}", content=body, headers={"Content-Type": ct})
    assert r.status_code == 200 and r.json()["00081190"]["Value"] == [f"{world['url']}/studies/{st}"]
    assert a.counts()["instances"] == before + 2
    # media types and framing
    assert HTTP.post(url, content=good, headers={"Content-Type": "application/dicom"}).status_code == 415
    assert HTTP.post(url, content=body, headers={"Content-Type": "multipart/related; type=\"image/gif\"; "
                                                                  "boundary=b0undary"}).status_code == 415
    r = HTTP.post(url, content=body, headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 400 and "boundary" in r.text
    r = HTTP.post(url, content=body[:300], headers={"Content-Type": ct})
    assert r.status_code == 400
    r = HTTP.post(url, content=body, headers={"Content-Type": ct.replace("b0undary", "other")})
    assert r.status_code == 400
    assert HTTP.post(url, headers={"Content-Type": ct}).status_code == 400
    many = b"".join(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\nx\r\n" for _ in range(6000))
    r = HTTP.post(url, content=many + b"--b0undary--\r\n", headers={"Content-Type": ct})
    assert r.status_code == 413 and "parts" in r.text
    assert a.counts()["instances"] == before + 2  # nothing half-stored


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_stow_oversized_upload_is_refused_while_streaming(tmp_path):
    a = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "s")
    default = DicomWebServer(a)  # 512 MiB a request
    srv = DicomWebServer(a, max_upload=64 << 20)
    srv.start()
    default.start()
    try:
        url = srv.base_url + "/studies"
        ct = 'multipart/related; type="application/dicom"; boundary=xx'
        # a declared 1 GiB body is refused before it is read
        with socket.create_connection(("127.0.0.1", default.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ct}\r\n"
                         f"Content-Length: {1 << 30}\r\n\r\n".encode() + b"--xx\r\n")
            sock.settimeout(10)
            answer = b""
            while b"limit" not in answer:
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer
        peak = [_rss()]
        start = peak[0]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], _rss())
                time.sleep(0.01)

        t = threading.Thread(target=watch)
        t.start()

        def body():  # 256 MiB, chunked, never in memory at once
            yield b"--xx\r\nContent-Type: application/dicom\r\n\r\n"
            block = b"\0" * (1 << 20)
            for _ in range(256):
                yield block

        try:
            r = HTTP.post(url, headers={"Content-Type": ct}, content=body(), timeout=60)
            status = r.status_code
        except httpx.HTTPError:  # the server may close while the client still sends
            status = 413
        finally:
            done.set()
            t.join()
        assert status == 413
        assert peak[0] - start < 48 << 20, f"memory grew by {(peak[0] - start) >> 20} MiB"
        assert a.counts()["instances"] == 0
    finally:
        srv.stop()
        default.stop()
        a.close()


def test_dicomweb_client_sees_http_errors(world):
    c = world["client"]
    with pytest.raises(HTTPError):
        c.retrieve_study("1.2.3.4")


def test_qido_json_names_in_every_character_set(tmp_path):
    from helpers import DATA

    a = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "s")
    names = {}
    for f in sorted((DATA / "charset").glob("SCS*")):
        a.store(f.read_bytes())
        ds = dcmread(f)
        names[ds.StudyInstanceUID] = ds.PatientName
    srv = DicomWebServer(a)
    srv.start()
    try:
        got = DICOMwebClient(url=srv.base_url).search_for_studies()
        assert len(got) == len(names) == 8
        for r in got:
            want = names[r["0020000D"]["Value"][0]]
            pn = r["00100010"]["Value"][0]
            assert pn["Alphabetic"] == want.alphabetic
            assert pn.get("Ideographic", "") == want.ideographic and pn.get("Phonetic", "") == want.phonetic
        russian = HTTP.get(srv.base_url + "/studies", params={"PatientName": "Люкceмбypг"}).json()
        assert len(russian) == 1
    finally:
        srv.stop()
        a.close()


def test_an_instance_whose_file_is_gone(tmp_path):
    """An indexed instance whose file was lost (before `ihe archive check --repair`): WADO-RS sends
    the others with 206 Partial Content and a Warning, or 404 when it alone was asked; WADO-URI 404."""
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=3)
    a = Archive(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "st")
    for f in files:
        a.store(f.read_bytes())
    lost = dcmread(files[1])
    st, se, sop = str(lost.StudyInstanceUID), str(lost.SeriesInstanceUID), str(lost.SOPInstanceUID)
    a.blobs.path(a.blobs.rel_path(sop)).unlink()
    srv = DicomWebServer(a)
    srv.start()
    try:
        dicom = {"Accept": 'multipart/related; type="application/dicom"'}
        r = HTTP.get(f"{srv.base_url}/studies/{st}", headers=dicom)
        assert r.status_code == 206 and "1 of 3 instances are missing" in r.headers["Warning"]
        got = DICOMwebClient(url=srv.base_url).retrieve_study(st)
        assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(
            str(dcmread(f).SOPInstanceUID) for f in files if f != files[1])
        assert HTTP.get(f"{srv.base_url}/studies/{st}/series/{se}/instances/{sop}", headers=dicom).status_code == 404
        r = HTTP.get(srv.url + "/wado", params={"requestType": "WADO", "studyUID": st, "seriesUID": se,
                                                "objectUID": sop, "contentType": "application/dicom"})
        assert r.status_code == 404 and "file is missing" in r.text
    finally:
        srv.stop()
        a.close()


def test_rejected_instances_stay_hidden(tmp_path):
    """An IOCM rejection note (RAD-66) hides its instances from QIDO-RS, WADO-RS and WADO-URI too."""
    from helpers import run_cli
    from ihecli.config import load
    from ihecli.workflow.service import attach

    files = make_corpus(tmp_path / "c", studies=1, series=1, images=3)
    assert run_cli("archive", "import", tmp_path / "c").code == 0
    st, se, sop = (str(getattr(dcmread(files[0]), k)) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                   "SOPInstanceUID"))
    r = run_cli("iocm", "reject", "--reason", "quality", "--instance", sop, "--store", "--yes")
    assert r.code == 0, r.stderr
    s = load().archive
    a = Archive(s.db_url(), s.storage_dir())
    attach(a)
    srv = DicomWebServer(a)
    srv.start()
    try:
        c = DICOMwebClient(url=srv.base_url)
        found = _uids(c.search_for_instances(st, se), "00080018")
        assert sop not in found and len(found) == 2
        assert HTTP.get(f"{srv.base_url}/studies/{st}/series/{se}/instances/{sop}").status_code == 404
        assert HTTP.get(f"{srv.base_url}/studies/{st}/series/{se}/instances/{sop}/metadata").status_code == 404
        assert HTTP.get(srv.url + "/wado", params={"requestType": "WADO", "studyUID": st, "seriesUID": se,
                                                   "objectUID": sop}).status_code == 404
        assert len(c.retrieve_series(st, se)) == 2
    finally:
        srv.stop()
        a.close()


def test_archive_serve_http_port(tmp_path):
    """`ihe archive serve --http-port`: DICOMweb beside DICOM on the same archive, in one command."""
    import os
    import signal
    import subprocess
    import sys

    from helpers import free_port, wait_port

    web, dimse = free_port(), free_port()
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", str(dimse), "--http-port",
                          str(web), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_port(web, 30)
        wait_port(dimse, 30)
        files = make_corpus(tmp_path / "c", studies=1, series=1, images=2)
        run_dcmtk("storescu", "-aec", "IHE_ARCHIVE", "127.0.0.1", str(dimse), *map(str, files))
        got = HTTP.get(f"http://127.0.0.1:{web}/dicom-web/studies").json()
        assert [r["00201208"]["Value"] for r in got] == [[2]]
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "DICOMweb on http://127.0.0.1:" in err.decode()


def test_stow_acknowledged_survives_kill_9(tmp_path):
    """What STOW-RS answered as stored is there after the server is killed (SIGKILL) mid-stream."""
    import os
    import signal
    import subprocess
    import sys

    from helpers import free_port, wait_port

    web = free_port()
    db, storage = tmp_path / "i.db", tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "archive", "serve", "--port", "0", "--http-port", str(web),
                          "--workers", "1", "--db", f"sqlite:///{db}", "--storage", str(storage)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    acked = []
    try:
        wait_port(web, 30)
        c = DICOMwebClient(url=f"http://127.0.0.1:{web}/dicom-web")
        files = make_corpus(tmp_path / "c", studies=1, series=1, images=24)
        for k in range(0, 24, 4):
            res = c.store_instances([dcmread(f) for f in files[k:k + 4]])
            acked += [str(i.ReferencedSOPInstanceUID) for i in res.ReferencedSOPSequence]
            if k == 12:  # the next request is cut short by the kill
                break
        body, ct = _multipart([("application/dicom", f.read_bytes()) for f in files[16:]])
        threading.Timer(0.02, lambda: os.kill(p.pid, signal.SIGKILL)).start()
        try:  # (not dicomweb-client: it retries for seconds)
            HTTP.post(f"http://127.0.0.1:{web}/dicom-web/studies", content=body, headers={"Content-Type": ct})
        except httpx.HTTPError:
            pass
    finally:
        p.kill()
        p.wait(30)
    assert len(acked) == 16
    a = Archive(f"sqlite:///{db}", storage)
    try:
        held = {r.SOPInstanceUID for r in a.find(_image_level())}
        assert set(acked) <= held
        rep = a.check()
        assert not rep.missing_files and not rep.corrupt
    finally:
        a.close()


def _image_level():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = ""
    return ds


@pytest.mark.parametrize("level,query", [
    ("STUDY", ""), ("STUDY", "PatientName=test*"), ("STUDY", "ModalitiesInStudy=CT&includefield=00080062"),
    ("STUDY", "StudyDate=20260101-&includefield=NumberOfPatientRelatedStudies&limit=2&offset=1"),
    ("SERIES", ""), ("SERIES", "Modality=MR"), ("IMAGE", "InstanceNumber=2&includefield=SOPClassUID"),
    ("STUDY", "includefield=StudyTime,PatientSex,IssuerOfPatientID"),
])
def test_qido_fast_answers_are_the_engine_answers(world, level, query):
    """Answers written from index rows equal those built through the C-FIND engine's datasets."""
    from starlette.datastructures import QueryParams

    from ihecli.web import qido

    a, params = world["archive"], QueryParams(query)
    fast = qido.search(a, level, params, "http://x")
    assert fast == qido.search(a, level, params, "http://x", fast=False)
    assert fast
