"""ATNA (Audit Trail and Node Authentication): the one audit hook every actor calls.

    from ihecli import atna
    from ihecli.atna import events as ev

    atna.record(ev.application_activity(True, app="IHE_ARCHIVE", aets=["IHE_ARCHIVE"]))

``record(event)`` returns at once: it does nothing when no Audit Record Repository is
configured, and otherwise queues the event for a background thread that sends it (ITI-20 Record
Audit Event) or spools it to disk while the repository is away. It never raises.

``configure(...)`` (or ``configure_from(settings)``, which the CLI calls with the profile) sets
the repository; it also registers a TLS refusal listener, so a peer refused at the TLS handshake
by any server using ``ihecli.net.tls.server_handshake`` is recorded as a Security Alert (Node
Authentication). The builders of the events are in ``ihecli.atna.events``.
"""
from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path

from ihecli.atna import events
from ihecli.atna.events import AuditEvent
from ihecli.net import tls

__all__ = ["record", "configure", "configure_from", "enabled", "flush", "shutdown", "events", "AuditEvent"]

log = logging.getLogger("ihe.audit")

_state: dict = {"sender": None, "repository": ""}


def enabled() -> bool:
    """True when a repository is configured (events are being sent)."""
    return _state["sender"] is not None


def record(event: AuditEvent) -> None:
    """Record an audit event (ITI-20): queued for the repository; a no-op without one; never raises."""
    sender = _state["sender"]
    if sender is None:
        return
    try:
        sender.submit(event)
    except Exception as e:  # auditing must never break the caller
        log.debug("audit event not queued: %s", e)


def _on_refused(peer: str, reason: str, service: str) -> None:
    record(events.node_authentication_failure(peer, reason, service=service))


def configure(repository: str | None, *, tls_config: tls.TlsConfig | None = None, spool: str | os.PathLike = "",
              spool_max_mb: int = 50, source_id: str = "", site_id: str = "", app: str = "ihe") -> None:
    """Send events to ``repository`` (``tls://host:6514``, ``udp://host:514``, ``tcp://host:port``);
    None or "" stops sending. Replaces an earlier configuration (its queue is sent or spooled)."""
    from ihecli.atna.sender import AuditSender, parse_target

    shutdown()
    if not repository:
        tls.remove_refusal_listener(_on_refused)
        events.set_default_source(None)
        return
    target = parse_target(repository)
    source = events.AuditSource(source_id=source_id or events.local_host(), site_id=site_id)
    events.set_default_source(source)
    if not spool:
        from ihecli.config import data_dir

        spool = data_dir() / "audit-spool"
    _state["sender"] = AuditSender(target, tls_config=tls_config, spool_dir=Path(spool),
                                   spool_max_bytes=int(spool_max_mb) << 20, app=app,
                                   build=lambda e: events.to_xml(e, default_source=source))
    _state["repository"] = str(target)
    tls.add_refusal_listener(_on_refused)


def configure_from(settings) -> None:
    """Configure from the profile's ``[audit]`` and ``[tls]`` settings (nothing when no repository)."""
    audit = getattr(settings, "audit", None)
    repo = getattr(audit, "repository", "") if audit is not None else ""
    if not repo:
        if _state["sender"] is not None:
            configure(None)
        return
    if _state["sender"] is not None and _state["repository"] == repo:
        return
    tls_cfg = settings.tls_config() if hasattr(settings, "tls_config") else None
    configure(repo, tls_config=tls_cfg, spool=audit.spool, spool_max_mb=audit.spool_max_mb,
              source_id=audit.source_id, site_id=audit.site_id, app=audit.app_name)


def flush(timeout: float = 10.0) -> bool:
    """Wait until queued events are sent; True when nothing is left queued or spooled."""
    sender = _state["sender"]
    return True if sender is None else sender.flush(timeout)


def shutdown(timeout: float = 5.0) -> None:
    """Send (or spool) what is queued and stop the sender thread; idempotent."""
    sender, _state["sender"] = _state["sender"], None
    _state["repository"] = ""
    if sender is not None:
        sender.close(timeout)


def sender():
    """The running AuditSender, or None."""
    return _state["sender"]


atexit.register(shutdown, 3.0)
