"""Web-based Image Capture, capture side (RAD-108 Store Instances over the Web, as a WIC
Image Capturer): photos, videos and PDFs sent as DICOM JSON metadata plus bulk data parts
(multipart/related; type="application/dicom+json"), for the Image Manager to convert.

Photos: EXIF DateTimeOriginal becomes the acquisition date and time; a photo whose EXIF
Orientation is not upright is turned upright (re-encoded at high quality) before it is sent,
since DICOM has no orientation flag for photographs.

The multipart/related body is written by hand (a few lines); requests sends it, on a
connection with TCP_NODELAY.
"""
from __future__ import annotations

import io
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from pydicom.uid import generate_uid

from ihecli.errors import IheError, PeerUnreachable, UsageError
from ihecli.wic.media import kind_of, read_exif

DEFAULT_URL = "http://127.0.0.1:8080/dicom-web"
NAMES = {"1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
         "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
         "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
         "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF"}


@dataclass
class Created:
    file: str
    sop_class: str
    sop_uid: str
    url: str
    coerced: bool = False

    @property
    def kind(self) -> str:
        return NAMES.get(self.sop_class, self.sop_class)


@dataclass
class UploadReport:
    url: str
    status: int = 0
    study_uid: str = ""
    created: list[Created] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # file, sop_uid, reason
    warning: str = ""


@dataclass
class Capture:
    """One file to send: its media type and metadata, and its bytes (a photo, read whole for its
    EXIF and turned upright) or None (a video or PDF, sent from the file as it is)."""

    path: Path
    media: str
    data: bytes | None
    meta: dict
    size: int = 0

    def __post_init__(self):
        if self.data is not None:
            self.size = len(self.data)


def _pn(text: str | None):
    return [{"Alphabetic": text}] if text else None


def _attr(vr: str, value) -> dict:
    if value is None or value == "" or value == []:
        return {"vr": vr}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def _upright(data: bytes, orientation: int) -> bytes:
    """The photo turned upright as its EXIF Orientation says, re-encoded (quality 95)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        fixed = ImageOps.exif_transpose(img)
        buf = io.BytesIO()
        exif = fixed.getexif()
        exif[0x0112] = 1
        fixed.convert("RGB" if fixed.mode not in ("L", "RGB") else fixed.mode).save(
            buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


SEXES = ("M", "F", "O")  # PS3.3 C.7.1.1 Patient's Sex


def check_sex(sex: str | None) -> str | None:
    """Patient's Sex as DICOM has it (M, F or O; any case), else UsageError."""
    if sex is None or not sex.strip():
        return None
    s = sex.strip().upper()
    if s not in SEXES:
        raise UsageError(f"bad --sex {sex!r}: give M, F or O")
    return s


def check_birth_date(birth_date: str | None) -> str | None:
    """A birth date as DICOM DA (YYYYMMDD) from YYYYMMDD or YYYY-MM-DD, a real day, else UsageError."""
    import re

    if birth_date is None or not birth_date.strip():
        return None
    d = birth_date.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
        d = d.replace("-", "")
    try:
        if not re.fullmatch(r"\d{8}", d):
            raise ValueError("not 8 digits")
        datetime.strptime(d, "%Y%m%d")
    except ValueError:
        raise UsageError(f"bad --birth-date {birth_date!r}: give a real day as YYYYMMDD (or YYYY-MM-DD)") from None
    return d


def check_uid(uid: str | None, option: str) -> str | None:
    """A DICOM UID (PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters), else UsageError."""
    import re

    if uid is None:
        return None
    u = uid.strip()
    if len(u) > 64 or not re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*", u):
        raise UsageError(f"bad {option} {uid!r}: a UID is digits and dots (e.g. 1.2.840.113619.2.55.3.1), "
                         "at most 64 characters, no leading zeros")
    return u


