"""WADO-RS (RAD-107 Retrieve DICOM objects over the web; PS3.18 10.4): studies, series and
instances as multipart/related application/dicom, metadata as DICOM JSON, frames, bulk data,
rendered JPEG/PNG. Instances are selected through the archive's retrieve matching, so hidden
instances stay hidden; files are streamed as stored.
"""
from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select

from ihecli.archive import schema as s
from ihecli.archive.query import read_header
from ihecli.web.common import (MediaRange, Part, WebError, check_uid, json_response, multipart_response, parse_accept,
                               to_json)
from ihecli.web.render import parse_window, render
from ihecli.workflow.pir import Reconciler, apply_patient

# PS3.18 Table 8.7.3-2: media types of compressed pixel data (frames, bulk data)
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.100": "video/mpeg2", "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4", "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4", "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4", "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def select_instances(archive, study: str, series: str | None = None, instance: str | None = None):
    """InstanceRefs of a study, series or instance (404 when nothing is there)."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE" if instance else "SERIES" if series else "STUDY"
    ident.StudyInstanceUID = check_uid(study, "Study Instance UID")
    if series:
        ident.SeriesInstanceUID = check_uid(series, "Series Instance UID")
    if instance:
        ident.SOPInstanceUID = check_uid(instance, "SOP Instance UID")
    refs = archive.instances(ident)
    if not refs:
        what = "instance" if instance else "series" if series else "study"
        raise WebError(404, f"no such {what} in the archive")
    return refs


def _dicom_ts_wanted(accept: list[MediaRange]) -> str | None:
    """The transfer syntax asked for multipart application/dicom ('*': as stored); 406 if none fits."""
    for m in accept:
        if m.type in ("*/*", "multipart/*"):
            return "*"
        if m.type == "multipart/related" and m.part_type in ("", "application/dicom", "application/*", "*/*"):
            return m.transfer_syntax or "*"
        if m.type == "application/dicom":  # lenient: a single-part answer type for a multipart answer
            return m.transfer_syntax or "*"
    raise WebError(406, "this resource is sent as multipart/related; type=\"application/dicom\"")


def _transcoded(path, ts: str, data: bytes | None = None) -> bytes:
    """The stored file (or ``data``, the object as it goes out) in another transfer syntax
    (native ones, or decompressed to them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data) if data is not None else path)
    have = ds.file_meta.TransferSyntaxUID
    try:
        if have.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the same instance, only its encoding changes
    except Exception as e:
        raise WebError(406, f"cannot send {ds.SOPInstanceUID} in {ts}: {e}") from None
    ds.file_meta.TransferSyntaxUID = UID(ts)
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def retrieve(archive, accept_header: str | None, refs):
    """Multipart/related application/dicom of the given instances."""
    ts = _dicom_ts_wanted(parse_accept(accept_header))
    if ts != "*" and ts not in UNCOMPRESSED and any(r.transfer_syntax != ts for r in refs):
        raise WebError(406, f"instances are sent as stored or in a native transfer syntax, not {ts}")

    # an indexed instance whose file is gone cannot be sent; found before the stream starts, it
    # makes the answer 206 Partial Content (PS3.18 10.4.3), or 404 when nothing is left
    present, gone = archive.with_files(refs)
    lost = len(gone)
    if refs and not present:
        raise WebError(404, f"the files of the {len(refs)} instance(s) asked for are missing (see ihe archive check)")

    # PIR: instances of patients HL7 changed carry the index's patient, as C-MOVE sends them
    rec = Reconciler(archive, [r for r, _ in present])

    def parts():
        for r, path in present:
            data = rec.part10(r, path) if rec else None
            if ts == "*" or r.transfer_syntax == ts:
                yield Part(f"application/dicom; transfer-syntax={r.transfer_syntax}",
                           **({"path": path} if data is None else {"body": data}))
            else:
                yield Part(f"application/dicom; transfer-syntax={ts}", body=_transcoded(path, ts, data))

    resp = multipart_response(parts(), "application/dicom", status=206 if lost else 200)
    if lost:
        resp.headers["Warning"] = f'299 ihe "{lost} of {len(refs)} instances are missing from the archive\'s storage"'
    return resp


