"""Retrieve Imaging Document Set (RAD-69, RAD TF-3 4.69): SOAP 1.2 with MTOM/XOP.

The request (``urn:ihe:rad:xdsi-b:2009``) lists StudyRequest / SeriesRequest /
xdsb:DocumentRequest (RepositoryUniqueId, DocumentUniqueId = the image's SOP Instance UID,
HomeCommunityId for XCA-I) and the TransferSyntaxUIDList the consumer takes; the answer is an
XDS.b RetrieveDocumentSetResponse with one application/dicom part per image. Per-image problems
go in the RegistryErrorList with the SOP Instance UID as location (4.69.4.2.3), so a partly
available study answers PartialSuccess with what it has.

``ImagingDocumentSource(archive, repository_uid)`` answers it from the archive (mounted by
``ihe archive serve --http-port`` at /xdsi); ``retrieve_imaging_document_set`` is the
consumer's call.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from lxml import etree
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ihecli.atna.events import iti
from ihecli.errors import IheError
from ihecli.net.soap import Attachments, Reply, SoapFault, SoapMessage
from ihecli.net.soap.xml import XDSB, q
from ihecli.xds import audit
from ihecli.xds import vocabulary as v
from ihecli.workflow.pir import Reconciler
from ihecli.xds.messages import (RegistryError, Result, RetrievedDocument, XdsError, read_documents,
                                 read_registry_response, retrieve_response)

log = logging.getLogger("ihe.xdsi")

RAD69 = "urn:ihe:rad:2009:RetrieveImagingDocumentSet"
RAD69_RESPONSE = "urn:ihe:iti:2007:RetrieveDocumentSetResponse"
XDSI = "urn:ihe:rad:xdsi-b:2009"
TX_RAD69 = iti("RAD-69", "Retrieve Imaging Document Set")
NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass
class ImageRequest:
    study_uid: str
    series_uid: str
    sop_uid: str
    repository_uid: str
    home: str = ""


def request(images: list[ImageRequest], transfer_syntaxes: list[str]) -> etree._Element:
    """A RetrieveImagingDocumentSetRequest, images grouped by study and series."""
    root = etree.Element(q(XDSI, "RetrieveImagingDocumentSetRequest"), nsmap={"xdsiB": XDSI, "xdsb": XDSB})
    studies: dict[str, dict[str, list[ImageRequest]]] = {}
    for im in images:
        studies.setdefault(im.study_uid, {}).setdefault(im.series_uid, []).append(im)
    for study, series in studies.items():
        st = etree.SubElement(root, q(XDSI, "StudyRequest"), studyInstanceUID=study)
        for se_uid, ims in series.items():
            se = etree.SubElement(st, q(XDSI, "SeriesRequest"), seriesInstanceUID=se_uid)
            for im in ims:
                d = etree.SubElement(se, q(XDSB, "DocumentRequest"))
                if im.home:
                    etree.SubElement(d, q(XDSB, "HomeCommunityId")).text = im.home
                etree.SubElement(d, q(XDSB, "RepositoryUniqueId")).text = im.repository_uid
                etree.SubElement(d, q(XDSB, "DocumentUniqueId")).text = im.sop_uid
    tl = etree.SubElement(root, q(XDSI, "TransferSyntaxUIDList"))
    for ts in transfer_syntaxes:
        etree.SubElement(tl, q(XDSI, "TransferSyntaxUID")).text = ts
    return root


def read_request(el: etree._Element) -> tuple[list[ImageRequest], list[str]]:
    if el.tag != q(XDSI, "RetrieveImagingDocumentSetRequest"):
        raise SoapFault(f"RAD-69 expects RetrieveImagingDocumentSetRequest, not {etree.QName(el).localname}")
    images = []
    for st in el.findall(q(XDSI, "StudyRequest")):
        for se in st.findall(q(XDSI, "SeriesRequest")):
            for d in se.findall(q(XDSB, "DocumentRequest")):
                images.append(ImageRequest(st.get("studyInstanceUID", "").strip(), se.get("seriesInstanceUID", "").strip(),
                                           (d.findtext(q(XDSB, "DocumentUniqueId")) or "").strip(),
                                           (d.findtext(q(XDSB, "RepositoryUniqueId")) or "").strip(),
                                           (d.findtext(q(XDSB, "HomeCommunityId")) or "").strip()))
    tss = [(t.text or "").strip() for t in el.iterfind(f"{q(XDSI, 'TransferSyntaxUIDList')}/{q(XDSI, 'TransferSyntaxUID')}")]
    return images, [t for t in tss if t]


def _in_syntax(data: bytes, stored: str, wanted: list[str]) -> bytes | None:
    """The file in one of the wanted transfer syntaxes: as stored, re-encoded between the two
    uncompressed little-endian ones, else None (no list: as stored)."""
    if not wanted or stored in wanted:
        return data
    target = next((t for t in wanted if t in NATIVE), None)
    if target is None or stored not in NATIVE:
        return None
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = UID(target)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True)
    return buf.getvalue()


class ImagingDocumentSource:
    """The archive's RAD-69 responder."""

    def __init__(self, archive, repository_uid: str, *, home: str = ""):
        self.archive, self.repository_uid, self.home = archive, repository_uid, home

    def handlers(self) -> dict:
        return {RAD69: self.retrieve}

    def retrieve(self, msg: SoapMessage) -> Reply:
        parts = Attachments()
        images, tss = read_request(msg.body)
        if not images:
            err = RegistryError("XDSRepositoryError", "the request names no image")
            return Reply(retrieve_response(v.FAILURE, [err], [], parts), RAD69_RESPONSE, parts)
        found, errors = [], []
        rec = Reconciler(self.archive, images)  # PIR: the index's patient, as C-MOVE sends it (one query)
        for im in images:
            try:
                found.append(self._one(im, tss, rec))
            except XdsError as e:
                errors += e.errors
        status = v.SUCCESS if not errors else (v.PARTIAL if found else v.FAILURE)
        audit.retrieve(audit.local("ihe-archive"), audit.remote_host(msg.peer or ""),
                       [(d.document_unique_id, d.repository_unique_id, d.home) for d in found],
                       True if not errors else (None if found else False), is_consumer=False, transaction=TX_RAD69)
        log.info("RAD-69 from %s: %d images sent, %d refused", msg.peer or "?", len(found), len(errors))
        return Reply(retrieve_response(status, errors, found, parts), RAD69_RESPONSE, parts)

    def _one(self, im: ImageRequest, tss: list[str], rec: Reconciler) -> RetrievedDocument:
        uid = im.sop_uid
        if im.repository_uid != self.repository_uid:
            raise XdsError(RegistryError("XDSUnknownRepositoryId", f"repository {im.repository_uid} is not this "
                                         f"Imaging Document Source ({self.repository_uid})", uid))
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = im.study_uid
        ident.SeriesInstanceUID = im.series_uid
        ident.SOPInstanceUID = uid
        try:
            refs = self.archive.instances(ident) if uid and im.study_uid and im.series_uid else []
        except Exception as e:  # a malformed UID in the request
            raise XdsError(RegistryError("XDSDocumentUniqueIdError", f"bad request for {uid}: {e}", uid)) from None
        if not refs:
            raise XdsError(RegistryError("XDSDocumentUniqueIdError", f"no instance {uid} in series {im.series_uid} "
                                         f"of study {im.study_uid}", uid))
        ref = refs[0]
        try:
            path = self.archive.file_path(ref)
            data = (rec.part10(ref, path) if rec else None) or path.read_bytes()
        except OSError:
            raise XdsError(RegistryError("XDSRepositoryError", f"instance {uid} is unreadable", uid)) from None
        out = _in_syntax(data, ref.transfer_syntax, tss)
        if out is None:
            raise XdsError(RegistryError("XDSRepositoryError", f"instance {uid} is stored in {ref.transfer_syntax}, "
                                         f"none of the transfer syntaxes asked for ({', '.join(tss)})", uid))
        return RetrievedDocument(self.repository_uid, uid, "application/dicom", out, im.home or self.home)


