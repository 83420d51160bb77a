"""The SOAP layer: envelopes and WS-Addressing, MTOM/XOP both ways, faults, the safe parser,
schema validation against the official XSDs, and a SoapService on a real port."""
from __future__ import annotations

import re
import socket
import time

import pytest
import requests
from lxml import etree

from helpers import DATA
from ihecli.errors import PeerUnreachable
from ihecli.net.http import HttpServer
from ihecli.net.soap import (Attachments, Reply, SoapClient, SoapFault, SoapService, XmlError, decode, encode,
                             envelope, parse_xml, validate)
from ihecli.net.soap.envelope import fault_envelope, parse_envelope
from ihecli.net.soap.schemas import SchemaError
from ihecli.net.soap.xml import NS, SOAP12, q

XDS = DATA / "xds"

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://www.w3.org/2003/05/soap-envelope"><soapenv:Header>
<wsa:Action xmlns:wsa="http://www.w3.org/2005/08/addressing">urn:x</wsa:Action></soapenv:Header>
<soapenv:Body><ping xmlns="urn:y">&xxe;</ping></soapenv:Body></soapenv:Envelope>"""

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<soapenv:Envelope xmlns:soapenv="http://www.w3.org/2003/05/soap-envelope"><soapenv:Body>
<ping xmlns="urn:y">&lol9;</ping></soapenv:Body></soapenv:Envelope>"""


def test_safe_parser_refuses_doctype_entities_and_network():
    for payload in (XXE, LAUGHS):
        with pytest.raises(XmlError, match="DOCTYPE"):
            parse_xml(payload)
    with pytest.raises(XmlError, match="not well-formed"):
        parse_xml(b"<a><b></a>")
    # an external entity without a DOCTYPE is just an undefined entity: refused, nothing read
    with pytest.raises(XmlError):
        parse_xml(b"<a>&xxe;</a>")
    assert parse_xml(b"<a>x</a>").text == "x"


def test_request_envelope_has_ws_addressing_with_must_understand():
    body = etree.Element("{urn:y}Ping")
    env = envelope(body, "urn:ihe:iti:2007:RegistryStoredQuery", to="http://h/xds")
    mu = q(SOAP12, "mustUnderstand")
    action = env.find("soap:Header/wsa:Action", NS)
    assert action.text == "urn:ihe:iti:2007:RegistryStoredQuery" and action.get(mu) == "true"
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", env.findtext("soap:Header/wsa:MessageID", namespaces=NS))
    assert env.findtext("soap:Header/wsa:ReplyTo/wsa:Address", namespaces=NS).endswith("/anonymous")
    assert env.findtext("soap:Header/wsa:To", namespaces=NS) == "http://h/xds"
    assert env.find("soap:Body", NS)[0].tag == "{urn:y}Ping"
    reply = envelope(body, "urn:x:Response", relates_to="urn:uuid:1", reply_to=False, message_id="urn:uuid:2")
    assert reply.findtext("soap:Header/wsa:RelatesTo", namespaces=NS) == "urn:uuid:1"
    assert reply.find("soap:Header/wsa:ReplyTo", NS) is None


def test_mtom_round_trip_keeps_binary_bytes():
    tricky = b"\r\n--MIMEBoundary_x\r\n\x00\xff" + bytes(range(256)) * 50 + b"\r\n"
    body = etree.Element("{urn:y}Put")
    parts = Attachments()
    parts.include(etree.SubElement(body, "{urn:y}Doc"), tricky, "application/octet-stream")
    parts.include(etree.SubElement(body, "{urn:y}Doc"), b"", "text/plain")
    data, ctype = encode(envelope(body, "urn:x"), "urn:x", parts)
    assert ctype.startswith("multipart/related;") and 'type="application/xop+xml"' in ctype
    assert 'start-info="application/soap+xml"' in ctype and 'action="urn:x"' in ctype
    msg = decode(data, ctype)
    assert msg.mtom and msg.action == "urn:x"
    docs = msg.body.findall("{urn:y}Doc")
    assert msg.binary(docs[0]) == tricky and msg.binary(docs[1]) == b""
    # plain SOAP: base64 inline is read the same way
    inline = etree.Element("{urn:y}Doc")
    inline.text = "aGVsbG8="
    assert msg.binary(inline) == b"hello"


def _capture():
    raw = (XDS / "nist-http-mtom-pnr.txt").read_bytes()
    head, body = raw.split(b"\n\n", 1)
    ctype = re.search(rb"Content-Type: (.*)", head).group(1).strip().decode()
    return body, ctype


