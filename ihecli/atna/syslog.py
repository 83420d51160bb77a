"""Syslog for audit messages (ITI-20): RFC 5424 messages, RFC 5425 octet counting, RFC 5426 UDP.

Hand-written: no maintained Python library writes RFC 5424 with RFC 5425 framing over TLS or
reads it back (the standard library's SysLogHandler speaks the older BSD format).

A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM<?xml ...>``, with MSGID
``IHE+RFC-3881`` (ITI TF-2 3.20.4.1.2), facility authpriv (10) and severity notice (5) or
warning (4) for failures. Over a stream each message is preceded by its length in octets and a
space (RFC 5425 section 4.3).
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
FACILITY_AUTHPRIV = 10
MAX_FRAME = 1 << 20  # largest message a repository accepts (1 MiB; RFC 5425 requires 2048 at least)


def _field(value: str, maximum: int) -> str:
    """A header field: printable US-ASCII without spaces, '-' when empty (RFC 5424 6.2)."""
    v = "".join(ch for ch in str(value) if 33 <= ord(ch) <= 126)[:maximum]
    return v or "-"


def message(xml: bytes, *, app: str = "ihe", hostname: str | None = None, procid: str | None = None,
            severity: int = 5, when: datetime | None = None) -> bytes:
    """One RFC 5424 syslog message carrying an audit message."""
    pri = FACILITY_AUTHPRIV * 8 + severity
    ts = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="milliseconds")
    ts = ts.replace("+00:00", "Z")
    header = (f"<{pri}>1 {ts} {_field(hostname or socket.getfqdn() or socket.gethostname(), 255)} "
              f"{_field(app, 48)} {_field(procid or os.getpid(), 128)} {MSGID} - ")
    return header.encode("ascii") + BOM + xml


def frame(msg: bytes) -> bytes:
    """RFC 5425 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(msg)).encode("ascii") + b" " + msg


@dataclass
class SyslogMessage:
    pri: int | None
    version: str
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    body: bytes  # MSG, BOM removed

    @property
    def severity(self) -> int | None:
        return None if self.pri is None else self.pri % 8


_HEADER = re.compile(rb"^<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ")
_BSD = re.compile(rb"^<(\d{1,3})>")


def _skip_sd(rest: bytes) -> bytes:
    """The part after STRUCTURED-DATA ('-' or [..][..], with escaped ']' inside values)."""
    if rest.startswith(b"-"):
        return rest[1:].lstrip(b" ") if rest[1:2] in (b" ", b"") else rest[1:]
    i = 0
    while i < len(rest) and rest[i:i + 1] == b"[":
        i += 1
        while i < len(rest):
            c = rest[i:i + 1]
            if c == b"\\":
                i += 2
                continue
            if c == b"]":
                i += 1
                break
            i += 1
    return rest[i:].lstrip(b" ")


def parse(data: bytes) -> SyslogMessage:
    """Parse one syslog message leniently: RFC 5424, else BSD (RFC 3164) or a bare body."""
    m = _HEADER.match(data)
    if m:
        pri = int(m.group(1))
        body = _skip_sd(data[m.end():])
        if body.startswith(BOM):
            body = body[3:]
        g = [x.decode("ascii", "replace") for x in m.groups()]
        return SyslogMessage(pri if pri < 192 else None, g[1], g[2], g[3], g[4], g[5], g[6], body)
    m = _BSD.match(data)
    pri = int(m.group(1)) if m else None
    body = data[m.end():] if m else data
    return SyslogMessage(pri if pri is not None and pri < 192 else None, "", "", "", "", "", "", body)

