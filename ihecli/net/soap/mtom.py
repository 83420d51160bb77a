"""MTOM/XOP: SOAP messages as multipart/related, both ways.

Hand-written: zeep cannot send MTOM (python-zeep #599), requests-toolbelt's MultipartEncoder
forces form-data Content-Disposition headers on every part, and its MultipartDecoder refuses
parts whose headers end with a bare LF (as in the NIST Axis2 capture). The format is small:
RFC 2387 multipart/related with the SOAP envelope as the root part (application/xop+xml)
and one part per attachment, referred to by ``<xop:Include href="cid:..."/>``.
"""
from __future__ import annotations

import email.parser
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from lxml import etree

from ihecli.net.soap.envelope import SoapFault, SoapMessage, parse_envelope
from ihecli.net.soap.xml import XOP, q, tostring

SOAP_CT = "application/soap+xml"


@dataclass
class Attachments:
    """Binary parts of an outgoing MTOM message, by Content-ID."""

    parts: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def add(self, data: bytes, content_type: str = "application/octet-stream") -> str:
        cid = f"{uuid.uuid4().hex}@ihe"
        self.parts[cid] = (bytes(data), content_type)
        return cid

    def include(self, parent: etree._Element, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Put ``data`` in a MIME part and an xop:Include referring to it under ``parent``."""
        cid = self.add(data, content_type)
        etree.SubElement(parent, q(XOP, "Include"), nsmap={"xop": XOP}).set("href", "cid:" + quote(cid, safe="@._-"))


def _params(content_type: str) -> tuple[str, dict[str, str]]:
    """Media type and parameters of a Content-Type header (email's parser handles the quoting)."""
    msg = email.parser.HeaderParser().parsestr(f"Content-Type: {content_type}\n\n")
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type(), params


def encode(env: etree._Element | bytes, action: str, attachments: Attachments | None = None,
           mtom: bool = False) -> tuple[bytes, str]:
    """(body, Content-Type) of a message: plain SOAP, or MTOM when asked or when there are parts.
    ``env``: the envelope, or the envelope already serialized (``envelope.with_body``)."""
    xml = env if isinstance(env, bytes) else tostring(env)
    if not mtom and not (attachments and attachments.parts):
        return xml, f'{SOAP_CT}; charset=UTF-8; action="{action}"'
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    start = f"<root.{uuid.uuid4().hex}@ihe>"
    chunks = [f"--{boundary}\r\n"
              f'Content-Type: application/xop+xml; charset=UTF-8; type="{SOAP_CT}"\r\n'
              f"Content-Transfer-Encoding: binary\r\nContent-ID: {start}\r\n\r\n".encode(), xml]
    for cid, (data, ctype) in (attachments.parts.items() if attachments else ()):
        chunks.append(f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: binary\r\n"
                      f"Content-ID: <{cid}>\r\n\r\n".encode())
        chunks.append(data)
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    ctype = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; start="{start}"; '
             f'start-info="{SOAP_CT}"; action="{action}"')
    return b"".join(chunks), ctype


def _split_parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    delim = b"--" + boundary
    pos = body.find(delim)
    if pos < 0:
        raise SoapFault("multipart body without its boundary")
    parts = []
    while True:
        start = pos + len(delim)
        if body[start:start + 2] == b"--":
            break
        eol = body.find(b"\n", start)
        if eol < 0:
            raise SoapFault("truncated multipart body")
        nxt = body.find(b"\n" + delim, eol)
        if nxt < 0:
            raise SoapFault("truncated multipart body (no closing boundary)")
        raw = body[eol + 1:nxt]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        # headers end at the first empty line, CRLF or bare LF
        cut = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
        if raw.startswith(b"\r\n") or raw.startswith(b"\n"):
            head, content = b"", raw[2 if raw.startswith(b"\r\n") else 1:]
        elif not cut:
            raise SoapFault("multipart part without a header/body separator")
        else:
            i = min(cut)
            head, content = raw[:i], raw[i + (4 if raw[i:i + 4] == b"\r\n\r\n" else 2):]
        hdrs = email.parser.HeaderParser().parsestr(head.decode("latin-1"))
        parts.append(({k.lower(): v.strip() for k, v in hdrs.items()}, content))
        pos = nxt + 1
    return parts


def decode(body: bytes, content_type: str) -> SoapMessage:
    """A SOAP message from an HTTP body and its Content-Type: plain SOAP 1.2 or MTOM/XOP.

    Only wsa:Action counts as the action (WS-Addressing is required by ITI TF-2x Appendix V);
    the action parameter of the Content-Type is informative.
    """
    media, params = _params(content_type or "")
    if media == "multipart/related":
        boundary = params.get("boundary")
        if not boundary:
            raise SoapFault("multipart/related without a boundary parameter")
        parts = _split_parts(body, boundary.encode("latin-1"))
        if not parts:
            raise SoapFault("multipart/related body without parts")
        start = params.get("start", "").strip()
        root_i = 0
        if start:
            for i, (h, _) in enumerate(parts):
                if h.get("content-id", "").strip() == start:
                    root_i = i
                    break
            else:
                raise SoapFault(f"multipart/related: no part with the start Content-ID {start}")
        attachments = {}
        for i, (h, content) in enumerate(parts):
            if i != root_i:
                cid = h.get("content-id", "").strip().strip("<>")
                if cid:
                    attachments[cid] = content
        msg = parse_envelope(parts[root_i][1], attachments=attachments, mtom=True)
    elif media in (SOAP_CT, "text/xml", "application/xml"):
        msg = parse_envelope(body)
    else:
        raise SoapFault(f"unsupported Content-Type {media or '(none)'}: expected {SOAP_CT} or multipart/related "
                        "(MTOM)")
    return msg
