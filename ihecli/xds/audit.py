"""Audit events (ITI-20) of the XDS.b transactions, both sides, through ``atna.record``.

Building an event never breaks a transaction: any error here is logged and dropped.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from ihecli import atna
from ihecli.atna import events as ev

log = logging.getLogger("ihe.xds")

TX_ITI38 = ev.iti("ITI-38", "Cross Gateway Query")
TX_ITI39 = ev.iti("ITI-39", "Cross Gateway Retrieve")


def local(name: str = "ihe") -> ev.Peer:
    return ev.Peer.local(name)


def remote_url(url: str) -> ev.Peer:
    return ev.Peer(user_id=url, host=urlsplit(url).hostname or "")


def remote_host(host: str) -> ev.Peer:
    return ev.Peer(user_id=host or "unknown", host=host)


def outcome(ok: bool | None) -> int:
    return ev.SUCCESS if ok else (ev.MINOR_FAILURE if ok is None else ev.SERIOUS_FAILURE)


def enabled() -> bool:
    """Whether events are recorded: callers skip building what only an event would use."""
    return atna.enabled()


def record(builder, **kw) -> None:
    if not atna.enabled():
        return
    try:
        atna.record(builder(**kw))
    except Exception as e:  # an audit event must never fail the transaction
        log.debug("audit event %s not recorded: %s", getattr(builder, "__name__", builder), e)


def query(source: ev.Peer, destination: ev.Peer, query_id: str, body: bytes, patient: str, ok: bool,
          transaction: ev.Code | None = None) -> None:
    record(ev.registry_stored_query, source=source, destination=destination, query_id=query_id, query=body,
           patient_id=patient, outcome=outcome(ok), transaction=transaction)


def provide(source: ev.Peer, destination: ev.Peer, ss_uid: str, patient: str, ok: bool, *, sender: bool) -> None:
    record(ev.provide_and_register, source=source, destination=destination, submission_set_uid=ss_uid or "unknown",
           patient_id=patient or "unknown", sender=sender, outcome=outcome(ok))


def retrieve(repository: ev.Peer, consumer: ev.Peer, documents, ok: bool | None, *, is_consumer: bool,
             transaction: ev.Code | None = None) -> None:
    record(ev.retrieve_document_set, source=repository, destination=consumer, documents=documents,
           consumer=is_consumer, outcome=outcome(ok), transaction=transaction)


def delete(source: ev.Peer, destination: ev.Peer, uuids, ok: bool) -> None:
    record(ev.delete_document_set, source=source, destination=destination, patient_id="", object_uuids=list(uuids),
           outcome=outcome(ok))
