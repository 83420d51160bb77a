"""The SOAP client: one function builds the HTTP session (TLS goes there), one class sends.

``SoapClient(url).call(action, body)`` sends a SOAP 1.2 request (MTOM when ``attachments`` are
given or ``mtom=True``) and returns the parsed response, raising ``SoapFault`` for a fault,
``PeerUnreachable`` when the endpoint cannot be reached and ``IheError`` for anything else that
is not a SOAP answer (an answer that is not even HTTP too: the endpoint was reached).
"""
from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import threading

import requests
from lxml import etree
from requests.adapters import HTTPAdapter

from ihecli.errors import IheError, PeerUnreachable, UsageError, reason
from ihecli.net.soap import mtom, schemas
from ihecli.net.soap.envelope import SoapFault, SoapMessage, envelope

log = logging.getLogger("ihe.soap")


class _TlsAdapter(HTTPAdapter):
    """An adapter whose connections use our SSLContext (BCP195 floor, our certificate, our CA)."""

    def __init__(self, ctx, check_hostname: bool, **kw):
        self._ctx, self._check_hostname = ctx, check_hostname
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["ssl_context"] = self._ctx
        if not self._check_hostname:
            kw["assert_hostname"] = False  # IHE trusts the CA, not host names (ITI-19)
        return super().init_poolmanager(*args, **kw)


def http_session(tls_config=None, *, connections: int = 10) -> requests.Session:
    """The HTTP session every SOAP client uses: keep-alive pool, TLS settings in one place.

    ``tls_config``: an ``ihecli.net.tls.TlsConfig`` for https:// endpoints (mutual authentication
    when it has a certificate; the server checked against its CA). ``connections``: how many
    kept-alive connections to one endpoint the pool holds. urllib3 sets TCP_NODELAY on its
    sockets by default."""
    s = requests.Session()
    s.headers["User-Agent"] = "ihe"
    s.trust_env = False  # a proxy from the environment must not see patient data unasked
    s.mount("http://", HTTPAdapter(pool_maxsize=connections))
    if tls_config is not None:
        from ihecli.net import tls

        s.mount("https://", _TlsAdapter(tls.context(tls_config, server=False), tls_config.check_hostname,
                                        pool_maxsize=connections))
        s.verify = tls_config.ca or True
    else:
        s.mount("https://", HTTPAdapter(pool_maxsize=connections))
    return s


_READ = 1 << 20
_shared: dict = {}
_shared_lock = threading.Lock()


def shared_session(tls_config=None) -> requests.Session:
    """The process's session for one TLS configuration (None: plain http), made by
    ``http_session``: its keep-alive connections serve every SoapClient that is given no session
    of its own, from any thread (a fan-out asks the same gateways again and again: no new TCP
    connection, no new TLS handshake, and a window already opened for large answers)."""
    key = (os.getpid(), tls_config)  # a forked child does not share its parent's connections
    s = _shared.get(key)
    if s is None:
        with _shared_lock:
            s = _shared.get(key)
            if s is None:
                # as many connections to one gateway as a busy Affinity Domain gateway's threads use
                s = _shared[key] = http_session(tls_config, connections=64)
    return s


def _causes(e: BaseException) -> list[BaseException]:
    """``e`` and what lies under it: requests wraps urllib3's errors, which wrap the socket's or
    http.client's (in args, ``reason``, ``__cause__`` and ``__context__``)."""
    out, todo = [], [e]
    while todo:
        x = todo.pop(0)
        if not isinstance(x, BaseException) or any(x is y for y in out):
            continue  # None, or a string (ssl.SSLError.reason is one)
        out.append(x)
        todo += [*x.args, getattr(x, "reason", None), x.__cause__, x.__context__]
    return out


def connection_error(url: str, e: BaseException) -> IheError:
    """A requests ConnectionError in one line for the user: PeerUnreachable when the endpoint was
    not reached (host name unknown, connection refused, ...), IheError (exit 1) when it was
    reached and answered something that is not HTTP."""
    causes = _causes(e)
    found = lambda kind: next((x for x in causes if isinstance(x, kind)), None)  # noqa: E731
    dns = found(socket.gaierror)
    refused = found(ConnectionRefusedError)
    if dns is not None or refused is not None:
        return PeerUnreachable(f"cannot reach {url}: {reason(dns or refused)}")
    tls = url.startswith("https://")
    closed = found(http.client.RemoteDisconnected) or found(ConnectionResetError)
    if closed is not None:
        if tls:  # with TLS 1.3 a server refuses our certificate after the client's side of the handshake
            return IheError(f"{url}: TLS failed: the server closed the connection (does it trust our certificate?)")
        return PeerUnreachable(f"cannot reach {url}: the server closed the connection without an answer")
    bad = found(http.client.HTTPException)
    if bad is not None:  # reached, but what came back is no HTTP response (BadStatusLine, LineTooLong, ...)
        said = (bad.args[0] if bad.args and isinstance(bad.args[0], str) else str(bad)).strip()
        return IheError(f"{url} answered something that is not HTTP" + (f": {said[:80]!r}" if said else ""))
    oserr = next((x for x in reversed(causes) if isinstance(x, OSError) and x.strerror), None)
    if oserr is not None:  # no route to host, network unreachable, ...
        return PeerUnreachable(f"cannot reach {url}: {oserr.strerror.lower()}")
    return PeerUnreachable(f"cannot reach {url}: {causes[-1]}")