def retrieve_imaging_document_set(client, images: list[ImageRequest], transfer_syntaxes: list[str], *,
                                  action: str = RAD69) -> Result:
    """RAD-69 as the Imaging Document Consumer (or RAD-75 with that ``action``, as a gateway):
    the images that came, and the errors of those that did not (PartialSuccess keeps what came;
    Failure raises XdsError)."""
    tx = TX_RAD69 if action == RAD69 else iti("RAD-75", "Cross Gateway Retrieve Imaging Document Set")
    try:
        msg = client.call(action, request(images, transfer_syntaxes))
    except Exception:
        audit.retrieve(audit.remote_url(client.url), audit.local(), [], False, is_consumer=True, transaction=tx)
        raise
    if msg.body.tag != q(XDSB, "RetrieveDocumentSetResponse"):
        raise IheError(f"unexpected RAD-69 answer {etree.QName(msg.body).localname}")
    res = read_registry_response(msg.body)
    if res.status not in (v.SUCCESS, v.PARTIAL):
        raise XdsError(res.errors or [RegistryError("XDSRepositoryError", "no image retrieved")], status=res.status)
    res.documents = read_documents(msg)
    audit.retrieve(audit.remote_url(client.url), audit.local(),
                   [(d.document_unique_id, d.repository_unique_id, d.home) for d in res.documents],
                   True if res.status == v.SUCCESS else None, is_consumer=True, transaction=tx)
    return res
