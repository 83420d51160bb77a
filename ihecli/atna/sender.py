"""Sending audit messages to an Audit Record Repository (ITI-20), in the background, with a disk spool.

``AuditSender`` owns one thread: callers only put events on a queue. The thread builds each
message, sends it over TLS (RFC 5425 octet counting), plain TCP or UDP (RFC 5426), and when the
repository cannot be reached writes it to the spool folder instead: one file per message, named
so that the names sort in the order the events happened. Spooled messages go first once the
repository answers again, in order; the spool is bounded (the oldest files give way, with a
warning). Several processes (the archive's workers) may share one spool: one of them at a time
drains it, under a file lock.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ihecli.atna import syslog
from ihecli.errors import UsageError
from ihecli.net import tls

log = logging.getLogger("ihe.audit")

DEFAULT_PORTS = {"tls": 6514, "tcp": 601, "udp": 514}


@dataclass(frozen=True)
class Target:
    scheme: str  # tls | tcp | udp
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_target(url: str) -> Target:
    """``tls://HOST[:6514]``, ``udp://HOST[:514]`` or ``tcp://HOST[:601]`` (no TLS, explicitly)."""
    text = url.strip()
    if "://" not in text:
        raise UsageError(f"bad audit repository {url!r}: tls://HOST:6514, udp://HOST:514 or tcp://HOST:PORT")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UsageError(f"bad audit repository {url!r}: the scheme is tls, udp or tcp")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"bad port in audit repository {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"bad audit repository {url!r}: no host")
    return Target(scheme, parts.hostname, port)


