"""XCA-I (RAD TF-1 29; RAD TF-3 4.75): Cross Gateway Retrieve Imaging Document Set (RAD-75).

The Initiating Imaging Gateway takes RAD-69 from the consumers of its community, splits the
DocumentRequests by HomeCommunityId and sends one RAD-75 per community, in parallel, to the
Responding Imaging Gateways; the Responding Imaging Gateway takes RAD-75, splits it by
RepositoryUniqueId and sends RAD-69 to its community's Imaging Document Sources. Both merge
the images that came and the errors of those that did not (PartialSuccess), and a gateway or
source that is down or slow becomes errors of its images, located at their SOP Instance UIDs.
The request body of RAD-75 is the RAD-69 one (``ihecli.xdsi.rad69``).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ihecli.errors import IheError
from ihecli.net.soap import Attachments, Reply, SoapClient, SoapMessage, SoapServer
from ihecli.xds import vocabulary as v
from ihecli.xds.messages import RegistryError, XdsError, retrieve_response
from ihecli.xdsi.rad69 import RAD69, RAD69_RESPONSE, ImageRequest, read_request, retrieve_imaging_document_set

log = logging.getLogger("ihe.xcai")

RAD75 = "urn:ihe:rad:2011:CrossGatewayRetrieveImagingDocumentSet"
RAD75_RESPONSE = RAD75 + "Response"


def _split(images: list[ImageRequest], key: Callable[[ImageRequest], str], targets: dict[str, str],
           unknown_code: str, what: str) -> tuple[dict[str, list[ImageRequest]], list[RegistryError]]:
    groups: dict[str, list[ImageRequest]] = {}
    errors = []
    for im in images:
        k = key(im)
        if k in targets:
            groups.setdefault(k, []).append(im)
        else:
            errors.append(RegistryError(unknown_code, f"no {what} for {k or '(none)'}", im.sop_uid))
    return groups, errors


def _gather(groups: dict[str, list[ImageRequest]], targets: dict[str, str], tss: list[str], action: str,
            timeout: float, unavailable: str) -> tuple[list, list[RegistryError]]:
    """One request per target, in parallel: the documents that came and the errors."""
    def one(k: str):
        imgs = groups[k]
        try:
            res = retrieve_imaging_document_set(SoapClient(targets[k], timeout=timeout), imgs, tss, action=action)
            return res.documents, res.errors
        except XdsError as e:
            return [], e.errors
        except IheError as e:  # down, slow, or answering nonsense: every image of it failed
            return [], [RegistryError(unavailable, f"{k}: {e}", im.sop_uid) for im in imgs]

    docs, errors = [], []
    if groups:
        with ThreadPoolExecutor(max_workers=min(16, len(groups)), thread_name_prefix="ihe-xcai") as pool:
            for d, e in pool.map(one, list(groups)):
                docs += d
                errors += e
    return docs, errors


def _reply(docs, errors, action: str) -> Reply:
    parts = Attachments()
    status = v.SUCCESS if not errors else (v.PARTIAL if docs else v.FAILURE)
    return Reply(retrieve_response(status, errors, docs, parts), action, parts)


class RespondingImagingGateway:
    """RAD-75 in, RAD-69 to the community's Imaging Document Sources (repositoryUniqueId -> URL)."""

    def __init__(self, home: str, sources: dict[str, str], *, timeout: float = 60):
        self.home, self.sources, self.timeout = home, dict(sources), timeout

    def handlers(self) -> dict:
        return {RAD75: self.retrieve}

    def retrieve(self, msg: SoapMessage) -> Reply:
        images, tss = read_request(msg.body)
        ours = [im for im in images if im.home == self.home]
        errors = [RegistryError("XDSUnknownCommunity", f"homeCommunityId {im.home or '(none)'} is not this "
                                f"community ({self.home})", im.sop_uid) for im in images if im.home != self.home]
        groups, unknown = _split(ours, lambda im: im.repository_uid, self.sources, "XDSUnknownRepositoryId",
                                 "Imaging Document Source in this community")
        docs, errs = _gather(groups, self.sources, tss, RAD69, self.timeout, "XDSRepositoryError")
        for d in docs:
            d.home = self.home
        return _reply(docs, errors + unknown + errs, RAD75_RESPONSE)


class InitiatingImagingGateway:
    """RAD-69 in, RAD-75 to the Responding Imaging Gateways (homeCommunityId -> URL)."""

    def __init__(self, communities: dict[str, str], *, timeout: float = 60):
        self.communities, self.timeout = dict(communities), timeout

    def handlers(self) -> dict:
        return {RAD69: self.retrieve}

    def retrieve(self, msg: SoapMessage) -> Reply:
        images, tss = read_request(msg.body)
        groups, unknown = _split(images, lambda im: im.home, self.communities, "XDSUnknownCommunity",
                                 "responding imaging gateway")
        docs, errs = _gather(groups, self.communities, tss, RAD75, self.timeout, "XDSUnavailableCommunity")
        return _reply(docs, unknown + errs, RAD69_RESPONSE)


def GatewayServer(gateway, *, path: str, bind: str = "127.0.0.1", port: int = 0, ssl_context=None,
                  name: str = "XCA-I") -> SoapServer:
    """A gateway's handlers on an HTTP port at ``path`` (a controller)."""
    return SoapServer(gateway.handlers(), path=path, name=name, bind=bind, port=port, ssl_context=ssl_context)
