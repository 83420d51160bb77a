"""A small PIX Manager for the tests (no PIX Manager runs here as a package), speaking the real
wire protocol: MLLP, HL7 v2.5 ER7.

- ITI-9: answers QBP^Q23^QBP_Q21 from cross-references (the PID-3 lists of the IPF ADT^A31
  messages in tests/data/pix) as ITI TF-2a 3.9.4.2.2 says: AA/OK with the other identifiers,
  AA/NF when none is in the domains asked for, AE with ERR 204 on QPD-3 (unknown identifier or
  domain) or QPD-4 (unknown target domain). Identifiers listed in ``replay`` are answered with a
  recorded IPF response instead, its MSA-2 and QAK-1 set to the query's control id and tag.
- ITI-10: ``notify(host, port, paths)`` sends the A31 files to a PIX Consumer, one connection.
- ``queries`` keeps every query received, parsed, for the tests to look at.
"""
from __future__ import annotations

from pathlib import Path

from ihecli.hl7 import v2
from ihecli.hl7.client import split_messages
from ihecli.net.mllp import MllpClient, MllpServer
from ihecli.pix.ids import Domain, Identifier, cx_list, domain_list

DATA = Path(__file__).parent / "data" / "pix"
A31_FILES = sorted(DATA.glob("ipf-iti10-adt-a31-*.hl7"))


def groups_from_a31(paths=A31_FILES) -> list[list[Identifier]]:
    out = []
    for p in paths:
        for raw in split_messages(p.read_bytes()):
            msg = v2.parse(raw)
            out.append(cx_list(msg, msg.segment("PID"), 3))
    return out


class PixManager:
    """Controller: start() returns the port, stop() is idempotent."""

    def __init__(self, groups: list[list[Identifier]] | None = None, replay: dict[str, str] | None = None,
                 ssl_context=None):
        self.groups = groups if groups is not None else groups_from_a31()
        self.replay = replay or {}  # CX-1 of QPD-3 -> file name in tests/data/pix
        self.queries: list[v2.Message] = []
        self.server = MllpServer(self.handle, port=0, name="PIXMGR", ssl_context=ssl_context)
        self.port = 0

    def start(self) -> int:
        self.port = self.server.start()
        return self.port

    def stop(self) -> None:
        self.server.stop()

    @property
    def peer(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- ITI-9 -------------------------------------------------------------------------------
    def _domains(self) -> list[Domain]:
        return [i.domain for g in self.groups for i in g]

    def handle(self, raw: bytes) -> bytes:
        msg = v2.parse(raw)
        self.queries.append(msg)
        if (msg.type, msg.trigger) != ("QBP", "Q23"):
            raise v2.Hl7Error(f"unsupported {msg.type}^{msg.trigger}", ack_code="AR", code=200,
                              location=("MSH", 1, 9, 1))
        tag = msg.value("QPD", 2)
        [asked] = cx_list(msg, msg.segment("QPD"), 3) or [Identifier("")]
        if asked.id in self.replay:
            return self._replayed(self.replay[asked.id], msg, tag)
        targets = domain_list(msg, msg.segment("QPD"), 4)
        known = self._domains()
        bad = [n for n, d in enumerate(targets, 1) if not any(d.matches(k) for k in known)]
        if bad:
            return self._rsp(msg, tag, "AE", "AE", errors=[(f"QPD^1^4^{n}", "204^Unknown key identifier^HL70357")
                                                          for n in bad])
        if not any(asked.domain.matches(k) for k in known):
            return self._rsp(msg, tag, "AE", "AE", errors=[("QPD^1^3^1^4", "204^Unknown key identifier^HL70357")])
        group = next((g for g in self.groups if any(i.id == asked.id and i.domain.matches(asked.domain) for i in g)),
                     None)
        if group is None:
            return self._rsp(msg, tag, "AE", "AE", errors=[("QPD^1^3^1^1", "204^Unknown key identifier^HL70357")])
        others = [i for i in group if not (i.id == asked.id and i.domain.matches(asked.domain))]
        if targets:
            others = [i for i in others if any(i.domain.matches(t) for t in targets)]
        if not others:
            return self._rsp(msg, tag, "AA", "NF")
        return self._rsp(msg, tag, "AA", "OK", pid3="~".join(i.er7() for i in others))

    def _header(self, msg: v2.Message, typ: str) -> str:
        return "|".join(["MSH", "^~\\&", msg.raw("MSH", 5) or "PIXMGR", msg.raw("MSH", 6), msg.raw("MSH", 3),
                         msg.raw("MSH", 4), v2.timestamp(), "", typ, v2.control_id(), "P", "2.5"])

    def _rsp(self, msg, tag, ack, qak, *, errors=(), pid3="") -> bytes:
        segs = [self._header(msg, "RSP^K23^RSP_K23"), f"MSA|{ack}|{msg.control_id}"]
        segs += [f"ERR||{loc}|{code}|E" for loc, code in errors]
        segs.append(f"QAK|{tag}|{qak}")
        segs.append("QPD|" + "|".join(msg.segment("QPD")[1:]))
        if pid3:
            segs.append(f"PID|||{pid3}||~^^^^^^S")
        return ("\r".join(segs) + "\r").encode()

    def _replayed(self, name: str, msg: v2.Message, tag: str) -> bytes:
        data = (DATA / name).read_bytes()
        out = []
        for line in data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
            if not line.strip():
                continue
            f = line.split(b"|")
            if f[0] == b"MSA" and len(f) > 2:
                f[2] = msg.control_id.encode()
            if f[0] == b"QAK" and len(f) > 1:
                f[1] = tag.encode()
            out.append(b"|".join(f))
        return b"\r".join(out) + b"\r"

    # -- ITI-10 ------------------------------------------------------------------------------
    @staticmethod
    def notify(host: str, port: int, paths=A31_FILES, ssl_context=None) -> list[v2.AckResult]:
        """Send the A31 messages of ``paths`` to a PIX Consumer over one connection."""
        acks = []
        with MllpClient(host, port, timeout=10, ssl_context=ssl_context) as c:
            for p in paths:
                for raw in split_messages(Path(p).read_bytes()):
                    acks.append(v2.read_ack(c.send(raw)))
        return acks