class Spool:
    """A folder of messages waiting for the repository, oldest first, at most ``max_bytes``."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = 50 << 20):
        self.dir = Path(folder)
        self.max_bytes = max_bytes
        self._seq = itertools.count()
        self.dropped = 0

    def files(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.iterdir() if p.suffix == ".msg")
        except FileNotFoundError:
            return []

    def __len__(self) -> int:
        return len(self.files())

    def add(self, msg: bytes, when_ns: int | None = None) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{when_ns or time.time_ns():020d}-{os.getpid():07d}-{next(self._seq):08d}.msg"
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(msg)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.dir / name
        os.replace(tmp, final)
        self._bound()
        return final

    def _bound(self) -> None:
        files = self.files()
        sizes = []
        for p in files:
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        total = sum(sizes)
        i = 0
        while total > self.max_bytes and i < len(files) - 1:
            try:
                files[i].unlink()
                self.dropped += 1
            except FileNotFoundError:
                pass
            total -= sizes[i]
            i += 1
        if i:
            log.warning("audit spool %s over %d bytes: dropped the %d oldest messages", self.dir, self.max_bytes, i)

    def lock(self):
        """A non-blocking exclusive lock on the spool (None when another process holds it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def unlock(fd) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class RepositoryRefused(ConnectionError):
    """The repository accepted the connection, then refused us (our certificate, usually)."""


class MessageTooLarge(ValueError):
    """A message no UDP datagram can carry (RFC 5426): it can never go over UDP, so it is not
    spooled for a retry (it would hold up every message behind it)."""


class Connection:
    """One link to the repository; ``send`` raises OSError when the message did not go."""

    def __init__(self, target: Target, ctx: ssl.SSLContext | None, timeout: float = 5.0):
        self.target, self.ctx, self.timeout = target, ctx, timeout
        self.sock: socket.socket | None = None

    def _alive(self) -> bool:
        """A stream the repository closed reads as EOF; sending on it would lose the message."""
        if self.sock is None:
            return False
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
            if r:
                if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                    self.sock.recv(self.sock.pending())
                    return True
                self.sock.setblocking(False)
                try:
                    data = self.sock.recv(4096)
                finally:
                    self.sock.setblocking(True)
                    self.sock.settimeout(self.timeout)
                return bool(data)
            return True
        except ssl.SSLWantReadError:  # only a TLS record without data (a session ticket)
            return True
        except (OSError, ValueError):
            return False

    def send(self, msg: bytes) -> None:
        t = self.target
        if t.scheme == "udp":
            if self.sock is None:
                info = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_DGRAM)[0]
                self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
                self.sock.connect(info[4])
            try:
                self.sock.send(msg)
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    raise MessageTooLarge(f"{len(msg):,} bytes are too many for one UDP datagram (RFC 5426): "
                                          "send it over TLS (tls://HOST:6514)") from None
                raise
            return
        if not self._alive():
            self.close()
            self.sock = tls.connect(t.host, t.port, self.ctx if t.scheme == "tls" else None, timeout=self.timeout)
            if t.scheme == "tls":
                self._accepted()
            self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(syslog.frame(msg))
        except OSError:
            self.close()
            raise

    def _accepted(self, wait: float = 0.25) -> None:
        """With TLS 1.3 the server judges our certificate after our side of the handshake is done:
        a refusal arrives as an alert or as the connection closing. Wait a moment for either, so
        that no message goes into a connection the repository is about to drop."""
        r, _, _ = select.select([self.sock], [], [], wait)
        if not r:
            return
        try:
            self.sock.setblocking(False)
            data = self.sock.recv(1)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as e:
            self.close()
            raise RepositoryRefused(f"the repository refused the TLS connection: {tls.describe(e)}") from None
        finally:
            if self.sock is not None:
                self.sock.setblocking(True)
        if not data:
            self.close()
            raise RepositoryRefused("the repository closed the TLS connection (our certificate refused?)")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class AuditSender:
    """The background sender behind ``atna.record``."""

    def __init__(self, target: Target, *, tls_config: tls.TlsConfig | None = None, spool_dir: str | os.PathLike,
                 spool_max_bytes: int = 50 << 20, app: str = "ihe", timeout: float = 3.0,
                 build: Callable[[object], bytes] | None = None, queue_size: int = 10000):
        self.target = target
        self.ctx = tls.context(tls_config or tls.TlsConfig(), server=False) if target.scheme == "tls" else None
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.app = app
        self.timeout = timeout
        self.build = build
        self.queue_size = queue_size
        self.sent = 0
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._q: queue.Queue = queue.Queue(self.queue_size)
        self._conn = Connection(self.target, self.ctx, self.timeout)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.5
        self._spooling = bool(self.spool.files())
        self._thread = threading.Thread(target=self._run, name="ihe-audit-sender", daemon=True)
        self._thread.start()

    # -- callers -------------------------------------------------------------------------------
    def submit(self, item) -> None:
        """Queue an event (or a ready syslog message as bytes); never blocks, never raises."""
        if os.getpid() != self._pid:  # a forked worker: the thread did not come along
            self._start()
        with self._pending_lock:
            self._pending += 1
            self._idle.clear()
        try:
            self._q.put_nowait(item)
        except queue.Full:
            # the repository is slow and the queue full: keep the message on disk instead
            try:
                self.spool.add(self._message(item))
                self._spooling = True
            except Exception as e:
                log.error("audit message lost (queue full, spool failed: %s)", e)
            self._done()

    def _done(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            if self._pending <= 0:
                self._pending = 0
                self._idle.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message was sent or spooled; True when also nothing is spooled."""
        self._idle.wait(timeout)
        end = time.monotonic() + timeout
        while self._spooling and time.monotonic() < end:
            self._retry_at = 0
            time.sleep(0.05)
        return self._idle.is_set() and not self._spooling

    def close(self, timeout: float = 5.0) -> None:
        """Send or spool what is queued, then stop the thread (idempotent)."""
        if self._stop.is_set() or os.getpid() != self._pid:
            return
        self._idle.wait(timeout)
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout)
        self._conn.close()

    # -- the thread ------------------------------------------------------------------------------
    def _message(self, item) -> bytes:
        if isinstance(item, (bytes, bytearray)):
            return bytes(item)
        xml = self.build(item) if self.build else bytes(item)
        severity = 5 if getattr(item, "outcome", 0) == 0 else 4
        when = getattr(item, "time", None)
        return syslog.message(xml, app=self.app, severity=severity, when=when)

    def _run(self) -> None:
        while True:
            wait = None
            if self._spooling:
                wait = max(0.05, self._retry_at - time.monotonic())
            try:
                item = self._q.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is None and self._stop.is_set():
                self._drain_queue_to_spool()
                return
            if item is not None:
                try:
                    self._handle(self._message(item))
                except Exception as e:  # a bad event must not stop the sender
                    log.error("audit message not built: %s: %s", type(e).__name__, e)
                finally:
                    self._done()
            if self._spooling and time.monotonic() >= self._retry_at:
                self._drain_spool()

    def _handle(self, msg: bytes) -> None:
        if self._spooling:
            self.spool.add(msg)
            if time.monotonic() >= self._retry_at:
                self._drain_spool()
            return
        try:
            self._conn.send(msg)
            self.sent += 1
        except MessageTooLarge as e:
            log.error("audit message to %s dropped: %s", self.target, e)
        except OSError as e:
            log.warning("audit repository %s unreachable (%s): spooling to %s", self.target, e, self.spool.dir)
            self.spool.add(msg)
            self._spooling = True
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def _drain_spool(self) -> None:
        fd = self.spool.lock()
        if fd is None:  # another process is draining
            self._schedule_retry()
            return
        try:
            for path in self.spool.files():
                try:
                    msg = path.read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    self._conn.send(msg)
                    self.sent += 1
                except MessageTooLarge as e:  # spooled while the repository was away: it will never go
                    log.error("audit message %s to %s dropped: %s", path.name, self.target, e)
                except OSError:
                    self._schedule_retry()
                    return
                path.unlink(missing_ok=True)
            self._spooling = False
            self._backoff = 0.5
            log.info("audit spool sent to %s", self.target)
        finally:
            Spool.unlock(fd)

    def _drain_queue_to_spool(self) -> None:
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            if item is None:
                continue
            try:
                self.spool.add(self._message(item))
            except Exception:
                pass
            self._done()


def send_messages(target: Target, messages: list[bytes], *, tls_config: tls.TlsConfig | None = None,
                  timeout: float = 10.0) -> int:
    """Send syslog messages now, over one connection (ITI-20, no spool): the number sent.
    OSError (ssl.SSLError included) when the repository cannot be reached or refuses us."""
    ctx = tls.context(tls_config or tls.TlsConfig(), server=False) if target.scheme == "tls" else None
    conn = Connection(target, ctx, timeout)
    try:
        n = 0
        for m in messages:
            try:
                conn.send(m)
            except MessageTooLarge as e:
                e.index = n  # which message: those before it went
                raise
            n += 1
        if conn.sock is not None and target.scheme != "udp":
            # the messages are on their way; a repository that refuses us closes the connection
            conn.sock.settimeout(0.3)
            try:
                if conn.sock.recv(1) == b"":
                    raise RepositoryRefused("the repository closed the connection")
            except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                pass
            except ssl.SSLError as e:
                raise RepositoryRefused(f"the repository refused the TLS connection: {tls.describe(e)}") from None
        return n
    finally:
        conn.close()