def tls_error(url: str, e: BaseException) -> IheError:
    """A failed TLS handshake in one line ("certificate not trusted", ...), not urllib3's retry text.
    The peer is there and the secure link is refused, by it or by us: exit 1, as a rejected
    association (retrying does not help; the certificates or --ca must change)."""
    import ssl

    from ihecli.net.tls import client_refusal

    inner = next((x for x in reversed(_causes(e)) if isinstance(x, ssl.SSLError)), None)
    return IheError(f"{url}: TLS failed: {client_refusal(inner) if inner is not None else e}")


class NoAnswer(PeerUnreachable):
    """The request went out and no answer came in time: the peer may have acted on it all the same."""


def not_soap(url: str, status: int, reason: str | None, ctype: str, content: bytes) -> str:
    """What came back instead of a SOAP message, in one line: the HTTP status, the media type and
    the start of the text (an HTML page's title), and a hint on a 404 (a wrong path)."""
    text = content[:4096].decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    said = " ".join((title.group(1) if title else re.sub(r"<[^>]*>", " ", text)).split())[:120]
    media = ctype.split(";")[0].strip() or "no Content-Type"
    hint = " (is the endpoint's path right?)" if status == 404 else ""
    return (f"{url} answered HTTP {status}{' ' + reason if reason else ''} with {media}, not a SOAP message{hint}"
            + (f": {said}" if said else ""))


class SoapClient:
    """A SOAP 1.2 endpoint: ``call(action, body, attachments=None)`` -> SoapMessage.

    Without ``session`` the client uses the shared session of its TLS configuration (connections
    kept alive across clients); ``close()`` closes only a session it was given."""

    def __init__(self, url: str, *, timeout: float = 30, session: requests.Session | None = None,
                 mtom: bool = False, tls_config=None):
        if not url or not url.startswith(("http://", "https://")):
            raise UsageError(f"bad SOAP endpoint URL {url!r}: give http://host:port/path or https://...")
        self.url, self.timeout, self.mtom = url, timeout, mtom
        self._own = session is not None
        self.session = session or shared_session(tls_config if url.startswith("https://") else None)

    def call(self, action: str, body: etree._Element, *, attachments: mtom.Attachments | None = None,
             force_mtom: bool | None = None) -> SoapMessage:
        if schemas.STRICT:
            schemas.validate(body)
        env = envelope(body, action, to=self.url)
        data, ctype = mtom.encode(env, action, attachments, mtom=self.mtom if force_mtom is None else force_mtom)
        log.debug("POST %s %s (%d bytes)", self.url, action, len(data))
        try:
            r = self.session.post(self.url, data=data, headers={"Content-Type": ctype}, timeout=self.timeout,
                                  stream=True)
            try:
                # read in large pieces (requests reads 10 KiB at a time; a query answer is often 1 MB)
                content = b"".join(r.iter_content(_READ))
            finally:
                r.close()  # the body is read: the connection goes back to the pool
        except requests.exceptions.ConnectTimeout:
            raise PeerUnreachable(f"cannot reach {self.url}: no connection within {self.timeout:g} s") from None
        except requests.exceptions.Timeout:
            raise NoAnswer(f"{self.url}: no answer within {self.timeout:g} s") from None
        except requests.exceptions.SSLError as e:
            raise tls_error(self.url, e) from None
        except requests.exceptions.ConnectionError as e:
            raise connection_error(self.url, e) from None
        except requests.exceptions.RequestException as e:
            raise PeerUnreachable(f"{self.url}: {e}") from None
        ctype = r.headers.get("Content-Type", "")
        try:
            msg = mtom.decode(content, ctype)
        except SoapFault:
            raise IheError(not_soap(self.url, r.status_code, r.reason, ctype, content)) from None
        fault = msg.fault()
        if fault is not None:
            sub = f" [{fault.subcode}]" if fault.subcode else ""
            fault.args = (f"{self.url} answered a SOAP fault ({fault.code}{sub}): {fault.reason}",)
            raise fault
        if r.status_code >= 300:
            raise IheError(f"{self.url} answered HTTP {r.status_code}")
        if msg.body is None:
            raise IheError(f"{self.url} answered an empty SOAP body")
        if schemas.STRICT:
            schemas.validate(msg.body)
        return msg

    def close(self) -> None:
        if self._own:
            self.session.close()
