"""Web-based Image Capture: `ihe wic upload` (photos with EXIF, PNG, MP4, PDF) into the archive's
STOW-RS, conversions checked with dciodvfy, the results found by DCMTK's findscu; bad input
refused with nothing stored."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from helpers import make_corpus, run_cli, run_dcmtk
from ihecli.archive import Archive
from ihecli.archive.server import DicomServer
from ihecli.web import DicomWebServer

HTTP = httpx.Client(timeout=60)
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR", "ignore::UserWarning")
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
VIDEO = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def photo(path: Path, size=(40, 30), orientation: int = 6, taken: str = "2025:03:04 05:06:07") -> Path:
    """A phone-like JPEG: a gradient with EXIF DateTimeOriginal, Orientation, Make and Model."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[:5, :5] = 255  # a white corner, top left as stored
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"
    exif[0x0110] = "Model 1"
    exif.get_ifd(0x8769)[0x9003] = taken
    img.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def png(path: Path) -> Path:
    img = Image.new("RGB", (33, 21), (10, 200, 30))
    img.save(path, "PNG")
    return path


def pdf(path: Path) -> Path:
    Image.new("RGB", (60, 80), (255, 255, 255)).save(path, "PDF")  # Pillow writes real PDF files
    return path


def mp4(path: Path, frames: int = 12) -> Path:
    """An H.264 MP4 made with PyAV (FFmpeg's libraries)."""
    import av

    with av.open(str(path), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
            for p in st.encode(f):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("wic")
    a = Archive(f"sqlite:///{d / 'index.db'}", d / "storage")
    ct = make_corpus(d / "ct", studies=1, series=1, images=2)
    for f in ct:
        a.store(f.read_bytes())
    web = DicomWebServer(a)
    web.start()
    dimse = DicomServer(a, aet="IHE_ARCHIVE", port=0)
    dimse.start()
    media = d / "media"
    media.mkdir()
    yield {"archive": a, "web": web, "dimse": dimse, "url": web.base_url, "ct": dcmread(ct[0]), "dir": media}
    dimse.stop()
    web.stop()
    a.close()


def fetch(world, study: str, series: str, sop: str) -> tuple[bytes, object]:
    r = HTTP.get(world["web"].url + "/wado", params={"requestType": "WADO", "studyUID": study, "seriesUID": series,
                                                      "objectUID": sop, "contentType": "application/dicom"})
    assert r.status_code == 200, r.text
    return r.content, dcmread(io.BytesIO(r.content))


def dciodvfy(data: bytes, tmp: Path) -> list[str]:
    p = tmp / "check.dcm"
    p.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_upload_photo_video_pdf_png_new_study(world, tmp_path):
    m = world["dir"]
    files = [photo(m / "wound.jpg"), mp4(m / "gait.mp4"), pdf(m / "consent.pdf"), png(m / "screen.png")]
    r = run_cli("wic", "upload", *files, "--patient", "WIC001", "--name", "Doe^Jane", "--birth-date", "19800101",
                "--sex", "F", "--new-study", "--description", "Wound care", "--to", world["url"], "--json")
    assert r.code == 0, r.stderr
    out = r.json
    assert [c["sop_class"] for c in out["created"]] == [VL_PHOTO, VIDEO, PDF, SC]
    assert not out["failed"]
    study = out["study"]
    # DCMTK's findscu sees the new study and its four instances
    p = run_dcmtk("findscu", "-S", "-aec", "IHE_ARCHIVE", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=WIC001",
                  "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "-k", "StudyDescription",
                  "127.0.0.1", str(world["dimse"].port))
    assert study in p.stderr and "[4 ]" in p.stderr.replace("[4]", "[4 ]") and "Wound care" in p.stderr
    by_class, errors = {}, {}
    for c in out["created"]:
        meta = HTTP.get(c["url"] + "/metadata").json()[0]
        series = meta["0020000E"]["Value"][0]
        data, ds = fetch(world, study, series, c["sop_instance_uid"])
        errors[c["kind"]] = dciodvfy(data, tmp_path)
        assert ds.PatientName == "Doe^Jane" and ds.PatientBirthDate == "19800101" and ds.StudyInstanceUID == study
        by_class[c["sop_class"]] = ds
    assert all(not e for e in errors.values()), errors
    ph = by_class[VL_PHOTO]
    # EXIF: taken at, and turned upright (orientation 6: 40x30 as stored, 30 wide and 40 high upright)
    assert ph.AcquisitionDateTime == "20250304050607" and ph.ContentDate == "20250304"
    assert (ph.Rows, ph.Columns) == (40, 30) and ph.Manufacturer == "TestCam"
    assert ph.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" and ph.PhotometricInterpretation.startswith("YBR")
    arr = ph.pixel_array
    assert arr.shape == (40, 30, 3)
    video = by_class[VIDEO]
    assert (video.Rows, video.Columns, int(video.NumberOfFrames)) == (48, 64, 12)
    # the video back as sent, through its bulk data URI
    vmeta = HTTP.get(next(c["url"] for c in out["created"] if c["sop_class"] == VIDEO) + "/metadata").json()[0]
    r = HTTP.get(vmeta["7FE00010"]["BulkDataURI"], headers={"Accept": 'multipart/related; type="video/mp4"'})
    assert r.status_code == 200 and files[1].read_bytes() in r.content
    assert video.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102" and float(video.FrameTime) == 100.0
    doc = by_class[PDF]
    assert bytes(doc.EncapsulatedDocument).rstrip(b"\0") == files[2].read_bytes().rstrip(b"\0")
    sc = by_class[SC]
    assert sc.pixel_array.shape == (21, 33, 3) and tuple(sc.pixel_array[0, 0]) == (10, 200, 30)


def test_upload_by_accession_joins_the_stored_study_and_keeps_coerced_values(world):
    ct = world["ct"]
    f = photo(world["dir"] / "follow-up.jpg", orientation=1)
    r = run_cli("wic", "upload", f, "--patient", ct.PatientID, "--name", "Wrong^Name", "--accession",
                ct.AccessionNumber, "--to", world["url"], "--json")
    assert r.code == 0, r.stderr
    created = r.json["created"]
    assert len(created) == 1 and created[0]["coerced"] and r.json["study"] == ct.StudyInstanceUID
    meta = HTTP.get(created[0]["url"] + "/metadata").json()[0]
    _, ds = fetch(world, ct.StudyInstanceUID, meta["0020000E"]["Value"][0], created[0]["sop_instance_uid"])
    assert ds.PatientName == ct.PatientName
    orig = ds.OriginalAttributesSequence[0]
    assert orig.ModifiedAttributesSequence[0].PatientName == "Wrong^Name"
    assert orig.ReasonForTheAttributeModification == "COERCE"
    assert (ds.Rows, ds.Columns) == (30, 40)  # upright already: kept as taken


def test_upload_to_another_patients_study_is_refused(world):
    ct = world["ct"]
    before = world["archive"].counts()["instances"]
    f = photo(world["dir"] / "wrong.jpg")
    r = run_cli("wic", "upload", f, "--patient", "SOMEONE-ELSE", "--study", ct.StudyInstanceUID, "--to", world["url"])
    assert r.code == 1 and "failed" in r.stderr
    assert world["archive"].counts()["instances"] == before


def test_upload_usage_errors(world, tmp_path):
    f = photo(tmp_path / "a.jpg")
    r = run_cli("wic", "upload", f, "--patient", "P1", "--study", "1.2.3", "--new-study", "--to", world["url"])
    assert r.code == 2 and "--new-study" in r.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    r = run_cli("wic", "upload", text, "--patient", "P1", "--new-study", "--to", world["url"])
    assert r.code == 2 and "not a JPEG" in r.stderr
    r = run_cli("wic", "upload", f, "--patient", "P1", "--new-study", "--to", "http://127.0.0.1:1/dicom-web")
    assert r.code == 4 and "ihe: error:" in r.stderr
    # a phone photo cut short (a copy that did not finish): named, one line, nothing sent
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo(tmp_path / "whole.jpg", size=(400, 300)).read_bytes()[:1500])
    before = world["archive"].counts()["instances"]
    r = run_cli("wic", "upload", f, cut, "--patient", "P1", "--new-study", "--to", world["url"])
    assert r.code == 2 and r.stderr.startswith(f"ihe: error: {cut}: a damaged JPEG photo"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and world["archive"].counts()["instances"] == before


def _wic_body(meta, parts, boundary="wicb", meta_type="application/dicom+json"):
    body = f"--{boundary}\r\nContent-Type: {meta_type}\r\n\r\n".encode()
    body += (meta if isinstance(meta, bytes) else json.dumps(meta).encode()) + b"\r\n"
    for loc, ctype, data in parts:
        body += f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Location: {loc}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{meta_type}"; boundary={boundary}'


def _meta(**extra):
    m = {"00100020": {"vr": "LO", "Value": ["WIC-RAW"]}, "7FE00010": {"vr": "OB", "BulkDataURI": "img"}}
    m.update(extra)
    return [m]


def test_stow_wic_bad_input_stores_nothing(world):
    url = world["url"] + "/studies"
    jpeg = photo(world["dir"] / "raw.jpg").read_bytes()
    before = world["archive"].counts()["instances"]
    cases = [
        (_meta(**{"00100020": {"vr": "LO"}}), [("img", "image/jpeg", jpeg)], "Patient ID"),
        (_meta(), [("img", "image/jpeg", jpeg[:len(jpeg) // 2])], "broken JPEG"),
        (_meta(), [("img", "image/gif", b"GIF89a....")], "not converted"),
        (_meta(), [("other", "image/jpeg", jpeg)], "not a part"),
        (b"{not json", [("img", "image/jpeg", jpeg)], "not JSON"),
        (_meta(), [("img", "application/pdf", b"%PDF-1.4 no trailer")], "broken PDF"),
        (_meta(), [("img", "video/mp4", b"\0\0\0\x18ftypisom" + b"\0" * 20)], "broken MP4"),
        (b"[" * 100_000, [("img", "image/jpeg", jpeg)], "not JSON"),
    ]
    for meta, parts, why in cases:
        body, ct = _wic_body(meta, parts)
        r = HTTP.post(url, content=body, headers={"Content-Type": ct})
        assert r.status_code == 409, (why, r.status_code, r.text)
        assert why in r.headers["Warning"], (why, r.headers["Warning"])
        assert "00081198" in r.json()
    assert world["archive"].counts()["instances"] == before


def test_stow_wic_xml_metadata(world):
    xml = (b'<?xml version="1.0" encoding="UTF-8"?><NativeDicomModel>'
           b'<DicomAttribute tag="00100020" vr="LO"><Value number="1">WIC-XML</Value></DicomAttribute>'
           b'<DicomAttribute tag="00100010" vr="PN"><PersonName number="1"><Alphabetic><FamilyName>Xml</FamilyName>'
           b'<GivenName>Pat</GivenName></Alphabetic></PersonName></DicomAttribute>'
           b'<DicomAttribute tag="7FE00010" vr="OB"><BulkData uri="img"/></DicomAttribute></NativeDicomModel>')
    body, ct = _wic_body(xml, [("img", "image/png", png(world["dir"] / "x.png").read_bytes())],
                         meta_type="application/dicom+xml")
    r = HTTP.post(world["url"] + "/studies", content=body,
                  headers={"Content-Type": ct, "Accept": "application/dicom+xml"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+xml")
    assert b"00081199" in r.content
    found = HTTP.get(world["url"] + "/studies", params={"PatientID": "WIC-XML"}).json()
    assert found[0]["00100010"]["Value"][0]["Alphabetic"] == "Xml^Pat"
    # an entity in the metadata is never expanded
    evil = xml.replace(b"<NativeDicomModel>", b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><NativeDicomModel>'
                       ).replace(b"WIC-XML", b"&e;")
    body, ct = _wic_body(evil, [("img", "image/png", png(world["dir"] / "y.png").read_bytes())],
                         meta_type="application/dicom+xml")
    r = HTTP.post(world["url"] + "/studies", content=body, headers={"Content-Type": ct})
    assert b"root:" not in r.content
    assert not HTTP.get(world["url"] + "/studies", params={"PatientID": "root*"}).json()


def test_exif_reader_reads_what_pillow_wrote(tmp_path):
    from ihecli.wic.media import read_exif

    ex = read_exif(photo(tmp_path / "p.jpg", orientation=3, taken="2024:12:31 23:59:58").read_bytes())
    assert ex.taken == datetime(2024, 12, 31, 23, 59, 58) and ex.orientation == 3 and ex.make == "TestCam"


def test_upload_and_query_over_mutual_tls(tmp_path):
    """DICOMweb behind TLS with client certificates (ITI-19): wic upload with --cert/--ca gets in,
    a client without a certificate does not."""
    import ssl

    import trustme

    from ihecli.net import tls

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.issue_cert("wic-client").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    a = Archive(f"sqlite:///{tmp_path / 'i.db'}", tmp_path / "s")
    srv = DicomWebServer(a, ssl_context=tls.context(tls.TlsConfig(cert=str(tmp_path / "server.pem"),
                                                                  ca=str(tmp_path / "ca.pem")), server=True))
    srv.start()
    try:
        assert srv.base_url.startswith("https://")
        f = photo(tmp_path / "p.jpg")
        r = run_cli("wic", "upload", f, "--patient", "TLS1", "--url", srv.base_url, "--cert", tmp_path / "client.pem",
                    "--ca", tmp_path / "ca.pem", "--json")
        assert r.code == 0, r.stderr
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        ctx.load_cert_chain(str(tmp_path / "client.pem"))
        with httpx.Client(verify=ctx) as c:
            assert c.get(srv.base_url + "/studies", params={"PatientID": "TLS1"}).json()
        r = run_cli("wic", "upload", f, "--patient", "TLS1", "--url", srv.base_url, "--ca", tmp_path / "ca.pem")
        assert r.code == 4 and "ihe: error:" in r.stderr  # refused: no client certificate
    finally:
        srv.stop()
        a.close()


class _Part:
    def __init__(self, media, data):
        self.media, self.data = media, data

    def read(self):
        return self.data


def _image_bytes(mode: str, fmt: str, **save) -> bytes:
    size = (37, 23)
    if mode == "I;16":
        img = Image.fromarray((np.arange(23 * 37, dtype=np.uint16).reshape(23, 37) * 50).astype(np.uint16))
    else:
        img = Image.new(mode, size, {"L": 90, "RGB": (200, 10, 10), "RGBA": (1, 2, 3, 128), "CMYK": (0, 50, 50, 0),
                                     "P": 3}[mode])
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("media,data,sop_class,want", [
    ("image/jpeg", _image_bytes("L", "JPEG"), None, (VL_PHOTO, "MONOCHROME2", "1.2.840.10008.1.2.4.50")),
    ("image/jpeg", _image_bytes("RGB", "JPEG", progressive=True), None, (VL_PHOTO, "RGB", "1.2.840.10008.1.2.1")),
    ("image/jpeg", _image_bytes("CMYK", "JPEG"), None, (VL_PHOTO, "RGB", "1.2.840.10008.1.2.1")),
    ("image/jpeg", _image_bytes("RGB", "JPEG", subsampling=0), SC, (SC, "RGB", "1.2.840.10008.1.2.1")),
    ("image/jpeg", _image_bytes("RGB", "JPEG", subsampling=0), None, (VL_PHOTO, "RGB", "1.2.840.10008.1.2.1")),
    ("image/jpeg", _image_bytes("RGB", "JPEG"), SC, (SC, "YBR_FULL_422", "1.2.840.10008.1.2.4.50")),
    ("image/png", _image_bytes("I;16", "PNG"), None, (SC, "MONOCHROME2", "1.2.840.10008.1.2.1")),
    ("image/png", _image_bytes("RGBA", "PNG"), VL_PHOTO, (VL_PHOTO, "RGB", "1.2.840.10008.1.2.1")),
    ("image/png", _image_bytes("P", "PNG"), None, (SC, "RGB", "1.2.840.10008.1.2.1")),
], ids=["jpeg-grey", "jpeg-progressive", "jpeg-cmyk", "jpeg-444-sc", "jpeg-444", "jpeg-420-sc", "png-16bit",
        "png-alpha-vl", "png-palette"])
def test_conversions_pass_dciodvfy(world, tmp_path, media, data, sop_class, want):
    from ihecli.wic import convert
    from pydicom.dataset import Dataset

    meta = Dataset()
    meta.PatientID, meta.PatientName = "CONV1", "Conv^Test"
    if sop_class:
        meta.SOPClassUID = sop_class
    made = convert.instance_from_metadata(world["archive"], convert.Metadata(meta, {0x7FE00010: "x"}),
                                          {"x": _Part(media, data)})
    assert dciodvfy(made.data, tmp_path) == []
    ds = dcmread(io.BytesIO(made.data))
    assert (ds.SOPClassUID, ds.PhotometricInterpretation, ds.file_meta.TransferSyntaxUID) == want
    assert ds.pixel_array.shape[:2] == (23, 37)
    assert not made.coerced


UPLOAD_MEMORY = r"""
import re, sys
from ihecli.cli import main
code = main(sys.argv[1:])
# the peak of this process (ru_maxrss would count the test process it was forked from)
print(code, re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read()).group(1))
"""


def test_a_large_file_is_sent_from_disk(world, tmp_path):
    """A 200 MB PDF (a scanned record) is sent as it is read: the upload process stays far
    smaller than the file (it held the file and the request body built from it: twice its size),
    and the archive gets the document whole."""
    big = pdf(tmp_path / "scan.pdf")
    with open(big, "ab") as f:
        for _ in range(200):
            f.write(b"%" + b"0" * (1 << 20) + b"\n")  # PDF comment lines after the document
        f.write(b"%%EOF\n")
    size_kib = big.stat().st_size // 1024
    p = subprocess.run([sys.executable, "-c", UPLOAD_MEMORY, "wic", "upload", big, "--patient", "BIG1",
                        "--new-study", "--url", world["url"], "--json"], capture_output=True, text=True, timeout=300)
    code, peak_kib = map(int, p.stdout.split()[-2:])
    assert code == 0, p.stdout + p.stderr
    assert peak_kib < size_kib // 2, f"{peak_kib} KiB to send a {size_kib} KiB file"
    out = json.loads(p.stdout[:p.stdout.rindex("}") + 1])
    (made,) = out["created"]
    series = HTTP.get(made["url"] + "/metadata").json()[0]["0020000E"]["Value"][0]
    data, ds = fetch(world, out["study"], series, made["sop_instance_uid"])
    assert bytes(ds.EncapsulatedDocument).rstrip(b"\0") == big.read_bytes()


def test_the_service_comes_from_the_profile(world, tmp_path, monkeypatch):
    """[dicomweb] url of the profile is where wic upload sends, without --url."""
    import os

    monkeypatch.delenv("IHE_DICOMWEB_URL", raising=False)
    Path(os.environ["IHE_CONFIG"]).write_text(f'[dicomweb]\nurl = "{world["url"]}"\n')
    before = world["archive"].counts()["instances"]
    r = run_cli("wic", "upload", photo(tmp_path / "p.jpg"), "--patient", "WICP", "--new-study")
    assert r.code == 0, r.stderr
    assert world["archive"].counts()["instances"] == before + 1
    Path(os.environ["IHE_CONFIG"]).write_text('[dicomweb]\nurl = "pacs:8080"\n')
    r = run_cli("wic", "upload", photo(tmp_path / "q.jpg"), "--patient", "WICP")
    assert r.code == 2 and "url: must be an http:// or https:// URL" in r.stderr