# -- metadata -----------------------------------------------------------------------------------
def _headers(archive, refs) -> dict[str, Dataset | None]:
    uids = [r.sop_uid for r in refs]
    out: dict[str, Dataset | None] = {}
    with archive.connect() as conn:
        for k in range(0, len(uids), 500):
            chunk = uids[k:k + 500]
            for sop, blob in conn.execute(select(s.instances.c.sop_uid, s.instances.c.header)
                                          .where(s.instances.c.sop_uid.in_(chunk))):
                out[sop] = read_header(blob) if blob is not None else None
    return out


def instance_url(base: str, r) -> str:
    return f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"


def metadata(archive, base: str, refs):
    """DICOM JSON of every instance's attributes; large binary values as bulk data URIs."""
    headers = _headers(archive, refs)
    rec = Reconciler(archive, refs)
    out = []
    for r in refs:
        ds = headers.get(r.sop_uid)
        has_pixels = None
        if ds is None:  # no header kept in the index: read the file's
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(archive.file_path(r), stop_before_pixels=True, force=True)
            except Exception:
                continue
        if "Rows" in ds and "Columns" in ds:
            has_pixels = True
        if rec and rec.patient_of(r) is not None:
            ds = apply_patient(ds, rec.patient_of(r))
        url = instance_url(base, r)
        j = to_json(ds, url + "/bulkdata/")
        if has_pixels:
            ts = UID(r.transfer_syntax)
            vr = "OB" if ts.is_compressed or int(getattr(ds, "BitsAllocated", 16) or 16) <= 8 else "OW"
            j["7FE00010"] = {"vr": vr, "BulkDataURI": url + "/bulkdata/7FE00010"}
        out.append(j)
    return json_response(out)


# -- frames, bulk data, rendered --------------------------------------------------------------
def _read(archive, ref) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(archive.file_path(ref))
    except Exception as e:
        raise WebError(500, f"cannot read the stored instance: {e}") from None


def parse_frames(text: str) -> list[int]:
    try:
        frames = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WebError(400, f"bad frame list {text[:80]!r}: numbers from 1, comma-separated") from None
    if not frames or any(f < 1 for f in frames):
        raise WebError(400, f"bad frame list {text[:80]!r}: numbers from 1, comma-separated")
    return frames


