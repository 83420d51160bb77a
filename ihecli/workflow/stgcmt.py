"""Storage Commitment Push Model (RAD-10; DICOM PS3.4 J): the archive's SCP and a client (SCU).

SCP: an N-ACTION (Request Storage Commitment) names instances by SOP Class and Instance UID;
each is committed only if the index holds it with that SOP class and its file still has the
checksum taken at ingest. The N-EVENT-REPORT lists committed and failed references (Failure
Reason 0x0112 never stored or rejected, 0x0119 stored with another SOP class, 0x0110 file
missing or changed). It goes back on the same association when that is still open, else on a
new association to the requester's node (through the outbox, so it is retried until delivered).

SCU: ``request_commitment`` sends the N-ACTION and waits for the report, on the same
association or, with a listening port, on a new one the peer opens.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import select

from ihecli.archive import schema as s
from ihecli.config import Node
from ihecli.errors import DimseFailure, IheError, PeerUnreachable
from ihecli.net import dimse

log = logging.getLogger("ihe.workflow")

SOP_CLASS = str(StorageCommitmentPushModel)
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_ACTION = 1
EVENT_ALL_COMMITTED, EVENT_SOME_FAILED = 1, 2

# Failure Reason (0008,1197) values, PS3.4 J.3.3.1
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REASONS = {PROCESSING_FAILURE: "processing failure", NO_SUCH_INSTANCE: "no such object instance",
           CLASS_INSTANCE_CONFLICT: "class/instance conflict", 0x0122: "SOP class not supported",
           0x0131: "duplicate transaction UID"}


@dataclass
class Ref:
    sop_class: str
    sop_uid: str
    reason: int | None = None  # failure reason; None: committed

    @property
    def reason_text(self) -> str:
        return REASONS.get(self.reason, f"0x{self.reason:04X}") if self.reason is not None else ""


@dataclass
class CommitResult:
    """A storage commitment report (what the N-EVENT-REPORT said)."""

    node: str
    transaction_uid: str
    committed: list[Ref] = field(default_factory=list)
    failed: list[Ref] = field(default_factory=list)
    same_association: bool = True
    retrieve_aet: str = ""


# -- SCP -----------------------------------------------------------------------------------------
def requested_refs(action_info: Dataset) -> tuple[str, list[Ref]]:
    """(Transaction UID, references) of an N-ACTION's Action Information; ValueError when malformed."""
    uid = str(action_info.get("TransactionUID", "") or "").strip()
    if not uid:
        raise ValueError("Action Information without Transaction UID")
    seq = action_info.get("ReferencedSOPSequence")
    if not seq:
        raise ValueError("Action Information without Referenced SOP Sequence items")
    refs = []
    for item in seq:
        refs.append(Ref(str(item.get("ReferencedSOPClassUID", "") or "").strip(),
                        str(item.get("ReferencedSOPInstanceUID", "") or "").strip()))
    return uid, refs


def check_commitment(archive, refs: list[Ref], *, verify: bool = True) -> list[Ref]:
    """Each reference with its failure reason set, or None when the archive commits to it: stored
    with that SOP class, and (``verify``) its file's SHA-256 is the one taken at ingest."""
    i = s.instances
    found: dict[str, tuple] = {}
    uids = [r.sop_uid for r in refs if r.sop_uid]
    with archive.connect() as conn:
        for k in range(0, len(uids), 500):
            for row in conn.execute(select(i.c.sop_uid, i.c.sop_class, i.c.path, i.c.sha256)
                                    .where(i.c.sop_uid.in_(uids[k:k + 500]))):
                found[row.sop_uid] = (row.sop_class, row.path, row.sha256)
    out = []
    for r in refs:
        hit = found.get(r.sop_uid)
        reason = None
        if hit is None:
            reason = NO_SUCH_INSTANCE
        elif hit[0] != r.sop_class:
            reason = CLASS_INSTANCE_CONFLICT
        elif verify and _sha256(archive, hit[1]) != hit[2]:
            reason = PROCESSING_FAILURE
        out.append(Ref(r.sop_class, r.sop_uid, reason))
    return out