def prepare(files: list[Path], *, patient: str, name: str | None = None, birth_date: str | None = None,
            sex: str | None = None, study: str | None = None, accession: str | None = None, new_study: bool = False,
            description: str | None = None) -> list[Capture]:
    """Read the files and build each one's metadata (UsageError for what cannot be sent)."""
    if not patient or not patient.strip():
        raise UsageError("--patient ID is required")
    if sum(bool(x) for x in (study, accession, new_study)) != 1:
        raise UsageError("give one of --study UID, --accession ACC or --new-study")
    sex, birth_date = check_sex(sex), check_birth_date(birth_date)
    study = check_uid(study, "--study")
    if not files:
        raise UsageError("no files to upload")
    study_uid = study or (generate_uid() if new_study else None)
    series: dict[str, str] = {}
    out = []
    for n, path in enumerate(files, 1):
        try:
            with open(path, "rb") as fh:
                data = fh.read(64)
                media = kind_of(data)
                size = os.fstat(fh.fileno()).st_size
                if media in ("image/jpeg", "image/png"):  # photos: read whole (EXIF, turning upright)
                    data += fh.read()
                else:  # videos and PDFs, which may be gigabytes, go from the file as they are
                    data = None
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
        if media is None:
            raise UsageError(f"{path}: not a JPEG or PNG photo, an MP4 video or a PDF")
        m: dict = {
            "00100020": _attr("LO", patient),
            "00100010": _attr("PN", _pn(name)),
            "00100030": _attr("DA", birth_date),
            "00100040": _attr("CS", sex),
            "00200013": _attr("IS", n),
            "00080018": _attr("UI", generate_uid()),
        }
        if study_uid:
            m["0020000D"] = _attr("UI", study_uid)
        if accession:
            m["00080050"] = _attr("SH", accession)
        if description:
            m["00081030"] = _attr("LO", description)
        kind = "photo" if media.startswith("image/") else media
        series.setdefault(kind, generate_uid())
        m["0020000E"] = _attr("UI", series[kind])
        m["00200011"] = _attr("IS", list(series).index(kind) + 1)
        if media == "application/pdf":
            m["00420010"] = _attr("ST", Path(path).stem[:64])
            m["00420011"] = {"vr": "OB", "BulkDataURI": f"bulk/{n}"}
        else:
            m["7FE00010"] = {"vr": "OB", "BulkDataURI": f"bulk/{n}"}
        if media in ("image/jpeg", "image/png"):
            ex = read_exif(data)
            if ex.taken:
                m["0008002A"] = _attr("DT", ex.taken.strftime("%Y%m%d%H%M%S"))
                m["00080023"] = _attr("DA", ex.taken.strftime("%Y%m%d"))
                m["00080033"] = _attr("TM", ex.taken.strftime("%H%M%S"))
            if media == "image/jpeg" and ex.orientation != 1:
                try:
                    data = _upright(data, ex.orientation)
                except Exception as e:  # Pillow's OSError or ValueError on a cut or damaged file
                    raise UsageError(f"{path}: a damaged JPEG photo ({e}); nothing was sent") from None
                m["00204000"] = _attr("LT", f"turned upright from EXIF orientation {ex.orientation}")
        out.append(Capture(Path(path), media, data, m, size))
    if new_study:  # the new study's date: the earliest acquisition among the files
        dates = sorted(c.meta["0008002A"]["Value"][0] for c in out if "Value" in c.meta.get("0008002A", {}))
        when = dates[0] if dates else datetime.now().strftime("%Y%m%d%H%M%S")
        for c in out:
            c.meta["00080020"] = _attr("DA", when[:8])
            c.meta["00080030"] = _attr("TM", when[8:14])
    return out


