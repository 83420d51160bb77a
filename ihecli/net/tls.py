"""TLS for every link (ITI-19 Authenticate Node): the one factory of client and server contexts.

``context(cfg, server=...)`` builds an ``ssl.SSLContext`` for DICOM, MLLP, HTTP/SOAP and syslog
alike, following the ATNA options:

- "TLS 1.2 Floor using BCP195" (the default, ``floor="1.2"``): TLS 1.2 or 1.3 only, TLS 1.2
  limited to the AEAD ECDHE suites RFC 9325 (BCP195) section 4.2 recommends;
- "TLS 1.0 Floor using BCP195" (``floor="1.0"``, only on request): TLS 1.0 and 1.1 allowed as
  well, with the CBC suites those versions need (TLS_RSA_WITH_AES_128_CBC_SHA among them);
- "No Secure Transport": no context at all (``context(None)`` returns None).

Node authentication is mutual: a server given a CA (``cfg.ca``) requires and checks the client's
certificate; a client checks the server's certificate against the CA (or the system store).

A node marked for TLS in the profile (``tls = true``, ``tls://AET@host:port``) gets its client
context from ``for_node``, the one place every outgoing association of the archive asks.

A handshake a server refuses is reported to the refusal listeners (``add_refusal_listener``):
the audit package registers one that records a Security Alert, so every server doing its
handshake through ``server_handshake`` gets the refusal audited without importing it.
"""
from __future__ import annotations

import logging
import re
import socket
import ssl
import sys
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ihecli.errors import UsageError

log = logging.getLogger("ihe.tls")

FLOORS = ("1.2", "1.0")

# RFC 9325 section 4.2: the recommended TLS 1.2 suites (AEAD, forward secrecy); ChaCha20 ones
# are allowed there too. TLS 1.3 suites are OpenSSL's defaults (all AEAD).
BCP195_TLS12 = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
# TLS 1.0/1.1 have no AEAD suites; these are the ones the IHE TLS 1.0 floor option and older
# peers use. OpenSSL 3 allows TLS < 1.2 only at security level 0.
LEGACY_TLS10 = ":".join([
    BCP195_TLS12,
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA",
]) + ":@SECLEVEL=0"


@dataclass(frozen=True)
class TlsConfig:
    """What a TLS link uses. Paths are PEM files; empty means not given."""

    cert: str = ""  # our certificate chain
    key: str = ""  # its private key (may be in ``cert``)
    ca: str = ""  # trusted CA certificates; servers then require client certificates
    floor: str = "1.2"  # "1.2" (BCP195 default) or "1.0" (legacy, on request)
    require_client_cert: bool = True  # servers with a CA: refuse clients without a trusted certificate
    check_hostname: bool = False  # clients: also match the server's name (IHE trusts the CA, not names)

    def with_(self, **kw) -> "TlsConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def _check_floor(floor: str) -> str:
    f = str(floor).strip()
    if f in ("1.2", "1.0"):
        return f
    raise UsageError(f"bad TLS floor {floor!r}: 1.2 (BCP195, the default) or 1.0 (legacy peers)")


def _file(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{what} {path}: no such file")
    return str(p)


def context(cfg: TlsConfig | None, *, server: bool) -> ssl.SSLContext | None:
    """An SSLContext for a client (``server=False``) or a server; None for no secure transport.

    Raises UsageError (one line naming the file) when a certificate, key or CA cannot be used."""
    if cfg is None:
        return None
    floor = _check_floor(cfg.floor)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    if floor == "1.2":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(BCP195_TLS12)
    else:
        with warnings.catch_warnings():  # deprecated, and asked for on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers(LEGACY_TLS10)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if cfg.cert:
        cert = _file(cfg.cert, "certificate")
        key = _file(cfg.key, "private key") if cfg.key else None
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"cannot use certificate {cfg.cert}" + (f" with key {cfg.key}" if cfg.key else "")
                             + f": {_pem_problem(cert, key, e)}") from None
    elif server:
        raise UsageError("a TLS server needs a certificate and key: give --cert and --tls-key (or tls.cert, tls.key "
                         "in the profile), or --no-tls")
    if cfg.ca:
        ca = _file(cfg.ca, "CA file")
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"cannot read CA certificates from {cfg.ca}: {getattr(e, 'reason', None) or e}") from None
    if server:
        ctx.verify_mode = ssl.CERT_REQUIRED if (cfg.ca and cfg.require_client_cert) else ssl.CERT_NONE
    else:
        if not cfg.ca:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = cfg.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# -- refusals -----------------------------------------------------------------------------------

