"""The archive's outbox: DIMSE requests to other nodes, kept in the index database until sent.

MPPS forwarding (PPS Manager, RAD-6/7 onward), Instance Availability Notifications (RAD-49)
and storage commitment reports that need a new association (RAD-10) are queued here: a row is
committed before the request that caused it is answered, so nothing acknowledged is lost, and a
restarted archive sends what was left. Each target gets its requests in order (an MPPS N-SET
never overtakes its N-CREATE): a failing target blocks only its own queue and is retried with
a growing delay.

One runner per database sends: archive processes sharing a database elect it with a file lock
(the others keep trying, so another takes over when it dies); rows are claimed by a
conditional UPDATE as well, so two runners never send one row twice.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import delete, func, insert, select, update

from ihecli.archive.index import now, sqlite_path
from ihecli.archive.tables_workflow import outbox

log = logging.getLogger("ihe.workflow")

#: a sender raises on failure; its message is kept as the row's last error
Sender = Callable[[str, bytes], None]


class Permanent(Exception):
    """A sender's failure that no retry will cure (the peer refused the request): the row is
    marked failed and the target's next request goes."""


@dataclass
class Item:
    id: int
    kind: str
    target: str
    ref: str | None
    state: str
    attempts: int
    next_try: datetime
    last_error: str | None
    created: datetime
    done_at: datetime | None


def enqueue(conn, kind: str, target: str, payload: bytes, ref: str | None = None, *, delay: float = 0) -> int:
    """Add a request to the outbox within the caller's transaction (due after ``delay`` seconds);
    returns its id."""
    t = now()
    return conn.execute(insert(outbox).values(kind=kind, target=target, ref=ref, payload=payload, state="pending",
                                              attempts=0, next_try=t + timedelta(seconds=delay),
                                              created=t)).inserted_primary_key[0]


def replace_pending(engine, item_id: int, *, kind: str | None = None, payload: bytes | None = None,
                    done: bool = False) -> bool:
    """Change a row nobody is sending yet: mark it done, or give it a new kind and payload, due now.
    False when the runner took it meanwhile."""
    values: dict = {"state": "done", "done_at": now()} if done else {"next_try": now()}
    if kind is not None:
        values["kind"] = kind
    if payload is not None:
        values["payload"] = payload
    with engine.begin() as conn:
        return bool(conn.execute(update(outbox).where(outbox.c.id == item_id, outbox.c.state == "pending")
                                 .values(**values)).rowcount)


def items(engine, *, ref: str | None = None, state: str | None = None, limit: int = 1000) -> list[Item]:
    """Outbox rows, oldest first (for listings and tests)."""
    q = select(*(c for c in outbox.c if c.name != "payload")).order_by(outbox.c.id).limit(limit)
    if ref is not None:
        q = q.where(outbox.c.ref == ref)
    if state is not None:
        q = q.where(outbox.c.state == state)
    with engine.connect() as conn:
        return [Item(**dict(r._mapping)) for r in conn.execute(q)]


def backoff(attempts: int, base: float) -> float:
    """Seconds before the next try after ``attempts`` failures: base, 2 base, 4 base ... up to 5 min."""
    return min(300.0, base * (2 ** max(0, attempts - 1)))


class Runner:
    """Sends the outbox, in a thread, while it holds the database's runner lock."""

    def __init__(self, engine, db_url: str, senders: dict[str, Sender], *, poll: float = 0.5,
                 retry_base: float = 5.0, keep_done: timedelta = timedelta(days=7),
                 tick: Callable[[], object] | None = None):
        self.engine, self.senders, self.tick = engine, senders, tick
        self.poll, self.retry_base, self.keep_done = poll, retry_base, keep_done
        self._lock_path = _lock_path(db_url)
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ihe-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        t, self._thread = self._thread, None
        if t is None:
            return
        self._stop.set()
        self._wake.set()
        t.join(30)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def wake(self) -> None:
        """Look at the outbox now (something was queued by this process)."""
        self._wake.set()

    @property
    def leading(self) -> bool:
        return self._lock_fd is not None

    def _try_lead(self) -> bool:
        if self._lock_fd is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        # rows a dead runner was sending go out again (at least once, never lost)
        with self.engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.state == "sending").values(state="pending"))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._try_lead():
                    if self.tick is not None:
                        self.tick()
                    self.run_once()
            except Exception as e:  # the database may be briefly unavailable: keep going
                log.error("outbox: %s: %s", type(e).__name__, e)
            self._wake.wait(self.poll if self.leading else max(self.poll, 2.0))
            self._wake.clear()

    def run_once(self) -> int:
        """Send what is due, the oldest request of each target first. Returns how many were sent."""
        t = now()
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.id, outbox.c.kind, outbox.c.target, outbox.c.next_try,
                                       outbox.c.attempts)
                                .where(outbox.c.state.in_(("pending", "sending")))
                                .order_by(outbox.c.id)).all()
        heads: dict[str, tuple] = {}
        for r in rows:
            heads.setdefault(r.target, r)  # the oldest unsent of each target, due or not
        sent = 0
        for r in heads.values():
            if self._stop.is_set():
                break
            if r.next_try > t:
                continue
            with self.engine.begin() as conn:
                claimed = conn.execute(update(outbox).where(outbox.c.id == r.id, outbox.c.state == "pending")
                                       .values(state="sending")).rowcount
                payload = conn.execute(select(outbox.c.payload).where(outbox.c.id == r.id)).scalar() \
                    if claimed else None
            if not claimed:
                continue
            sender = self.senders.get(r.kind)
            try:
                if sender is None:
                    raise RuntimeError(f"no sender for {r.kind!r} requests")
                sender(r.target, payload)
            except Permanent as e:
                log.error("outbox: %s to %s refused, not retried: %s", r.kind, r.target, e)
                with self.engine.begin() as conn:
                    conn.execute(update(outbox).where(outbox.c.id == r.id).values(
                        state="failed", attempts=r.attempts + 1, last_error=str(e)[:500], done_at=now()))
                continue
            except Exception as e:
                wait = backoff(r.attempts + 1, self.retry_base)
                log.warning("outbox: %s to %s failed (attempt %d, next in %.0f s): %s", r.kind, r.target,
                            r.attempts + 1, wait, e)
                with self.engine.begin() as conn:
                    conn.execute(update(outbox).where(outbox.c.id == r.id).values(
                        state="pending", attempts=r.attempts + 1, last_error=str(e)[:500],
                        next_try=now() + timedelta(seconds=wait)))
                continue
            with self.engine.begin() as conn:
                conn.execute(update(outbox).where(outbox.c.id == r.id).values(
                    state="done", attempts=r.attempts + 1, done_at=now(), last_error=None))
            log.info("outbox: %s sent to %s", r.kind, r.target)
            sent += 1
        if sent:
            with self.engine.begin() as conn:
                conn.execute(delete(outbox).where(outbox.c.state.in_(("done", "failed")),
                                                  outbox.c.done_at < now() - self.keep_done))
        return sent


def pending_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox)
                            .where(outbox.c.state.in_(("pending", "sending")))).scalar_one()


def _lock_path(db_url: str) -> str:
    """A lock file per database: beside a SQLite file, else in a per-user temporary folder."""
    f = sqlite_path(db_url)
    if f:
        return f + ".outbox-lock"
    d = os.path.join(tempfile.gettempdir(), f"ihe-{os.getuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, "outbox-" + hashlib.sha1(db_url.encode()).hexdigest()[:16] + ".lock")
