"""MLLP (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5 Appendix C; IHE ITI TF-2 Appendix C)
server and client: the transport of every HL7 v2 transaction (RAD-4/12/13, ITI-8/9/10).

Server::

    server = MllpServer(handler, bind="127.0.0.1", port=2575, ssl_context=None)
    port = server.start()   # listening when it returns (port 0: a free port)
    ...
    server.stop()           # idempotent

``handler(message: bytes) -> bytes`` gets each message (without the framing bytes) and returns
the acknowledgement; the server frames and sends it on the same connection. An exception in
the handler is answered with an AE acknowledgement (``on_error(message, exc) -> bytes``,
default ``ihecli.hl7.v2.nak``: ERR with the codes of an ``Hl7Error``, else 207) and never
stops the server or the connection. Connections are served by one thread each, messages on
one connection in order. Tolerated: bytes before the start block (VT) are skipped, a VT before
the end block restarts the frame, the end block FS may come without its CR. A message over
``max_size`` bytes is read to its end and answered AR without being handled. A connection
idle for ``idle_timeout`` seconds is closed, and so are new ones past ``max_connections``.
``ssl_context`` (server side) makes it MLLP over TLS. Every socket has TCP_NODELAY.
``current_peer()`` in a handler gives the "host:port" of the peer it answers (for audit).

Client::

    with MllpClient("127.0.0.1", 2575, timeout=30) as c:
        ack = c.send(message_bytes)     # the answer's bytes, framing removed

Connection failures and timeouts raise ``PeerUnreachable`` (exit status 4).

Hand-written: hl7apy's MLLP server reads byte by byte, closes the connection after each
message and has no size limit, idle timeout or TLS; python-hl7's is asyncio only.
"""
from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from typing import Callable

from ihecli.errors import IheError, PeerUnreachable, reason

log = logging.getLogger("ihe.mllp")

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
MAX_SIZE = 16 * 1024 * 1024  # bytes of one message
_local = threading.local()


def current_peer() -> str:
    """In a handler: the "host:port" of the peer whose message it handles ('' elsewhere)."""
    return getattr(_local, "peer", "")
HEAD = 8192  # bytes kept of an oversized message, to answer it


def frame(message: bytes) -> bytes:
    return VT + message + FS + CR


@dataclass
class Frame:
    data: bytes  # the message (the first HEAD bytes when oversized)
    oversized: bool = False


class Deframer:
    """Splits a byte stream into MLLP frames, tolerating what real senders do."""

    def __init__(self, max_size: int = MAX_SIZE):
        self.max_size = max_size
        self.buf = bytearray()
        self.in_frame = False
        self.oversized = False
        self.skip_cr = False
        self.stray = 0  # bytes skipped outside frames

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        i, n = 0, len(data)
        if self.skip_cr and n:
            self.skip_cr = False
            if data[0:1] == CR:
                i = 1
        while i < n:
            if not self.in_frame:
                j = data.find(VT, i)
                if j < 0:
                    self.stray += n - i
                    break
                self.stray += j - i
                self.in_frame, self.oversized = True, False
                self.buf.clear()
                i = j + 1
                continue
            j_fs = data.find(FS, i)
            j_vt = data.find(VT, i, j_fs if j_fs >= 0 else n)
            if j_vt >= 0:  # a new start block before the end: the sender started over
                log.debug("MLLP start block inside a frame: %d bytes dropped", len(self.buf) + j_vt - i)
                self.buf.clear()
                self.oversized = False
                i = j_vt + 1
                continue
            end = j_fs if j_fs >= 0 else n
            self._add(data[i:end])
            if j_fs < 0:
                break
            out.append(Frame(bytes(self.buf), self.oversized))
            self.buf.clear()
            self.in_frame = False
            i = j_fs + 1
            if i < n:
                if data[i:i + 1] == CR:
                    i += 1
            else:
                self.skip_cr = True
        return out

    def _add(self, chunk: bytes) -> None:
        if self.oversized:
            return
        self.buf += chunk
        if len(self.buf) > self.max_size:
            self.oversized = True
            del self.buf[HEAD:]


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class MessageTooLarge(Exception):
    pass


_current = threading.local()


def current_peer() -> str:
    """In a handler: the address (host:port) of the peer whose message it handles ('' elsewhere)."""
    return getattr(_current, "peer", "")


def _default_on_error(message: bytes, exc: BaseException) -> bytes:
    from ihecli.hl7.v2 import Hl7Error, nak

    if isinstance(exc, MessageTooLarge):
        exc = Hl7Error(str(exc), ack_code="AR", code=207)
    return nak(message, exc)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, owner: "MllpServer"):
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.owner._serve(self.request, self.client_address)


