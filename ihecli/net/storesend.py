"""C-STORE sub-operations of a C-MOVE, sent on one blocking socket in the handler's own thread.

pynetdicom sends each C-STORE of a C-MOVE through its association machinery: the request is
queued to the sub-association's DUL thread, the response comes back through another queue, and
every hand-over between threads waits for the GIL. That was most of the time of a C-MOVE (about
3 ms per image, where Orthanc needs 1.4). Nothing else in the archive needs that machinery for
these sub-associations: they only ever carry C-STORE requests, one at a time.

So ``DirectStoreAssociation`` negotiates the association with pynetdicom's own PDU classes
(A-ASSOCIATE-RQ/AC/RJ, where speed does not matter) and then writes the C-STORE requests and
reads their responses itself. The per-message part is written by hand because no library offers
a synchronous DIMSE writer: a command set in Implicit VR Little Endian (PS3.7 section 6.3.1,
Annex E) and P-DATA-TF framing (PS3.8 section 9.3.5), a few dozen lines.

With a client TLS context (``ssl_context``: the destination node asks for TLS, see
``ihecli.net.tls.for_node``) the socket is wrapped before the association is negotiated; a
handshake that fails (an untrusted certificate is reported to the audit trail as a refusal) fails
every sub-operation, so the C-MOVE response counts and lists them.

It quacks like the parts of ``pynetdicom.association.Association`` that pynetdicom's C-MOVE
service uses (``is_established``, ``send_c_store``, ``release``, ``dul.socket.close``), so the
archive's AE hands it to that service in place of a pynetdicom association (see
``ArchiveAE.associate``).
"""
from __future__ import annotations

import logging
import socket
import struct
from types import SimpleNamespace

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from ihecli.net import tls

log = logging.getLogger("ihe.dimse")

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
OUR_MAX_PDU = 262144  # what we accept from the peer (responses are tiny)


class DimseError(Exception):
    """The association failed: refused, aborted, closed or timed out."""


def _element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        raise ValueError("odd-length command value")
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(v: str) -> bytes:
    b = v.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _ae(v: str) -> bytes:
    b = v.encode("ascii", "replace")
    return b + b" " if len(b) % 2 else b


def store_rq(msg_id: int, sop_class: str, sop_uid: str, originator_aet: str | None = None,
             originator_id: int | None = None) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian, with its group length (PS3.7 9.3.1.1)."""
    body = [
        _element(0x00000002, _uid(sop_class)),
        _element(0x00000100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
        _element(0x00000110, struct.pack("<H", msg_id & 0xFFFF)),
        _element(0x00000700, struct.pack("<H", 0x0000)),  # Priority: medium
        _element(0x00000800, struct.pack("<H", 0x0001)),  # a data set follows (anything but 0x0101)
        _element(0x00001000, _uid(sop_uid)),
    ]
    if originator_aet:
        body.append(_element(0x00001030, _ae(originator_aet.strip())))
    if originator_id is not None:
        body.append(_element(0x00001031, struct.pack("<H", originator_id & 0xFFFF)))
    rest = b"".join(body)
    return _element(0x00000000, struct.pack("<I", len(rest))) + rest


def find_rsp(msg_id: int, sop_class: str, status: int, identifier: bool) -> bytes:
    """A C-FIND-RSP command set (PS3.7 9.3.2.2), Implicit VR Little Endian, with its group length."""
    rest = b"".join([
        _element(0x00000002, _uid(sop_class)),
        _element(0x00000100, struct.pack("<H", 0x8020)),  # Command Field: C-FIND-RSP
        _element(0x00000120, struct.pack("<H", msg_id & 0xFFFF)),
        _element(0x00000800, struct.pack("<H", 0x0001 if identifier else 0x0101)),
        _element(0x00000900, struct.pack("<H", status)),
    ])
    return _element(0x00000000, struct.pack("<I", len(rest))) + rest


def store_rsp(msg_id: int, sop_class: str, sop_uid: str, status: int) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2) without Error Comment, Implicit VR Little Endian."""
    rest = b"".join([
        _element(0x00000002, _uid(sop_class)),
        _element(0x00000100, struct.pack("<H", 0x8001)),  # Command Field: C-STORE-RSP
        _element(0x00000120, struct.pack("<H", msg_id & 0xFFFF)),
        _element(0x00000800, struct.pack("<H", 0x0101)),  # no data set
        _element(0x00000900, struct.pack("<H", status)),
        _element(0x00001000, _uid(sop_uid)),
    ])
    return _element(0x00000000, struct.pack("<I", len(rest))) + rest


