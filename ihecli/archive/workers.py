"""Several archive server processes on one port, past Python's global interpreter lock.

One Python process runs C-STORE handling on one core at a time. ``serve_workers`` forks N
processes after start-up imports (cheap), each with its own index connection and DICOM
listener bound with SO_REUSEPORT to the same address: the kernel spreads associations over
them, and the index database takes care of concurrent writers (SQLite WAL with a busy
timeout, or PostgreSQL). The parent only supervises: it restarts a worker that dies and stops
them all on SIGINT/SIGTERM.
"""
from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import socket
import tempfile
import threading
import time
from typing import Callable

from ihecli.errors import UsageError

log = logging.getLogger("ihe.archive")


def reserve_port(bind: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket that fixes the port the workers will share,
    and the fd of a lock held for as long as they serve.

    With port 0 this picks a free port; the socket is kept open until the workers listen, so
    nobody else takes the port in between. SO_REUSEPORT would also let a second `ihe archive
    serve` of the same user share the port, silently taking half its associations into another
    archive; the lock makes that second one fail instead, as a plain bind would."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((bind, port))
    except OSError as e:
        s.close()
        raise UsageError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
    port = s.getsockname()[1]
    lock_dir = os.path.join(tempfile.gettempdir(), f"ihe-{os.getuid()}")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(lock_dir, f"serve-{port}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        s.close()
        raise UsageError(f"cannot listen on {bind}:{port}: another ihe archive serve uses this port") from None
    return s, fd


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the parent dies, even by kill -9 (no orphans)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(run: Callable[[threading.Event, Callable[[], None]], None], ready_fd: int, number: int,
           parent: int) -> None:
    """Body of a worker process: never returns."""
    code = 0
    try:
        _die_with_parent(parent)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop

        def ready() -> None:
            os.write(ready_fd, b"R")
            os.close(ready_fd)

        run(stop, ready)
    except BaseException as e:  # report and leave: the parent restarts the worker
        log.error("worker %d failed: %s: %s", number, type(e).__name__, e)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def serve_workers(run: Callable[[threading.Event, Callable[[], None]], None], workers: int,
                  stop: threading.Event, *, on_ready: Callable[[], None] | None = None,
                  ready_timeout: float = 60) -> None:
    """Run ``run(stop_event, ready)`` in ``workers`` forked processes until ``stop`` is set.

    ``run`` starts a listener, calls ``ready()`` once it accepts, and returns after its
    ``stop_event`` is set. Returns when every worker has stopped.
    """
    children: dict[int, int] = {}  # pid -> worker number

    def spawn(number: int) -> tuple[int, int]:
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(run, w, number, parent)
        os.close(w)
        children[pid] = number
        return pid, r

    pipes = [spawn(i + 1)[1] for i in range(workers)]
    deadline = time.monotonic() + ready_timeout
    try:
        for r in pipes:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([r], [], [], max(0.0, left))
            if not readable or os.read(r, 1) != b"R":
                raise UsageError("an archive worker did not start (see the log above)")
        if on_ready:
            on_ready()
        while not stop.wait(0.5):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid and pid in children:
                number = children.pop(pid)
                log.error("worker %d (pid %d) exited with status %d; starting it again", number, pid,
                          os.waitstatus_to_exitcode(status))
                time.sleep(1)
                _pid, r = spawn(number)
                os.close(r)
    finally:
        for r in pipes:
            try:
                os.close(r)
            except OSError:
                pass
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                children.pop(pid, None)
        end = time.monotonic() + 30
        while children and time.monotonic() < end:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