class MllpServer:
    """An MLLP listener (controller: start() binds and returns the port, stop() is idempotent)."""

    def __init__(self, handler: Callable[[bytes], bytes], *, bind: str = "127.0.0.1", port: int = 2575,
                 ssl_context: ssl.SSLContext | None = None, max_size: int = MAX_SIZE,
                 idle_timeout: float = 300, on_error: Callable[[bytes, BaseException], bytes] | None = None,
                 name: str = "MLLP", max_connections: int = 64):
        self.handler = handler
        self.bind, self.port = bind, port
        self.ssl_context = ssl_context
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.on_error = on_error or _default_on_error
        self.name = name
        self.max_connections = max_connections
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> int:
        """Bind and listen; returns the port (useful with port 0)."""
        if self._server is not None:
            return self.port
        self._server = _TcpServer((self.bind, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"ihe-{self.name.lower()}-acceptor", daemon=True)
        self._thread.start()
        log.debug("%s listening on %s:%d", self.name, self.bind, self.port)
        return self.port

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # wake the connection threads blocked in recv
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        log.debug("%s stopped", self.name)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- one connection ----------------------------------------------------------------------
    def _serve(self, sock: socket.socket, peer) -> None:
        _nodelay(sock)
        where = f"{peer[0]}:{peer[1]}"
        _local.peer = where
        with self._lock:
            full = len(self._conns) >= self.max_connections
        if full:
            log.warning("%s: connection from %s refused: %d connections open", self.name, where, self.max_connections)
            return
        if self.ssl_context is not None:
            from ihecli.net.tls import server_handshake

            try:
                sock = server_handshake(sock, self.ssl_context, peer=where, service=self.name,
                                        timeout=min(self.idle_timeout, 10.0))
            except ConnectionError as e:
                log.warning("%s: TLS handshake with %s refused: %s", self.name, where, e)
                return
        sock.settimeout(self.idle_timeout)
        with self._lock:
            self._conns.add(sock)
        deframer = Deframer(self.max_size)
        count = 0
        _current.peer = where
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    log.info("%s: connection from %s idle for %g s: closed", self.name, where, self.idle_timeout)
                    return
                except (OSError, ssl.SSLError):
                    return
                if not data:
                    return
                for fr in deframer.feed(data):
                    reply = self._answer(fr, where)
                    count += 1
                    try:
                        sock.sendall(frame(reply))
                    except (OSError, ssl.SSLError):
                        return
        finally:
            with self._lock:
                self._conns.discard(sock)
            if deframer.stray:
                log.info("%s: %d bytes outside MLLP frames from %s skipped", self.name, deframer.stray, where)
            log.debug("%s: connection from %s closed after %d messages", self.name, where, count)
            try:
                sock.close()
            except OSError:
                pass

    def _answer(self, fr: Frame, where: str) -> bytes:
        try:
            if fr.oversized:
                raise MessageTooLarge(f"message larger than {self.max_size} bytes: not processed")
            reply = self.handler(fr.data)
            if not isinstance(reply, (bytes, bytearray)):
                raise TypeError(f"the handler returned {type(reply).__name__}, not bytes")
            return bytes(reply)
        except Exception as e:  # never let one message stop the server
            if not hasattr(e, "ack_code"):
                log.error("%s: message from %s failed: %s: %s", self.name, where, type(e).__name__, e)
            try:
                return self.on_error(fr.data, e)
            except Exception as e2:
                log.error("%s: cannot build the error answer: %s: %s", self.name, type(e2).__name__, e2)
                from ihecli.hl7.v2 import nak

                return nak(b"", e)


class MllpClient:
    """One MLLP connection: send() a message, get the acknowledgement's bytes."""

    def __init__(self, host: str, port: int, *, timeout: float = 30, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, max_size: int = MAX_SIZE):
        self.host, self.port, self.timeout = host, port, timeout
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.max_size = max_size
        self.sock: socket.socket | None = None
        self._deframer = Deframer(max_size)
        self._pending: list[Frame] = []
        self._answered = False  # an answer came on this connection (its TLS link was taken)

    def connect(self) -> "MllpClient":
        if self.sock is not None:
            return self
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise PeerUnreachable(f"cannot reach {self.host}:{self.port}: {reason(e)}") from None
        _nodelay(sock)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
            except (ssl.SSLError, OSError) as e:
                sock.close()
                raise self._tls_failed(e) from None
        self.sock = sock
        return self

    def _tls_failed(self, e: BaseException) -> IheError:
        """A refused TLS link (by the peer or by us) in words, exit 1 as on the other links: the
        certificates must change, retrying does not help. With TLS 1.3 the server's refusal of our
        certificate comes after the handshake, at the first read."""
        from ihecli.net.tls import client_refusal

        return IheError(f"{self.host}:{self.port}: TLS failed: {client_refusal(e)}")

    def send(self, message: bytes) -> bytes:
        """Send one message and wait for the answer (its bytes without framing)."""
        self.connect()
        assert self.sock is not None
        try:
            self.sock.sendall(frame(message))
            while not self._pending:
                data = self.sock.recv(65536)
                if not data:
                    raise PeerUnreachable(f"{self.host}:{self.port} closed the connection without answering")
                self._pending += self._deframer.feed(data)
        except socket.timeout:
            self.close()
            raise PeerUnreachable(f"{self.host}:{self.port} did not answer within {self.timeout:g} s") from None
        except ssl.SSLError as e:
            self.close()
            raise self._tls_failed(e) from None
        except ConnectionError as e:
            first = not self._answered
            self.close()
            if self.ssl_context is not None and first:  # TLS 1.3: our certificate refused
                raise self._tls_failed(e) from None
            raise PeerUnreachable(f"connection to {self.host}:{self.port} failed: {reason(e)}") from None
        except OSError as e:
            self.close()
            raise PeerUnreachable(f"connection to {self.host}:{self.port} failed: {reason(e)}") from None
        self._answered = True
        fr = self._pending.pop(0)
        if fr.oversized:
            raise PeerUnreachable(f"{self.host}:{self.port} answered with more than {self.max_size} bytes")
        return fr.data

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
            self._answered = False
            self._deframer = Deframer(self.max_size)
            self._pending = []

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()