RefusalListener = Callable[[str, str, str], None]  # (peer "host:port", reason, service)
_listeners: list[RefusalListener] = []
_lock = threading.Lock()


def add_refusal_listener(fn: RefusalListener) -> None:
    """Call ``fn(peer, reason, service)`` whenever a server refuses a TLS handshake."""
    with _lock:
        if fn not in _listeners:
            _listeners.append(fn)


def remove_refusal_listener(fn: RefusalListener) -> None:
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def report_refused(peer: str, reason: str, service: str, *, level: int = logging.WARNING) -> None:
    """Tell the listeners (and the log) that ``peer`` was refused; never raises. ``level``: a client
    that raises the refusal to its caller logs it at INFO (a server's log, not a second line under
    the one-shot command's own error)."""
    log.log(level, "%s: TLS handshake with %s refused: %s", service, peer, reason)
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(peer, reason, service)
        except Exception as e:  # a listener must not break the server
            log.debug("refusal listener failed: %s", e)


def _pem_problem(cert: str, key: str | None, exc: BaseException) -> str:
    """Why a certificate and key did not load, in the user's words (OpenSSL says "PEM lib")."""
    def text(path: str) -> str:
        try:
            with open(path, "rb") as f:
                return f.read(1 << 20).decode("ascii", "replace")
        except OSError as e:
            return f"<{e.strerror}>"

    c = text(cert)
    k = text(key) if key else c
    reason = (getattr(exc, "reason", None) or "").upper()
    if "-----BEGIN CERTIFICATE-----" not in c:
        return "no PEM certificate in the file"
    if not re.search(r"-----BEGIN (?:[A-Z]+ )?(?:ENCRYPTED )?PRIVATE KEY-----", k):
        return ("no PEM private key in the key file" if key else
                "no private key in the file: give the key file with --tls-key (or tls.key in the profile)")
    if "MISMATCH" in reason:
        return "the private key does not belong to the certificate"
    if "ENCRYPTED" in k or "Proc-Type: 4,ENCRYPTED" in k:
        return "the private key is encrypted and no passphrase was given (use a key without one)"
    return (getattr(exc, "reason", None) or str(exc)).lower().replace("_", " ")


def describe(exc: BaseException) -> str:
    """A short reason for a failed handshake ("no client certificate", "unsupported protocol", ...)."""
    reason = getattr(exc, "reason", None) or ""
    text = str(exc)
    low = (reason + " " + text).lower()
    if "peer did not return a certificate" in low or "certificate required" in low:
        return "no client certificate"
    if "certificate verify failed" in low or "unknown ca" in low or "certificate_unknown" in low \
            or "bad certificate" in low:
        return "certificate not trusted" + (f" ({reason.lower().replace('_', ' ')})" if reason else "")
    if "unsupported protocol" in low or "version too low" in low or "no protocols available" in low:
        return "protocol version below the TLS floor"
    if "wrong version number" in low or "http request" in low or "unknown protocol" in low:
        return "not a TLS handshake"
    if "no shared cipher" in low or "handshake failure" in low:
        return "no shared cipher suite"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "handshake timed out"
    if isinstance(exc, (ConnectionError, EOFError)) or "eof" in low:
        return "connection closed during the handshake"
    return (reason or text or type(exc).__name__).lower().replace("_", " ")


def client_refusal(exc: BaseException) -> str:
    """Why a TLS link a client opened was refused, by us or by the server, in the words of the
    one line a client command prints. With TLS 1.3 the server refuses our certificate after the
    handshake: the connection closes at the first read."""
    if isinstance(exc, ssl.SSLCertVerificationError):  # we refused the server, not it us
        return f"the server's certificate is not trusted ({exc.verify_message or 'verify failed'}; see --ca)"
    why = describe(exc)
    if why == "connection closed during the handshake":
        return "the server closed the connection (does it trust our certificate?)"
    return why


