"""A fast scan of an encoded dataset for the few elements the index needs.

Written by hand because pydicom's reader builds an element object for each of the hundreds of
elements in a header (about 1 ms for a CT header), while ingest needs about twenty values and
the offset of Pixel Data. This walks the top-level elements by their lengths only (little
endian, explicit or implicit VR, nested sequences of defined or undefined length) and hands
the wanted raw elements to pydicom for decoding. Anything unusual returns None and the caller
falls back to pydicom.
"""
from __future__ import annotations

import os
import struct

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# the VRs with a 2-byte length (PS3.5 7.1.2)
VALID_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
             b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
IMPLICIT_LE = "1.2.840.10008.1.2"
LITTLE_ENDIAN_TS_EXPLICIT_OK = {"1.2.840.10008.1.2.1"}
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag = struct.Struct("<HH").unpack_from

WANTED_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "SeriesDate", "ContentDate",
    "StudyTime", "SeriesTime", "ContentTime", "AccessionNumber", "Modality", "ReferringPhysicianName",
    "StudyDescription", "SeriesDescription", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID",
    "StudyID", "SeriesNumber", "InstanceNumber",
)
WANTED = {int(Tag(k)): k for k in WANTED_KEYWORDS}
CHARSET_TAG = 0x00080005
TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}


class _Odd(Exception):
    """Something this scanner does not handle: let pydicom read it."""


class Truncated(Exception):
    """An element runs past the end of the data."""


META_UIDS = {0x00020002: "MediaStorageSOPClassUID", 0x00020003: "MediaStorageSOPInstanceUID",
             0x00020010: "TransferSyntaxUID"}


def meta_uids(data: bytes) -> tuple[dict[str, str], int] | None:
    """The file meta UIDs of a Part-10 byte string, by keyword, and where the dataset starts
    (None: not Part 10)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    pos = 132
    meta: dict[str, str] = {}
    while pos + 8 <= len(data) and _tag(data, pos)[0] == 0x0002:
        try:  # file meta is always explicit VR little endian
            tag, nxt, (_vr, start, length) = _element(data, pos, False)
        except (_Odd, Truncated):
            return None
        if length == UNDEFINED:
            return None
        if tag in META_UIDS:
            meta[META_UIDS[tag]] = data[start:start + length].decode("ascii", "replace").strip("\x00 ")
        pos = nxt
    return meta, pos


def read_meta(data: bytes) -> tuple[FileMetaDataset, int] | None:
    """As meta_uids, with the UIDs in a pydicom FileMetaDataset."""
    got = meta_uids(data)
    if got is None:
        return None
    uids, pos = got
    meta = FileMetaDataset()
    for keyword, value in uids.items():
        setattr(meta, keyword, value)
    return meta, pos


def _skip_undefined(data: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Position after the Sequence Delimitation Item closing a sequence that starts at pos."""
    if depth > 32:
        raise _Odd("sequences nested too deep")
    n = len(data)
    while pos + 8 <= n:
        group, elem = _tag(data, pos)
        tag = (group << 16) | elem
        length = _u32(data, pos + 4)[0]
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise _Odd("no item in sequence")
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
        tag = (group << 16) | elem
        if tag == ITEM_END:
            return pos + 8
        _, pos, _ = _element(data, pos, implicit, depth)
    raise Truncated("an item runs past the end of the data")


def _element(data: bytes, pos: int, implicit: bool, depth: int = 0):
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
            raise _Odd("not an explicit VR")  # e.g. implicit VR in an explicit-VR file
        if vr in LONG_VRS:
            length = _u32(data, pos + 8)[0]
            start = pos + 12
        else:
            length = _u16(data, pos + 6)[0]
            start = pos + 8
    if length == UNDEFINED:
        if tag == PIXEL_DATA:  # encapsulated: fragments are items of defined length
            return tag, _skip_undefined(data, start, implicit, depth), (vr, start, length)
        # SQ, or UN holding an implicit-VR sequence
        inner_implicit = implicit or vr == b"UN"
        return tag, _skip_undefined(data, start, inner_implicit, depth), (vr, start, length)
    end = start + length
    if end > len(data):
        raise Truncated(f"element ({group:04X},{elem:04X}) runs past the end of the data")
    return tag, end, (vr, start, length)


