"""XCA Responding Gateway: Cross Gateway Query (ITI-38) and Cross Gateway Retrieve (ITI-39).

The bodies are those of ITI-18 and ITI-43; the gateway answers them with the registry and
repository handlers of ``ihecli.xds.server`` over the same archive, then marks the answer as
its community's: ``home`` on every returned object (done by the XDS service when it has a
home), the homeCommunityId as the location of errors that name none (ITI TF-2b 3.38.4.1.3),
and XDSUnknownCommunity for a DocumentRequest addressed to another community.
"""
from __future__ import annotations

import copy
import logging

from lxml import etree
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ihecli.net.http import HttpServer
from ihecli.net.soap import Attachments, Reply, SoapMessage, SoapService
from ihecli.net.soap.xml import RS, XDSB, q
from ihecli.xds import vocabulary as v
from ihecli.xds.audit import TX_ITI38, TX_ITI39
from ihecli.xds.messages import RegistryError, error_list, read_errors, retrieve_response
from ihecli.xds.server import XdsService

log = logging.getLogger("ihe.xca")

ITI38, ITI39 = v.ITI38, v.ITI39


def _mark_errors(body: etree._Element, home: str) -> None:
    for e in body.iter(q(RS, "RegistryError")):
        if not e.get("location"):
            e.set("location", home)


class RespondingGateway:
    """ITI-38/39 handlers over one archive's XDS data, as community ``home``."""

    def __init__(self, archive, *, home: str, repository_unique_id: str):
        if not home.startswith("urn:oid:"):
            raise ValueError(f"homeCommunityId {home!r} must be urn:oid:...")
        self.home = home
        self.xds = XdsService(archive, repository_unique_id=repository_unique_id, home=home)
        self.xds.query_tx, self.xds.retrieve_tx = TX_ITI38, TX_ITI39

    def close(self) -> None:
        self.xds.close()

    def handlers(self) -> dict:
        return {ITI38: self.query, ITI39: self.retrieve}

    def query(self, msg: SoapMessage) -> Reply:
        reply = self.xds.stored_query(msg)
        if not isinstance(reply.body, bytes):  # serialized: a Success without errors, home on every object
            _mark_errors(reply.body, self.home)
        return Reply(reply.body, v.response_action(ITI38), reply.attachments)

    def retrieve(self, msg: SoapMessage) -> Reply:
        body = msg.body
        foreign = []
        if body is not None and body.tag == q(XDSB, "RetrieveDocumentSetRequest"):
            ours = copy.deepcopy(body)
            for d in list(ours.findall(q(XDSB, "DocumentRequest"))):
                home = (d.findtext(q(XDSB, "HomeCommunityId")) or "").strip()
                if home != self.home:
                    uid = (d.findtext(q(XDSB, "DocumentUniqueId")) or "").strip()
                    foreign.append(RegistryError("XDSUnknownCommunity", f"homeCommunityId {home or '(none)'} is "
                                                 f"not this community ({self.home})", uid or self.home))
                    ours.remove(d)
            if foreign and not len(ours):
                parts = Attachments()
                return Reply(retrieve_response(v.FAILURE, foreign, [], parts), v.response_action(ITI39), parts)
            msg = copy.copy(msg)
            msg.body = ours
        reply = self.xds.retrieve(msg)
        _mark_errors(reply.body, self.home)
        if foreign:
            rr = reply.body.find(q(RS, "RegistryResponse"))
            if rr.get("status") == v.SUCCESS:
                rr.set("status", v.PARTIAL)
            old = rr.find(q(RS, "RegistryErrorList"))
            errors = foreign
            if old is not None:
                rr.remove(old)
                errors = read_errors(old) + foreign
            error_list(rr, errors)
        return Reply(reply.body, v.response_action(ITI39), reply.attachments)


def xca_app(gateway: RespondingGateway, *, max_body: int = 256 * 1024 * 1024) -> Starlette:
    soap = SoapService(gateway.handlers(), max_body=max_body, name="XCA")

    async def index(request):
        return PlainTextResponse(f"ihe XCA Responding Gateway of {gateway.home}: POST SOAP 1.2 to /xca\n")

    return Starlette(routes=[Route("/", index), Route("/xca", soap, methods=["GET", "POST"])])


class XcaServer:
    """Controller: ``start()`` binds and serves, ``stop()`` is idempotent; ``url`` is the endpoint."""

    def __init__(self, archive, *, home: str, repository_unique_id: str, bind: str = "127.0.0.1", port: int = 0,
                 ssl_context=None):
        self.gateway = RespondingGateway(archive, home=home, repository_unique_id=repository_unique_id)
        self.http = HttpServer(xca_app(self.gateway), bind=bind, port=port, ssl_context=ssl_context, name="xca")

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        return f"{self.http.url}/xca"

    def start(self) -> int:
        return self.http.start()

    def stop(self) -> None:
        self.http.stop()
        self.gateway.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