def test_decode_real_axis2_capture_with_bare_lf():
    body, ctype = _capture()
    msg = decode(body, ctype)
    assert msg.action == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    assert msg.message_id == "urn:uuid:3D4B161591CD1DEC0C1286850962146"
    doc = msg.body.find("xdsb:Document", NS)
    text = msg.binary(doc)
    assert text.startswith(b"Four score and seven years ago") and text.endswith(b"shall not perish from the earth.")
    validate(msg.body)


def test_schema_validation_of_fixture_bodies_and_failures():
    names = ["nist-sq-req.xml", "ipf-iti18request.xml", "ipf-SubmitObjectsRequest_ebrs30.xml",
             "nist-sq-resp-lc.xml", "nist-sq-resp-objectref.xml", "nist-regresp-suc-err.xml",
             "nist-testkit-30000_remove_remove.xml", "nist-soap-ret-resp.xml", "nist-soap-pnr.xml"]
    for n in names:
        root = parse_xml((XDS / n).read_bytes())
        if root.tag == q(SOAP12, "Envelope"):
            root = root.find("soap:Body", NS)[0]
        validate(root)
    bad = parse_xml(b'<rs:RegistryResponse xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"/>')
    with pytest.raises(SchemaError, match="status"):
        validate(bad)
    wrong = parse_xml(b'<query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0">'
                      b'<query:Bogus/></query:AdhocQueryRequest>')
    with pytest.raises(SchemaError):
        validate(wrong)