def scan(data: bytes):
    """(wanted values decoded, by keyword; file meta UIDs by keyword; offset of Pixel Data or
    end) or None.

    Raises Truncated when an element (Pixel Data included) runs past the end.
    """
    got = meta_uids(data)
    if got is None:
        return None
    meta, pos = got
    ts = meta.get("TransferSyntaxUID", "")
    if ts == IMPLICIT_LE:
        implicit = True
    elif ts and ts != "1.2.840.10008.1.2.2" and ts != "1.2.840.10008.1.2.1.99":
        implicit = False  # explicit VR little endian, and every compressed syntax
    else:
        return None
    raw = {}
    n = len(data)
    tag_at, u16, u32, wanted, long_vrs, vrs_ok = _tag, _u16, _u32, WANTED, LONG_VRS, VALID_VRS
    try:
        while pos + 8 <= n:
            # the common element inline (defined length, not an item, not Pixel Data): a CT
            # header has hundreds of them, and a function call each was most of the scan
            group, elem = tag_at(data, pos)
            if not implicit and group != 0xFFFE and group != 0x7FE0:
                vr = data[pos + 4:pos + 6]
                if vr in long_vrs:
                    length, start = u32(data, pos + 8)[0], pos + 12
                elif vr in vrs_ok:
                    length, start = u16(data, pos + 6)[0], pos + 8
                else:
                    return None  # not an explicit VR (e.g. implicit VR in an explicit-VR file)
                if length != UNDEFINED:
                    nxt = start + length
                    if nxt > n:
                        raise Truncated(f"element ({group:04X},{elem:04X}) runs past the end of the data")
                    tag = (group << 16) | elem
                    if tag in wanted:
                        raw[tag] = (vr.decode("ascii"), data[start:nxt])
                    pos = nxt
                    continue
            tag, nxt, (vr, start, length) = _element(data, pos, implicit)
            if tag == PIXEL_DATA:
                break  # the header ends here; _element checked that Pixel Data is complete
            if tag in wanted:
                if implicit or vr is None:
                    vrs = dictionary_VR(tag)
                else:
                    vrs = vr.decode("ascii")
                    if not vrs.isalpha() or not vrs.isupper():
                        return None
                raw[tag] = (vrs, data[start:start + length])
            pos = nxt
        else:
            if pos != n:
                return None  # trailing bytes shorter than an element header: truncated
            pos = n
    except (_Odd, struct.error, UnicodeDecodeError, KeyError):
        return None
    values = _decode(raw)
    if values is None:
        return None
    return values, meta, pos


def _decode(raw: dict[int, tuple[str, bytes]]) -> dict[str, str | None] | None:
    """Decode the wanted values; text in a non-ASCII character set goes through pydicom."""
    encodings = None
    cs = raw.get(CHARSET_TAG)
    if cs is not None:
        terms = [t.strip() for t in cs[1].decode("ascii", "replace").strip("\x00 ").split("\\")]
        encodings = convert_encodings(terms) if any(terms) else None
    out: dict[str, str | None] = {}
    for tag, (vr, value) in raw.items():
        kw = WANTED[tag]
        if vr in TEXT_VRS and (not value.isascii() or b"\x1b" in value):
            if encodings is None:
                encodings = ["iso8859"]  # no Specific Character Set: the default repertoire, leniently
            if vr == "PN":
                text = str(PersonName(value, encodings))
            else:
                text = decode_bytes(value, encodings, set())
        elif vr in ("US", "UL", "SS", "SL", "FL", "FD", "OB", "OW", "SQ", "UN"):
            return None  # an unexpected VR for a wanted key: let pydicom read it
        else:
            text = value.decode("ascii", "replace")
        text = text.strip("\x00 ")
        if vr == "PN":
            text = text.rstrip("=")  # empty trailing component groups, as pydicom's reader drops them
        out[kw] = text or None
    return out


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def is_dicomdir(path, sop_class: str | None = None) -> bool:
    """A media directory (PS3.10 DICOMDIR): Media Storage Directory Storage, or a file named so
    (ISO 9660 may add ';1' or a dot). It indexes a medium; it is no object to store or send."""
    name = os.path.basename(os.fspath(path)).upper().split(";")[0].rstrip(".")
    return sop_class == MEDIA_STORAGE_DIRECTORY or name == "DICOMDIR"
