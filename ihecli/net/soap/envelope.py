"""SOAP 1.2 envelopes with WS-Addressing headers, SOAP faults, and the parsed message.

Requests carry wsa:Action (mustUnderstand="true", as ITI TF-2x Appendix V and the NIST
validators require), wsa:MessageID, wsa:ReplyTo (anonymous) and wsa:To; responses carry
wsa:Action and wsa:RelatesTo. zeep's WS-Addressing plugin never sets mustUnderstand, hence this.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field

from lxml import etree

from ihecli.errors import IheError
from ihecli.net.soap.xml import SOAP11, SOAP12, WSA, XOP, XmlError, parse_xml, q, tostring

ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"


def new_message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


class SoapFault(IheError):
    """A SOAP 1.2 fault, received from a peer or to be sent by a server.

    ``code`` is Sender, Receiver, MustUnderstand, VersionMismatch or DataEncodingUnknown;
    ``subcode`` a QName string such as ``wsa:ActionNotSupported``; ``http_status`` what a server
    answers with (400 for Sender faults, 500 otherwise).
    """

    def __init__(self, reason: str, code: str = "Sender", subcode: str | None = None,
                 http_status: int | None = None, detail: str | None = None):
        super().__init__(reason)
        self.reason, self.code, self.subcode, self.detail = reason, code, subcode, detail
        self.http_status = http_status or (400 if code in ("Sender", "MustUnderstand", "VersionMismatch")
                                           else 500)


def envelope(body: etree._Element | None, action: str, *, to: str | None = None, message_id: str | None = None,
             relates_to: str | None = None, reply_to: bool = True,
             headers: list[etree._Element] | None = None) -> etree._Element:
    """A SOAP 1.2 envelope around ``body`` with WS-Addressing headers.

    A request gets MessageID (new unless given), ReplyTo anonymous and To; a response gets
    RelatesTo (pass ``relates_to``, ``reply_to=False``). Action is always mustUnderstand.
    """
    env = etree.Element(q(SOAP12, "Envelope"), nsmap={"soapenv": SOAP12, "wsa": WSA})
    hdr = etree.SubElement(env, q(SOAP12, "Header"))
    mu = q(SOAP12, "mustUnderstand")
    a = etree.SubElement(hdr, q(WSA, "Action"))
    a.text = action
    a.set(mu, "true")
    if relates_to is None or message_id is not None:
        etree.SubElement(hdr, q(WSA, "MessageID")).text = message_id or new_message_id()
    if reply_to and relates_to is None:
        rt = etree.SubElement(hdr, q(WSA, "ReplyTo"))
        etree.SubElement(rt, q(WSA, "Address")).text = ANONYMOUS
    if relates_to:
        etree.SubElement(hdr, q(WSA, "RelatesTo")).text = relates_to
    if to:
        etree.SubElement(hdr, q(WSA, "To")).text = to
    for h in headers or ():
        hdr.append(h)
    b = etree.SubElement(env, q(SOAP12, "Body"))
    if body is not None:
        b.append(body)
    return env


def with_body(env: etree._Element, body: bytes) -> bytes:
    """An envelope made with an empty Body, serialized with ``body`` (an element already
    serialized, without XML declaration) spliced into the Body: a large answer is not parsed
    back into a tree only to be written out again."""
    xml = tostring(env)
    empty = b"<soapenv:Body/>"  # the last element of the envelope
    cut = xml.rindex(empty)
    return b"".join((xml[:cut], b"<soapenv:Body>", body, b"</soapenv:Body>", xml[cut + len(empty):]))


def fault_envelope(fault: SoapFault, relates_to: str | None = None) -> etree._Element:
    """The envelope of a SOAP 1.2 fault (Code/Value, optional Subcode, Reason/Text)."""
    f = etree.Element(q(SOAP12, "Fault"))
    code = etree.SubElement(f, q(SOAP12, "Code"))
    etree.SubElement(code, q(SOAP12, "Value")).text = f"soapenv:{fault.code}"
    if fault.subcode:
        sub = etree.SubElement(code, q(SOAP12, "Subcode"))
        v = etree.SubElement(sub, q(SOAP12, "Value"), nsmap={"wsa": WSA} if fault.subcode.startswith("wsa:") else None)
        v.text = fault.subcode
    reason = etree.SubElement(f, q(SOAP12, "Reason"))
    t = etree.SubElement(reason, q(SOAP12, "Text"))
    t.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    t.text = fault.reason
    if fault.detail:
        etree.SubElement(etree.SubElement(f, q(SOAP12, "Detail")), "message").text = fault.detail
    return envelope(f, FAULT_ACTION, relates_to=relates_to, reply_to=False,
                    message_id=new_message_id() if relates_to else None)


@dataclass
class SoapMessage:
    """A received SOAP message: the envelope, its first body element and the WS-A headers.

    ``attachments`` maps MIME Content-ID (without angle brackets) to the part's bytes; ``binary(el)``
    gives the content of an element holding either an xop:Include or base64 text.
    """

    envelope: etree._Element
    body: etree._Element | None
    action: str | None = None
    message_id: str | None = None
    relates_to: str | None = None
    to: str | None = None
    attachments: dict[str, bytes] = field(default_factory=dict)
    mtom: bool = False
    headers: list[etree._Element] = field(default_factory=list)
    peer: str = ""  # the client's address, on a server

    def binary(self, el: etree._Element) -> bytes:
        """The bytes an element carries: an xop:Include's MIME part, or base64 text."""
        inc = el.find(q(XOP, "Include"))
        if inc is not None:
            href = inc.get("href", "")
            if not href.startswith("cid:"):
                raise SoapFault(f"xop:Include href {href!r} is not a cid: URL")
            from urllib.parse import unquote

            cid = unquote(href[4:])
            if cid not in self.attachments:
                raise SoapFault(f"xop:Include refers to a missing MIME part <{cid}>")
            return self.attachments[cid]
        try:
            return base64.b64decode("".join((el.text or "").split()), validate=True)
        except (binascii.Error, ValueError):
            raise SoapFault(f"{etree.QName(el).localname} is neither xop:Include nor base64") from None

    def fault(self) -> SoapFault | None:
        """The fault this message carries, if it is one (parsed leniently: order not relied on)."""
        if self.body is None or self.body.tag != q(SOAP12, "Fault"):
            return None
        ns = {"s": SOAP12}
        value = self.body.findtext("s:Code/s:Value", namespaces=ns) or "Receiver"
        sub = self.body.findtext("s:Code/s:Subcode/s:Value", namespaces=ns)
        reason = " ".join(t.strip() for t in self.body.xpath("s:Reason/s:Text/text()", namespaces=ns)) or "no reason"
        return SoapFault(reason, code=value.split(":")[-1], subcode=sub)