def server_handshake(sock: socket.socket, ctx: ssl.SSLContext, *, peer: str, service: str,
                     timeout: float = 10.0) -> ssl.SSLSocket:
    """Wrap an accepted socket and finish the handshake within ``timeout`` seconds.

    A refused handshake is reported (``report_refused``), the socket closed, and the error
    re-raised as ConnectionError."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
    except (ssl.SSLError, OSError) as e:
        reason = describe(e)
        report_refused(peer, reason, service)
        try:
            sock.close()
        except OSError:
            pass
        raise ConnectionError(reason) from None
    tls.settimeout(old)
    return tls


class _ReportingSSLObject(ssl.SSLObject):
    """An SSLObject that reports the handshakes it refuses as a server (see report_refusals)."""

    service = "TLS"

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            if self.server_side:
                report_refused(_asyncio_peer(), describe(e), self.service)
            raise


def _asyncio_peer() -> str:
    """The peer of the asyncio SSL protocol driving the handshake: asyncio's SSLProtocol calls
    do_handshake itself, so its frame is the caller's; "unknown" when it cannot be told."""
    try:
        proto = sys._getframe(2).f_locals.get("self")
        addr = proto._transport.get_extra_info("peername")
        return f"{addr[0]}:{addr[1]}"
    except Exception:
        return "unknown"


def report_refusals(ctx: ssl.SSLContext | None, service: str) -> ssl.SSLContext | None:
    """Make an asyncio server's context (uvicorn, ``loop.create_server(ssl=...)``) report the
    handshakes it refuses, as ``server_handshake`` does for socket servers; returns ``ctx``."""
    if ctx is not None:
        ctx.sslobject_class = type("ReportingSSLObject", (_ReportingSSLObject,), {"service": service})
    return ctx


def peer_subject(sock) -> str:
    """The peer certificate's subject common name (else its first alternative name), '' without one."""
    try:
        cert = sock.getpeercert()
    except (AttributeError, ValueError, OSError):
        return ""
    for rdn in (cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    for _kind, v in (cert or {}).get("subjectAltName", ()):
        return v
    return ""


def client_handshake(sock: socket.socket, ctx: ssl.SSLContext, *, host: str, port: int,
                     service: str = "TLS client") -> ssl.SSLSocket:
    """Wrap a connected socket as a client and finish the handshake. A server certificate we do not
    trust is reported (``report_refused``, so it is audited) before the error is raised; on any
    failure the socket is closed."""
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as e:  # we refuse the peer: report it like a server would
        sock.close()
        report_refused(f"{host}:{port}", describe(e), service, level=logging.INFO)
        raise
    except BaseException:
        sock.close()
        raise


def connect(host: str, port: int, ctx: ssl.SSLContext | None, *, timeout: float = 10.0,
            service: str = "TLS client") -> socket.socket:
    """A TCP connection (TCP_NODELAY set), wrapped in TLS when ``ctx`` is given; OSError on failure.
    A server certificate we do not trust is reported (``report_refused``) before the error is raised."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is None:
        return sock
    return client_handshake(sock, ctx, host=host, port=port, service=service)


# -- per-node TLS ---------------------------------------------------------------------------------

_client_contexts: dict[TlsConfig, ssl.SSLContext] = {}


def for_node(node, cfg: TlsConfig | None) -> ssl.SSLContext | None:
    """The client context for an association to ``node`` (an ihecli.config.Node): None unless the
    node asks for TLS (``tls = true`` in the profile, ``tls://AET@host:port``), else built from
    ``cfg`` (our certificate and trusted CAs: the profile's [tls]; None: no certificate, the
    system's CAs). Every association the archive opens itself (C-MOVE sub-operations, storage
    commitment reports, MPPS forwarding, IAN) asks here. One context per configuration."""
    if not getattr(node, "tls", False):
        return None
    cfg = cfg or TlsConfig()
    with _lock:
        ctx = _client_contexts.get(cfg)
    if ctx is None:
        ctx = context(cfg, server=False)
        with _lock:
            ctx = _client_contexts.setdefault(cfg, ctx)
    return ctx