def _sha256(archive, rel: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(archive.file_path(rel), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except (OSError, ValueError):
        return None
    return h.hexdigest()


def event_report(transaction_uid: str, checked: list[Ref], retrieve_aet: str = "") -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) of the N-EVENT-REPORT for checked references."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ok = [r for r in checked if r.reason is None]
    bad = [r for r in checked if r.reason is not None]
    if retrieve_aet and ok:
        ds.RetrieveAETitle = retrieve_aet
    if ok:
        items = []
        for r in ok:
            it = Dataset()
            it.ReferencedSOPClassUID = r.sop_class
            it.ReferencedSOPInstanceUID = r.sop_uid
            items.append(it)
        ds.ReferencedSOPSequence = items
    if bad:
        items = []
        for r in bad:
            it = Dataset()
            it.ReferencedSOPClassUID = r.sop_class
            it.ReferencedSOPInstanceUID = r.sop_uid
            it.FailureReason = r.reason
            items.append(it)
        ds.FailedSOPSequence = items
    return (EVENT_SOME_FAILED if bad else EVENT_ALL_COMMITTED), ds


def audit_commitment(archive, checked: list[Ref], *, requester: str, requester_host: str = "",
                     aet: str = "IHE_ARCHIVE") -> None:
    """Record the archive's commitment (RAD-10) in the audit trail, when a repository is configured:
    the studies and patients of the referenced instances it holds, the committed ones counted per
    SOP class; a minor failure when some were not committed."""
    from ihecli import atna

    if not atna.enabled():
        return
    from ihecli.atna import events as ev
    from ihecli.atna.dicom import by_patient

    committed = {r.sop_uid for r in checked if r.reason is None}
    studies: dict[str, dict] = {}
    patient_of: dict[str, str] = {}
    i, se, st, pa = s.instances, s.series, s.studies, s.patients
    uids = [r.sop_uid for r in checked if r.sop_uid]
    try:
        with archive.connect() as conn:
            for k in range(0, len(uids), 500):
                q = (select(i.c.sop_uid, i.c.sop_class, st.c.study_uid, st.c.accession, pa.c.pid)
                     .select_from(i.join(se, i.c.series_fk == se.c.id).join(st, se.c.study_fk == st.c.id)
                                  .join(pa, st.c.patient_fk == pa.c.id))
                     .where(i.c.sop_uid.in_(uids[k:k + 500])))
                for row in conn.execute(q):
                    info = studies.setdefault(row.study_uid, {"sop_classes": {}, "accessions": [row.accession or ""]})
                    if row.sop_uid in committed:
                        info["sop_classes"][row.sop_class] = info["sop_classes"].get(row.sop_class, 0) + 1
                    if row.pid:
                        patient_of.setdefault(row.study_uid, row.pid)
    except Exception as e:  # the report matters more than its audit event
        log.warning("storage commitment: no audit event: %s", e)
        return
    bad = [r for r in checked if r.reason is not None]
    why: dict[str, int] = {}
    for r in bad:
        why[r.reason_text] = why.get(r.reason_text, 0) + 1
    desc = (f"{len(bad)} of {len(checked)} instances not committed: "
            + ", ".join(f"{n} {text}" for text, n in why.items())) if bad else ""
    from ihecli.atna.events import Peer

    for patients, group in by_patient(studies, patient_of):  # one message per patient
        atna.record(ev.storage_commitment(requester=Peer(requester, requester_host), archive=Peer.local(aet),
                                          studies=group, patients=patients,
                                          outcome=ev.MINOR_FAILURE if bad else ev.SUCCESS, description=desc))


def pack_report(event_type: int, info: Dataset) -> bytes:
    from ihecli.workflow.mpps import encode

    return bytes([event_type]) + encode(info)


def unpack_report(payload: bytes) -> tuple[int, Dataset]:
    from ihecli.workflow.mpps import decode

    return payload[0], decode(payload[1:])


def pack_request(transaction_uid: str, refs: list[Ref]) -> bytes:
    """An outbox payload keeping a request until its report is out."""
    import json

    return json.dumps({"uid": transaction_uid, "refs": [[r.sop_class, r.sop_uid] for r in refs]}).encode()


def unpack_request(payload: bytes) -> tuple[str, list[Ref]]:
    import json

    d = json.loads(payload)
    return d["uid"], [Ref(c, u) for c, u in d["refs"]]


def send_report_new_association(target: Node, event_type: int, info: Dataset, *, calling_aet: str,
                                timeout: float = 30, tls=None) -> None:
    """N-EVENT-REPORT on an association the archive opens, as SCP of Storage Commitment
    (SCP/SCU role selection: the requester of the association plays the SCP role); ``tls``: a
    client context (``ihecli.net.tls.for_node``) when the node asks for TLS."""
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = dimse.associate(ae, target, ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True,
                                                                      scu_role=False)], tls=tls,
                            op="N-EVENT-REPORT (storage commitment)")
    try:
        rsp = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        status = rsp[0].Status if rsp and rsp[0] is not None and "Status" in rsp[0] else None
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None:
        raise PeerUnreachable(f"{target} sent no N-EVENT-REPORT response")
    if status != 0:
        raise DimseFailure(f"{target} answered the storage commitment report with 0x{status:04X}", status)


