"""DIMSE transport glue over pynetdicom: sockets without Nagle, contexts, associations, statuses.

pynetdicom leaves Nagle's algorithm on; with Linux delayed ACKs every C-STORE then waits
~40 ms, so every association we open or accept sets TCP_NODELAY (``EVT_CONN_OPEN``).
"""
from __future__ import annotations

import socket
import time
from typing import Iterable

from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association

from ihecli.config import Node
from ihecli.errors import IheError, PeerUnreachable, reason
from ihecli.net import reactor

_configured = False


def configure() -> None:
    """Process-wide pynetdicom settings, set once."""
    global _configured
    if _configured:
        return
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # accept private and unknown storage SOP classes
    # send_c_store(path) sends the file's bytes without decoding them (when the peer accepted the
    # file's own transfer syntax); a Dataset argument is encoded as before
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    _send_encoded_as_is()
    _config.LOG_RESPONSE_IDENTIFIERS = False  # formatting each C-FIND match cost a tenth of a query
    _config.CODECS = ("utf8", "latin_1")  # AE titles arriving in non-ASCII are logged, not fatal
    reactor.install()  # associations wait for work instead of polling (see net.reactor)
    _receive_store_requests_directly()
    _configured = True


def _send_encoded_as_is() -> None:
    """Let pynetdicom send a dataset's bytes as they are when it carries them.

    pynetdicom's C-MOVE and C-GET services send only datasets that they encode themselves; for
    an archive sending thousands of stored files, decoding and re-encoding each was half the
    time of a sub-operation. A dataset with an ``encoded_as(implicit, little, deflated)``
    method returning bytes (or None when it must be re-encoded) skips that, and one with
    ``decoded()`` supplies the full dataset for a re-encoding."""
    import pynetdicom.association as assoc_module

    original = assoc_module.encode
    if getattr(original, "ihe_passthrough", False):
        return

    def encode(ds, is_implicit_vr, is_little_endian, deflated=False):
        encoded_as = getattr(ds, "encoded_as", None)
        if encoded_as is not None:
            raw = encoded_as(is_implicit_vr, is_little_endian, deflated)
            if raw is not None:
                return raw
            ds = ds.decoded()
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode.ihe_passthrough = True
    assoc_module.encode = encode


def _store_request(command: bytes):
    """The C-STORE primitive of a C-STORE-RQ command set (Implicit VR Little Endian), or None
    for any other command, or one this cannot read (pynetdicom then decodes it)."""
    from pynetdicom.dimse_primitives import C_STORE

    from ihecli.net.storesend import parse_command

    try:
        c = parse_command(command)
        if int.from_bytes(c[0x00000000], "little") != len(command) - 12:  # Command Group Length
            return None
        if int.from_bytes(c[0x00000100], "little") != 0x0001 or int.from_bytes(c[0x00000800], "little") == 0x0101:
            return None
        prim = C_STORE()
        prim.MessageID = int.from_bytes(c[0x00000110], "little")
        prim.AffectedSOPClassUID = c[0x00000002].rstrip(b"\0 ").decode("ascii")
        prim.AffectedSOPInstanceUID = c[0x00001000].rstrip(b"\0 ").decode("ascii")
        if 0x00000700 in c:
            prim.Priority = int.from_bytes(c[0x00000700], "little")
        if c.get(0x00001030):
            prim.MoveOriginatorApplicationEntityTitle = c[0x00001030].decode("ascii", "replace").strip(" \0")
        if c.get(0x00001031):
            prim.MoveOriginatorMessageID = int.from_bytes(c[0x00001031], "little")
        return prim
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        return None


