"""Part-10 bytes without pydicom: the element walk over an encoded header, the file meta, the
files of a selection.

Writing a medium from files needs neither pydicom nor the archive's index, and importing
pydicom and SQLAlchemy was most of the start-up of `ihe pdi burn` (and start-up is part of the
command's time). So the media code walks headers here, imports pydicom only for what is unusual
(text in other character sets, non-image records, objects to convert) and the archive only when
it reads from or stores to it. The walk is the archive's (ihecli.archive.scan, whose package
loads SQLAlchemy), kept to what a medium's header read needs; tests/test_pdi_part10.py holds
the two to the same answers element by element.
"""
from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ihecli import __version__
from ihecli.errors import UsageError

# PS3.5 7.1.2: the VRs with a 4-byte length after two reserved bytes; every other VR has 2 bytes
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
             b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
META_UIDS = {0x00020002: "MediaStorageSOPClassUID", 0x00020003: "MediaStorageSOPInstanceUID",
             0x00020010: "TransferSyntaxUID"}

# the implementation identity of the files this software writes (as ihecli.archive.ingest has it)
IMPLEMENTATION_VERSION = "IHE_" + __version__.replace(".", "")[:12]
IMPLEMENTATION_UID = "2.25.%d" % uuid.uuid5(uuid.NAMESPACE_URL, "urn:ihecli:implementation").int

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag = struct.Struct("<HH").unpack_from


class Odd(Exception):
    """Something the walk does not handle: let pydicom read it."""


class Truncated(Exception):
    """An element runs past the end of the data."""


def looks_like_dicom(data: bytes) -> bool:
    """Part-10 files, and bare datasets starting with a group 0002/0008 element."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[0:2] in (b"\x02\x00", b"\x08\x00") and data[1] == 0


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """The files of the given files and folders (folders walked in name order)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for f in sorted(filenames):
                    yield Path(dirpath) / f
        elif p.exists():
            yield p
        else:
            raise UsageError(f"{p}: no such file or folder")


def element(data: bytes, pos: int, implicit: bool, depth: int = 0):
    """(tag, next position, (vr, value start, length)) of the element at pos."""
    group, elem = _tag(data, pos)
    tag = (group << 16) | elem
    if implicit or group == 0xFFFE:
        length = _u32(data, pos + 4)[0]
        start = pos + 8
        vr = None
    else:
        vr = data[pos + 4:pos + 6]
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise Odd("not an explicit VR")  # e.g. implicit VR in an explicit-VR file
        if vr in LONG_VRS:
            length = _u32(data, pos + 8)[0]
            start = pos + 12
        else:
            length = _u16(data, pos + 6)[0]
            start = pos + 8
    if length == UNDEFINED:
        # a sequence (or UN holding an implicit-VR one), or encapsulated Pixel Data
        inner_implicit = implicit or vr == b"UN"
        return tag, _skip_undefined(data, start, inner_implicit, depth), (vr, start, length)
    end = start + length
    if end > len(data):
        raise Truncated(f"element ({group:04X},{elem:04X}) runs past the end of the data")
    return tag, end, (vr, start, length)


def _skip_undefined(data: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Position after the Sequence Delimitation Item closing a sequence that starts at pos."""
    if depth > 32:
        raise Odd("sequences nested too deep")
    n = len(data)
    while pos + 8 <= n:
        group, elem = _tag(data, pos)
        tag = (group << 16) | elem
        length = _u32(data, pos + 4)[0]
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise Odd("no item in sequence")
        if length != UNDEFINED:
            pos += length
            continue
        pos = _skip_item(data, pos, implicit, depth + 1)
    raise Truncated("a sequence runs past the end of the data")


def _skip_item(data: bytes, pos: int, implicit: bool, depth: int) -> int:
    """Position after the Item Delimitation Item of an item of undefined length."""
    n = len(data)
    while pos + 8 <= n:
        group, elem = _tag(data, pos)
        if (group << 16) | elem == ITEM_END:
            return pos + 8
        _, pos, _ = element(data, pos, implicit, depth)
    raise Truncated("an item runs past the end of the data")


def meta_uids(data: bytes) -> tuple[dict[str, str], int] | None:
    """The file meta UIDs of a Part-10 byte string, by keyword, and where the dataset starts
    (None: not Part 10)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    pos = 132
    meta: dict[str, str] = {}
    while pos + 8 <= len(data) and _tag(data, pos)[0] == 0x0002:
        try:  # file meta is always explicit VR little endian
            tag, nxt, (_vr, start, length) = element(data, pos, False)
        except (Odd, Truncated):
            return None
        if length == UNDEFINED:
            return None
        if tag in META_UIDS:
            meta[META_UIDS[tag]] = data[start:start + length].decode("ascii", "replace").strip("\x00 ")
        pos = nxt
    return meta, pos


def encode_element(tag: int, vr: str, value: bytes) -> bytes:
    """One element in Explicit VR Little Endian, its value padded to even length."""
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr.encode("ascii") in LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def file_meta(sop_class: str, sop_uid: str, transfer_syntax: str = EXPLICIT_LE) -> bytes:
    """Preamble, DICM and the File Meta Information (PS3.10 7.1) of a file this software writes."""
    body = b"".join((
        encode_element(0x00020001, "OB", b"\x00\x01"),
        encode_element(0x00020002, "UI", sop_class.encode("ascii")),
        encode_element(0x00020003, "UI", sop_uid.encode("ascii")),
        encode_element(0x00020010, "UI", transfer_syntax.encode("ascii")),
        encode_element(0x00020012, "UI", IMPLEMENTATION_UID.encode("ascii")),
        encode_element(0x00020013, "SH", IMPLEMENTATION_VERSION.encode("ascii")),
    ))
    return b"\x00" * 128 + b"DICM" + encode_element(0x00020000, "UL", struct.pack("<I", len(body))) + body


def new_uid() -> str:
    """A new UID under 2.25 (PS3.5 B.2: the decimal form of a random UUID)."""
    return f"2.25.{uuid.uuid4().int}"
