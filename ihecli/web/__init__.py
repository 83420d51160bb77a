"""The archive's DICOMweb face (Image Manager / Image Archive; Web-based Image Capture Image
Manager): QIDO-RS (RAD-129), WADO-RS (RAD-107), STOW-RS (RAD-108) rooted at /dicom-web/, and
WADO-URI (RAD-55) at /wado.

``create_app(archive)`` gives a Starlette application; ``DicomWebServer`` runs it on uvicorn as a
controller (``start()`` returns the port, ``stop()`` is idempotent).
"""
from __future__ import annotations

import logging
import ssl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

from ihecli.atna import web as audit_web
from ihecli.net.http import HttpServer
from ihecli.web import qido, stow, wado, wado_uri
from ihecli.web.common import WebError, accept_param_override, check_uid, json_response, text_error

log = logging.getLogger("ihe.web")

ROOT = "/dicom-web"
MAX_UPLOAD = 512 << 20  # bytes in one STOW-RS request: larger ones are refused (413) as they arrive


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def create_app(archive, *, root: str = ROOT, max_upload: int = MAX_UPLOAD,
               imaging_source_uid: str | None = None) -> Starlette:
    """The DICOMweb services of one archive as an ASGI application; with ``imaging_source_uid``
    also XDS-I.b Retrieve Imaging Document Set (RAD-69) at /xdsi, as that repositoryUniqueId."""
    from pydicom import config as pydicom_config

    # as the DICOM server does: answers are built from values checked at ingest, and pydicom's
    # check of every value set was most of the cost of a query answer
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    root = "/" + root.strip("/") if root.strip("/") else ""

    def base(request: Request) -> str:
        url = request.base_url
        server = request.scope.get("server")
        # some clients (dicomweb-client) send a Host header without the port: keep URLs reachable
        if url.port is None and server and server[1] not in (80, 443):
            url = url.replace(port=server[1])
        return str(url).rstrip("/") + root

    def accept(request: Request) -> str | None:
        return accept_param_override(request, request.headers.get("accept"))

    # -- QIDO-RS ------------------------------------------------------------------------------
    def _search(level):
        def endpoint(request: Request):
            p = request.path_params
            qido.check_accept(accept(request))
            rows = qido.search(archive, level, request.query_params, base(request),
                               study=p.get("study"), series=p.get("series"))
            audit_web.query(_client(request), base(request), level, str(request.query_params))
            return json_response(rows)
        return endpoint

    # -- WADO-RS ------------------------------------------------------------------------------
    def _refs(request: Request):
        p = request.path_params
        return wado.select_instances(archive, p["study"], p.get("series"), p.get("instance"))

    def retrieve(request: Request):
        refs = _refs(request)
        audit_web.retrieved(_client(request), base(request), refs, archive)
        return wado.retrieve(archive, accept(request), refs)

    def metadata(request: Request):
        return wado.metadata(archive, base(request), _refs(request))

    def frames(request: Request):
        return wado.frames(archive, accept(request), _refs(request)[0], request.path_params["frames"])

    def bulkdata(request: Request):
        return wado.bulkdata(archive, accept(request), _refs(request)[0], request.path_params["path"])

    def rendered(request: Request):
        frame = 1
        if "frames" in request.path_params:
            frame = wado.parse_frames(request.path_params["frames"])[0]
        return wado.rendered(archive, request.headers.get("accept"), _refs(request)[0], frame, request.query_params)

    def thumbnail(request: Request):
        frame = 1
        if "frames" in request.path_params:
            frame = wado.parse_frames(request.path_params["frames"])[0]
        return wado.thumbnail(archive, request.headers.get("accept"), _refs(request), frame, request.query_params)

    # -- STOW-RS ------------------------------------------------------------------------------
    async def store(request: Request):
        study = request.path_params.get("study")
        if study is not None:
            check_uid(study, "Study Instance UID")
        boundary = stow.check_request(request.headers.get("content-type"), request.headers.get("content-length"),
                                      max_upload)
        reader = stow.BodyReader(boundary, max_upload)
        try:
            async for chunk in request.stream():
                if chunk:
                    reader.feed(chunk)
            parts = reader.finish()
            return await run_in_threadpool(stow.store_parts, archive, parts, study, base(request),
                                           request.headers.get("accept"),
                                           on_outcomes=lambda outs: audit_web.stored(_client(request), base(request),
                                                                                     outs, archive))
        finally:
            reader.close()

    def wado_get(request: Request):
        return wado_uri.retrieve(archive, request.query_params)

    st = "/studies/{study}"
    se = st + "/series/{series}"
    inst = se + "/instances/{instance}"
    routes = [
        Route(root + "/studies", _search("STUDY"), methods=["GET"]),
        Route(root + "/studies", store, methods=["POST"]),
        Route(root + "/series", _search("SERIES"), methods=["GET"]),
        Route(root + "/instances", _search("IMAGE"), methods=["GET"]),
        Route(root + st + "/series", _search("SERIES"), methods=["GET"]),
        Route(root + st + "/instances", _search("IMAGE"), methods=["GET"]),
        Route(root + se + "/instances", _search("IMAGE"), methods=["GET"]),
        Route(root + st, retrieve, methods=["GET"]),
        Route(root + st, store, methods=["POST"]),
        Route(root + se, retrieve, methods=["GET"]),
        Route(root + inst, retrieve, methods=["GET"]),
        Route(root + st + "/metadata", metadata, methods=["GET"]),
        Route(root + se + "/metadata", metadata, methods=["GET"]),
        Route(root + inst + "/metadata", metadata, methods=["GET"]),
        Route(root + inst + "/frames/{frames}", frames, methods=["GET"]),
        Route(root + inst + "/frames/{frames}/rendered", rendered, methods=["GET"]),
        Route(root + inst + "/rendered", rendered, methods=["GET"]),
        Route(root + st + "/thumbnail", thumbnail, methods=["GET"]),
        Route(root + se + "/thumbnail", thumbnail, methods=["GET"]),
        Route(root + inst + "/thumbnail", thumbnail, methods=["GET"]),
        Route(root + inst + "/frames/{frames}/thumbnail", thumbnail, methods=["GET"]),
        Route(root + inst + "/bulkdata/{path:path}", bulkdata, methods=["GET"]),
        Route("/wado", wado_get, methods=["GET"]),
        Route(root + "/wado", wado_get, methods=["GET"]),
    ]
    if imaging_source_uid:
        from ihecli.net.soap import SoapService
        from ihecli.xdsi.rad69 import ImagingDocumentSource

        rad69 = SoapService(ImagingDocumentSource(archive, imaging_source_uid).handlers(), name="XDS-I.b")
        routes.append(Route("/xdsi", rad69, methods=["GET", "POST"]))

    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.detail)
        return text_error(exc.status_code, str(exc.detail))

    async def crash(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return text_error(500, f"internal error: {type(exc).__name__}")

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, WebError: http_error,
                                                        Exception: crash})


