"""ITI-19 Authenticate Node: the TLS context factory, its floors and mutual authentication, with
real handshakes on loopback sockets (certificates made by trustme)."""
from __future__ import annotations

import re
import socket
import ssl
import threading
import warnings
from pathlib import Path

import pytest
import trustme

from ihecli.errors import UsageError
from ihecli.net import tls


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a server and a client certificate, and a second CA nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    files = {}
    for name, cert in (("server", ca.issue_cert("localhost", "127.0.0.1")), ("client", ca.issue_cert("ihe-client")),
                       ("rogue", other.issue_cert("rogue-client"))):
        cert.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        files[name] = str(d / f"{name}.pem")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    files["ca"], files["other_ca"] = str(d / "ca.pem"), str(d / "other-ca.pem")
    return files


class Server:
    """A loopback TLS server doing the handshake through tls.server_handshake; records outcomes."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            try:
                s = tls.server_handshake(conn, self.ctx, peer=f"{addr[0]}:{addr[1]}", service="test", timeout=5)
            except ConnectionError as e:
                self.refused.append(str(e))
                continue
            self.accepted.append(tls.peer_subject(s) or "anonymous")
            try:
                s.sendall(b"ok")
            finally:
                s.close()

    def close(self):
        self.sock.close()


def connect(port, ctx) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.recv(2)


@pytest.fixture
def refusals():
    got = []

    def listener(peer, reason, service):
        got.append((peer, reason, service))

    tls.add_refusal_listener(listener)
    yield got
    tls.remove_refusal_listener(listener)


def test_default_is_the_bcp195_tls12_floor(pki):
    ctx = tls.context(tls.TlsConfig(cert=pki["server"], ca=pki["ca"]), server=True)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(("GCM" in n or "CHACHA20" in n) and n.startswith("ECDHE") for n in tls12)
    legacy = tls.context(tls.TlsConfig(cert=pki["server"], floor="1.0"), server=True)
    assert legacy.minimum_version == ssl.TLSVersion.TLSv1
    assert "AES128-SHA" in {c["name"] for c in legacy.get_ciphers()}
    assert tls.context(None, server=True) is None


def test_mutual_authentication(pki, refusals):
    srv = Server(tls.context(tls.TlsConfig(cert=pki["server"], ca=pki["ca"]), server=True))
    try:
        good = tls.context(tls.TlsConfig(cert=pki["client"], ca=pki["ca"]), server=False)
        assert connect(srv.port, good) == b"ok"
        assert srv.accepted == ["ihe-client"]
        # no client certificate, and a certificate from a CA the server does not trust
        for cfg in (tls.TlsConfig(ca=pki["ca"]), tls.TlsConfig(cert=pki["rogue"], ca=pki["ca"])):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                connect(srv.port, tls.context(cfg, server=False))
        deadline = threading.Event()
        for _ in range(50):
            if len(srv.refused) == 2:
                break
            deadline.wait(0.05)
        assert srv.refused == ["no client certificate", srv.refused[1]]
        assert srv.refused[1].startswith("certificate not trusted")
        assert [r[2] for r in refusals] == ["test", "test"]
        assert all(r[0].startswith("127.0.0.1:") for r in refusals)
    finally:
        srv.close()


def test_client_refuses_a_server_from_an_untrusted_ca(pki):
    srv = Server(tls.context(tls.TlsConfig(cert=pki["server"]), server=True))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(srv.port, tls.context(tls.TlsConfig(ca=pki["other_ca"]), server=False))
        assert connect(srv.port, tls.context(tls.TlsConfig(ca=pki["ca"]), server=False)) == b"ok"
    finally:
        srv.close()


def _tls11_client(ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False
    return ctx


def test_tls11_refused_at_the_12_floor_accepted_at_the_10_floor(pki, refusals):
    strict = Server(tls.context(tls.TlsConfig(cert=pki["server"]), server=True))
    legacy = Server(tls.context(tls.TlsConfig(cert=pki["server"], floor="1.0"), server=True))
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            connect(strict.port, _tls11_client(pki["ca"]))
        assert connect(legacy.port, _tls11_client(pki["ca"])) == b"ok"
        for _ in range(50):
            if strict.refused:
                break
            threading.Event().wait(0.05)
        assert strict.refused == ["protocol version below the TLS floor"]
    finally:
        strict.close()
        legacy.close()


def test_slow_handshake_is_cut_off(pki, refusals):
    ctx = tls.context(tls.TlsConfig(cert=pki["server"]), server=True)
    a, b = socket.socketpair()
    try:
        with pytest.raises(ConnectionError, match="timed out"):
            tls.server_handshake(a, ctx, peer="slow", service="test", timeout=0.3)
        assert refusals == [("slow", "handshake timed out", "test")]
    finally:
        b.close()


def test_bad_files_are_usage_errors(pki, tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        tls.context(tls.TlsConfig(cert=str(tmp_path / "missing.pem")), server=False)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(UsageError, match="cannot use certificate"):
        tls.context(tls.TlsConfig(cert=str(junk)), server=False)
    with pytest.raises(UsageError, match="needs a certificate"):
        tls.context(tls.TlsConfig(), server=True)
    # what OpenSSL calls "PEM lib", said in the user's words
    with pytest.raises(UsageError, match=r"junk.pem: no PEM certificate in the file$"):
        tls.context(tls.TlsConfig(cert=str(junk)), server=True)
    with pytest.raises(UsageError, match=r"ca.pem: no private key in the file: give the key file with --tls-key"):
        tls.context(tls.TlsConfig(cert=pki["ca"]), server=True)
    with pytest.raises(UsageError, match=r"with key .*junk.pem: no PEM private key in the key file$"):
        tls.context(tls.TlsConfig(cert=pki["ca"], key=str(junk)), server=True)
    other_key = tmp_path / "client.key"
    other_key.write_text("".join(re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\n",
                                            Path(pki["client"]).read_text(), re.S)))
    with pytest.raises(UsageError, match="the private key does not belong to the certificate$"):
        tls.context(tls.TlsConfig(cert=pki["server"], key=str(other_key)), server=True)
    with pytest.raises(UsageError, match="TLS floor"):
        tls.context(tls.TlsConfig(floor="1.1"), server=False)


def _openssl(*args: str, cwd) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_certificates_made_with_openssl(tmp_path, pki, refusals):
    """The same mutual authentication with a CA and certificates made by the openssl command."""
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=IHE Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:ihe-client")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                 f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    srv = Server(tls.context(tls.TlsConfig(cert=str(d / "server.pem"), key=str(d / "server.key"),
                                           ca=str(d / "ca.pem")), server=True))
    try:
        ok = tls.context(tls.TlsConfig(cert=str(d / "client.pem"), key=str(d / "client.key"), ca=str(d / "ca.pem")),
                         server=False)
        assert connect(srv.port, ok) == b"ok"
        assert srv.accepted == ["client"]
        # a client whose certificate another CA signed (trustme's) is refused
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            connect(srv.port, tls.context(tls.TlsConfig(cert=pki["client"], ca=str(d / "ca.pem")), server=False))
        for _ in range(50):
            if srv.refused:
                break
            threading.Event().wait(0.05)
        assert srv.refused and srv.refused[0].startswith("certificate not trusted")
    finally:
        srv.close()


def test_https_server_refusals_are_reported(pki, refusals):
    """The HTTP server (uvicorn, asyncio TLS) reports refused handshakes with the peer's address."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ihecli.net.http import HttpServer

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    srv = HttpServer(app, port=0, ssl_context=tls.context(tls.TlsConfig(cert=pki["server"], ca=pki["ca"]),
                                                          server=True), name="https-test")
    srv.start()
    try:
        good = tls.context(tls.TlsConfig(cert=pki["client"], ca=pki["ca"]), server=False)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            with good.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert b"200 OK" in s.recv(1000)
        rogue = tls.context(tls.TlsConfig(cert=pki["rogue"], ca=pki["ca"]), server=False)
        with pytest.raises((ssl.SSLError, OSError)):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
                with rogue.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    if not s.recv(1000):
                        raise ConnectionError("closed")
        for _ in range(50):
            if refusals:
                break
            threading.Event().wait(0.05)
        assert len(refusals) == 1
        peer, reason, service = refusals[0]
        assert peer.startswith("127.0.0.1:") and reason.startswith("certificate not trusted")
        assert service == "https-test"
    finally:
        srv.stop()