def _receive_store_requests_directly() -> None:
    """C-STORE requests go from the P-DATA fragments to the C-STORE primitive without pydicom.

    pynetdicom decodes every command set into a pydicom Dataset and then reads each element
    of it through validating setters: about 0.18 ms of the DUL thread per C-STORE, an eighth
    of the CPU the archive spends on one. A C-STORE-RQ whose command arrives in one fragment
    is read here (net.storesend.parse_command) and its data set fragments are joined as they
    come; every other message, and any command this cannot read, goes through pynetdicom."""
    from io import BytesIO

    from pynetdicom import evt
    from pynetdicom.dimse import DIMSEServiceProvider

    original = DIMSEServiceProvider.receive_primitive
    if getattr(original, "ihe_direct", False):
        return

    def receive_primitive(self, primitive) -> None:
        pending = getattr(self, "_ihe_store", None)
        pdvs = primitive.presentation_data_value_list
        if pending is None:
            if self.message is not None or not pdvs or _config.STORE_RECV_CHUNKED_DATASET:
                return original(self, primitive)
            context_id, data = pdvs[0]
            if data[0] & 3 != 3 or self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
                return original(self, primitive)
            prim = _store_request(bytes(data[1:]))
            if prim is None:
                return original(self, primitive)
            pending = self._ihe_store = (context_id, prim, [])
            pdvs = pdvs[1:]
        context_id, prim, chunks = pending
        for _cid, data in pdvs:
            if data[0] & 1:  # a command before the data set ended: pynetdicom's error path
                self._ihe_store = None
                self.dul.event_queue.put("Evt19")
                return
            chunks.append(data[1:])
            if data[0] & 2:
                self._ihe_store = None
                prim.DataSet = BytesIO(b"".join(chunks))
                self.msg_queue.put((context_id, prim))
                return

    receive_primitive.ihe_direct = True
    DIMSEServiceProvider.receive_primitive = receive_primitive


class _HeldReactor:
    """Stands in for an association's reactor checkpoint and keeps its reactor paused.

    pynetdicom's requestor sends a C-STORE from another thread: it clears the checkpoint,
    waits for the reactor to pause, sends, waits for the response, sets it again. Between the
    reactor passing an already-set checkpoint and it marking itself running, the sender may
    take it for paused; a quick response is then consumed by the reactor as an "unexpected
    C-STORE service message" and the sender waits out the DIMSE timeout, failing every
    remaining sub-operation of a C-MOVE. On the sub-associations the archive opens for C-MOVE
    the reactor has nothing else to do, so it stays paused until the association ends."""

    def __init__(self, assoc):
        self._assoc = assoc

    def wait(self, timeout=None) -> bool:
        assoc = self._assoc
        while not assoc._kill and assoc.is_established:
            if not assoc.dul.is_alive() or assoc.acse.is_aborted():
                # The peer went away (connection closed, A-ABORT). pynetdicom leaves noticing
                # that to the reactor held here, so without this the association stayed
                # "established" and every later C-STORE waited out the DIMSE timeout in turn.
                # Mark it lost and wake a sender waiting for a response that will not come;
                # two markers, as the reactor's own read may take one.
                assoc.is_established = False
                for _ in range(2):
                    assoc.dimse.msg_queue.put((None, None))
                break
            time.sleep(0.005)
        return True

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def is_set(self) -> bool:
        return False


def hold_reactor(event) -> None:
    """EVT_ACCEPTED handler for every association we request: see _HeldReactor."""
    assoc = event.assoc
    if assoc.is_requestor and hasattr(assoc, "_reactor_checkpoint") and hasattr(assoc, "_kill"):
        assoc._reactor_checkpoint = _HeldReactor(assoc)


