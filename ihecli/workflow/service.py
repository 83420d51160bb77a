"""The workflow services of the archive's DICOM listener: Storage Commitment SCP (RAD-10), MPPS
SCP / PPS Manager (RAD-6/7/20/21), IAN SCU (RAD-49), rejection notes (RAD-66), and the outbox
runner that sends what they queue.

``WorkflowServices`` is handed to ``DicomServer(services=[...])``: the server asks it for its
presentation contexts and event handlers and starts and stops it with itself. ``attach`` puts the
rejection-note rules on an Archive (also for `ihe archive import`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import (
    InstanceAvailabilityNotification,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
)

from ihecli import atna
from ihecli.atna.events import Peer
from ihecli.config import Node, resolve_node
from ihecli.errors import DimseFailure, IheError
from ihecli.net import dimse, tls
from ihecli.workflow import ian, iocm, queue, stgcmt
from ihecli.workflow import mpps
from ihecli.workflow.mpps import MPPS_SOP_CLASS, PpsManager, unpack

log = logging.getLogger("ihe.workflow")

#: seconds after which a storage commitment request whose report is not out is reported by the outbox
LATE_REPORT_AFTER = 60.0


@dataclass
class WorkflowConfig:
    """What the profile's [archive] section says about the workflow services."""

    aet: str = "IHE_ARCHIVE"  # ours: calling AE title of what we send, Retrieve AE Title in reports
    mpps_forward: list[Node] = field(default_factory=list)  # PPS Manager: forward every step here
    ian_subscribers: list[Node] = field(default_factory=list)  # IAN (RAD-49) goes here
    commit_reply: dict[str, Node] = field(default_factory=dict)  # requester AET -> where its reports go
    commit_new_association: set[str] = field(default_factory=set)  # requester AETs: always a new association
    nodes: dict[str, Node] = field(default_factory=dict)  # known nodes by AE title (profile nodes, dest)
    hide_quality: bool = True  # 113001 notes hide the instances
    verify_checksums: bool = True  # storage commitment re-reads each file
    retry_base: float = 5.0  # outbox: first retry after this many seconds, then doubling
    poll: float = 0.5
    timeout: float = 30
    tls: tls.TlsConfig | None = None  # our certificate and CAs towards nodes marked tls (tls.for_node)

    @classmethod
    def from_settings(cls, settings, *, aet: str | None = None, nodes: dict[str, Node] | None = None,
                      tls_config: tls.TlsConfig | None = None):
        """From a profile's settings: archive.mpps_forward, ian_subscribers, commit_reply (AET=NODE),
        commit_new_association, hide_quality_rejects; ``nodes``: the C-MOVE destinations by AE title;
        ``tls_config``: for nodes marked tls (default: the profile's [tls])."""
        a = settings.archive
        known = {n.aet.upper(): n for n in settings.nodes.values()}
        known.update({k.upper(): v for k, v in (nodes or {}).items()})
        reply = {}
        for entry in a.commit_reply:
            if "=" not in entry:
                raise IheError(f"archive.commit_reply: {entry!r} is not CALLING_AET=NODE")
            k, v = entry.split("=", 1)
            reply[k.strip().upper()] = resolve_node(v.strip(), settings.nodes)
        return cls(aet=aet or a.aet,
                   mpps_forward=[resolve_node(x, settings.nodes) for x in a.mpps_forward],
                   ian_subscribers=[resolve_node(x, settings.nodes) for x in a.ian_subscribers],
                   commit_reply=reply, commit_new_association={x.strip().upper() for x in a.commit_new_association},
                   nodes=known, hide_quality=a.hide_quality_rejects,
                   tls=tls_config if tls_config is not None else settings.tls_config())


def attach(archive, *, hide_quality: bool = True) -> None:
    """Rejection notes on an archive: refuse rejected instances, act on notes as they are stored."""
    if getattr(archive, "_iocm_attached", False):
        return
    archive._iocm_attached = True
    archive.writer.refuse = iocm.refuse_rejected
    archive.after_store.append(lambda parsed, data, out: iocm.note_stored(archive, parsed, data,
                                                                           hide_quality=hide_quality))


