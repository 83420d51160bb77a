"""Audit Record Repository (ITI-20 Record Audit Event, receiver): syslog over TLS, TCP and UDP.

``AuditRepository`` is a controller: ``start()`` binds its listeners (TLS with RFC 5425 octet
counting, plain TCP when TLS is explicitly off, UDP per RFC 5426; any of them can be off) and
returns when they accept; ``stop()`` stores what was received and is idempotent. Every message
received is stored in the archive database (``audit_events``), parsed when it is an audit message
in DICOM or RFC 3881 format, kept as received with the reason otherwise.

Hostile peers: a TLS handshake must finish within ``handshake_timeout`` (refusals are reported
through ``ihecli.net.tls``, which the audit hook turns into a Security Alert); a frame must
arrive whole within ``frame_timeout`` once it began (slow senders are cut off); frames over
``max_frame`` octets, garbage where a frame length should be, and too many connections are
refused and logged. Messages already received are kept in every case.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import insert

from ihecli.archive.index import make_engine
from ihecli.archive.schema import metadata
from ihecli.archive.tables_audit import audit_events, audit_participants
from ihecli.atna import syslog
from ihecli.atna.parse import AuditParseError, parse_audit
from ihecli.net import tls

log = logging.getLogger("ihe.audit")


@dataclass
class RepositoryStats:
    received: int = 0
    stored: int = 0
    invalid: int = 0  # stored, but not a readable audit message
    refused_frames: int = 0  # connections cut for bad framing, size or slowness
    refused_tls: int = 0


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def event_rows(raw: bytes, *, peer: str, transport: str) -> tuple[dict, list[tuple[str, str]]]:
    """The audit_events row and (kind, value) participant rows of one received syslog message."""
    msg = syslog.parse(raw[3:] if raw.startswith(syslog.BOM) else raw)
    row = {"received": _now(), "peer": peer, "transport": transport, "syslog_host": msg.hostname or None,
           "syslog_app": msg.app or None, "msgid": msg.msgid or None,
           "message": msg.body.decode("utf-8", "replace")}
    parts: list[tuple[str, str]] = []
    try:
        a = parse_audit(msg.body)
    except AuditParseError as e:
        row.update(format="invalid", error=str(e)[:500], message=raw.decode("utf-8", "replace"))  # all of it
        return row, parts
    row.update(format=a.format, event_id=a.event_id, event_name=a.event_name, action=a.action, outcome=a.outcome,
               event_time=a.event_time, event_types=", ".join(c for c, _ in a.types) or None,
               type_names=", ".join(d for _, d in a.types) or None, source_id=a.source_id,
               users="\n".join(a.users) or None, patients="\n".join(a.patients) or None)
    for u in dict.fromkeys(a.users):
        parts.append(("user", u[:1000]))
    for p in dict.fromkeys(a.patients):
        parts.append(("patient", p[:1000]))
        bare = p.split("^", 1)[0]
        if bare and bare != p:
            parts.append(("patient", bare[:1000]))
    return row, parts


def _sanitized(row: dict) -> dict:
    """Text a database can store: no NUL characters (PostgreSQL refuses them), shown as U+FFFD."""
    return {k: (v.replace("\x00", "\ufffd") if isinstance(v, str) else v) for k, v in row.items()}


class _Writer(threading.Thread):
    """Stores received messages in batches (one transaction per batch)."""

    def __init__(self, engine, stats: RepositoryStats, on_stored=None):
        super().__init__(name="ihe-audit-writer", daemon=True)
        self.engine = engine
        self.stats = stats
        self.q: queue.Queue = queue.Queue()
        self.on_stored = on_stored
        self._idle = threading.Condition()
        self._pending = 0

    def put(self, raw: bytes, peer: str, transport: str) -> None:
        with self._idle:
            self._pending += 1
        self.q.put((raw, peer, transport))

    def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _insert(self, rows) -> None:
        """One transaction: the events in one statement (ids back in order), then their participants."""
        if not rows:
            return
        keys = [c.name for c in audit_events.columns if c.name != "id"]
        values = [{k: row.get(k) for k in keys} for row, _ in rows]
        with self.engine.begin() as conn:
            ids = conn.execute(insert(audit_events).returning(audit_events.c.id, sort_by_parameter_order=True),
                               values).scalars().all()
            parts = [{"event_fk": eid, "kind": k, "value": v} for eid, (_, ps) in zip(ids, rows) for k, v in ps]
            if parts:
                conn.execute(insert(audit_participants), parts)

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 500:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._store(batch)
                    return
                batch.append(nxt)
            self._store(batch)

    def _store(self, batch) -> None:
        rows = []
        for raw, peer, transport in batch:
            try:
                rows.append(event_rows(raw, peer=peer, transport=transport))
            except Exception as e:  # never lose a message to a parser bug: keep it as received
                rows.append(({"received": _now(), "peer": peer, "transport": transport, "format": "invalid",
                              "error": f"{type(e).__name__}: {e}"[:500],
                              "message": raw.decode("utf-8", "replace")}, []))
        rows = [(_sanitized(r), [(k, v.replace("\x00", "\ufffd")) for k, v in parts]) for r, parts in rows]
        try:
            self._insert(rows)
        except Exception as e:
            # one row the database refuses must not cost the others: store them one by one
            log.warning("storing %d audit messages together failed (%s: %s); storing one by one", len(rows),
                        type(e).__name__, e)
            kept = []
            for row, parts in rows:
                for attempt in range(3):
                    try:
                        self._insert([(row, parts)])
                        kept.append((row, parts))
                        break
                    except Exception as e1:
                        if attempt == 2:
                            log.error("audit message from %s not stored: %s: %s", row.get("peer"),
                                      type(e1).__name__, e1)
                        time.sleep(0.1 * (attempt + 1))
            rows = kept
        self.stats.stored += len(rows)
        self.stats.invalid += sum(1 for r, _ in rows if r["format"] == "invalid")
        with self._idle:
            self._pending -= len(batch)
            self._idle.notify_all()
        if self.on_stored:
            self.on_stored(len(rows))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, repo: "AuditRepository"):
        self.repo = repo

    def datagram_received(self, data: bytes, addr) -> None:
        self.repo._received(data, f"{addr[0]}:{addr[1]}", "udp")


class AuditRepository:
    """The Audit Record Repository's listeners and its store."""

    def __init__(self, db_url: str, *, bind: str = "127.0.0.1", tls_port: int | None = 6514,
                 udp_port: int | None = None, tcp_port: int | None = None,
                 tls_config: tls.TlsConfig | None = None, max_frame: int = syslog.MAX_FRAME,
                 frame_timeout: float = 10.0, idle_timeout: float = 600.0, handshake_timeout: float = 10.0,
                 max_connections: int = 256):
        self.db_url = db_url
        self.bind = bind
        self.tls_port, self.udp_port, self.tcp_port = tls_port, udp_port, tcp_port
        self.ctx = tls.context(tls_config, server=True) if tls_port is not None else None
        self.max_frame = max_frame
        self.frame_timeout, self.idle_timeout, self.handshake_timeout = frame_timeout, idle_timeout, handshake_timeout
        self.max_connections = max_connections
        self.stats = RepositoryStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list = []
        self._connections = 0
        self._writer: _Writer | None = None
        self.engine = None

    # -- controller --------------------------------------------------------------------------------
    def start(self) -> dict[str, int]:
        """Bind the listeners; returns {"tls": port, "udp": port, "tcp": port} of those on."""
        if self._thread is not None:
            return self.ports
        self.engine = make_engine(self.db_url)
        metadata.create_all(self.engine)
        self._writer = _Writer(self.engine, self.stats)
        self._writer.start()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._bind())
            except BaseException as e:
                for srv in self._servers:  # the listeners already bound
                    srv.close()
                self._servers.clear()
                failure.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="ihe-audit-repository", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join(5)
            self._thread = None
            self._writer.q.put(None)
            self._writer.join(5)
            self.engine.dispose()
            raise failure[0]
        return self.ports

    @property
    def ports(self) -> dict[str, int]:
        return {k: v for k, v in (("tls", self.tls_port), ("tcp", self.tcp_port), ("udp", self.udp_port))
                if v is not None}

    async def _bind(self) -> None:
        for kind, bind in (("tls", self._bind_tls), ("tcp", self._bind_tcp), ("udp", self._bind_udp)):
            port = {"tls": self.tls_port, "tcp": self.tcp_port, "udp": self.udp_port}[kind]
            if port is None:
                continue
            try:
                await bind()
            except OSError as e:
                hint = " (ports below 1024 need root)" if e.errno == 13 and 0 < port < 1024 else ""
                # asyncio words it "error while attempting to bind on address (...): ..."
                why = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
                label = {"tls": "TLS syslog", "tcp": "TCP syslog", "udp": "UDP syslog"}[kind]
                host = f"[{self.bind}]" if ":" in self.bind else self.bind
                raise OSError(e.errno, f"{host}:{port} ({label}): {why}{hint}") from None

    async def _bind_tls(self) -> None:
        if self.tls_port is not None:
            srv = await asyncio.start_server(lambda r, w: self._serve(r, w, "tls"), self.bind, self.tls_port,
                                             limit=self.max_frame + 64, reuse_address=True)
            self._servers.append(srv)
            self.tls_port = srv.sockets[0].getsockname()[1]

    async def _bind_tcp(self) -> None:
        if self.tcp_port is not None:
            srv = await asyncio.start_server(lambda r, w: self._serve(r, w, "tcp"), self.bind, self.tcp_port,
                                             limit=self.max_frame + 64, reuse_address=True)
            self._servers.append(srv)
            self.tcp_port = srv.sockets[0].getsockname()[1]

    async def _bind_udp(self) -> None:
        loop = asyncio.get_running_loop()
        if self.udp_port is not None:
            family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            try:
                sock.bind((self.bind, self.udp_port))
            except OSError:
                sock.close()
                raise
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
            self._servers.append(transport)
            self.udp_port = sock.getsockname()[1]

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listeners and store what was received (idempotent)."""
        if self._thread is None:
            return
        loop, thread, self._thread = self._loop, self._thread, None

        async def close() -> None:
            for s in self._servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._servers.clear()
        self._writer.q.put(None)
        self._writer.join(timeout)
        self.engine.dispose()

    def wait_stored(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` messages were stored (for tests and benchmarks)."""
        end = time.monotonic() + timeout
        while self.stats.stored < count and time.monotonic() < end:
            time.sleep(0.01)
        return self.stats.stored >= count

    def flush(self, timeout: float = 10.0) -> bool:
        return self._writer.wait_idle(timeout) if self._writer else True

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- receiving -----------------------------------------------------------------------------------
    def _received(self, raw: bytes, peer: str, transport: str) -> None:
        self.stats.received += 1
        self._writer.put(raw, peer, transport)

    def _refuse(self, peer: str, why: str) -> None:
        self.stats.refused_frames += 1
        log.warning("audit repository: connection from %s closed: %s", peer, why)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str) -> None:
        addr = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{addr[0]}:{addr[1]}"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self._connections >= self.max_connections:
            self._refuse(peer, f"more than {self.max_connections} connections")
            writer.close()
            return
        self._connections += 1
        try:
            if transport == "tls":
                try:
                    await writer.start_tls(self.ctx, ssl_handshake_timeout=self.handshake_timeout)
                except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as e:
                    self.stats.refused_tls += 1
                    tls.report_refused(peer, tls.describe(e), "audit repository")
                    return
            await self._frames(reader, peer, transport)
        except asyncio.CancelledError:
            # stopping; ending normally, since Python 3.11's stream callback calls exception() on the task
            return
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except Exception as e:  # a bug must not stop the listener
            log.error("audit repository: connection from %s failed: %s: %s", peer, type(e).__name__, e)
        finally:
            self._connections -= 1
            try:
                writer.close()
            except Exception:
                pass

    async def _frames(self, reader: asyncio.StreamReader, peer: str, transport: str) -> None:
        while True:
            try:
                first = await asyncio.wait_for(reader.read(1), self.idle_timeout)
            except asyncio.TimeoutError:
                self._refuse(peer, f"idle for {self.idle_timeout:.0f} s")
                return
            if not first:
                return
            try:
                if first.isdigit():
                    # RFC 5425 octet counting: MSG-LEN SP SYSLOG-MSG
                    digits = first
                    while True:
                        c = await asyncio.wait_for(reader.readexactly(1), self.frame_timeout)
                        if c == b" ":
                            break
                        if not c.isdigit() or len(digits) >= 9:
                            self._refuse(peer, "bad frame length (not an RFC 5425 octet count)")
                            return
                        digits += c
                    n = int(digits)
                    if n > self.max_frame:
                        self._refuse(peer, f"frame of {n} octets, over the {self.max_frame} limit")
                        return
                    if n == 0:
                        continue
                    data = await asyncio.wait_for(reader.readexactly(n), self.frame_timeout)
                elif first == b"<" or first == syslog.BOM[:1]:
                    # non-transparent framing (RFC 6587 3.4.2): a message per line
                    try:
                        line = await asyncio.wait_for(reader.readuntil(b"\n"), self.frame_timeout)
                    except asyncio.LimitOverrunError:
                        self._refuse(peer, f"line over the {self.max_frame} octet limit")
                        return
                    data = (first + line).rstrip(b"\r\n")
                elif first in b"\r\n":
                    continue
                else:
                    self._refuse(peer, f"garbage instead of a frame (first octet 0x{first[0]:02x})")
                    return
            except asyncio.TimeoutError:
                self._refuse(peer, f"frame not complete within {self.frame_timeout:.0f} s")
                return
            except asyncio.IncompleteReadError:
                self._refuse(peer, "connection closed inside a frame")
                return
            self._received(data, peer, transport)
