"""What the DICOMweb services share: errors, Accept negotiation, multipart/related bodies,
UID checks in URLs, and JSON (PS3.18 F.2) for datasets with bulk data URIs.

multipart/related is written here by hand (a few lines: no maintained ASGI library writes
it as a stream); it is read with python-multipart's streaming parser (see ``stow``).
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse

from ihecli.archive.ingest import UID_RE

DICOM_JSON = "application/dicom+json"
CHUNK = 1 << 16


class WebError(HTTPException):
    """An HTTP error with one clear line for the client (sent as text/plain)."""

    def __init__(self, status: int, message: str):
        super().__init__(status_code=status, detail=message)


def check_uid(uid: str, what: str = "UID") -> str:
    """A UID from a URL: digits and dots only (never a path)."""
    if not uid or len(uid) > 64 or not UID_RE.match(uid):
        raise WebError(400, f"bad {what} in the URL: {uid[:80]!r}")
    return uid


@dataclass
class MediaRange:
    type: str  # "multipart/related", "application/dicom", "*/*" ...
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str:
        """For multipart/related: the type parameter (the parts' media type)."""
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def split_params(text: str) -> list[str]:
    """Split on ';' outside double quotes."""
    out, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [x.strip() for x in out]


def parse_media_type(text: str) -> MediaRange:
    items = split_params(text)
    mr = MediaRange(items[0].strip().lower())
    for p in items[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            k = k.strip().lower()
            v = v.strip().strip('"')
            if k == "q":
                try:
                    mr.q = float(v)
                except ValueError:
                    mr.q = 0.0
            else:
                mr.params[k] = v
    return mr


def parse_accept(header: str | None) -> list[MediaRange]:
    """The Accept header's media ranges, best first (none given: */*)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    out = []
    # commas separate ranges; quoted parameter values never hold commas in DICOMweb media types
    for part in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", header):
        if part.strip():
            out.append(parse_media_type(part))
    out.sort(key=lambda m: -m.q)
    return [m for m in out if m.q > 0]


def accept_param_override(request, accept: str | None) -> str | None:
    """The ``accept`` query parameter (PS3.18 8.3.3.1) wins over the header."""
    q = request.query_params.get("accept")
    return q if q else accept


def text_error(status: int, message: str) -> Response:
    return Response(message.rstrip() + "\n", status_code=status, media_type="text/plain; charset=utf-8")


def json_response(obj, status: int = 200, headers: dict | None = None, media_type: str = DICOM_JSON) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status, media_type=media_type, headers=headers)


# -- multipart/related -------------------------------------------------------------------------
class Part:
    """One part of a multipart body to send: headers and a byte source (bytes, a path, or chunks)."""

    def __init__(self, content_type: str, body: bytes | None = None, path=None, chunks: Iterable[bytes] | None = None,
                 location: str | None = None):
        self.content_type, self.body, self.path, self.chunks, self.location = content_type, body, path, chunks, location

    def iter_bytes(self) -> Iterator[bytes]:
        if self.body is not None:
            yield self.body
        elif self.path is not None:
            with open(self.path, "rb") as fh:
                while True:
                    b = fh.read(4 << 20)
                    if not b:
                        break
                    yield b
        elif self.chunks is not None:
            yield from self.chunks


def multipart_response(parts: Iterable[Part], part_type: str, status: int = 200,
                       extra_params: str = "") -> StreamingResponse:
    """A multipart/related response streamed part by part (files are never read whole)."""
    boundary = uuid.uuid4().hex

    def gen() -> Iterator[bytes]:
        # one chunk per part where it is small: each chunk of a sync generator costs a thread hop
        tail = b""
        for p in parts:
            head = f"--{boundary}\r\nContent-Type: {p.content_type}\r\n"
            if p.location:
                head += f"Content-Location: {p.location}\r\n"
            pending = tail + (head + "\r\n").encode("ascii")
            for chunk in p.iter_bytes():
                if pending:
                    chunk, pending = pending + chunk, b""
                yield chunk
            if pending:
                yield pending
            tail = b"\r\n"
        yield tail + f"--{boundary}--\r\n".encode("ascii")

    media = f'multipart/related; type="{part_type}"; boundary={boundary}{extra_params}'
    return StreamingResponse(gen(), status_code=status, media_type=media)


# -- JSON with bulk data URIs -----------------------------------------------------------------
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024


def element_paths(ds: Dataset, prefix: str = "") -> dict[int, str]:
    """id(element) -> its bulk data path (tag/item/tag...) for every binary element."""
    out: dict[int, str] = {}
    for elem in ds:
        tag = f"{int(elem.tag):08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                out.update(element_paths(item, f"{prefix}{tag}/{i}/"))
        elif elem.VR in BULK_VRS:
            out[id(elem)] = prefix + tag
    return out


_NUMBERS = {"IS": int, "DS": float, "US": int, "UL": int, "SS": int, "SL": int, "UV": int, "SV": int, "FL": float,
            "FD": float}
_STRINGS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _json_value(vr: str, v):
    if vr in _NUMBERS:
        if isinstance(v, (int, float)):
            return v
        text = str(v).strip()
        try:
            n = float(text) if vr in ("DS", "FL", "FD") else int(text)
        except ValueError:
            raise TypeError(f"not a number: {text!r}") from None
        return int(n) if vr == "DS" and n.is_integer() and "." not in text and "e" not in text.lower() else n
    if vr == "PN":
        groups = str(v).split("=")
        out = {}
        for name, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups):
            if g:
                out[name] = g
        return out
    return str(v)


def flat_json(ds: Dataset) -> dict | None:
    """DICOM JSON of a dataset of plain text and number values (query answers), written directly:
    pydicom's to_json_dict costs several times more. None when an element needs pydicom."""
    out = {}
    for elem in ds.elements():  # in tag order, values as they are (no conversion of raw elements)
        if not isinstance(elem, DataElement):
            return None
        vr = elem.VR
        if vr not in _STRINGS and vr not in _NUMBERS and vr != "PN":
            return None
        v = elem.value
        tag = f"{int(elem.tag):08X}"
        multi = isinstance(v, (list, tuple, MultiValue))
        if v is None or v == "" or multi and not len(v):
            out[tag] = {"vr": vr}
            continue
        values = list(v) if multi else [v]
        try:
            out[tag] = {"vr": vr, "Value": [None if x is None or x == "" else _json_value(vr, x) for x in values]}
        except TypeError:
            return None
    return out


def to_json(ds: Dataset, bulk_base: str | None = None, threshold: int = BULK_THRESHOLD) -> dict:
    """A dataset as DICOM JSON; binary values over ``threshold`` bytes become BulkDataURIs under
    ``bulk_base`` (the instance's URL + /bulkdata/), or are left out when there is no base."""
    paths = element_paths(ds) if bulk_base else {}

    def handler(elem: DataElement) -> str:
        return f"{bulk_base}{paths.get(id(elem), f'{int(elem.tag):08X}')}"

    try:
        if bulk_base:
            return ds.to_json_dict(threshold, handler)
        return ds.to_json_dict(threshold, lambda e: "")
    except Exception:  # a value pydicom cannot render: drop the offending elements one by one
        out = {}
        for elem in ds:
            sub = Dataset()
            sub.add(elem)
            try:
                out.update(sub.to_json_dict(threshold, handler if bulk_base else (lambda e: "")))
            except Exception:
                continue
        return out
