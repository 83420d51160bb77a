"""PDQ Consumer, Patient Demographics Query HL7 V3 (ITI-47, ITI TF-2b 3.47): PRPA_IN201305UV02
over SOAP 1.2 with WS-Addressing to the PDQ Supplier, PRPA_IN201306UV02 back; with ``all_pages``
the further matches are asked for with query continuations (QUQI_IN000003UV01, 3.47.4.3)."""
from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

from lxml import etree

from ihecli.net.soap import SoapClient
from ihecli.pdq.messages import (CONTINUE_ACTION, QUERY_ACTION, PdqAnswer, PdqQuery, build_continuation,
                                 build_query, read_response)

MAX_PAGES = 1000  # continuations of one query, at most


def query_demographics(url: str, query: PdqQuery, *, sender: str, receiver: str, timeout: float = 30,
                       tls_config=None, all_pages: bool = False, page_size: int = 100) -> PdqAnswer:
    """Patient Demographics Query (ITI-47): the patients the PDQ Supplier at ``url`` finds.
    ``sender``/``receiver``: device OIDs. With ``all_pages``, continuations of ``query.limit``
    (else ``page_size``) matches each until the supplier has none left. Raises PeerUnreachable,
    SoapFault (a fault) or IheError (an answer that is no PRPA_IN201306UV02)."""
    from ihecli import atna

    message_id, query_id = uuid.uuid4().hex, uuid.uuid4().hex
    body = build_query(query, sender=sender, receiver=receiver, receiver_url=url, message_id=message_id,
                       query_id=query_id)
    started = time.perf_counter()
    outcome = atna.events.SERIOUS_FAILURE
    client = SoapClient(url, timeout=timeout, tls_config=tls_config)
    try:
        out = read_response(client.call(QUERY_ACTION, body).body)
        pages = 0
        while all_pages and out.ack == "AA" and out.remaining and pages < MAX_PAGES:
            more = read_response(client.call(CONTINUE_ACTION, build_continuation(
                sender, query_id, query.limit or page_size, sender=sender, receiver=receiver,
                receiver_url=url)).body)
            pages += 1
            if more.ack != "AA" or not more.patients:
                out.errors += more.errors
                break
            out.patients += more.patients
            out.remaining = more.remaining
        out.ms = round((time.perf_counter() - started) * 1000, 1)
        outcome = atna.events.SUCCESS if out.ack == "AA" else atna.events.MINOR_FAILURE
        return out
    finally:
        client.close()
        qbp = body.find("{urn:hl7-org:v3}controlActProcess/{urn:hl7-org:v3}queryByParameter")
        atna.record(atna.events.pdq_query(
            source=atna.events.Peer.local(sender),
            destination=atna.events.Peer(url, host=urlsplit(url).hostname or ""),
            query=etree.tostring(qbp) if qbp is not None else b"", message_id=message_id,
            patient_ids=[f"{query.id}^^^&{query.id_domain}&ISO"] if query.id else [], outcome=outcome))
