"""Consistent Time (CT), Time Client: ITI-1 Maintain Time over NTP/SNTP (RFC 5905 / RFC 4330).

``maintain_time(server)`` asks an NTP server once (ntplib, client mode 3) and reports the
offset of the local clock and the round-trip delay; ``TimeCheck.ok`` says whether the offset is
within the tolerance (the CT profile asks for 1 s at most).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import ntplib

from ihecli.errors import IheError, PeerUnreachable, UsageError, reason

NTP_PORT = 123


@dataclass
class TimeCheck:
    server: str
    offset: float  # seconds; positive: the local clock is behind the server
    delay: float  # round-trip delay, seconds
    stratum: int
    reference: str
    max_offset: float
    ok: bool


def parse_server(spec: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    text = spec.strip()
    m = re.match(r"^\[([^\]]+)\](?::(\d{1,5}))?$", text) or re.match(r"^([^:\s]+)(?::(\d{1,5}))?$", text)
    if not m:
        if text.count(":") > 1:  # a bare IPv6 address
            return text, NTP_PORT
        raise UsageError(f"bad time server {spec!r}: HOST or HOST:PORT")
    port = int(m.group(2) or NTP_PORT)
    if not 0 < port < 65536:
        raise UsageError(f"bad port in time server {spec!r}")
    return m.group(1), port


def maintain_time(server: str, *, max_offset: float = 1.0, timeout: float = 5.0) -> TimeCheck:
    """ITI-1 Maintain Time: one NTP query; raises PeerUnreachable (no answer) or IheError (the
    server is not synchronized)."""
    host, port = parse_server(server)
    try:
        r = ntplib.NTPClient().request(host, version=4, port=port, timeout=timeout)
    except ntplib.NTPException:
        raise PeerUnreachable(f"time server {host}:{port} did not answer in {timeout:g} s (no NTP server there, "
                              "or a firewall drops UDP)") from None
    except OSError as e:
        raise PeerUnreachable(f"cannot reach time server {host}:{port}: {reason(e)}") from None
    if r.leap == 3 or r.stratum == 0 or r.stratum > 15:
        raise IheError(f"time server {host}:{port} is not synchronized (stratum {r.stratum}, leap {r.leap})")
    try:
        ref = ntplib.ref_id_to_text(r.ref_id, r.stratum)
    except Exception:
        ref = ""
    return TimeCheck(server=f"{host}:{port}", offset=r.offset, delay=r.delay, stratum=r.stratum, reference=ref,
                     max_offset=max_offset, ok=abs(r.offset) <= max_offset)
