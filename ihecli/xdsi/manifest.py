"""The Imaging Document Source's manifest (RAD-68): a Key Object Selection Document titled
113030 Manifest referencing every instance of a study, and the DocumentEntry that registers it.

The KOS comes from the one KOS builder (ihecli.kos.builder); each Referenced Series item carries
the archive's Retrieve AE Title and Retrieve Location UID (the repositoryUniqueId RAD-69 is
asked with). Metadata per RAD TF-3 4.68.4.1.2: uniqueId = the KOS SOP Instance UID, formatCode
1.2.840.10008.5.1.4.1.1.88.59, mime type application/dicom, referenceIdList = the Accession
Number (CXi), eventCodeList = the modalities (DCM), serviceStartTime from Study Date/Time.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from ihecli.errors import IheError

log = logging.getLogger("ihe.xdsi")

ACCESSION_ID_TYPE = "urn:ihe:iti:xds:2013:accession"
REFERENCE_ID_LIST = "urn:ihe:iti:xds:2013:referenceIdList"


def default_repository_uid(aet: str) -> str:
    """The archive's repositoryUniqueId when the profile sets none: fixed for its AE title."""
    return "2.25.%d" % uuid.uuid5(uuid.NAMESPACE_URL, "urn:ihecli:xdsi-source:" + aet.strip()).int


@dataclass
class Manifest:
    kos: Dataset
    study_uid: str
    accession: str
    modalities: list[str]
    study_date: str
    study_time: str
    instances: int
    previous: list[str] = field(default_factory=list)  # SOP Instance UIDs of earlier manifests in the archive


