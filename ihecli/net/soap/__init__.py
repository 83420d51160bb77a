"""SOAP 1.2 with WS-Addressing and MTOM/XOP, for every SOAP transaction (ITI TF-2x Appendix V).

Used by XDS.b (ITI-18/41/43/62) and meant for XCA (ITI-38/39), XDS-I (RAD-68/69) and PDQv3
(ITI-47). The whole API::

    from ihecli.net.soap import (SoapClient, SoapService, Reply, SoapMessage, SoapFault,
                                 Attachments, parse_xml, validate, NS)

    # client: body is an lxml element; attachments make the request MTOM (xop:Include)
    parts = Attachments()
    doc = etree.Element("{urn:ihe:iti:xds-b:2007}Document", id="Doc1")
    parts.include(doc, b"...", "text/plain")
    client = SoapClient(url, timeout=30, tls_config=cfg)   # cfg: ihecli.net.tls.TlsConfig for https://
    msg = client.call(action, body, attachments=parts)     # force_mtom=True: MTOM without parts
    msg.body            # first element of the response Body
    msg.binary(el)      # bytes of an element with xop:Include or base64 content
    # faults raise SoapFault (code, subcode, reason); no connection raises PeerUnreachable

    # server: an ASGI app; handlers run in worker threads, get the SoapMessage (msg.peer: the
    # client's address) and return Reply(body, action[, attachments]); raising SoapFault answers
    # a fault, any other exception a Receiver fault without details
    app = SoapService({"urn:ihe:iti:2007:RegistryStoredQuery": handler}, max_body=256 << 20)
    HttpServer(app, port=0, ssl_context=ctx).start()       # ihecli.net.http

- ``parse_xml(bytes)``: the only XML parser for input from the network: no entities, no DTD
  (a DOCTYPE is refused), no network access.
- ``validate(element)``: lxml schema validation against the local official schemas
  (``xsd/``: ebRS 3.0, IHE XDS.b; ``schemas.register(ns, path)`` adds more). With
  ``schemas.STRICT = True`` (the tests) the client and server validate everything they send.
- ``http_session(tls_config)``: the one place that builds the HTTP session (BCP195 TLS and
  mutual authentication through ``ihecli.net.tls.context``; host names not checked unless asked).
- Requests carry wsa:Action with mustUnderstand="true", MessageID, ReplyTo and To; responses
  wsa:RelatesTo. A server answers MTOM to MTOM requests.
"""
from __future__ import annotations

from ihecli.net.soap.client import SoapClient, http_session
from ihecli.net.soap.envelope import SoapFault, SoapMessage, envelope, fault_envelope, parse_envelope
from ihecli.net.soap.mtom import Attachments, decode, encode
from ihecli.net.soap.schemas import SchemaError, validate
from ihecli.net.soap.server import Reply, SoapServer, SoapService
from ihecli.net.soap.xml import NS, XmlError, parse_xml, q, tostring

__all__ = ["SoapServer", "SoapClient", "http_session", "SoapFault", "SoapMessage", "envelope", "fault_envelope",
           "parse_envelope", "Attachments", "decode", "encode", "SchemaError", "validate", "Reply",
           "SoapService", "NS", "XmlError", "parse_xml", "q", "tostring"]