def parse_command(data: bytes) -> dict[int, bytes]:
    """Elements of a command set (Implicit VR Little Endian): {tag: value bytes}."""
    out, i, n = {}, 0, len(data)
    while i + 8 <= n:
        group, elem, length = struct.unpack_from("<HHI", data, i)
        i += 8
        out[(group << 16) | elem] = data[i:i + length]
        i += length
    return out


class _Socket:
    """The one socket of a DirectStoreAssociation, with exact-length reads."""

    def __init__(self, sock: socket.socket):
        self.socket = sock

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.socket.recv(n - len(buf))
            if not chunk:
                raise DimseError("the peer closed the connection")
            buf += chunk
        return bytes(buf)

    def read_pdu(self) -> tuple[int, bytes]:
        head = self.recv_exact(6)
        kind, length = head[0], struct.unpack(">I", head[2:6])[0]
        if length > 64 * 1024 * 1024:
            raise DimseError(f"PDU of {length} bytes from the peer")
        return kind, head + self.recv_exact(length)

    def close(self) -> None:
        try:
            self.socket.close()
        except OSError:
            pass


class DirectStoreAssociation:
    """A storage association we requested, sending C-STORE requests synchronously."""

    def __init__(self, ae: AE, host: str, port: int, called_aet: str, contexts: list[PresentationContext],
                 timeout: float = 60, connect_timeout: float = 30, ssl_context=None):
        self.ae = ae
        self.called_aet = called_aet.strip() if isinstance(called_aet, str) else called_aet.decode().strip()
        self.is_established = False
        self.peer_max_pdu = 0
        self.accepted: dict[str, list[tuple[int, str]]] = {}  # SOP class -> [(context id, TS)]
        self._broken: str | None = None
        self.completed = self.failed = 0  # sub-operations, as the destination answered them
        self.tls = False
        self.dul = SimpleNamespace(socket=None)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as e:
            log.error("cannot reach move destination %s@%s:%s: %s", self.called_aet, host, port, e)
            self.dul.socket = _Socket(socket.socket())
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            try:
                sock = tls.client_handshake(sock, ssl_context, host=host, port=port, service="DICOM C-MOVE")
            except (OSError, ValueError) as e:
                # pynetdicom answers a destination it cannot associate with 0xA801 (Move Destination
                # unknown), which would send the requester looking for a wrong AE title: "established"
                # but broken, every sub-operation fails and is counted and listed instead
                self._broken = f"TLS handshake with {self.called_aet}@{host}:{port} failed: {tls.describe(e)}"
                log.error("C-MOVE destination: %s", self._broken)
                self.sock = self.dul.socket = _Socket(socket.socket())
                self.is_established = True
                return
        sock.settimeout(timeout)
        self.tls = ssl_context is not None
        self.sock = self.dul.socket = _Socket(sock)
        try:
            self._negotiate(contexts)
        except (OSError, DimseError, ValueError) as e:
            log.error("association with move destination %s@%s:%s failed: %s", self.called_aet, host, port, e)
            self.sock.close()

    # -- association ---------------------------------------------------------------------------
    def _negotiate(self, contexts: list[PresentationContext]) -> None:
        prim = A_ASSOCIATE()
        prim.application_context_name = UID(APPLICATION_CONTEXT)
        prim.calling_ae_title = self.ae.ae_title
        prim.called_ae_title = self.called_aet
        for i, cx in enumerate(contexts):
            cx.context_id = 2 * i + 1
        prim.presentation_context_definition_list = contexts
        ml = MaximumLengthNotification()
        ml.maximum_length_received = OUR_MAX_PDU
        ic = ImplementationClassUIDNotification()
        ic.implementation_class_uid = self.ae.implementation_class_uid
        user = [ml, ic]
        if self.ae.implementation_version_name:
            iv = ImplementationVersionNameNotification()
            iv.implementation_version_name = self.ae.implementation_version_name
            user.append(iv)
        prim.user_information = user
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(prim)
        self.sock.socket.sendall(rq.encode())
        kind, pdu = self.sock.read_pdu()
        if kind == 0x03:
            rj = A_ASSOCIATE_RJ()
            rj.decode(pdu)
            p = rj.to_primitive()
            raise DimseError(f"association rejected: {p.result_str}, {p.source_str}, {p.reason_str}")
        if kind != 0x02:
            raise DimseError(f"unexpected PDU type 0x{kind:02X} instead of A-ASSOCIATE-AC")
        ac = A_ASSOCIATE_AC()
        ac.decode(pdu)
        acp = ac.to_primitive()
        by_id = {cx.context_id: cx for cx in contexts}
        for res in acp.presentation_context_definition_results_list:
            cx = by_id.get(res.context_id)
            if cx is not None and res.result == 0 and res.transfer_syntax:
                self.accepted.setdefault(str(cx.abstract_syntax), []).append(
                    (res.context_id, str(res.transfer_syntax[0])))
        for item in acp.user_information or []:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = item.maximum_length_received or 0
        self.is_established = True

    def release(self) -> None:
        if not self.is_established:
            return
        self.is_established = False
        try:
            if self._broken is None:
                self.sock.socket.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
                while True:
                    kind, _ = self.sock.read_pdu()
                    if kind in (0x06, 0x07):
                        break
        except (OSError, DimseError):
            pass
        finally:
            self.sock.close()

    def abort(self) -> None:
        if self.is_established:
            self.is_established = False
            try:
                ab = A_ABORT_RQ()
                ab.source, ab.reason_diagnostic = 0x00, 0x00
                self.sock.socket.sendall(ab.encode())
            except (OSError, ValueError):
                pass
            self.sock.close()

    # -- C-STORE ---------------------------------------------------------------------------------
    def _context_for(self, sop_class: str, file_ts: str) -> tuple[int, str]:
        offers = self.accepted.get(sop_class)
        if not offers:
            raise DimseError(f"the destination accepted no presentation context for {sop_class}")
        for cid, ts in offers:
            if ts == file_ts:
                return cid, ts
        for pref in NATIVE:
            for cid, ts in offers:
                if ts == pref:
                    return cid, ts
        return offers[0]

    def _encoded(self, dataset, ts: str) -> bytes:
        t = UID(ts)
        have = UID(dataset.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(dataset, "file_meta", ()) \
            else None
        # the stored bytes as they are: in their own syntax, or a native one of the same encoding
        # (compressed pixel data is never sent under a native syntax's name)
        as_is = have is not None and (have == t or not have.is_compressed)
        raw = dataset.encoded_as(t.is_implicit_VR, t.is_little_endian, t.is_deflated) \
            if as_is and hasattr(dataset, "encoded_as") else None
        if raw is not None:
            return raw
        from pynetdicom.dsutils import encode

        ds = dataset.decoded() if hasattr(dataset, "decoded") else dataset
        if ds.file_meta.TransferSyntaxUID.is_compressed and not t.is_compressed:
            # needs a decoder for the file's syntax (pylibjpeg): else this raises; the same instance
            ds.decompress(generate_instance_uid=False)
        elif ds.file_meta.TransferSyntaxUID != t:
            if t.is_compressed:
                raise DimseError(f"cannot convert {ds.file_meta.TransferSyntaxUID.name} to {t.name}")
        out = encode(ds, t.is_implicit_VR, t.is_little_endian, t.is_deflated)
        if out is None:
            raise DimseError("cannot encode the data set")
        return out

    def _send_pdvs(self, cid: int, data: bytes, command: bool) -> None:
        # PS3.8 9.3.5: PDU header (6), PDV item length (4), context id (1), control header (1)
        max_data = (self.peer_max_pdu - 6) if self.peer_max_pdu else 1 << 22
        max_data = max(max_data, 32)
        view = memoryview(data)
        n, off = len(view), 0
        sock = self.sock.socket
        while True:
            chunk = view[off:off + max_data]
            off += len(chunk)
            last = off >= n
            ctrl = (0x01 if command else 0x00) | (0x02 if last else 0x00)
            head = struct.pack(">BBIIBB", 0x04, 0, len(chunk) + 6, len(chunk) + 2, cid, ctrl)
            if self.tls:  # an SSLSocket has no sendmsg; one record per PDV rather than two
                sock.sendall(b"".join((head, chunk)))
            else:
                sock.sendmsg([head, chunk])
            if last:
                return

    def _read_response(self) -> dict[int, bytes]:
        command = bytearray()
        while True:
            kind, pdu = self.sock.read_pdu()
            if kind == 0x07:
                raise DimseError("the destination aborted the association")
            if kind == 0x05:
                raise DimseError("the destination asked to release the association during a C-STORE")
            if kind != 0x04:
                raise DimseError(f"unexpected PDU type 0x{kind:02X} instead of P-DATA-TF")
            i, n = 6, len(pdu)
            while i + 6 <= n:
                length = struct.unpack_from(">I", pdu, i)[0]
                ctrl = pdu[i + 5]
                if ctrl & 0x01:
                    command += pdu[i + 6:i + 4 + length]
                    if ctrl & 0x02:
                        return parse_command(bytes(command))
                i += 4 + length

    def send_c_store(self, dataset, msg_id: int = 1, originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        """Send one stored instance; returns the response's status as a Dataset (``.Status``).

        Raises when the instance cannot be sent (pynetdicom's C-MOVE service then counts a
        failed sub-operation and lists the instance's UID)."""
        try:
            status = self._send_c_store(dataset, msg_id, originator_aet, originator_id)
        except DimseError:
            self.failed += 1
            raise
        if status.Status == 0x0000 or 0xB000 <= status.Status <= 0xBFFF:  # success or warning
            self.completed += 1
        else:
            self.failed += 1
        return status

    def _send_c_store(self, dataset, msg_id, originator_aet, originator_id) -> Dataset:
        if self._broken:
            raise DimseError(self._broken)
        if not self.is_established:
            raise DimseError("no association with the destination")
        meta = getattr(dataset, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise DimseError(f"instance {getattr(dataset, 'SOPInstanceUID', '?')} cannot be read")
        sop_class, sop_uid = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
        cid, ts = self._context_for(sop_class, str(meta.TransferSyntaxUID))
        data = self._encoded(dataset, ts)
        if isinstance(originator_aet, bytes):
            originator_aet = originator_aet.decode("ascii", "replace")
        try:
            self._send_pdvs(cid, store_rq(msg_id, sop_class, sop_uid, originator_aet, originator_id), True)
            self._send_pdvs(cid, data, False)
            rsp = self._read_response()
        except (OSError, DimseError) as e:
            self._broken = f"association with the destination lost: {e}"
            self.sock.close()
            self.is_established = False
            raise DimseError(self._broken) from None
        status = Dataset()
        raw = rsp.get(0x00000900)
        status.Status = struct.unpack("<H", raw[:2])[0] if raw and len(raw) >= 2 else 0xC000
        return status
