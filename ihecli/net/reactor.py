"""Event-driven reactor loops for pynetdicom's associations.

pynetdicom runs two polling loops per association: the DUL thread sleeps 1 ms (0.2 ms as we
set it) whenever it finds nothing to read or send, and the association thread sleeps 1 ms
before every look at its message queue. Every DIMSE message therefore waits up to a poll
period in each loop, and each idle association wakes thousands of times a second. On an
archive taking C-STOREs over four associations on two cores that polling was a fifth of the
CPU, and the waits were a tenth of the time of each C-STORE on one association.

The loops below are pynetdicom 3.0's own (``DULServiceProvider.run_reactor``,
``Association._run_reactor``, ``DULServiceProvider.stop_dul``), copied because pynetdicom
offers no hook for it, with each sleep replaced by a wait that ends as soon as there is work:
the DUL thread waits in ``select`` on its socket and on a pipe that is written when a
primitive is queued for it to send; the association thread waits on an event set when the
DUL queues a decoded message or an ACSE primitive, when the reactor is to pause or resume
(another thread sending on the association), and when the association is killed. Both still
wake every IDLE seconds to check their timers, as before.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import threading
import time

IDLE = 0.05  # longest wait: the ARTIM and network idle timers are checked at least this often

_installed = False


def install() -> None:
    """Replace pynetdicom's polling loops with the event-driven ones (once per process)."""
    global _installed
    if _installed:
        return
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    DULServiceProvider.run_reactor = _dul_run_reactor
    DULServiceProvider.stop_dul = _dul_stop
    DULServiceProvider.kill_dul = _dul_kill
    Association._run_reactor = _association_run_reactor
    original_kill = Association.kill

    def kill(self) -> None:
        original_kill(self)
        wake = getattr(self, "_ihe_wake", None)
        if wake is not None:
            wake.set()

    Association.kill = kill
    _installed = True


# -- DUL thread ---------------------------------------------------------------------------------
class _DulWaker:
    """A pipe the DUL thread selects on; written (once per wait) when a primitive is queued."""

    def __init__(self, dul):
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.waiting = False
        self.closed = False
        put = dul.to_provider_queue.put

        def put_and_wake(item, block=True, timeout=None):
            put(item, block, timeout)
            self.wake()

        dul.to_provider_queue.put = put_and_wake

    def wake(self) -> None:
        if self.waiting and not self.closed:
            try:
                os.write(self.w, b"\0")
            except (BlockingIOError, OSError):
                pass

    def wait(self, dul) -> None:
        """Until the socket has data, a primitive is queued, the DUL is told to stop, or IDLE."""
        sock = getattr(dul.socket, "socket", None) if dul.socket is not None else None
        self.waiting = True
        try:
            if not dul.to_provider_queue.empty() or dul._kill_thread:
                return
            if sock is None or getattr(dul.socket, "_is_connected", True) is False:
                time.sleep(0.001)  # not connected (yet, or any more): poll as pynetdicom does
                return
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            try:
                ready, _, _ = select.select([sock, self.r], [], [], IDLE)
            except (OSError, ValueError):
                time.sleep(0.001)
                return
            if self.r in ready:
                try:
                    os.read(self.r, 4096)
                except (BlockingIOError, OSError):
                    pass
        finally:
            self.waiting = False

    def close(self) -> None:
        self.closed = True
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


def _dul_kill(self) -> None:
    self._kill_thread = True
    waker = getattr(self, "_ihe_waker", None)
    if waker is not None:
        waker.wake()


def _dul_stop(self) -> bool:
    """pynetdicom's stop_dul, waking the reactor instead of waiting out its poll."""
    if self.state_machine.current_state == "Sta1":
        _dul_kill(self)
        while self.is_alive():
            time.sleep(0.0005)
        return True
    return False


_LOCAL_EVENTS = ("Evt9", "Evt11", "Evt14")  # P-DATA, A-RELEASE request, A-RELEASE response queued


def _dul_run_reactor(self) -> None:
    """pynetdicom 3.0's DULServiceProvider.run_reactor; the sleep is _DulWaker.wait."""
    from pynetdicom.fsm import InvalidEventError
    from pynetdicom.pdu import A_ABORT_RQ

    log = logging.getLogger("pynetdicom.dul")
    waker = self._ihe_waker = _DulWaker(self)
    self._idle_timer.start()
    sleep = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                waker.wait(self)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in DUL.run(), aborting association")
                log.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            try:
                self.state_machine.do_action(event)
            except InvalidEventError:
                # data or a release answer the local user queued after an abort, while the
                # connection closes (Sta13): pynetdicom's loop dies here; drop the primitive
                if self.state_machine.current_state != "Sta13" or event not in _LOCAL_EVENTS:
                    raise
                log.debug("dropped %s queued after the association was aborted", event)
                try:
                    self.to_provider_queue.get(block=False)
                except queue.Empty:
                    pass
            sleep = False
    finally:
        waker.close()
        wake = getattr(self.assoc, "_ihe_wake", None)
        if wake is not None:  # the association checks whether its DUL is still alive
            wake.set()


# -- association thread -------------------------------------------------------------------------
class _Checkpoint(threading.Event):
    """The reactor's pause checkpoint; clearing or setting it also wakes the reactor."""

    def __init__(self, wake: threading.Event, is_set: bool):
        super().__init__()
        self._wake = wake
        if is_set:
            super().set()

    def set(self) -> None:
        super().set()
        self._wake.set()

    def clear(self) -> None:
        super().clear()
        self._wake.set()


def _wake_on_put(q, wake: threading.Event) -> None:
    put = q.put

    def put_and_wake(item, block=True, timeout=None):
        put(item, block, timeout)
        wake.set()

    q.put = put_and_wake


def _association_run_reactor(self) -> None:
    """pynetdicom 3.0's Association._run_reactor; the 1 ms sleep is a wait on ``_ihe_wake``."""
    log = logging.getLogger("pynetdicom.assoc")
    from pynetdicom import evt

    wake = self._ihe_wake = threading.Event()
    _wake_on_put(self.dimse.msg_queue, wake)
    _wake_on_put(self.dul.to_user_queue, wake)
    if type(self._reactor_checkpoint) is threading.Event:  # not when held (net.dimse.hold_reactor)
        self._reactor_checkpoint = _Checkpoint(wake, self._reactor_checkpoint.is_set())
    self._is_paused = False
    first = True
    while not self._kill:
        if not first and self.dimse.msg_queue.empty():
            wake.wait(IDLE)
        first = False
        wake.clear()
        if self._kill:
            break

        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            log.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            log.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            log.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return
