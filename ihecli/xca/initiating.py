"""XCA Initiating Gateway fan-out: Cross Gateway Query (ITI-38) and Cross Gateway Retrieve (ITI-39)
to the responding gateways of the profile, in parallel, answers merged.

``communities`` maps homeCommunityId (urn:oid:...) to the responding gateway's endpoint. Each
community's answer is kept apart in ``CommunityResult``: its status, its objects or documents,
its errors. A community that cannot be reached or does not answer in time becomes one
XDSUnavailableCommunity error of that community (ITI TF-2b 3.38.4.1.3), so the others' answers
still come back (PartialSuccess).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lxml import etree

from ihecli.errors import IheError, PeerUnreachable
from ihecli.net.soap import SoapClient
from ihecli.net.soap.xml import RIM, XDSB, q
from ihecli.xds import audit, ebrim
from ihecli.xds import vocabulary as v
from ihecli.xds.audit import TX_ITI38, TX_ITI39
from ihecli.xds.vocabulary import ITI38, ITI39
from ihecli.xds.messages import (DocumentRequest, RegistryError, XdsError, adhoc_query_request, read_documents,
                                 read_registry_response, retrieve_request)


@dataclass
class CommunityResult:
    home: str
    url: str
    status: str = ""
    objects: list = field(default_factory=list)
    elements: list = field(default_factory=list)  # the returned objects as the gateway sent them
    documents: list = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status not in (v.SUCCESS, v.PARTIAL)


def parse_communities(spec: str | list[str]) -> dict[str, str]:
    """``urn:oid:1.2=http://host:port/xca`` items (comma or whitespace separated) -> {home: url}."""
    items = spec.replace(",", " ").split() if isinstance(spec, str) else [x for s in spec for x in s.replace(",", " ").split()]
    out = {}
    for item in items:
        home, sep, url = item.partition("=")
        if not sep or not home.startswith("urn:oid:") or not url.startswith(("http://", "https://")):
            raise IheError(f"bad community {item!r}: give urn:oid:OID=http://host:port/path")
        out[home] = url
    return out


def fan_out(communities: dict[str, str], call, timeout: float) -> list[CommunityResult]:
    def one(home: str, url: str) -> CommunityResult:
        res = CommunityResult(home, url)
        try:
            call(res, SoapClient(url, timeout=timeout))
        except XdsError as e:
            res.status, res.errors = e.status or v.FAILURE, list(e.errors)
        except (PeerUnreachable, IheError) as e:
            res.status = v.FAILURE
            res.errors = [RegistryError("XDSUnavailableCommunity", str(e), home)]
        for err in res.errors:
            if not err.location:
                err.location = home
        return res

    if not communities:
        raise IheError("no responding gateway: give --community urn:oid:OID=URL or set xds.communities")
    with ThreadPoolExecutor(max_workers=min(16, len(communities)), thread_name_prefix="ihe-xca") as pool:
        futures = [pool.submit(one, h, u) for h, u in communities.items()]
        return [f.result() for f in futures]


def cross_gateway_query(communities: dict[str, str], query_id: str, params: dict, *, object_ref: bool = False,
                        timeout: float = 60) -> list[CommunityResult]:
    """ITI-38 to every community at once; each result holds the objects its gateway returned
    (each carrying the ``home`` that gateway put on it)."""
    patient = next((str(val) for k, val in params.items() if k.endswith(("PatientId", "patientId")) and val), "")
    def call(res: CommunityResult, client: SoapClient) -> None:
        body = adhoc_query_request(query_id, params, return_type="ObjectRef" if object_ref else "LeafClass",
                                   home=res.home)
        ok = False
        try:
            msg = client.call(ITI38, body)
            ok = True
        finally:
            if audit.enabled():
                audit.query(audit.local(), audit.remote_url(client.url), query_id, etree.tostring(body), patient, ok,
                            TX_ITI38)
        r = read_registry_response(msg.body)
        res.status, res.errors = r.status, r.errors
        rol = msg.body.find(q(RIM, "RegistryObjectList"))
        res.objects = ebrim.from_rim(rol) if rol is not None else []
        res.elements = list(rol) if rol is not None else []

    return fan_out(communities, call, timeout)


def locate_documents(communities: dict[str, str], unique_ids: list[str], *, home: str = "",
                     timeout: float = 60) -> tuple[list[DocumentRequest], list[CommunityResult], list[str]]:
    """Where documents are kept: GetDocuments by uniqueId (ITI-38) to community ``home``, or to every
    community when none is given. Returns a DocumentRequest for each document found (the
    repositoryUniqueId and home its entry gives), the query's results (their errors name the
    communities that did not answer) and the uniqueIds no community knows."""
    if home and home not in communities:
        return [], [CommunityResult(home, "", v.FAILURE, errors=[RegistryError(
            "XDSUnknownCommunity", f"no responding gateway for homeCommunityId {home}", home)])], list(unique_ids)
    targets = {home: communities[home]} if home else communities
    results = cross_gateway_query(targets, v.STORED_QUERIES["get-documents"][0],
                                  {"$XDSDocumentEntryUniqueId": list(unique_ids)}, timeout=timeout)
    found: dict[str, DocumentRequest] = {}
    for r in results:
        for o in r.objects:
            uid = getattr(o, "unique_id", "")
            if uid and getattr(o, "repository_unique_id", "") and uid not in found:
                found[uid] = DocumentRequest(o.repository_unique_id, uid, o.home or r.home)
    return [found[u] for u in unique_ids if u in found], results, [u for u in unique_ids if u not in found]


def cross_gateway_retrieve(communities: dict[str, str], requests: list[DocumentRequest], *,
                           timeout: float = 60) -> list[CommunityResult]:
    """ITI-39: the requests grouped by homeCommunityId, one message per community, in parallel."""
    by_home: dict[str, list[DocumentRequest]] = {}
    for r in requests:
        by_home.setdefault(r.home, []).append(r)
    unknown = [h for h in by_home if h not in communities]
    targets = {h: communities[h] for h in by_home if h in communities}
    results = []
    for h in unknown:
        results.append(CommunityResult(h, "", v.FAILURE, errors=[RegistryError(
            "XDSUnknownCommunity", f"no responding gateway for homeCommunityId {h or '(none)'}", h)]))

    def call(res: CommunityResult, client: SoapClient) -> None:
        try:
            msg = client.call(ITI39, retrieve_request(by_home[res.home]))
        except Exception:
            audit.retrieve(audit.remote_url(client.url), audit.local(), [], False, is_consumer=True,
                           transaction=TX_ITI39)
            raise
        if msg.body.tag != q(XDSB, "RetrieveDocumentSetResponse"):
            raise IheError(f"unexpected ITI-39 answer {etree.QName(msg.body).localname}")
        r = read_registry_response(msg.body)
        res.status, res.errors = r.status, r.errors
        res.documents = read_documents(msg, res.home)
        audit.retrieve(audit.remote_url(client.url), audit.local(),
                       [(d.document_unique_id, d.repository_unique_id, d.home) for d in res.documents],
                       True if res.status == v.SUCCESS else None, is_consumer=True, transaction=TX_ITI39)

    return results + (fan_out(targets, call, timeout) if targets else [])