class Body:
    """A multipart/related body read as it is sent (a file-like object with a length, so that
    requests sends it with a Content-Length): files are read a block at a time, never held."""

    def __init__(self, parts: list[bytes | Capture]):
        self._parts = parts
        self._len = sum(len(p) if isinstance(p, bytes) else p.size for p in parts)
        self._k = 0  # the part being read
        self._file = None  # its file, for a part sent from its file
        self._buf = memoryview(b"")  # what is read of it and not yet sent
        self._off = 0

    def __len__(self) -> int:
        return self._len

    def _refill(self) -> bool:
        """The next bytes into the buffer; False at the end of the body."""
        while self._k < len(self._parts):
            part = self._parts[self._k]
            if isinstance(part, bytes) or part.data is not None:
                self._buf, self._off = memoryview(part if isinstance(part, bytes) else part.data), 0
                self._k += 1
                return True
            if self._file is None:
                self._file = open(part.path, "rb")
            block = self._file.read(1 << 20)
            if block:
                self._buf, self._off = memoryview(block), 0
                return True
            self._file.close()
            self._file = None
            self._k += 1
        return False

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._off >= len(self._buf) and not self._refill():
                break
            end = len(self._buf) if n < 0 else min(len(self._buf), self._off + n - len(out))
            out += self._buf[self._off:end]
            self._off = end
        return bytes(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def body_of(captures: list[Capture]) -> tuple[Body, str]:
    """(multipart/related body, Content-Type) of metadata and bulk data parts."""
    boundary = uuid.uuid4().hex
    parts: list[bytes | Capture] = [f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode(),
                                    json.dumps([c.meta for c in captures]).encode(), b"\r\n"]
    for n, c in enumerate(captures, 1):
        parts += [f"--{boundary}\r\nContent-Type: {c.media}\r\nContent-Location: bulk/{n}\r\n\r\n".encode(),
                  c, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    ctype = f'multipart/related; type="application/dicom+json"; boundary={boundary}'
    return Body(parts), ctype


def _session(ssl_context=None):
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection

    class NoDelay(HTTPAdapter):
        def init_poolmanager(self, *a, **kw):
            kw["socket_options"] = HTTPConnection.default_socket_options + [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            if ssl_context is not None:  # the TLS options' context (ITI-19): floor, CA, our certificate
                kw["ssl_context"] = ssl_context
            return super().init_poolmanager(*a, **kw)

    s = requests.Session()
    s.mount("http://", NoDelay())
    s.mount("https://", NoDelay())
    return s


def store_instances_over_web(url: str, captures: list[Capture], *, timeout: float = 60, ssl_context=None,
                             progress: Callable[[int], None] | None = None) -> UploadReport:
    """Send captures to a STOW-RS service (RAD-108) and report what it created."""
    import requests

    url = url.rstrip("/")
    target = url + "/studies"
    body, ctype = body_of(captures)
    rep = UploadReport(url=target)
    try:
        with _session(ssl_context) as s:
            r = s.post(target, data=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
                       timeout=timeout)
    except requests.exceptions.SSLError as e:
        raise PeerUnreachable(f"TLS with {target} failed: {_short(e)}") from None
    except requests.ConnectionError as e:
        raise PeerUnreachable(f"cannot reach {target}: {_short(e)}") from None
    except requests.Timeout:
        raise PeerUnreachable(f"{target} did not answer within {timeout:g} s") from None
    except OSError as e:  # not requests' own: a file that went away while it was sent
        if isinstance(e, requests.RequestException):
            raise
        raise IheError(f"cannot read {getattr(e, 'filename', None) or 'a file'} while sending it: "
                       f"{e.strerror or e}; the request was cut short, nothing of it stored") from None
    finally:
        body.close()
    rep.status = r.status_code
    rep.warning = r.headers.get("Warning", "")
    if progress:
        progress(len(captures))
    by_uid = {c.meta["00080018"]["Value"][0]: c for c in captures}
    try:
        doc = r.json() if r.content else {}
    except ValueError:
        doc = None
    if r.status_code not in (200, 202, 409) or not isinstance(doc, dict):
        text = r.text.strip().splitlines()[0][:300] if r.text.strip() else r.reason
        raise IheError(f"{target} answered {r.status_code}: {text}")
    for item in doc.get("00081199", {}).get("Value", []):
        uid = _v(item, "00081155")
        c = by_uid.get(uid)
        rep.created.append(Created(str(c.path) if c else "", _v(item, "00081150"), uid, _v(item, "00081190"),
                                   "00081196" in item))
    said = warning_text(rep.warning)
    for item in doc.get("00081198", {}).get("Value", []):
        uid = _v(item, "00081155")
        c = by_uid.get(uid)
        reason = _v(item, "00081197")
        code = int(reason) if reason.isdigit() else None
        # the item's own comment if the server gives one, else what its Warning header said of the request
        text = _v(item, "00000902") or said
        rep.failed.append({"file": str(c.path) if c else "", "sop_uid": uid,
                           "reason": f"0x{code:04X}" if code is not None else reason,
                           "meaning": failure_meaning(code), "text": text})
    retrieve = _v(doc, "00081190")
    rep.study_uid = retrieve.rsplit("/studies/", 1)[-1] if "/studies/" in retrieve else ""
    return rep


# Failure Reason (0008,1197) of a STOW-RS answer: PS3.18 Table 10.5.3-3, PS3.4 Annex GG
FAILURE_REASONS = {0x0110: "processing failure", 0x0122: "SOP Class not supported",
                   0x0124: "not authorized", 0xC122: "transfer syntax not supported"}


def failure_meaning(code: int | None) -> str:
    """The standard's words for a Failure Reason: exact codes, else its class (A7xx, A9xx, Cxxx)."""
    if code is None:
        return ""
    if code in FAILURE_REASONS:
        return FAILURE_REASONS[code]
    return {0xA7: "out of resources", 0xA9: "data set does not match SOP Class"}.get(code >> 8) \
        or ("cannot understand" if code >> 12 == 0xC else "")


def warning_text(header: str) -> str:
    """The texts of an HTTP Warning header (RFC 7234 5.5: ``299 agent "text"``, several comma-separated),
    unquoted; the header as it is when it has no quoted text."""
    import re

    texts = []
    for m in re.finditer(r'\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"', header or ""):
        try:
            texts.append(json.loads(f'"{m.group(1)}"'))
        except ValueError:
            texts.append(m.group(1))
    return "; ".join(t.strip() for t in texts if t.strip()) or (header or "").strip()


def _v(item: dict, tag: str) -> str:
    vals = (item.get(tag) or {}).get("Value") or [""]
    return "" if vals[0] is None else str(vals[0])


def _short(e: Exception) -> str:
    text = str(e)
    if "Connection refused" in text:
        return "connection refused"
    return text.split("(Caused by")[-1].strip(" )")[:200]


def upload(url: str, files: list[Path], **context) -> UploadReport:
    """Read photos, videos and PDFs and store them through STOW-RS (RAD-108) with their context."""
    timeout = context.pop("timeout", 60)
    ssl_context = context.pop("ssl_context", None)
    return store_instances_over_web(url, prepare(files, **context), timeout=timeout, ssl_context=ssl_context)
