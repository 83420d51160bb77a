"""The SOAP server side: a Starlette endpoint that dispatches on wsa:Action.

``SoapService({action: handler}, max_body=...)`` is an ASGI app (mount it, or give it to
``ihecli.net.http.HttpServer``). A handler takes the parsed ``SoapMessage`` and returns a
``Reply``; it runs in a worker thread. A ``SoapFault`` it raises becomes a SOAP fault; any
other exception becomes a Receiver fault without a traceback (logged). Requests without
wsa:Action, with an unknown action, a mustUnderstand header we do not know, a body over
``max_body`` bytes or XML the safe parser refuses get a fault and never reach a handler.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ihecli.net.soap import mtom, schemas
from ihecli.net.soap.envelope import SoapFault, SoapMessage, envelope, fault_envelope, not_understood, with_body
from ihecli.net.soap.xml import WSA, parse_xml

log = logging.getLogger("ihe.soap")


@dataclass
class Reply:
    """A handler's answer: the body element and its action; ``attachments`` make it MTOM.

    ``body`` may also be the element already serialized (UTF-8 bytes without an XML
    declaration, self-contained as to namespaces): it goes into the envelope as it is."""

    body: etree._Element | bytes
    action: str
    attachments: mtom.Attachments | None = None


Handler = Callable[[SoapMessage], Reply]


class SoapService:
    """ASGI app answering SOAP 1.2 POSTs by wsa:Action."""

    def __init__(self, handlers: dict[str, Handler], *, max_body: int = 256 * 1024 * 1024,
                 understood: set[str] | None = None, name: str = "SOAP"):
        self.handlers = dict(handlers)
        self.max_body = max_body
        self.understood = {WSA} | set(understood or ())
        self.name = name

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(f"{self.name} endpoint: POST SOAP 1.2 messages here\n", status_code=405,
                            headers={"Allow": "POST"}, media_type="text/plain")
        try:
            body = await self._read(request)
            msg = mtom.decode(body, request.headers.get("content-type", ""))
            msg.peer = request.client.host if request.client else ""
        except SoapFault as e:
            return self._fault(e, None)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            if not msg.action:
                raise SoapFault("wsa:Action header missing", subcode="wsa:MessageAddressingHeaderRequired")
            handler = self.handlers.get(msg.action)
            if handler is None:
                raise SoapFault(f"action {msg.action!r} is not supported here (supported: "
                                f"{', '.join(sorted(self.handlers))})", subcode="wsa:ActionNotSupported")
            bad = not_understood(msg, self.understood)
            if bad:
                raise SoapFault(f"header {bad[0]} is not understood", code="MustUnderstand")
            if msg.body is None:
                raise SoapFault("empty SOAP body")
            reply = await run_in_threadpool(handler, msg)
        except SoapFault as e:
            return self._fault(e, msg.message_id)
        except Exception:  # a bug: the client gets a fault, the log the traceback
            log.exception("%s handler for %s failed", self.name, msg.action)
            return self._fault(SoapFault("internal error of the service", code="Receiver"), msg.message_id)
        raw = isinstance(reply.body, bytes)
        if schemas.STRICT:
            schemas.validate(parse_xml(reply.body) if raw else reply.body)
        env = envelope(None if raw else reply.body, reply.action, relates_to=msg.message_id, reply_to=False,
                       message_id=_mid())
        data, ctype = mtom.encode(with_body(env, reply.body) if raw else env, reply.action, reply.attachments,
                                  mtom=msg.mtom)
        return Response(data, status_code=200, headers={"Content-Type": ctype})

    async def _read(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise SoapFault("bad Content-Length") from None
            if n > self.max_body:
                raise SoapFault(f"message of {n} bytes is over the limit of {self.max_body} bytes", http_status=413)
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > self.max_body:
                raise SoapFault(f"message is over the limit of {self.max_body} bytes", http_status=413)
        return bytes(buf)

    def _fault(self, fault: SoapFault, relates_to: str | None) -> Response:
        data, ctype = mtom.encode(fault_envelope(fault, relates_to), "http://www.w3.org/2005/08/addressing/soap/fault")
        return Response(data, status_code=fault.http_status, headers={"Content-Type": ctype})


def _mid() -> str:
    from ihecli.net.soap.envelope import new_message_id

    return new_message_id()


class SoapServer:
    """SOAP handlers at ``path`` on an HTTP port, with a one-line text page at / (a controller:
    ``start()`` returns the port, ``stop()`` is idempotent; ``url`` is the endpoint)."""

    def __init__(self, handlers: dict[str, Handler], *, path: str, name: str, bind: str = "127.0.0.1", port: int = 0,
                 ssl_context=None, max_body: int = 256 * 1024 * 1024):
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from ihecli.net.http import HttpServer

        soap = SoapService(handlers, max_body=max_body, name=name)

        async def index(request):
            return PlainTextResponse(f"ihe {name}: POST SOAP 1.2 to {path}\n")

        self.path = path
        self.http = HttpServer(Starlette(routes=[Route("/", index), Route(path, soap, methods=["GET", "POST"])]),
                               bind=bind, port=port, ssl_context=ssl_context, name=name.lower().replace(" ", "-"))

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        return self.http.url + self.path

    def start(self) -> int:
        return self.http.start()

    def stop(self) -> None:
        self.http.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
