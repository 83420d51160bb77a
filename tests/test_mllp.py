"""The MLLP transport (ihecli.net.mllp): framing as real senders do it, a server that survives
its handler and hostile peers, the client's errors, TLS."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

from ihecli.errors import IheError, PeerUnreachable
from ihecli.hl7 import v2
from ihecli.net.mllp import Deframer, MllpClient, MllpServer, frame

MSG = b"MSH|^~\\&|SND|FAC|RCV|RFAC|20240101120000||ADT^A08^ADT_A01|%s|P|2.5\rEVN|A08\rPID|||123^^^HOSP||DOE^JOHN\r"


def msg(n) -> bytes:
    return MSG % str(n).encode()


def echo_ack(data: bytes) -> bytes:
    return v2.ack(v2.parse(data), "AA")


@pytest.fixture
def mllp():
    servers = []

    def start(handler=echo_ack, **kw) -> MllpServer:
        s = MllpServer(handler, port=0, **kw)
        s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def raw_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_frames(sock: socket.socket, n: int) -> list[bytes]:
    d = Deframer()
    out: list = []
    while len(out) < n:
        data = sock.recv(65536)
        assert data, f"connection closed after {len(out)} of {n} answers"
        out += d.feed(data)
    assert all(not f.oversized for f in out)
    return [f.data for f in out]


# -- framing ---------------------------------------------------------------------------------
def test_deframer_tolerates_what_senders_do():
    stream = (b"\r\n  junk" + frame(msg(1)) + b"\n" + b"\x0bpartial start, sender restarted" + frame(msg(2))
              + b"\x0b" + msg(3) + b"\x1c" + b"\x0b" + msg(4) + b"\x1c\r")
    whole = Deframer().feed(stream)
    assert [f.data for f in whole] == [msg(1), msg(2), msg(3), msg(4)]
    # the same stream one byte at a time: frames and CRs split across reads
    d = Deframer()
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i:i + 1])
    assert [f.data for f in got] == [msg(1), msg(2), msg(3), msg(4)]
    assert d.stray == len(b"\r\n  junk") + 1


def test_deframer_limits_size_and_recovers():
    d = Deframer(max_size=300)
    frames = d.feed(frame(b"MSH|" + b"x" * 5000) + frame(msg(7)))
    assert frames[0].oversized and frames[0].data.startswith(b"MSH|") and len(frames[0].data) <= 8192
    assert not frames[1].oversized and frames[1].data == msg(7)


# -- server ----------------------------------------------------------------------------------
def test_many_messages_on_one_connection_in_order(mllp):
    srv = mllp()
    with MllpClient("127.0.0.1", srv.port) as c:
        for i in range(200):
            ack = v2.read_ack(c.send(msg(i)))
            assert ack.code == "AA" and ack.control_id == str(i)


def test_pipelined_messages_are_answered_in_order(mllp):
    srv = mllp()
    s = raw_connect(srv.port)
    s.sendall(b"".join(frame(msg(i)) for i in range(20)))
    answers = read_frames(s, 20)
    assert [v2.read_ack(a).control_id for a in answers] == [str(i) for i in range(20)]
    s.close()


def test_handler_exception_becomes_ae_and_the_server_goes_on(mllp):
    def handler(data: bytes) -> bytes:
        if b"|boom|" in data:
            raise RuntimeError("database on fire")
        if b"|reject|" in data:
            raise v2.Hl7Error("patient locked", ack_code="AE", code=206, location=("PID", 1, 3, 1))
        return echo_ack(data)

    srv = mllp(handler)
    with MllpClient("127.0.0.1", srv.port) as c:
        a = v2.read_ack(c.send(msg("boom")))
        assert (a.code, a.control_id) == ("AE", "boom")
        assert "database on fire" in a.text and a.errors and a.errors[0].startswith("207")
        a = v2.read_ack(c.send(msg("reject")))
        assert a.code == "AE" and a.errors[0].startswith("206") and "PID" in a.errors[0]
        assert v2.read_ack(c.send(msg("after"))).code == "AA"  # same connection still served
    with MllpClient("127.0.0.1", srv.port) as c:
        assert v2.read_ack(c.send(msg("new"))).code == "AA"


def test_garbage_and_framing_bytes_inside_are_answered(mllp):
    srv = mllp()
    s = raw_connect(srv.port)
    s.sendall(b"\x00\xff\r\n" + frame(b"\x00\xffnot hl7 at all") + frame(msg(5)))
    first, second = read_frames(s, 2)
    a = v2.read_ack(first)
    assert a.code == "AR" and a.errors[0].startswith("100")
    assert v2.read_ack(second).code == "AA"
    s.close()


def test_oversized_message_is_refused_without_handling(mllp):
    seen = []

    def handler(data: bytes) -> bytes:
        seen.append(data)
        return echo_ack(data)

    srv = mllp(handler, max_size=1000)
    with MllpClient("127.0.0.1", srv.port) as c:
        big = msg("big") + b"NTE|1||" + b"x" * 5000 + b"\r"
        a = v2.read_ack(c.send(big))
        assert a.code == "AR" and a.control_id == "big" and "larger than 1000" in a.text
        assert v2.read_ack(c.send(msg("small"))).code == "AA"
    assert seen == [msg("small")]


def test_idle_connection_is_closed(mllp):
    srv = mllp(idle_timeout=0.5)
    s = raw_connect(srv.port)
    started = time.monotonic()
    s.settimeout(10)
    assert s.recv(10) == b""  # closed by the server, without a word
    assert time.monotonic() - started >= 0.4
    deadline = time.monotonic() + 5
    while srv.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.connections == 0
    s.close()


def test_stop_is_idempotent_and_closes_connections(mllp):
    srv = mllp()
    c = MllpClient("127.0.0.1", srv.port).connect()
    assert v2.read_ack(c.send(msg(1))).code == "AA"
    srv.stop()
    srv.stop()
    with pytest.raises(PeerUnreachable):
        c.send(msg(2))
    with pytest.raises(PeerUnreachable, match="cannot reach"):
        MllpClient("127.0.0.1", srv.port, timeout=2).connect()


def test_client_times_out_on_a_silent_peer():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(lsock.accept()), daemon=True)
    t.start()
    try:
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match="did not answer within 0.5 s"):
            MllpClient("127.0.0.1", lsock.getsockname()[1], timeout=0.5).send(msg(1))
        assert time.monotonic() - started < 3
    finally:
        for conn, _ in accepted:
            conn.close()
        lsock.close()


def test_sockets_have_nodelay(mllp):
    seen = {}

    def handler(data: bytes) -> bytes:
        return echo_ack(data)

    srv = mllp(handler)
    c = MllpClient("127.0.0.1", srv.port).connect()
    assert c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    c.send(msg(1))
    with srv._lock:
        seen["server"] = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in srv._conns]
    c.close()
    assert seen["server"] and all(seen["server"])


def test_tls(mllp, tmp_path):
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    srv = mllp(ssl_context=server_ctx)
    with MllpClient("127.0.0.1", srv.port, ssl_context=client_ctx) as c:
        assert v2.read_ack(c.send(msg("tls"))).code == "AA"
    # a client that does not trust the server's CA: refused, and the server goes on
    with pytest.raises(IheError, match="TLS failed: the server's certificate is not trusted") as refused:
        MllpClient("127.0.0.1", srv.port, ssl_context=ssl.create_default_context(), timeout=5).connect()
    assert not isinstance(refused.value, PeerUnreachable)  # exit 1: reached, and the link refused
    with pytest.raises(PeerUnreachable):  # plain MLLP to a TLS port: no answer comes back
        MllpClient("127.0.0.1", srv.port, timeout=2).send(msg("plain"))
    with MllpClient("127.0.0.1", srv.port, ssl_context=client_ctx) as c:
        assert v2.read_ack(c.send(msg("again"))).code == "AA"


def test_connections_past_the_limit_are_closed(mllp):
    srv = mllp(max_connections=2)
    held = [MllpClient("127.0.0.1", srv.port).connect() for _ in range(2)]
    for c in held:
        assert v2.read_ack(c.send(msg("held"))).code == "AA"
    with pytest.raises(PeerUnreachable, match="closed the connection"):
        MllpClient("127.0.0.1", srv.port, timeout=5).send(msg("third"))
    held[0].close()
    deadline = time.monotonic() + 5
    while srv.connections > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with MllpClient("127.0.0.1", srv.port, timeout=5) as c:
        assert v2.read_ack(c.send(msg("later"))).code == "AA"
    held[1].close()


def test_handler_knows_its_peer(mllp):
    from ihecli.net.mllp import current_peer

    seen = []

    def handler(data: bytes) -> bytes:
        seen.append(current_peer())
        return echo_ack(data)

    srv = mllp(handler)
    with MllpClient("127.0.0.1", srv.port) as c:
        c.send(msg(1))
        local = c.sock.getsockname()
    assert seen == [f"127.0.0.1:{local[1]}"]
    assert current_peer() == ""