class WorkflowServices:
    def __init__(self, archive, config: WorkflowConfig | None = None):
        self.archive = archive
        self.config = config or WorkflowConfig(aet=getattr(archive, "aet", "IHE_ARCHIVE"))
        attach(archive, hide_quality=self.config.hide_quality)
        self.runner = queue.Runner(archive.engine, archive.db_url, {
            "mpps-create": self._send_mpps_create,
            "mpps-set": self._send_mpps_set,
            "ian": self._send_ian,
            "stgcmt-report": self._send_report,
            "stgcmt-request": self._send_late_report,
        }, poll=self.config.poll, retry_base=self.config.retry_base, tick=self._tick)
        self.pps = PpsManager(archive.engine, forward=[str(n) for n in self.config.mpps_forward],
                              ian_wanted=bool(self.config.ian_subscribers), wake=self.runner.wake)

    # -- what the DICOM server asks ------------------------------------------------------------
    def add_contexts(self, ae) -> None:
        ae.add_supported_context(StorageCommitmentPushModel)
        ae.add_supported_context(ModalityPerformedProcedureStep)

    def handlers(self) -> list:
        return [(evt.EVT_N_ACTION, self._on_n_action), (evt.EVT_N_CREATE, self._on_n_create),
                (evt.EVT_N_SET, self._on_n_set)]

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def _tick(self) -> None:
        ian.notify_ready(self.archive.engine, [str(n) for n in self.config.ian_subscribers], self.config.aet)

    # -- MPPS (RAD-6/7/20/21) ------------------------------------------------------------------
    def _on_n_create(self, event):
        req = event.request
        if str(req.AffectedSOPClassUID) != MPPS_SOP_CLASS:
            return 0x0118, None  # no such SOP class
        try:
            ds = event.attribute_list
        except Exception as e:
            log.warning("N-CREATE from %s: unreadable attribute list: %s", event.assoc.requestor.ae_title, e)
            return 0x0110, None
        uid = str(req.AffectedSOPInstanceUID) if req.AffectedSOPInstanceUID else None
        out = self.pps.create(uid, ds, event.assoc.requestor.ae_title)
        log.info("MPPS N-CREATE %s from %s: 0x%04X %s", out.sop_uid or uid, event.assoc.requestor.ae_title,
                 out.status, out.comment)
        self._audit_received("C", event, out.sop_uid or uid or "", ds, out)
        if not out.ok:
            return out.status_dataset(with_list=False), None
        rsp = Dataset()
        if uid is None:
            rsp.AffectedSOPInstanceUID = out.sop_uid
        return 0x0000, rsp

    def _on_n_set(self, event):
        req = event.request
        if str(req.RequestedSOPClassUID) != MPPS_SOP_CLASS:
            return 0x0118, None
        try:
            mods = event.modification_list
        except Exception as e:
            log.warning("N-SET from %s: unreadable modification list: %s", event.assoc.requestor.ae_title, e)
            return 0x0110, None
        out = self.pps.set(str(req.RequestedSOPInstanceUID or ""), mods)
        log.info("MPPS N-SET %s from %s: 0x%04X %s", req.RequestedSOPInstanceUID, event.assoc.requestor.ae_title,
                 out.status, out.comment)
        if atna.enabled():
            step = mpps.get_step(self.archive.engine, str(req.RequestedSOPInstanceUID or ""))
            self._audit_received("U", event, str(req.RequestedSOPInstanceUID or ""), step, out)
        if not out.ok:
            return out.status_dataset(), None
        return 0x0000, None

    def _audit_received(self, action: str, event, sop_uid: str, step, out) -> None:
        """Procedure Record (ITI-20) of an N-CREATE or N-SET received, refused ones too."""
        if not atna.enabled():
            return
        try:
            r = event.assoc.requestor
            atna.record(mpps.audit_event(action, step, sop_uid, source=Peer(str(r.ae_title).strip(), r.address),
                                         destination=Peer.local(self.config.aet), status=out.status,
                                         comment=out.comment))
        except Exception as e:  # auditing never fails the request
            log.warning("MPPS audit event not recorded: %s", e)

    # -- Storage Commitment (RAD-10) -----------------------------------------------------------
    def _on_n_action(self, event):
        req = event.request
        if str(req.RequestedSOPClassUID) != stgcmt.SOP_CLASS:
            return 0x0118, None
        if str(req.RequestedSOPInstanceUID or "") != stgcmt.WELL_KNOWN_INSTANCE:
            return 0x0117, None  # invalid object instance
        if req.ActionTypeID != stgcmt.REQUEST_ACTION:
            return 0x0123, None  # no such action
        try:
            uid, refs = stgcmt.requested_refs(event.action_information)
        except Exception as e:
            log.warning("storage commitment request from %s refused: %s", event.assoc.requestor.ae_title, e)
            st = Dataset()
            st.Status = 0x0115  # invalid argument value
            st.ErrorComment = str(e)[:64]
            return st, None
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        # the request is kept before it is acknowledged: should this process die before the report
        # is out, the outbox makes and sends it later on a new association (when the node is known)
        target = self._report_target(calling)
        row = None
        if target is not None:
            with self.archive.engine.begin() as conn:
                row = queue.enqueue(conn, "stgcmt-request", str(target), stgcmt.pack_request(uid, refs), ref=uid,
                                    delay=LATE_REPORT_AFTER)
        sent = threading.Event()

        def on_sent(ev) -> None:
            if type(ev.message).__name__ == "N_ACTION_RSP":
                sent.set()

        assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
        threading.Thread(target=self._commit, name="ihe-stgcmt", daemon=True,
                         args=(assoc, calling, uid, refs, sent, on_sent, row, assoc.requestor.address)).start()
        log.info("storage commitment request %s from %s: %d references", uid, calling, len(refs))
        return 0x0000, None

    def _report_target(self, calling: str) -> Node | None:
        return self.config.commit_reply.get(calling.upper()) or self.config.nodes.get(calling.upper())

    def _commit(self, assoc, calling: str, uid: str, refs, sent: threading.Event, on_sent, row,
                address: str = "") -> None:
        try:
            checked = stgcmt.check_commitment(self.archive, refs, verify=self.config.verify_checksums)
            event_type, info = stgcmt.event_report(uid, checked, self.config.aet)
            stgcmt.audit_commitment(self.archive, checked, requester=calling, requester_host=address,
                                    aet=self.config.aet)
            sent.wait(10)  # the N-ACTION response goes first
            try:
                assoc.unbind(evt.EVT_DIMSE_SENT, on_sent)
            except Exception:
                pass
            # a requester that releases at once after the response does so within a few ms; its
            # A-RELEASE must reach the association before the report is sent, or the two cross
            time.sleep(0.2)
            if calling.upper() not in self.config.commit_new_association and assoc.is_established:
                try:
                    # a report crossing a release gets no answer: try a new association soon
                    assoc.dimse_timeout = min(assoc.dimse_timeout or 10, 10)
                    rsp = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                    stgcmt.WELL_KNOWN_INSTANCE)
                    status = rsp[0].Status if rsp and rsp[0] is not None and "Status" in rsp[0] else None
                    if status is not None:
                        if status != 0:
                            log.warning("storage commitment report %s: %s answered 0x%04X", uid, calling, status)
                        else:
                            log.info("storage commitment report %s sent to %s on its association", uid, calling)
                        if row is not None:
                            queue.replace_pending(self.archive.engine, row, done=True)
                        return
                except Exception as e:
                    log.info("storage commitment report %s: association gone (%s); a new one", uid, e)
            if row is None:
                log.error("storage commitment report %s: %s released the association and is not a known node "
                          "(add it to [nodes] or archive.commit_reply)", uid, calling)
                return
            queue.replace_pending(self.archive.engine, row, kind="stgcmt-report",
                                  payload=stgcmt.pack_report(event_type, info))
            self.runner.wake()
        except Exception as e:
            log.error("storage commitment %s failed: %s: %s", uid, type(e).__name__, e)

    # -- outbox senders ------------------------------------------------------------------------
    def _node(self, target: str) -> Node:
        """An outbox target (``str(node)``: ``tls://`` kept) as the node to associate with."""
        return resolve_node(target, {})

    def _tls(self, node: Node):
        return tls.for_node(node, self.config.tls)

    def _send_report(self, target: str, payload: bytes) -> None:
        event_type, info = stgcmt.unpack_report(payload)
        node = self._node(target)
        stgcmt.send_report_new_association(node, event_type, info, calling_aet=self.config.aet,
                                           timeout=self.config.timeout, tls=self._tls(node))

    def _send_late_report(self, target: str, payload: bytes) -> None:
        """A request whose report was never sent (the archive stopped first): checked and reported now."""
        uid, refs = stgcmt.unpack_request(payload)
        checked = stgcmt.check_commitment(self.archive, refs, verify=self.config.verify_checksums)
        event_type, info = stgcmt.event_report(uid, checked, self.config.aet)
        node = self._node(target)
        stgcmt.send_report_new_association(node, event_type, info, calling_aet=self.config.aet,
                                           timeout=self.config.timeout, tls=self._tls(node))
        stgcmt.audit_commitment(self.archive, checked, requester=node.aet, requester_host=node.host,
                                aet=self.config.aet)

    def _n_request(self, target: str, sop_class, op: str, uid: str, ds: Dataset) -> None:
        node = self._node(target)
        ae = dimse.client_ae(self.config.aet, timeout=self.config.timeout)
        ae.add_requested_context(sop_class)
        assoc = dimse.associate(ae, node, tls=self._tls(node), op=f"N-{op.upper()}", need=sop_class)
        try:
            if op == "create":
                status, _ = assoc.send_n_create(ds, sop_class, uid)
            else:
                status, _ = assoc.send_n_set(ds, sop_class, uid)
        finally:
            if assoc.is_established:
                assoc.release()
        if status is None or "Status" not in status:
            raise IheError(f"{node} sent no N-{op.upper()} response")
        code = int(status.Status)
        if code == 0x0111 and op == "create":
            code = 0  # already there: an earlier try reached it and its response was lost
        if sop_class == ModalityPerformedProcedureStep:
            self._audit_forwarded(op, node, uid, ds, code)
        if dimse.status_category(code) == "failure":
            raise queue.Permanent(f"{node} answered N-{op.upper()} with 0x{code:04X}")

    def _audit_forwarded(self, op: str, node: Node, uid: str, ds: Dataset, code: int) -> None:
        """Procedure Record (ITI-20) of a step forwarded by the PPS Manager (we are the SCU): the
        stored step names the patient and studies an N-SET does not carry."""
        if not atna.enabled():
            return
        try:
            step = ds if op == "create" else (mpps.get_step(self.archive.engine, uid) or ds)
            atna.record(mpps.audit_event("C" if op == "create" else "U", step, uid, source=Peer.local(self.config.aet),
                                         destination=Peer(node.aet, node.host), status=code))
        except Exception as e:
            log.warning("MPPS audit event not recorded: %s", e)

    def _send_mpps_create(self, target: str, payload: bytes) -> None:
        uid, ds = unpack(payload)
        self._n_request(target, ModalityPerformedProcedureStep, "create", uid, ds)

    def _send_mpps_set(self, target: str, payload: bytes) -> None:
        uid, ds = unpack(payload)
        self._n_request(target, ModalityPerformedProcedureStep, "set", uid, ds)

    def _send_ian(self, target: str, payload: bytes) -> None:
        uid, ds = unpack(payload)
        self._n_request(target, InstanceAvailabilityNotification, "create", uid, ds)


__all__ = ["WorkflowServices", "WorkflowConfig", "attach", "DimseFailure"]
