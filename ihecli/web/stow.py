"""STOW-RS (RAD-108 Store Instances over the Web; PS3.18 10.5): a multipart/related body of
application/dicom parts, or (Web-based Image Capture) DICOM JSON/XML metadata with bulk data
parts (JPEG, PNG, MP4, PDF) that are converted to DICOM first.

The body is streamed into spooled temporary files (memory stays flat, a body over the limit is
refused with 413 while it arrives). Every instance goes through ``Archive.store``: a success in
the response means the file is fsynced and its index row committed, as for C-STORE. Instances
of one request are stored in parallel so that they share index commits.

Response (PS3.18 10.5.3): 200 all stored, 202 some failed or were coerced, 409 none stored,
415 a media type the service does not take, 400 a body that is not multipart/related.
"""
from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from python_multipart.multipart import MultipartParser

from ihecli.archive.ingest import ensure_part10, parse
from ihecli.errors import ArchiveError
from ihecli.web.common import WebError, json_response, parse_media_type

log = logging.getLogger("ihe.web")

DICOM_TYPES = {"application/dicom"}
META_TYPES = {"application/dicom+json", "application/json", "application/dicom+xml"}
BULK_TYPES = {"image/jpeg", "image/jpg", "image/png", "video/mp4", "application/pdf", "application/octet-stream"}
SPOOL = 8 << 20  # a part larger than this goes to a temporary file while it arrives
MAX_PARTS = 5000  # parts in one request (each costs a spooled file object)

# Failure Reason values (PS3.18 Table I.2-1 / PS3.4 Annex B)
PROCESSING_FAILURE = 0x0110
NOT_SUPPORTED = 0x0122  # SOP class not supported
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # e.g. Study Instance UID differs from the URL's
CANNOT_UNDERSTAND = 0xC000
COERCED = 0xB000  # Warning Reason: coercion of data elements

_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ihe-stow")


@dataclass
class InPart:
    headers: dict[str, str] = field(default_factory=dict)
    file: tempfile.SpooledTemporaryFile | None = None
    size: int = 0

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def media(self) -> str:
        return parse_media_type(self.content_type).type if self.content_type else ""

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class BodyReader:
    """Feeds a multipart/related body, chunk by chunk, to python-multipart's streaming parser."""

    def __init__(self, boundary: str, max_bytes: int):
        self.parts: list[InPart] = []
        self.max_bytes = max_bytes
        self.total = 0
        self.ended = False
        self._field = b""
        self._value = b""
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._begin, "on_part_data": self._data, "on_header_field": self._hfield,
            "on_header_value": self._hvalue, "on_header_end": self._hend, "on_end": self._end,
        })

    def _begin(self):
        if len(self.parts) >= MAX_PARTS:
            raise WebError(413, f"more than {MAX_PARTS} parts in one request")
        self.parts.append(InPart(file=tempfile.SpooledTemporaryFile(SPOOL)))
        self._field = self._value = b""

    def _data(self, data, start, end):
        p = self.parts[-1]
        p.file.write(data[start:end])
        p.size += end - start

    def _hfield(self, data, start, end):
        self._field += data[start:end]

    def _hvalue(self, data, start, end):
        self._value += data[start:end]

    def _hend(self):
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _end(self):
        self.ended = True

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.max_bytes:
            raise WebError(413, f"request body over the limit of {self.max_bytes} bytes")
        try:
            self.parser.write(chunk)
        except WebError:
            raise
        except Exception as e:
            raise WebError(400, f"malformed multipart body: {e}") from None

    def finish(self) -> list[InPart]:
        try:
            self.parser.finalize()
        except Exception as e:
            raise WebError(400, f"malformed multipart body: {e}") from None
        if not self.parts:
            raise WebError(400, "the multipart body has no parts (wrong boundary?)")
        if not self.ended:
            raise WebError(400, "the multipart body is truncated (no closing boundary)")
        return self.parts

    def close(self) -> None:
        for p in self.parts:
            p.close()


def check_request(content_type: str | None, content_length: str | None, max_bytes: int) -> str:
    """The boundary of an acceptable STOW-RS request; 415/400/413 otherwise."""
    if not content_type:
        raise WebError(415, "Content-Type missing: multipart/related; type=\"application/dicom\" expected")
    mt = parse_media_type(content_type)
    if mt.type != "multipart/related":
        raise WebError(415, f"Content-Type {mt.type} not accepted: multipart/related; type=\"application/dicom\" "
                            f"(or application/dicom+json with bulk data) expected")
    if mt.part_type and mt.part_type not in DICOM_TYPES | META_TYPES:
        raise WebError(415, f"multipart/related of {mt.part_type} not accepted: application/dicom, "
                            f"application/dicom+json or application/dicom+xml")
    boundary = mt.params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise WebError(400, "the multipart/related Content-Type has no (valid) boundary parameter")
    if content_length:
        try:
            if int(content_length) > max_bytes:
                raise WebError(413, f"request body of {content_length} bytes over the limit of {max_bytes}")
        except ValueError:
            raise WebError(400, "bad Content-Length") from None
    return boundary


# -- storing ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    sop_class: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    reason: str = ""
    coerced: bool = False