class DicomWebServer(HttpServer):
    """The archive's DICOMweb services on an HTTP port (a controller)."""

    def __init__(self, archive, *, bind: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 root: str = ROOT, max_upload: int = MAX_UPLOAD, imaging_source_uid: str | None = None):
        super().__init__(create_app(archive, root=root, max_upload=max_upload, imaging_source_uid=imaging_source_uid),
                         bind=bind, port=port,
                         ssl_context=ssl_context, name="dicomweb")
        self.archive = archive
        self.root = root

    @property
    def base_url(self) -> str:
        return self.url + self.root


class DicomWebService:
    """DICOMweb beside the archive's DICOM listener (``ihe archive serve --http-port``): opens its
    own archive handle on start, closes it on stop. ``start()`` returns the service's root URL."""

    def __init__(self, open_archive, bind: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 imaging_source_uid: str | None = None):
        self.open_archive, self.bind, self.port, self.ssl_context = open_archive, bind, port, ssl_context
        self.imaging_source_uid = imaging_source_uid
        self.archive = None
        self.server: DicomWebServer | None = None

    def start(self) -> str:
        from ihecli.errors import UsageError

        if self.server is not None:
            return self.server.base_url + "/"
        self.archive = self.open_archive()
        server = DicomWebServer(self.archive, bind=self.bind, port=self.port, ssl_context=self.ssl_context,
                                imaging_source_uid=self.imaging_source_uid)
        try:
            server.start()
        except OSError as e:
            self.archive.close()
            self.archive = None
            raise UsageError(f"cannot listen on {self.bind}:{self.port} (HTTP): {e.strerror or e}") from None
        self.server = server
        return server.base_url + "/"

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        if self.archive is not None:
            self.archive.close()
            self.archive = None
