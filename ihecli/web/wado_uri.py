"""WADO-URI (RAD-55 WADO Retrieve; PS3.18 chapter 9): one object by its three UIDs, as DICOM,
a rendered JPEG/PNG (windowed, scaled, one frame), or its encapsulated document. What XDS-I.b
Imaging Document Consumers ask for.
"""
from __future__ import annotations

import warnings

import pydicom
from starlette.responses import FileResponse, Response

from ihecli.web.common import WebError
from ihecli.web.render import render
from ihecli.web.wado import _transcoded, select_instances

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif")


def retrieve(archive, params):
    """The answer to GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=.."""
    if params.get("requestType", "").upper() != "WADO":
        raise WebError(400, "requestType=WADO is required")
    missing = [k for k in ("studyUID", "seriesUID", "objectUID") if not params.get(k)]
    if missing:
        raise WebError(400, f"missing parameter {missing[0]}")
    ref = select_instances(archive, params["studyUID"], params["seriesUID"], params["objectUID"])[0]
    path = archive.file_path(ref)
    if not path.is_file():
        raise WebError(404, f"object {ref.sop_uid} is indexed but its file is missing (see ihe archive check)")
    wanted = [c.split(";")[0].strip().lower() for c in params.get("contentType", "").split(",") if c.strip()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = pydicom.dcmread(path, stop_before_pixels=True)
    has_pixels = "Rows" in head and "Columns" in head
    doc_type = str(getattr(head, "MIMETypeOfEncapsulatedDocument", "") or "")
    if not wanted:
        wanted = ["image/jpeg"] if has_pixels else [doc_type] if doc_type else ["application/dicom"]
    for ct in wanted:
        if ct in ("application/dicom", "*/*"):
            from ihecli.workflow.pir import Reconciler

            rec = Reconciler(archive, [ref])  # PIR: the index's patient, as C-MOVE sends it
            data = rec.part10(ref, path) if rec else None
            ts = params.get("transferSyntax")
            if ts and ts != ref.transfer_syntax:
                return Response(_transcoded(path, ts, data), media_type="application/dicom")
            if data is not None:
                return Response(data, media_type="application/dicom",
                                headers={"Content-Disposition": f'inline; filename="{ref.sop_uid}.dcm"'})
            return FileResponse(path, media_type="application/dicom",
                                filename=f"{ref.sop_uid}.dcm", content_disposition_type="inline")
        if ct in IMAGE_TYPES and has_pixels:
            return _image(path, ct, params)
        if doc_type and ct in (doc_type, "application/octet-stream"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
            return Response(bytes(ds.EncapsulatedDocument), media_type=doc_type)
    raise WebError(406, f"the object is not available as {', '.join(wanted)}")


def _num(params, name, kind=float):
    v = params.get(name)
    if v is None or v == "":
        return None
    try:
        return kind(v)
    except ValueError:
        raise WebError(400, f"bad {name} {v!r}") from None


def _image(path, media, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    wc, ww = _num(params, "windowCenter"), _num(params, "windowWidth")
    window = (wc, ww, "LINEAR") if wc is not None and ww is not None else None
    frame = _num(params, "frameNumber", int) or 1
    quality = _num(params, "imageQuality", int) or 90
    rows, cols = _num(params, "rows", int), _num(params, "columns", int)
    viewport = None
    if rows or cols:
        viewport = (cols or 1 << 16, rows or 1 << 16)
    data = render(ds, frame, media, window=window, quality=max(1, min(100, quality)), viewport=viewport)
    return Response(data, media_type=media)