def _uids_of(data: bytes) -> tuple[str, str]:
    """(SOP Class, SOP Instance UID) of a refused object, as far as they can be read."""
    try:
        import io
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                                 specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:
        return "", ""


def store_one(archive, data: bytes, study: str | None, coerced: bool = False) -> Outcome:
    """Store one Part-10 object: an Outcome with a failure reason when refused."""
    try:
        data = ensure_part10(data)
        parsed = parse(data)
        out = Outcome(parsed.sop_class, parsed.sop_uid, parsed.study_uid, parsed.series_uid, coerced=coerced)
        if study and parsed.study_uid != study:
            out.failure, out.reason = DOES_NOT_MATCH, f"Study Instance UID {parsed.study_uid} is not {study}"
            return out
        archive.store(data)
        return out
    except ArchiveError as e:
        cls, uid = _uids_of(data)
        status = e.status if e.status in (OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND) else PROCESSING_FAILURE
        return Outcome(cls, uid, failure=status, reason=str(e))
    except Exception as e:  # never let one object break the request
        log.exception("STOW-RS: storing an instance failed")
        cls, uid = _uids_of(data)
        return Outcome(cls, uid, failure=PROCESSING_FAILURE, reason=f"{type(e).__name__}: {e}")


def store_parts(archive, parts: list[InPart], study: str | None, base: str, accept: str | None = None,
                on_outcomes=None):
    """Store the parts of a STOW-RS request and build the response (PS3.18 10.5.3);
    ``on_outcomes(outcomes)`` is told what happened to each (the audit trail)."""
    from ihecli.wic import convert

    outcomes: list[Outcome] = []
    dicom_parts = [p for p in parts if p.media in DICOM_TYPES or (not p.media and _looks_dicom(p))]
    meta_parts = [p for p in parts if p.media in META_TYPES]
    other = [p for p in parts if p not in dicom_parts and p not in meta_parts]
    bad_types = sorted({p.media or "(none)" for p in other if p.media not in BULK_TYPES})
    if not dicom_parts and not meta_parts:
        raise WebError(415, "no application/dicom or DICOM metadata part in the request"
                       + (f" (got {', '.join(bad_types)})" if bad_types else ""))
    jobs = [_pool.submit(store_one, archive, p.read(), study) for p in dicom_parts]
    if meta_parts:
        bulk = {}
        for p in other:
            loc = p.headers.get("content-location") or p.headers.get("content-id", "").strip("<>")
            if loc:
                bulk[loc] = p
        context: dict = {}  # instances of this request that share a new study
        for mp in meta_parts:
            try:
                datasets = convert.read_metadata(mp.read(), mp.media)
            except convert.ConversionError as e:
                outcomes.append(Outcome(failure=CANNOT_UNDERSTAND, reason=str(e)))
                continue
            for meta in datasets:
                try:
                    made = convert.instance_from_metadata(archive, meta, bulk, study, context)
                except convert.ConversionError as e:
                    outcomes.append(Outcome(str(meta.ds.get("SOPClassUID", "") or ""),
                                            str(meta.ds.get("SOPInstanceUID", "") or ""),
                                            failure=e.status, reason=str(e)))
                    continue
                jobs.append(_pool.submit(store_one, archive, made.data, study, made.coerced))
    outcomes += [j.result() for j in jobs]
    if on_outcomes is not None:
        on_outcomes(outcomes)
    return response(outcomes, study, base, accept)


def _looks_dicom(p: InPart) -> bool:
    p.file.seek(128)
    return p.file.read(4) == b"DICM"


def response(outcomes: list[Outcome], study: str | None, base: str, accept: str | None):
    ok = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    ds = Dataset()
    studies = {o.study_uid for o in ok}
    if study or len(studies) == 1:
        ds.RetrieveURL = f"{base}/studies/{study or next(iter(studies))}"
    if failed:
        items = []
        for o in failed:
            it = Dataset()
            it.ReferencedSOPClassUID = o.sop_class or None
            it.ReferencedSOPInstanceUID = o.sop_uid or None
            it.FailureReason = o.failure
            items.append(it)
        ds.FailedSOPSequence = Sequence(items)
    items = []
    for o in ok:
        it = Dataset()
        it.ReferencedSOPClassUID = o.sop_class
        it.ReferencedSOPInstanceUID = o.sop_uid
        it.RetrieveURL = f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_uid}"
        if o.coerced:
            it.WarningReason = COERCED
        items.append(it)
    if items or not failed:
        ds.ReferencedSOPSequence = Sequence(items)
    status = 200 if not failed and not any(o.coerced for o in ok) else 202 if ok else 409
    headers = {}
    if failed:
        # one clear line for people and logs (PS3.18 8.10.3 Warning header)
        reasons = "; ".join(sorted({o.reason for o in failed if o.reason}))[:900]
        headers["Warning"] = "299 ihe: " + json.dumps(f"{len(failed)} of {len(outcomes)} instances failed: {reasons}",
                                                      ensure_ascii=True)
    if accept and "application/dicom+xml" in accept and "json" not in accept:
        from ihecli.web.xml import to_xml

        from starlette.responses import Response

        return Response(to_xml(ds), status_code=status, media_type="application/dicom+xml", headers=headers)
    return json_response(ds.to_json_dict(), status, headers)

