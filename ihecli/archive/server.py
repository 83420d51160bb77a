"""The archive's DICOM services (Image Manager / Image Archive): Verification, Storage (RAD-8,
RAD-18 and every storage SOP class, private ones too), Query/Retrieve FIND, MOVE and GET for
Patient Root and Study Root (RAD-14, RAD-16).

``DicomServer`` is a controller: ``start()`` binds and returns the port once it accepts,
``stop()`` is idempotent. Each handler turns exceptions into the right DIMSE status and never
stops the listener.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_context, evt
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ihecli import atna
from ihecli.archive import Archive, QueryError
from ihecli.archive.ingest import part10
from ihecli.archive.scan import read_meta
from ihecli.atna import events as ev
from ihecli.atna.dicom import Tally, by_patient, header_keys, study_patients
from ihecli.atna.dicom import outcome as audit_outcome
from ihecli.atna.events import Peer
from ihecli.config import Node
from ihecli.errors import ArchiveError
from ihecli.net import dimse, tls
from ihecli.net.storesend import DirectStoreAssociation
from ihecli.workflow import pir

log = logging.getLogger("ihe.archive")

PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                PatientRootQueryRetrieveInformationModelGet}


def _root(sop_class: str) -> str:
    return "patient" if sop_class in PATIENT_ROOT else "study"


@dataclass
class _AssocStats:
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    finds: int = 0
    moved: int = 0
    move_failed: int = 0
    echoes: int = 0
    tally: Tally | None = None  # instances stored, for the audit trail (when a repository is configured)
    peer_node: Peer | None = None


class DicomServer:
    """The archive's DIMSE listener."""

    def __init__(self, archive: Archive, *, aet: str = "IHE_ARCHIVE", bind: str = "127.0.0.1", port: int = 11112,
                 destinations: dict[str, Node] | None = None, allow: list[str] | None = None,
                 max_pdu: int = 0, reuse_port: bool = False, services: list | None = None,
                 ssl_context=None, client_tls: tls.TlsConfig | None = None):
        dimse.configure()
        # Responses are built from indexed values that were checked at ingest; pydicom's check
        # of every value set (regular expressions per element) was half the cost of building a
        # C-FIND response. Stored objects are kept as received, so nothing else depends on it.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
        self.archive = archive
        self.aet, self.bind, self.port = aet, bind, port
        self.destinations = {k.upper(): v for k, v in (destinations or {}).items()}
        self.allow = list(allow or [])
        self.max_pdu = max_pdu
        self.reuse_port = reuse_port
        # more services (workflow): each adds its contexts and handlers, and starts and stops with us
        self.services = list(services or [])
        self.ssl_context = ssl_context  # TLS (ITI-19): a server context from ihecli.net.tls, or None
        self.client_tls = client_tls  # our certificate and CAs towards C-MOVE destinations marked tls
        self.server = None
        self._stats: dict[int, _AssocStats] = {}
        self._lock = threading.Lock()

    # -- controller ----------------------------------------------------------------------------
    def _ae(self):
        ae = _ArchiveAE(ae_title=self.aet)
        ae.client_tls = self.client_tls
        ae.maximum_pdu_size = self.max_pdu
        ae.maximum_associations = 64
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 120
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        # Storage: dimse.configure() sets pynetdicom's unrestricted storage service, which accepts
        # every storage, private and unknown SOP class with the first transfer syntax proposed
        # (the archive keeps objects as received), and C-GET's SCP/SCU role selection.
        for sop in (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet):
            ae.add_supported_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
        if self.allow:
            ae.require_calling_aet = self.allow
        for svc in self.services:
            svc.add_contexts(ae)
        return ae

    def start(self) -> int:
        """Bind and listen; returns the port (useful with port 0)."""
        if self.server is not None:
            return self.port
        ae = self._ae()
        handlers = [
            dimse.NODELAY_HANDLER,
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_ACCEPTED, dimse.fast_responses),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        for svc in self.services:
            handlers += svc.handlers()
            svc.start()
        if self.reuse_port or self.ssl_context is not None:
            # several worker processes listen on one port (the kernel spreads associations over
            # them); TLS handshakes run in each association's thread (see _Server)
            self.server = ae.make_server((self.bind, self.port), evt_handlers=handlers,
                                         server_class=_ReusePortServer if self.reuse_port else _Server)
            self.server.tls_context = self.ssl_context
            ae._servers.append(self.server)  # as start_server() does; shutdown() removes it
            threading.Thread(target=self.server.serve_forever, name="ihe-dicom-acceptor", daemon=True).start()
        else:
            self.server = ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]
        log.debug("%s listening on %s:%d", self.aet, self.bind, self.port)
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            srv, self.server = self.server, None
            srv.shutdown()
            for svc in self.services:
                svc.stop()
            log.debug("%s stopped", self.aet)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- association log -----------------------------------------------------------------------
    def _stats_for(self, event) -> _AssocStats:
        key = id(event.assoc)
        st = self._stats.get(key)
        if st is None:
            r = event.assoc.requestor
            st = self._stats.setdefault(key, _AssocStats(f"{r.ae_title}@{r.address}:{r.port}"))
            if atna.enabled():
                st.tally, st.peer_node = Tally(), Peer(str(r.ae_title).strip(), r.address)
        return st

    def _on_accepted(self, event) -> None:
        self._stats_for(event)

    def _on_rejected(self, event) -> None:
        r = event.assoc.requestor
        log.warning("association from %s@%s:%s rejected (calling AE title not allowed)", r.ae_title,
                    r.address, r.port)

    def _on_closed(self, event) -> None:
        st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        parts = []
        if st.stored or st.failed:
            parts.append(f"{st.stored} stored" + (f", {st.failed} failed" if st.failed else ""))
        if st.finds:
            parts.append(f"{st.finds} queries")
        if st.moved or st.move_failed:
            parts.append(f"{st.moved} sent" + (f", {st.move_failed} failed" if st.move_failed else ""))
        if st.echoes:
            parts.append(f"{st.echoes} echo")
        log.info("association %s %s: %s in %.1f s", st.peer, how, "; ".join(parts) or "nothing done",
                 time.monotonic() - st.started)
        if st.tally is not None and (st.tally.count or st.failed):
            # DICOM Instances Transferred (PS3.15 A.5.3.4), as the receiver: action Create
            for patients, studies in st.tally.per_patient():
                atna.record(ev.instances_transferred(source=st.peer_node, destination=Peer.local(self.aet),
                                                     studies=studies, patients=patients, action="C",
                                                     requestor="source", outcome=audit_outcome(st.stored, st.failed)))

    # -- services ------------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        self._stats_for(event).echoes += 1
        return 0x0000

    def _on_store(self, event) -> int:
        st = self._stats_for(event)
        req = event.request
        try:
            sop_uid = str(req.AffectedSOPInstanceUID or "")
            sop_class = str(req.AffectedSOPClassUID or "")
            if not sop_uid or not sop_class:
                raise ArchiveError("C-STORE request without Affected SOP Class/Instance UID", 0xC000)
            data = part10(event.encoded_dataset(include_meta=False), sop_class, sop_uid,
                          str(event.context.transfer_syntax), event.assoc.requestor.ae_title)
            stored = self.archive.store(data, expect_sop_uid=sop_uid, expect_sop_class=sop_class)
            if st.tally is not None:
                self._tally(st.tally, stored.study_uid, data, sop_class)
        except ArchiveError as e:
            st.failed += 1
            log.warning("C-STORE from %s refused (0x%04X): %s", st.peer, e.status, e)
            return e.status
        except Exception as e:  # never let one object stop the listener
            st.failed += 1
            log.error("C-STORE from %s failed: %s: %s", st.peer, type(e).__name__, e)
            return 0xA700
        st.stored += 1
        return 0x0000

    def _tally(self, tally: Tally, study_uid: str, data: bytes, sop_class: str) -> None:
        """Count a stored instance; its patient and accession are read once per study."""
        if study_uid in tally.studies:
            tally.add(study_uid, sop_class=sop_class)
        else:
            _study, pid, acc, _cls = header_keys(data)
            tally.add(study_uid, pid, acc, sop_class)

    def _on_find(self, event):
        st = self._stats_for(event)
        st.finds += 1
        root = _root(event.request.AffectedSOPClassUID)
        if atna.enabled():
            self._audit_query(event, st)
        try:
            ident = event.identifier
            with self.archive.connect() as conn:
                from ihecli.archive.query import Finder

                finder = Finder(conn, fuzzy=self.archive.fuzzy_names, aet=self.aet)
                for rsp in finder.find(ident, root):
                    if event.is_cancelled:
                        yield 0xFE00, None
                        return
                    yield 0xFF00, rsp
        except QueryError as e:
            log.warning("C-FIND from %s refused: %s", st.peer, e)
            yield e.status, None
            return
        except Exception as e:
            log.error("C-FIND from %s failed: %s: %s", st.peer, type(e).__name__, e)
            yield 0xC001, None
            return
        yield 0x0000, None

    def _refs_or_raise(self, event, st, what: str):
        root = _root(event.request.AffectedSOPClassUID)
        try:
            return self.archive.instances(event.identifier, root)
        except QueryError as e:
            log.warning("%s from %s refused: %s", what, st.peer, e)
            raise
        except Exception as e:
            log.error("%s from %s failed: %s: %s", what, st.peer, type(e).__name__, e)
            raise

    def _datasets(self, event, refs, st, what: str):
        # PIR: instances of patients that HL7 updated or merged carry the index's patient (decoded
        # only when their stored header differs); all others go out as stored
        current = pir.reconciled_for(self.archive, refs)
        for ref in refs:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            try:
                ds = StoredDataset(self.archive.file_path(ref), ref)
                if current and ref.study_uid in current:
                    ds = pir.coerce(ds, current[ref.study_uid], modifying_system=self.aet)
                if what == "C-GET":  # on the requestor's own association, in a syntax it took (as C-MOVE's sender)
                    ds = dimse.native_if_refused(ds, ref.sop_class, ref.transfer_syntax, {
                        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in event.assoc.accepted_contexts})
            except Exception as e:
                st.move_failed += 1
                log.error("cannot read %s for retrieve: %s", ref.sop_uid, e)
                yield 0xFF00, _unreadable(ref)
                continue
            st.moved += 1
            yield 0xFF00, ds

    def _audit_query(self, event, st) -> None:
        """Query (PS3.15 A.5.3.10): the C-FIND as received."""
        try:
            raw = event.request.Identifier.getvalue() if event.request.Identifier is not None else b""
        except Exception:
            raw = b""
        atna.record(ev.dicom_query(source=st.peer_node or Peer(st.peer), destination=Peer.local(self.aet),
                                   sop_class=str(event.request.AffectedSOPClassUID), query=raw,
                                   transfer_syntax=str(event.context.transfer_syntax)))

    def _retrieved(self, event, st, refs, dest: Peer, what: str):
        """Send the instances (C-MOVE, C-GET) between two audit events: Begin Transferring before,
        Instances Transferred (action Read) after (PS3.15 A.5.3.3, A.5.3.4)."""
        moved, failed = st.moved, st.move_failed
        moving = getattr(event.assoc.ae, "moving", None)  # set by _on_move, then by associate()
        if st.tally is None:
            try:
                yield from self._datasets(event, refs, st, what)
            finally:
                self._count_sub_operations(st, moving, what, moved, failed)
            return
        tally = Tally()
        for r in refs:
            tally.add(r.study_uid, sop_class=r.sop_class)
        groups = by_patient(tally.studies, study_patients(self.archive, tally.studies))  # one message per patient
        for patients, studies in groups:
            atna.record(ev.begin_transferring(source=Peer.local(self.aet), destination=dest, studies=studies,
                                              patients=patients, requestor=st.peer_node))
        try:
            yield from self._datasets(event, refs, st, what)
        finally:
            sent, unsent = st.moved - moved, st.move_failed - failed  # handed over; unreadable
            sub = getattr(moving, "sub", None) if what == "C-MOVE" else None
            if sub is not None:  # what the destination answered
                sent, unsent = sub.completed, unsent + sub.failed
            self._count_sub_operations(st, moving, what, moved, failed)
            for patients, studies in groups:
                atna.record(ev.instances_transferred(
                    source=Peer.local(self.aet), destination=dest, studies=studies, patients=patients, action="R",
                    requestor="destination" if dest is st.peer_node else "none",
                    outcome=audit_outcome(sent, unsent)))

    @staticmethod
    def _count_sub_operations(st, moving, what: str, moved: int, failed: int) -> None:
        """A C-MOVE's sent and failed counts (the association's log line) as the destination
        answered them, not as handed to the sender: a destination that went away midway
        leaves the rest failed."""
        sub = getattr(moving, "sub", None) if what == "C-MOVE" else None
        if sub is not None:
            unreadable = st.move_failed - failed
            st.moved = moved + sub.completed
            st.move_failed = failed + unreadable + sub.failed

    def _on_move(self, event):
        st = self._stats_for(event)
        dest_aet = (event.move_destination or b"")
        dest_aet = (dest_aet.decode("ascii", "replace") if isinstance(dest_aet, bytes) else str(dest_aet)).strip()
        node = self.destinations.get(dest_aet.upper())
        if node is None:
            log.warning("C-MOVE from %s to unknown destination %r", st.peer, dest_aet)
            yield None, None
            return
        # pynetdicom wants the destination, then the count, then the statuses; a failure before
        # any sub-operation is reported by raising (it answers with a failure status, 0xC514)
        refs = self._refs_or_raise(event, st, "C-MOVE")
        contexts = move_contexts((r.sop_class, r.transfer_syntax) for r in refs)
        if isinstance(getattr(event.assoc.ae, "moving", None), threading.local):
            event.assoc.ae.moving.sub = None  # associate() below puts this move's sub-association here
        # "direct": the sub-operations go out on our own synchronous sender (net.storesend)
        yield node.host, node.port, {"contexts": contexts or [build_context(Verification)], "direct": True,
                                     "node": node}
        yield len(refs)
        yield from self._retrieved(event, st, refs, Peer(dest_aet, node.host), "C-MOVE")

    def _on_get(self, event):
        st = self._stats_for(event)
        refs = self._refs_or_raise(event, st, "C-GET")  # pynetdicom answers a raise with 0xC411
        yield len(refs)
        yield from self._retrieved(event, st, refs, st.peer_node or Peer(st.peer), "C-GET")