def nodelay(event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle's algorithm off on the association's socket."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, nodelay)

# C-MOVE and C-GET Pending responses are optional (PS3.4 C.4.2.3.1, C.4.3.3.1); pynetdicom sends
# one after every sub-operation, and encoding it cost a third of an archive's C-MOVE time. The
# archive sends at most one per PENDING_INTERVAL seconds (the first at once), as dcm4chee does.
PENDING_INTERVAL = 0.5


def fast_responses(event) -> None:
    """EVT_ACCEPTED handler for the archive's associations: thin out the Pending responses of
    C-MOVE and C-GET (see PENDING_INTERVAL), and send C-FIND Pending and C-STORE responses
    with command sets encoded by net.storesend instead of through pydicom (that encoding was
    a fifth of a C-FIND's time and a third of a C-STORE's). Other messages, and responses that
    carry an Error Comment, go through pynetdicom unchanged."""
    from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
    from pynetdicom.pdu_primitives import P_DATA

    from ihecli.net.storesend import find_rsp, store_rsp

    provider = getattr(event.assoc, "dimse", None)
    if provider is None or getattr(provider.send_msg, "ihe_fast", False):
        return
    send = provider.send_msg
    last = [0.0]

    def send_msg(primitive, context_id):
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None \
                and primitive.ErrorComment is None and primitive.OffendingElement is None \
                and primitive.AffectedSOPClassUID and primitive.AffectedSOPInstanceUID:
            cmd = store_rsp(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                            primitive.AffectedSOPInstanceUID, primitive.Status)
            max_pdu = provider.maximum_pdu_size
            if not max_pdu or len(cmd) <= max_pdu - 6:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + cmd))
                provider.dul.send_pdu(pdata)
                return
        if isinstance(primitive, C_FIND) and primitive.Status in (0xFF00, 0xFF01) \
                and primitive.MessageIDBeingRespondedTo is not None and primitive.Identifier is not None:
            ident = primitive.Identifier.getvalue()
            cmd = find_rsp(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                           primitive.Status, True)
            max_pdu = provider.maximum_pdu_size
            step = (max_pdu - 6) if max_pdu else len(ident) or 1
            if len(cmd) <= step:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + cmd))
                provider.dul.send_pdu(pdata)
                for off in range(0, len(ident), step):
                    pdata = P_DATA()
                    last_frag = off + step >= len(ident)
                    pdata.presentation_data_value_list.append(
                        (context_id, (b"\x02" if last_frag else b"\x00") + ident[off:off + step]))
                    provider.dul.send_pdu(pdata)
                return
        if isinstance(primitive, (C_MOVE, C_GET)) and primitive.Status == 0xFF00 \
                and primitive.NumberOfRemainingSuboperations:
            now = time.monotonic()
            if now - last[0] < PENDING_INTERVAL:
                return
            last[0] = now
        send(primitive, context_id)

    send_msg.ihe_fast = True
    provider.send_msg = send_msg


def client_ae(calling_aet: str, *, timeout: float = 30) -> AE:
    configure()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = 0
    return ae


def associate(ae: AE, node: Node, *, contexts=None, ext_neg=None, handlers=(), what: str = "",
              tls=None, serve_requests: bool = False, op: str = "", need=None) -> Association:
    """Open an association or raise a one-line error (unreachable: exit 4; rejected: exit 1).

    ``serve_requests``: the peer sends requests on it too (a storage commitment report), so
    pynetdicom's reactor runs to serve them instead of being held (see _HeldReactor).
    ``op`` (C-GET, N-CREATE, ...) and ``need`` (the abstract syntax it needs accepted as SCU)
    name what a peer that takes the association but not the presentation context does not
    offer: pynetdicom aborts by itself when no context at all was accepted, and the accepted
    contexts are seen before that (EVT_ACCEPTED)."""
    opened = []
    seen: list[list] = []
    held = [] if serve_requests else [(evt.EVT_ACCEPTED, hold_reactor)]
    try:
        assoc = ae.associate(node.host, node.port, contexts=contexts, ae_title=node.aet,
                             tls_args=(tls, node.host) if tls is not None else None,
                             ext_neg=ext_neg, evt_handlers=[NODELAY_HANDLER, (evt.EVT_CONN_OPEN, opened.append),
                                                            (evt.EVT_ACCEPTED, lambda e: seen.append(
                                                                list(e.assoc.accepted_contexts))),
                                                            *held, *handlers])
    except (OSError, ValueError) as e:
        raise PeerUnreachable(f"cannot reach {node}: {reason(e)}") from None
    if not opened:
        if tls is not None:
            _tls_probe(node, tls, ae.connection_timeout or 10)
        raise PeerUnreachable(f"cannot reach {node}: connection refused or timed out")
    if assoc.is_established:
        if need is not None and not any(cx.abstract_syntax == need and cx.as_scu for cx in assoc.accepted_contexts):
            assoc.release()
            raise IheError(_no_context(node, op, need))
        return assoc
    if seen and not seen[-1]:
        raise IheError(_no_context(node, op, need))
    if assoc.is_rejected:
        rsp = getattr(assoc.acceptor, "primitive", None)
        detail = ""
        if rsp is not None and getattr(rsp, "result_str", None):
            detail = f": {rsp.result_str}, {rsp.source_str}, {rsp.reason_str}"
        raise IheError(f"{node} rejected the association{detail} (calling AE title {ae.ae_title!r}{what})")
    if assoc.is_aborted:
        if tls is not None:
            raise IheError(f"{node} refused or aborted the association (over TLS: check our certificate, "
                           "AE titles and supported services)")
        raise IheError(f"{node} aborted the association (check AE titles and supported services)")
    raise PeerUnreachable(f"cannot reach {node}: no association (connection refused or timed out)")


