"""XCA Initiating Gateway, XDS Affinity Domain option (ITI TF-2b 3.38.4.1.2): local Document
Consumers ask it with Registry Stored Query (ITI-18) and Retrieve Document Set (ITI-43) as they
would ask a registry and a repository; it asks every responding gateway with ITI-38 (the
consumer's query, with that community's home) and ITI-39 (grouped by HomeCommunityId), in
parallel, and answers with the merged objects, each carrying its home. Communities that fail
make the answer PartialSuccess with their errors; all failing makes it Failure.
"""
from __future__ import annotations

import copy

from ihecli.net.soap import Attachments, Reply, SoapClient, SoapFault, SoapMessage, SoapServer
from ihecli.net.soap.xml import QUERY, RIM, q
from ihecli.xca.initiating import CommunityResult, cross_gateway_retrieve, fan_out
from ihecli.xds import vocabulary as v
from ihecli.xds.vocabulary import ITI38
from ihecli.xds.messages import adhoc_query_response, read_registry_response, read_retrieve_request, retrieve_response


def _status(results: list[CommunityResult], have_any: bool) -> str:
    if all(not r.failed and not any(e.is_error for e in r.errors) for r in results):
        return v.SUCCESS
    return v.PARTIAL if have_any or any(not r.failed for r in results) else v.FAILURE


class AffinityDomainGateway:
    """ITI-18 and ITI-43 in, ITI-38 and ITI-39 out (communities: homeCommunityId -> endpoint)."""

    def __init__(self, communities: dict[str, str], *, timeout: float = 60):
        self.communities, self.timeout = dict(communities), timeout

    def handlers(self) -> dict:
        return {v.ITI18: self.query, v.ITI43: self.retrieve}

    def query(self, msg: SoapMessage) -> Reply:
        def call(res: CommunityResult, client: SoapClient) -> None:
            body = copy.deepcopy(msg.body)
            aq = body.find(q(RIM, "AdhocQuery"))
            if aq is not None:
                aq.set("home", res.home)
            answer = client.call(ITI38, body)
            r = read_registry_response(answer.body)
            res.status, res.errors = r.status, r.errors
            rol = answer.body.find(q(RIM, "RegistryObjectList"))
            res.elements = list(rol) if rol is not None else []
            for el in res.elements:
                if not el.get("home"):
                    el.set("home", res.home)

        if msg.body is None or msg.body.tag != q(QUERY, "AdhocQueryRequest"):
            raise SoapFault("ITI-18 expects an AdhocQueryRequest")
        results = fan_out(self.communities, call, self.timeout)
        objects = [el for r in results for el in r.elements]
        errors = [e for r in results for e in r.errors]
        return Reply(adhoc_query_response(_status(results, bool(objects)), objects, errors), v.response_action(v.ITI18))

    def retrieve(self, msg: SoapMessage) -> Reply:
        results = cross_gateway_retrieve(self.communities, read_retrieve_request(msg.body), timeout=self.timeout)
        docs = [d for r in results for d in r.documents]
        errors = [e for r in results for e in r.errors]
        parts = Attachments()
        return Reply(retrieve_response(_status(results, bool(docs)), errors, docs, parts), v.response_action(v.ITI43),
                     parts)


def AffinityGatewayServer(gateway: AffinityDomainGateway, *, bind: str = "127.0.0.1", port: int = 0,
                          ssl_context=None) -> SoapServer:
    """The gateway at /xds on an HTTP port, as a registry and repository (a controller)."""
    return SoapServer(gateway.handlers(), path="/xds", name="XCA Initiating Gateway", bind=bind, port=port,
                      ssl_context=ssl_context)