def move_contexts(pairs, limit: int = 128) -> list:
    """Presentation contexts for a move's sub-association: for each SOP class one context per
    stored transfer syntax, so the destination can take the files as they are, and one with
    Explicit and Implicit VR Little Endian to fall back on. Past ``limit`` the fallbacks go
    first, then the classes beyond it (their instances fail and are listed as failed)."""
    by_class: dict[str, list[str]] = {}
    for cls, ts in pairs:
        lst = by_class.setdefault(cls, [])
        if ts and ts not in lst:
            lst.append(ts)
    own = [build_context(cls, [ts]) for cls, tss in by_class.items() for ts in tss]
    fallbacks = [build_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for cls in by_class]
    return (own + fallbacks)[:limit] if len(own) < limit else own[:limit]


class _ArchiveAE(AE):
    """The archive's AE: C-MOVE sub-associations asked for with ``direct=True`` are
    net.storesend's synchronous senders instead of pynetdicom associations, over TLS when the
    destination ``node`` asks for it (``client_tls``: our certificate and CAs)."""

    client_tls = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the sub-association of the C-MOVE this thread is serving (its counts go to the audit trail)
        self.moving = threading.local()

    def associate(self, addr, port, contexts=None, ae_title="ANY-SCP", *args, direct: bool = False, node=None,
                  **kwargs):
        if direct:
            sub = DirectStoreAssociation(self, addr, port, ae_title, list(contexts or []),
                                         timeout=self.dimse_timeout or 60,
                                         connect_timeout=self.connection_timeout or 30,
                                         ssl_context=tls.for_node(node, self.client_tls))
            self.moving.sub = sub
            return sub
        return super().associate(addr, port, contexts, ae_title, *args, **kwargs)


