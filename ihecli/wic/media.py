"""What the captured media say about themselves: the kind of a file (by its first bytes), EXIF
acquisition time and orientation of photos (Pillow), and the picture description of MP4 videos.

The MP4 reader is hand-written (a walk over ISO BMFF boxes: tkhd, mdhd, stsz, avcC): no
maintained library among the project's dependencies reads MP4 headers.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from datetime import datetime


def kind_of(data: bytes) -> str | None:
    """The media type of captured content by its magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:5] == b"%PDF-":
        return "application/pdf"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "video/mp4"
    return None


@dataclass
class Exif:
    taken: datetime | None = None  # DateTimeOriginal (else DateTime)
    orientation: int = 1  # 1 upright .. 8
    make: str = ""
    model: str = ""


def read_exif(data: bytes) -> Exif:
    """EXIF of a JPEG (or PNG) photo; empty when there is none or it is unreadable."""
    from PIL import Image

    out = Exif()
    try:
        with Image.open(io.BytesIO(data)) as img:
            ex = img.getexif()
    except Exception:
        return out
    if not ex:
        return out
    try:
        sub = ex.get_ifd(0x8769)  # the Exif sub-IFD holds DateTimeOriginal
    except Exception:
        sub = {}
    for text in (sub.get(0x9003), sub.get(0x9004), ex.get(0x0132)):  # original, digitized, file change
        if text:
            try:
                out.taken = datetime.strptime(str(text).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
                break
            except ValueError:
                continue
    try:
        out.orientation = int(ex.get(0x0112, 1) or 1)
    except (TypeError, ValueError):
        out.orientation = 1
    if not 1 <= out.orientation <= 8:
        out.orientation = 1
    out.make = str(ex.get(0x010F, "") or "").strip("\x00 ")
    out.model = str(ex.get(0x0110, "") or "").strip("\x00 ")
    return out


@dataclass
class VideoInfo:
    width: int
    height: int
    frames: int
    frame_time_ms: float  # milliseconds per frame
    profile: int  # AVC profile_idc (66 baseline, 77 main, 100 high), 0 unknown
    level: int  # AVC level_idc x10 (41 = 4.1), 0 unknown
    codec: str  # sample entry: avc1, hvc1, ...


class MediaError(ValueError):
    pass


def _boxes(data: memoryview, start: int, end: int):
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        head = 8
        if size == 1:
            if i + 16 > end:
                raise MediaError("truncated MP4 box")
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
            head = 16
        elif size == 0:
            size = end - i
        if size < head or i + size > end:
            raise MediaError("truncated or malformed MP4 box")
        yield kind.decode("latin-1"), i + head, i + size
        i += size


def read_mp4(data: bytes) -> VideoInfo:
    """Picture size, frame count and rate, and codec of the first video track of an MP4 file."""
    mv = memoryview(data)
    moov = next(((s, e) for k, s, e in _boxes(mv, 0, len(mv)) if k == "moov"), None)
    if moov is None:
        raise MediaError("not an MP4 file with a movie header (no moov box)")
    for kind, s, e in _boxes(mv, *moov):
        if kind != "trak":
            continue
        info = _track(mv, s, e)
        if info is not None:
            return info
    raise MediaError("the MP4 file has no video track")


def _find(mv, s, e, path: list[str]):
    for kind, cs, ce in _boxes(mv, s, e):
        if kind == path[0]:
            return (cs, ce) if len(path) == 1 else _find(mv, cs, ce, path[1:])
    return None


def _track(mv, s, e) -> VideoInfo | None:
    hdlr = _find(mv, s, e, ["mdia", "hdlr"])
    if hdlr is None or bytes(mv[hdlr[0] + 8:hdlr[0] + 12]) != b"vide":
        return None
    tkhd = _find(mv, s, e, ["tkhd"])
    mdhd = _find(mv, s, e, ["mdia", "mdhd"])
    stsd = _find(mv, s, e, ["mdia", "minf", "stbl", "stsd"])
    stsz = _find(mv, s, e, ["mdia", "minf", "stbl", "stsz"])
    if not (tkhd and mdhd and stsd and stsz):
        raise MediaError("the MP4 video track lacks tkhd, mdhd, stsd or stsz")
    ver = mv[tkhd[0]]
    off = tkhd[0] + (24 if ver == 0 else 36) + 8 + 2 + 2 + 2 + 2 + 36  # to width, height (16.16)
    width, height = struct.unpack(">II", mv[off:off + 8])
    width, height = width >> 16, height >> 16
    ver = mv[mdhd[0]]
    if ver == 0:
        timescale, duration = struct.unpack(">II", mv[mdhd[0] + 12:mdhd[0] + 20])
    else:
        timescale, duration = struct.unpack(">IQ", mv[mdhd[0] + 20:mdhd[0] + 32])
    frames = struct.unpack(">I", mv[stsz[0] + 8:stsz[0] + 12])[0]
    # stsd: version/flags, entry count, then sample entries (a VisualSampleEntry holds width/height too)
    codec, profile, level = "", 0, 0
    entries = list(_boxes(mv, stsd[0] + 8, stsd[1]))
    if entries:
        codec, es, ee = entries[0]
        w2, h2 = struct.unpack(">HH", mv[es + 24:es + 28])
        width, height = width or w2, height or h2
        for k, cs, ce in _boxes(mv, es + 78, ee):
            if k == "avcC" and ce - cs >= 4:
                profile, level = mv[cs + 1], mv[cs + 3]
    if not (width and height and frames and timescale):
        raise MediaError("the MP4 video track has no picture size, frames or time scale")
    return VideoInfo(width, height, frames, 1000.0 * duration / timescale / frames, profile, level, codec)