def parse_envelope(xml: bytes, *, attachments: dict[str, bytes] | None = None, mtom: bool = False) -> SoapMessage:
    """Parse a SOAP 1.2 envelope (safe parser); SoapFault on anything that is not one."""
    try:
        root = parse_xml(xml)
    except XmlError as e:
        raise SoapFault(str(e)) from None
    if root.tag == q(SOAP11, "Envelope"):
        raise SoapFault("SOAP 1.1 envelope: this endpoint speaks SOAP 1.2", code="VersionMismatch")
    if root.tag != q(SOAP12, "Envelope"):
        raise SoapFault(f"not a SOAP 1.2 envelope (root element {etree.QName(root).localname})")
    header = root.find(q(SOAP12, "Header"))
    body = root.find(q(SOAP12, "Body"))
    if body is None:
        raise SoapFault("SOAP envelope without a Body")
    children = [c for c in body if isinstance(c.tag, str)]
    msg = SoapMessage(envelope=root, body=children[0] if children else None, attachments=attachments or {},
                      mtom=mtom)
    if header is not None:
        msg.headers = [h for h in header if isinstance(h.tag, str)]
        for h in msg.headers:
            if h.tag == q(WSA, "Action"):
                msg.action = (h.text or "").strip()
            elif h.tag == q(WSA, "MessageID"):
                msg.message_id = (h.text or "").strip()
            elif h.tag == q(WSA, "RelatesTo"):
                msg.relates_to = (h.text or "").strip()
            elif h.tag == q(WSA, "To"):
                msg.to = (h.text or "").strip()
    return msg


def not_understood(msg: SoapMessage, understood: set[str]) -> list[str]:
    """Headers marked mustUnderstand whose namespace is not in ``understood``."""
    mu = q(SOAP12, "mustUnderstand")
    return [h.tag for h in msg.headers
            if h.get(mu, "").strip() in ("true", "1") and etree.QName(h).namespace not in understood]