class _Server(ThreadedAssociationServer):
    """pynetdicom's server, with the TLS handshake done in the association's own thread: its
    server does it in the accepting thread, where one slow peer holds up every other and a
    refused peer goes unrecorded. ``ihecli.net.tls.server_handshake`` reports refusals, which
    the audit hook records as Security Alerts."""

    tls_context = None

    def process_request_thread(self, request, client_address) -> None:
        if self.tls_context is not None:
            try:
                request = tls.server_handshake(request, self.tls_context, service="DICOM",
                                               peer=f"{client_address[0]}:{client_address[1]}")
            except ConnectionError:
                return
        super().process_request_thread(request, client_address)


class _ReusePortServer(_Server):
    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class StoredDataset(Dataset):
    """A stored instance for a C-STORE sub-operation, sent as its file encodes it.

    It carries the file's bytes; net.dimse lets pynetdicom use them when the presentation
    context has the file's own transfer syntax, and decodes the file otherwise."""

    def __init__(self, path, ref=None):
        super().__init__()
        with open(path, "rb") as fh:
            data = fh.read()
        start = _dataset_start(data) if ref is not None else None
        if start is not None:
            # the index already holds the UIDs: only find where the data set begins
            meta = FileMetaDataset()
            meta.TransferSyntaxUID = ref.transfer_syntax
            meta.MediaStorageSOPClassUID = ref.sop_class
            meta.MediaStorageSOPInstanceUID = ref.sop_uid
        else:
            got = read_meta(data)
            if got is None or "MediaStorageSOPInstanceUID" not in got[0]:
                raise ValueError(f"{path}: no DICOM file meta")
            meta, start = got
        self.file_meta = meta
        self.SOPClassUID = meta.MediaStorageSOPClassUID
        self.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        self._body = data[start:]
        self._path = path

    def encoded_as(self, implicit: bool, little: bool, deflated: bool) -> bytes | None:
        ts = UID(self.file_meta.TransferSyntaxUID)
        if deflated or ts.is_deflated or (ts.is_implicit_VR, ts.is_little_endian) != (implicit, little):
            return None
        return self._body

    def decoded(self) -> Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(self._path)


def _dataset_start(data: bytes) -> int | None:
    """Where the data set of a Part-10 file begins, from its File Meta Information Group Length
    (None when the file does not start with that element)."""
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL" \
            or data[138:140] != b"\x04\x00":
        return None
    start = 144 + int.from_bytes(data[140:144], "little")
    return start if start <= len(data) else None


def _unreadable(ref) -> Dataset:
    """Stands for an instance whose file cannot be read: with no file meta its C-STORE fails,
    so pynetdicom counts a failed sub-operation and lists its UID in Failed SOP Instance UID List."""
    ds = Dataset()
    ds.SOPClassUID = ref.sop_class
    ds.SOPInstanceUID = ref.sop_uid
    return ds
