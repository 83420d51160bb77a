"""Sending HL7 v2 messages over MLLP and reading their acknowledgements (any sending actor:
ADT and order placers in tests, PIX sources, ...)."""
from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ihecli.errors import UsageError
from ihecli.hl7 import v2
from ihecli.net.mllp import MllpClient


def split_messages(data: bytes) -> list[bytes]:
    """The messages in a file's bytes: each starts at an MSH segment; batch envelopes (FHS, BHS,
    BTS, FTS), blank lines and stray MLLP bytes are dropped; segment ends become CR."""
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"")
    messages: list[list[bytes]] = []
    for line in re.split(rb"\r\n|\r|\n", data):
        if not line.strip() or line[:3] in (b"FHS", b"BHS", b"BTS", b"FTS"):
            continue
        if line.startswith(b"MSH"):
            messages.append([])
        if messages:
            messages[-1].append(line)
    return [b"\r".join(m) + b"\r" for m in messages]


@dataclass
class Sent:
    """One message sent and what came back."""

    source: str
    message_type: str
    control_id: str
    ack_code: str = ""
    text: str = ""
    errors: list[str] = field(default_factory=list)
    ack: str = ""  # the acknowledgement as ER7 text (segments separated by CR)
    ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.ack_code in ("AA", "CA")


def read_messages(named: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes, v2.Message]]:
    """(source, bytes, parsed) of each message in the given (name, data); a file holding no
    HL7 message, or a message that cannot be read, is a usage error naming it."""
    out = []
    for name, data in named:
        msgs = split_messages(data)
        if not msgs:
            raise UsageError(f"{name}: no HL7 v2 message (no MSH segment)")
        for k, raw in enumerate(msgs, 1):
            label = name if len(msgs) == 1 else f"{name}#{k}"
            try:
                out.append((label, raw, v2.parse(raw)))
            except v2.Hl7Error as e:
                raise UsageError(f"{label}: {e}") from None
    return out


def send_messages(host: str, port: int, messages: list[tuple[str, bytes, v2.Message]], *, timeout: float = 30,
                  ssl_context: ssl.SSLContext | None = None,
                  progress: Callable[[Sent], None] | None = None) -> list[Sent]:
    """Send each message on one MLLP connection, waiting for each acknowledgement.
    Raises PeerUnreachable when the peer cannot be reached or does not answer."""
    results = []
    with MllpClient(host, port, timeout=timeout, ssl_context=ssl_context) as client:
        for label, raw, msg in messages:
            started = time.perf_counter()
            answer = client.send(raw)
            r = Sent(label, f"{msg.type}^{msg.trigger}" if msg.trigger else msg.type, msg.control_id,
                     ms=round((time.perf_counter() - started) * 1000, 1))
            try:
                a = v2.read_ack(answer)
                r.ack_code, r.text, r.errors, r.ack = a.code, a.text, a.errors, a.message.text
                if a.control_id != msg.control_id:
                    r.errors.append(f"MSA-2 {a.control_id!r} does not name the message sent ({msg.control_id!r})")
            except v2.Hl7Error as e:
                r.ack_code, r.text = "", f"unreadable answer: {e}"
                r.ack = answer.decode("utf-8", "replace")
            results.append(r)
            if progress:
                progress(r)
    return results
