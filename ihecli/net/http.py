"""HTTP server controller: any ASGI application (Starlette) on uvicorn, in a background thread.

``HttpServer(app, bind=..., port=0, ssl_context=...)``: ``start()`` binds, starts serving and
returns the port once the server accepts connections; ``stop()`` is idempotent. The socket is
bound here (not by uvicorn), so port 0 gives a free port and a bind error is raised by
``start()`` itself. asyncio sets TCP_NODELAY on every accepted connection (the listening
socket is made with proto IPPROTO_TCP for that).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading

import uvicorn

log = logging.getLogger("ihe.http")


class HttpServer:
    """A uvicorn server for one ASGI app, controlled from the calling thread."""

    def __init__(self, app, *, bind: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, name: str = "http",
                 timeout_keep_alive: int = 30, limit_concurrency: int | None = None):
        self.app, self.bind, self.port = app, bind, port
        self.ssl_context = ssl_context
        self.name = name
        self.timeout_keep_alive = timeout_keep_alive
        self.limit_concurrency = limit_concurrency
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout: float = 15) -> int:
        """Bind and serve; returns the port (useful with port 0). Raises OSError on a bind error."""
        if self._server is not None:
            return self.port
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        # proto given explicitly: asyncio sets TCP_NODELAY only on sockets whose proto is TCP
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=self.timeout_keep_alive,
                                limit_concurrency=self.limit_concurrency, server_header=False)
        config.load()
        if self.ssl_context is not None:
            from ihecli.net.tls import report_refusals

            # uvicorn hands config.ssl to loop.create_server; refused handshakes are reported (audited)
            config.ssl = report_refusals(self.ssl_context, self.name)
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as e:  # reported by start() or logged
                self._error = e
                log.error("%s server stopped: %s: %s", self.name, type(e).__name__, e)

        self._thread = threading.Thread(target=run, name=f"ihe-{self.name}", daemon=True)
        self._thread.start()
        while not server.started:
            if not self._thread.is_alive():
                self._server = None
                raise OSError(f"the {self.name} server did not start: {self._error}")
            self._thread.join(0.01)
            timeout -= 0.01
            if timeout <= 0:
                self.stop()
                raise OSError(f"the {self.name} server did not start in time")
        log.debug("%s listening on %s", self.name, self.url)
        return self.port

    def stop(self) -> None:
        """Stop serving (idempotent); open connections get a moment to finish."""
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            if self._thread is not None:
                self._thread.join(10)
                if self._thread.is_alive():
                    server.force_exit = True
                    self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