# -- SCU -----------------------------------------------------------------------------------------
def refs_from_files(paths: Iterable) -> list[Ref]:
    """References (SOP Class, SOP Instance UID) of the DICOM files under paths."""
    import warnings

    import pydicom

    from ihecli.archive import iter_files, looks_like_dicom

    refs = []
    for p in iter_files(paths):
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
            if not looks_like_dicom(head + b"\0" * 8):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True,
                                     specific_tags=["SOPClassUID", "SOPInstanceUID"])
            refs.append(Ref(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        except Exception:
            continue
    return refs


def request_commitment(node: Node, refs: list[Ref], *, calling_aet: str = "IHE", timeout: float = 60,
                       listen: tuple[str, int] | None = None, transaction_uid: str | None = None,
                       tls=None, listen_tls=None) -> CommitResult:
    """Storage Commitment request (RAD-10, SCU side): N-ACTION, then wait up to ``timeout`` seconds
    for the N-EVENT-REPORT, on the same association; with ``listen`` (bind address, port), the
    association is released after the N-ACTION response and the report awaited on a new one.
    ``tls``: a client context for the request's association; ``listen_tls``: a server context
    for the listener (the report then comes over TLS, ours checked against our CAs)."""
    from pynetdicom import AE

    if not refs:
        raise IheError("nothing to commit: no DICOM instances given")
    uid = transaction_uid or generate_uid()
    got: dict = {}
    arrived = threading.Event()

    def on_report(event, same: bool) -> tuple[int, Dataset | None]:
        info = event.event_information
        if str(info.get("TransactionUID", "")) != uid:
            return 0x0000, None  # another transaction's report: acknowledged, not ours
        got.update(event_type=event.event_type, info=info, same=same)
        arrived.set()
        return 0x0000, None

    server = None
    if listen is not None:
        sae = AE(ae_title=calling_aet)
        dimse.configure()
        sae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        sae.acse_timeout = sae.dimse_timeout = sae.network_timeout = timeout
        try:
            server = sae.start_server(listen, block=False, ssl_context=listen_tls, evt_handlers=[
                dimse.NODELAY_HANDLER, (evt.EVT_N_EVENT_REPORT,
                                        lambda e: on_report(_Report(e.request.EventTypeID, e.event_information),
                                                            False))])
        except OSError as e:
            raise IheError(f"cannot listen on {listen[0]}:{listen[1]} for the report: {e.strerror or e}") from None
    try:
        ae = dimse.client_ae(calling_aet, timeout=timeout)
        ae.add_requested_context(StorageCommitmentPushModel)
        # the report arrives as a request on this association: pynetdicom's reactor serves it
        assoc = dimse.associate(ae, node, serve_requests=True, tls=tls, op="Storage Commitment",
                                need=StorageCommitmentPushModel, handlers=[(
            evt.EVT_N_EVENT_REPORT, lambda e: on_report(_Report(e.request.EventTypeID, e.event_information), True))])
        try:
            info = Dataset()
            info.TransactionUID = uid
            items = []
            for r in refs:
                it = Dataset()
                it.ReferencedSOPClassUID = r.sop_class
                it.ReferencedSOPInstanceUID = r.sop_uid
                items.append(it)
            info.ReferencedSOPSequence = items
            status, _reply = assoc.send_n_action(info, REQUEST_ACTION, StorageCommitmentPushModel,
                                                 WELL_KNOWN_INSTANCE)
            if status is None or "Status" not in status:
                raise PeerUnreachable(f"{node} sent no N-ACTION response (timeout or abort)")
            if status.Status != 0:
                raise DimseFailure(f"{node} refused the storage commitment request: status 0x{status.Status:04X}"
                                   + (f" ({status.ErrorComment})" if "ErrorComment" in status else ""),
                                   int(status.Status))
            if server is not None:
                assoc.release()
            end = time.monotonic() + timeout
            while not arrived.wait(0.05):
                if time.monotonic() > end:
                    raise PeerUnreachable(f"no storage commitment report from {node} within {timeout:g} s"
                                          + (f": on a new association it goes to the node it knows by our AE title "
                                             f"{calling_aet!r} (for ihe archive serve: a node in its profile, or "
                                             f"archive.commit_reply)" if server is not None else ""))
                if server is None and not assoc.is_established:
                    raise IheError(f"{node} closed the association without sending the storage commitment "
                                   "report (listen for it on a new association with --report-port)")
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        if server is not None:
            server.shutdown()
    info = got["info"]
    res = CommitResult(str(node), uid, same_association=got["same"],
                       retrieve_aet=str(info.get("RetrieveAETitle", "") or ""))
    for it in info.get("ReferencedSOPSequence") or []:
        res.committed.append(Ref(str(it.get("ReferencedSOPClassUID", "")), str(it.get("ReferencedSOPInstanceUID", ""))))
    for it in info.get("FailedSOPSequence") or []:
        reason = it.get("FailureReason")
        res.failed.append(Ref(str(it.get("ReferencedSOPClassUID", "")), str(it.get("ReferencedSOPInstanceUID", "")),
                              int(reason) if reason is not None else PROCESSING_FAILURE))
    return res


@dataclass
class _Report:
    event_type: int
    event_information: Dataset