def test_fault_parsed_in_any_order_and_soap11_refused():
    env = fault_envelope(SoapFault("no such thing", subcode="wsa:ActionNotSupported"))
    f = parse_envelope(etree.tostring(env)).fault()
    assert (f.code, f.subcode, f.reason) == ("Sender", "wsa:ActionNotSupported", "no such thing")
    reordered = (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><e:Fault>'
                 b'<e:Reason><e:Text xml:lang="en">busy</e:Text></e:Reason><e:Code><e:Value>e:Receiver</e:Value>'
                 b'</e:Code></e:Fault></e:Body></e:Envelope>')
    f = parse_envelope(reordered).fault()
    assert (f.code, f.reason) == ("Receiver", "busy")
    with pytest.raises(SoapFault) as e:
        parse_envelope(b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>')
    assert e.value.code == "VersionMismatch"


@pytest.fixture(scope="module")
def echo():
    def reverse(msg):
        data = msg.binary(msg.body)
        out = etree.Element("{urn:y}Pong")
        parts = Attachments()
        parts.include(out, data[::-1], "application/octet-stream")
        return Reply(out, "urn:x:PingResponse", parts)

    def boom(msg):
        raise RuntimeError("secret internal detail")

    srv = HttpServer(SoapService({"urn:x:Ping": reverse, "urn:x:Boom": boom}, max_body=64 * 1024), port=0)
    srv.start()
    yield srv.url + "/soap"
    srv.stop()


def _post(url, data, ctype="application/soap+xml", headers=None):
    return requests.post(url, data=data, headers={"Content-Type": ctype, **(headers or {})}, timeout=10)


def _fault_of(r):
    return decode(r.content, r.headers["content-type"]).fault()


def test_service_round_trip_and_relates_to(echo):
    body = etree.Element("{urn:y}Ping")
    parts = Attachments()
    parts.include(body, b"abc\r\n", "text/plain")
    client = SoapClient(echo)
    msg = client.call("urn:x:Ping", body, attachments=parts)
    assert msg.mtom and msg.binary(msg.body) == b"\n\rcba"
    assert msg.action == "urn:x:PingResponse" and msg.relates_to.startswith("urn:uuid:")
    mu = msg.envelope.find("soap:Header/wsa:Action", NS).get(q(SOAP12, "mustUnderstand"))
    assert mu == "true"


def test_service_faults(echo):
    client = SoapClient(echo)
    with pytest.raises(SoapFault) as e:
        client.call("urn:x:Nope", etree.Element("{urn:y}Ping"))
    assert e.value.subcode == "wsa:ActionNotSupported" and "urn:x:Nope" in str(e.value)
    with pytest.raises(SoapFault) as e:
        client.call("urn:x:Boom", etree.Element("{urn:y}Ping"))
    assert e.value.code == "Receiver" and "secret" not in str(e.value)
    noaction = (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><p xmlns="urn:y"/>'
                b'</e:Body></e:Envelope>')
    r = _post(echo, noaction)
    assert r.status_code == 400 and _fault_of(r).subcode == "wsa:MessageAddressingHeaderRequired"
    unknown_mu = (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header>'
                  b'<a:Action xmlns:a="http://www.w3.org/2005/08/addressing">urn:x:Ping</a:Action>'
                  b'<s:Security xmlns:s="urn:sec" e:mustUnderstand="true"/></e:Header><e:Body><p xmlns="urn:y"/>'
                  b'</e:Body></e:Envelope>')
    r = _post(echo, unknown_mu)
    assert r.status_code == 400 and _fault_of(r).code == "MustUnderstand"
    for payload in (XXE, LAUGHS, b"\x00garbage", b"<unclosed"):
        t = time.monotonic()
        r = _post(echo, payload)
        assert r.status_code == 400 and _fault_of(r).code == "Sender"
        assert b"root:" not in r.content and time.monotonic() - t < 2
    r = _post(echo, b"{}", "application/json")
    assert r.status_code == 400 and "Content-Type" in _fault_of(r).reason
    assert requests.get(echo, timeout=5).status_code == 405


def test_service_refuses_oversized_bodies(echo):
    # announced size over the limit: refused before reading (a 1 GB claim costs nothing)
    with socket.create_connection(("127.0.0.1", int(echo.split(":")[2].split("/")[0]))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"POST /soap HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
                  b"Content-Length: 1073741824\r\n\r\n" + b"<" * 1000)
        s.settimeout(5)
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413")
    # chunked, no length: cut off once over the limit
    r = requests.post(echo, data=(b"x" * 8192 for _ in range(20)), headers={"Content-Type": "application/soap+xml"},
                      timeout=10)
    assert r.status_code == 413 and "limit" in _fault_of(r).reason


def test_client_errors():
    from helpers import free_port

    with pytest.raises(PeerUnreachable, match="refused"):
        SoapClient(f"http://127.0.0.1:{free_port()}/x", timeout=2).call("urn:x", etree.Element("{urn:y}P"))
    from ihecli.errors import UsageError

    with pytest.raises(UsageError):
        SoapClient("ftp://example.org/x")


def test_clients_share_kept_alive_connections_and_survive_a_server_restart():
    """SoapClients without a session of their own reuse one kept-alive connection per endpoint;
    when the server goes away and comes back on the same port, the next call connects again."""
    clients = []  # the client address of each request, as the server saw it
    service = SoapService({"urn:x:Ping": lambda msg: Reply(etree.Element("{urn:y}Pong"), "urn:x:PingResponse")})

    async def app(scope, receive, send):
        if scope["type"] == "http":
            clients.append(tuple(scope["client"]))
        await service(scope, receive, send)

    srv = HttpServer(app, port=0)
    port = srv.start()
    url = f"{srv.url}/soap"
    try:
        for _ in range(3):
            assert SoapClient(url).call("urn:x:Ping", etree.Element("{urn:y}Ping")).body.tag == "{urn:y}Pong"
        assert len(clients) == 3 and len(set(clients)) == 1
        srv.stop()
        srv = HttpServer(app, port=port)
        srv.start()
        assert SoapClient(url).call("urn:x:Ping", etree.Element("{urn:y}Ping")).body.tag == "{urn:y}Pong"
        assert len(clients) == 4 and clients[3] != clients[0]
    finally:
        srv.stop()


def test_an_answer_that_is_no_soap_is_said_in_one_line(tmp_path):
    """A wrong path on a SOAP server, a plain web server: the status, the media type and what it said."""
    import subprocess
    import sys

    from helpers import free_port, wait_port
    from ihecli.errors import IheError

    from ihecli.archive import Archive
    from ihecli.xds.server import XdsServer

    with Archive(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "x") as a:
        srv = XdsServer(a, repository_unique_id="1.2.3")
        srv.start()
        wrong = srv.url.rsplit("/", 1)[0] + "/wrong"
        try:
            with pytest.raises(IheError) as e:
                SoapClient(wrong, timeout=5).call("urn:x:Ping", etree.Element("{urn:y}P"))
        finally:
            srv.stop()
    assert str(e.value) == f"{wrong} answered HTTP 404 Not Found with text/plain, not a SOAP message (is the " \
                           "endpoint's path right?): Not Found"
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 20)
        with pytest.raises(IheError) as e:
            SoapClient(f"http://127.0.0.1:{port}/xds", timeout=5).call("urn:x:Ping", etree.Element("{urn:y}P"))
    finally:
        web.terminate()
        web.wait(10)
    assert str(e.value).startswith(f"http://127.0.0.1:{port}/xds answered HTTP 501 ")
    assert str(e.value).endswith("with text/html, not a SOAP message: Error response")  # the page's title