def _native_frame(ds: Dataset, i: int) -> bytes:
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp, bits = int(getattr(ds, "SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    size = rows * cols * spp * bits // 8
    data = ds.PixelData
    if bits == 1:
        raise WebError(406, "1-bit frames are sent only as a whole (bulk data)")
    return data[(i - 1) * size:i * size]


def _frame_bytes(ds: Dataset, frames: list[int]) -> list[bytes]:
    if "PixelData" not in ds:
        raise WebError(404, "the instance has no pixel data")
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    bad = [f for f in frames if f > n]
    if bad:
        raise WebError(404, f"no frame {bad[0]}: the instance has {n}")
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        from pydicom.encaps import generate_frames

        if FRAME_MEDIA.get(str(ts), "").startswith("video/"):  # one stream holds every frame
            return [next(generate_frames(ds.PixelData, number_of_frames=1))]
        all_frames = list(generate_frames(ds.PixelData, number_of_frames=n))
        return [all_frames[f - 1] for f in frames]
    return [_native_frame(ds, f) for f in frames]


def _frame_media(accept: list[MediaRange], ts: UID) -> tuple[str, bool]:
    """(part media type, send as stored) for frames or pixel bulk data; 406 when nothing fits."""
    stored_media = FRAME_MEDIA.get(str(ts), "application/octet-stream") if ts.is_compressed \
        else "application/octet-stream"
    for m in accept:
        if m.type in ("*/*", "multipart/*"):
            return stored_media, True
        if m.type == "multipart/related":
            want, tsx = (m.part_type or "application/octet-stream"), m.transfer_syntax
            if want in ("*/*",) or (want == stored_media and (tsx in (None, "*", str(ts)))):
                return stored_media, True
            if want == "application/octet-stream":
                if tsx == "*":
                    return stored_media if ts.is_compressed else want, True
                return want, not ts.is_compressed
        if m.type == "application/octet-stream":
            return m.type, not ts.is_compressed
    raise WebError(406, f"frames of this instance are available as {stored_media}"
                   + (" or decompressed as application/octet-stream" if ts.is_compressed else ""))


def frames(archive, accept_header: str | None, ref, frame_list: str):
    """Frames of an instance as multipart/related (stored encoding, or decompressed)."""
    wanted = parse_frames(frame_list)
    ds = _read(archive, ref)
    ts = ds.file_meta.TransferSyntaxUID
    media, as_stored = _frame_media(parse_accept(accept_header), ts)
    if as_stored:
        data = _frame_bytes(ds, wanted)
    else:
        from ihecli.web.render import frame_array

        data = [frame_array(ds, f).tobytes() for f in wanted]
        ts = ExplicitVRLittleEndian
    part_type = f"{media}; transfer-syntax={ts}"
    return multipart_response([Part(part_type, body=d) for d in data], media)


def _walk(ds: Dataset, path: list[str]):
    """The element a bulk data path (tag/item/tag...) names; 404 when there is none."""
    try:
        cur = ds
        while True:
            tag = int(path[0], 16)
            if len(path[0]) != 8 or tag not in cur:
                raise KeyError
            elem = cur[tag]
            if len(path) == 1:
                return elem
            cur = elem.value[int(path[1])]
            path = path[2:]
    except (KeyError, IndexError, ValueError, TypeError):
        raise WebError(404, "no such bulk data in the instance") from None


def bulkdata(archive, accept_header: str | None, ref, path: str):
    """One binary value of an instance (Pixel Data: frames in their stored encoding)."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise WebError(404, "no such bulk data in the instance")
    ds = _read(archive, ref)
    if [p.upper() for p in parts] == ["7FE00010"] and "PixelData" in ds:
        ts = ds.file_meta.TransferSyntaxUID
        media, as_stored = _frame_media(parse_accept(accept_header), ts)
        if ts.is_compressed and as_stored:
            n = int(getattr(ds, "NumberOfFrames", 1) or 1)
            data = _frame_bytes(ds, list(range(1, n + 1)))
            return multipart_response([Part(f"{media}; transfer-syntax={ts}", body=d) for d in data], media)
        if ts.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the same instance, only its encoding changes
        return multipart_response([Part("application/octet-stream", body=bytes(ds.PixelData))],
                                  "application/octet-stream")
    elem = _walk(ds, parts)
    value = elem.value
    if not isinstance(value, (bytes, bytearray)):
        raise WebError(404, "that attribute is not bulk data")
    return multipart_response([Part("application/octet-stream", body=bytes(value))], "application/octet-stream")


def rendered_media(accept_header: str | None, query_accept: str | None = None) -> str:
    for m in parse_accept(query_accept or accept_header):
        if m.type in ("image/jpeg", "image/png", "image/gif"):
            return m.type
        if m.type in ("*/*", "image/*"):
            return "image/jpeg"
    raise WebError(406, "rendered images are image/jpeg, image/png or image/gif")


def rendered(archive, accept_header: str | None, ref, frame: int, params):
    """One frame as a displayable image, windowed (window=center,width[,function])."""
    from starlette.responses import Response

    media = rendered_media(accept_header, params.get("accept"))
    window = parse_window(params.get("window"))
    try:
        quality = int(params.get("quality", 90))
    except ValueError:
        raise WebError(400, "bad quality: 1 to 100") from None
    viewport = None
    if params.get("viewport"):
        try:
            w, h = (int(x) for x in params["viewport"].split(",")[:2])
            viewport = (w, h)
        except ValueError:
            raise WebError(400, "bad viewport: width,height") from None
    ds = _read(archive, ref)
    return Response(render(ds, frame, media, window=window, quality=max(1, min(100, quality)), viewport=viewport),
                    media_type=media)


THUMBNAIL = (128, 128)


def thumbnail(archive, accept_header: str | None, refs, frame: int, params):
    """A small rendered image of an instance, or of the middle image of a series or study (PS3.18
    thumbnail resources); ``viewport`` may ask for another size."""
    from starlette.responses import Response

    media = rendered_media(accept_header, params.get("accept"))
    viewport = THUMBNAIL
    if params.get("viewport"):
        try:
            viewport = tuple(int(x) for x in params["viewport"].split(",")[:2])
        except ValueError:
            raise WebError(400, "bad viewport: width,height") from None
    window = parse_window(params.get("window"))
    middle = len(refs) // 2
    for ref in (refs[middle:] + refs[:middle])[:20]:  # the middle image, else the next that has pixels
        ds = _read(archive, ref)
        if "PixelData" not in ds:
            continue
        return Response(render(ds, frame, media, window=window, quality=80, viewport=viewport), media_type=media)
    raise WebError(404, "no image to show")