def _no_context(node: Node, op: str, need) -> str:
    if need is None:
        return f"{node} accepted none of the presentation contexts offered{' for ' + op if op else ''}: it does not " \
               "offer that service to us"
    from pydicom.uid import UID

    return f"{node} accepted no {op} presentation context ({UID(need).name}): it does not offer {op} to us"


def _tls_probe(node: Node, ctx, timeout: float) -> None:
    """pynetdicom logs why a TLS connection failed and goes on; when the cause is the peer's
    certificate (refused by us), say so (exit 1, and the refusal is reported: audited)."""
    import ssl

    from ihecli.net import tls as tlsmod

    try:
        tlsmod.connect(node.host, node.port, ctx, timeout=timeout).close()
    except ssl.SSLCertVerificationError as e:
        raise IheError(f"{node}: TLS certificate not trusted ({e.verify_message})") from None
    except (OSError, ValueError):
        pass


def storage_contexts(pairs: Iterable[tuple[str, str]], limit: int = 128) -> list:
    """Presentation contexts for (SOP class, transfer syntax) pairs: each class with its own
    syntax, plus Explicit and Implicit VR Little Endian as fallbacks; at most ``limit``."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    by_class: dict[str, list[str]] = {}
    for cls, ts in pairs:
        lst = by_class.setdefault(cls, [])
        if ts and ts not in lst:
            lst.append(ts)
    contexts = []
    for cls, tss in by_class.items():
        for fallback in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if fallback not in tss:
                tss.append(fallback)
        contexts.append(build_context(cls, tss))
    if len(contexts) > limit:
        raise IheError(f"{len(contexts)} different SOP classes: more than the {limit} presentation contexts "
                       "one association can carry; send them in parts")
    return contexts


def status_category(status: int) -> str:
    if status == 0x0000:
        return "success"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"


def native_if_refused(ds, sop_class: str, transfer_syntax: str, accepted) -> object:
    """The data set to send to a peer that accepted ``accepted`` ((SOP class, transfer syntax)
    pairs): as it is, or, when it is compressed in a syntax the peer did not take for its class but
    the peer took a native one, decompressed, the same instance (its SOP Instance UID kept).
    pynetdicom converts between native syntaxes itself. Needs a decoder for the syntax
    (pylibjpeg): else this raises, and the object fails alone. A data set that carries its file
    (``decoded()``) is read whole first."""
    from pydicom.uid import UID

    ts = UID(transfer_syntax)
    if not ts.is_compressed or (sop_class, ts) in accepted \
            or not any(c == sop_class and not UID(t).is_compressed for c, t in accepted):
        return ds  # as stored; or nothing the peer takes, and the sub-operation fails as it must
    full = ds.decoded() if hasattr(ds, "decoded") else ds
    full.decompress(generate_instance_uid=False)
    return full