def study_manifest(archive, study_uid: str, *, retrieve_aet: str, repository_uid: str,
                   institution: str | None = None) -> Manifest:
    """The manifest of one study held in ``archive`` (every instance it holds of that study)."""
    from ihecli.kos import codes
    from ihecli.kos.builder import build_kos
    from ihecli.kos.selection import Selection, from_archive

    sel = from_archive(archive, Selection(studies=[study_uid]))
    if not sel.found:
        raise IheError(f"study {study_uid} is not in the archive: nothing to publish")
    # a manifest references images and other objects, never earlier manifests of the study
    earlier = [ds for ds in sel.found if str(ds.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.59"
               and _is_manifest(archive, ds)]
    found = [ds for ds in sel.found if ds not in earlier]
    if not found:
        raise IheError(f"study {study_uid} holds only manifests: nothing to publish")
    kos = build_kos(codes.MANIFEST, found, retrieve_aet=retrieve_aet, retrieve_location_uid=repository_uid,
                    series_description="XDS-I manifest", institution=institution)
    first = found[0]
    modalities = sorted({str(ds.get("Modality", "") or "") for ds in found} - {""})
    return Manifest(kos, study_uid, str(first.get("AccessionNumber", "") or ""), modalities,
                    str(first.get("StudyDate", "") or ""), str(first.get("StudyTime", "") or ""), len(found),
                    [str(ds.SOPInstanceUID) for ds in earlier])


def _is_manifest(archive, ds: Dataset) -> bool:
    import pydicom

    from ihecli.kos.document import read_kos

    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = ds.StudyInstanceUID
    ident.SeriesInstanceUID = ds.SeriesInstanceUID
    ident.SOPInstanceUID = ds.SOPInstanceUID
    try:
        refs = archive.instances(ident)
        return bool(refs) and read_kos(pydicom.dcmread(archive.file_path(refs[0]))).title.value == "113030"
    except Exception:  # an unreadable key object is referenced like any other object
        return False


def service_time(date: str, time: str) -> str:
    """An XDS DTM (YYYYMMDD[hhmmss]) from a DICOM date and time, '' when there is no date."""
    date = "".join(c for c in date if c.isdigit())[:8]
    if len(date) != 8:
        return ""
    digits = "".join(c for c in time.split(".")[0] if c.isdigit())[:6]
    return date + (digits if len(digits) in (4, 6) else "")


def document_entry_slots(m: Manifest, assigning_authority: str) -> dict[str, list[str]]:
    """The referenceIdList slot: the Accession Number as a CXi with the affinity domain's authority."""
    if not m.accession:
        return {}
    authority = f"&{assigning_authority}&ISO" if assigning_authority else ""
    return {REFERENCE_ID_LIST: [f"{m.accession}^^^{authority}^{ACCESSION_ID_TYPE}"]}


DCM_SCHEME = "1.2.840.10008.2.16.4"  # DICOM Controlled Terminology: modality codes for eventCodeList


@dataclass
class Published:
    manifest: Manifest
    unique_id: str  # of the DocumentEntry: the KOS SOP Instance UID
    entry_uuid: str
    patient_id: str
    status: str
    replaced: str = ""  # the entryUUID of the earlier manifest's entry this one replaced (RPLC)


def check_patient(archive, m: Manifest, cx: str) -> None:
    """Refuse to register a study under another patient: the affinity domain ID ``cx`` must be
    the study's own Patient ID, or cross-referenced with it by the PIX Manager (ITI-10 feed,
    ``ihe pix listen``)."""
    from ihecli.errors import UsageError
    from ihecli.pix.ids import Domain
    from ihecli.pix.notification import links
    from ihecli.xds.model import cx_parts

    local = str(m.kos.get("PatientID", "") or "")
    issuer = str(m.kos.get("IssuerOfPatientID", "") or "")
    pid, oid = cx_parts(cx)
    if pid == local:
        return
    with archive.connect() as conn:  # the cross-references holding the affinity domain ID
        linked = links(conn, pid, Domain("", oid, "ISO") if oid else None)
    if any(lk.identifier.id == local and (not issuer or issuer in (lk.identifier.domain.namespace,
                                                                    lk.identifier.domain.oid))
           for lk in linked):
        return
    name = str(m.kos.get("PatientName", "") or "")
    raise UsageError(f"study {m.study_uid} belongs to patient {local}{f' ({name})' if name else ''}, and {cx} is "
                     f"neither that ID nor cross-referenced with it by PIX: give the study's patient, or let "
                     f"`ihe pix listen` receive the cross-reference first")


def replaced_entry(registry, m: Manifest, cx: str) -> str:
    """The entryUUID of the approved DocumentEntry of the study's latest earlier manifest (found
    by its uniqueId, ITI-18), which a new manifest replaces (RPLC); '' when there is none."""
    from ihecli.xds.client import registry_stored_query
    from ihecli.xds.model import DocumentEntry

    if not m.previous:
        return ""
    got = registry_stored_query(registry, "get-documents", {"$XDSDocumentEntryUniqueId": m.previous}).objects
    approved = [o for o in got if isinstance(o, DocumentEntry) and o.status.endswith("Approved")
                and o.patient_id == cx]
    return max(approved, key=lambda o: o.creation_time or "").entry_uuid if approved else ""


def publish(client, archive, study_uid: str, *, domain, patient: str | None, retrieve_aet: str, repository_uid: str,
            store: bool = True, title: str = "", registry=None) -> Published:
    """Provide and Register Imaging Document Set - MTOM/XOP (RAD-68): the study's manifest to the
    XDS repository behind ``client``; with ``store`` also into the archive, so that C-FIND and
    the RAD-69 consumer see the same document. ``patient``: the affinity domain patient ID
    (ID or CX; default the study's Patient ID with the domain's assigning authority)."""
    from ihecli.kos.document import encode
    from ihecli.xds.client import provide_and_register
    from ihecli.xds.model import Code, make_cx
    from ihecli.xds.source import Options, make_submissions

    m = study_manifest(archive, study_uid, retrieve_aet=retrieve_aet, repository_uid=repository_uid)
    pid = patient or str(m.kos.get("PatientID", "") or "")
    if not pid:
        raise IheError(f"study {study_uid} has no Patient ID: give the affinity domain's with --patient")
    cx = make_cx(pid, domain.assigning_authority)
    check_patient(archive, m, cx)
    replaces = ""
    if registry is not None:
        try:
            replaces = replaced_entry(registry, m, cx)
        except IheError as e:  # the new manifest still goes; the earlier one stays approved beside it
            log.warning("study %s: the earlier manifest was not looked up (%s); the new one does not replace it",
                        study_uid, e)
    data = encode(m.kos)
    sub = make_submissions([(f"{study_uid}.dcm", data)], domain,
                           Options(patient=cx, title=title or "Imaging manifest", replace=replaces))[0]
    de = sub.documents[0][0]
    de.unique_id = str(m.kos.SOPInstanceUID)
    de.event_codes = [Code(mod, DCM_SCHEME, mod) for mod in m.modalities]
    de.service_start_time = service_time(m.study_date, m.study_time)
    de.slots.update(document_entry_slots(m, domain.assigning_authority))
    res = provide_and_register(client, sub)
    if store:
        archive.store(data)
    return Published(m, de.unique_id, de.entry_uuid, cx, res.status, replaces)
