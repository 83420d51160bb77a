"""Patient identifiers and their domains as PIX (ITI-9, ITI-10) and PDQ (ITI-47) carry them:
HL7 v2 CX with an HD assigning authority (``79471^^^HZLN&1.2.3&ISO^PI``), HL7 V3 II
(``root``/``extension``), and the forms a user types (``HZLN``, ``1.2.3``, ``HZLN&1.2.3&ISO``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ihecli.errors import UsageError
from ihecli.hl7.v2 import DEFAULT, Message, Separators, escape

OID_RE = re.compile(r"[0-2](\.(0|[1-9]\d*))+")


@dataclass(frozen=True)
class Domain:
    """An assigning authority (HL7 HD): namespace, universal id (an OID) and its type (ISO)."""

    namespace: str = ""
    oid: str = ""
    oid_type: str = ""

    @property
    def key(self) -> str:
        """What identifies the domain: the OID when known, else the namespace."""
        return self.oid or self.namespace

    def matches(self, other: "Domain") -> bool:
        """The same domain: equal OIDs, or (either without an OID) equal namespaces."""
        if self.oid and other.oid:
            return self.oid == other.oid
        return bool(self.namespace) and self.namespace == other.namespace

    def er7(self, sep: Separators = DEFAULT) -> str:
        s = sep.subcomponent
        parts = [escape(self.namespace, sep), escape(self.oid, sep), escape(self.oid_type, sep)]
        return s.join(parts).rstrip(s)

    def __str__(self) -> str:
        if self.namespace and self.oid:
            return f"{self.namespace}&{self.oid}&{self.oid_type or 'ISO'}"
        return self.namespace or self.oid

    @classmethod
    def parse(cls, spec: str) -> "Domain":
        """``NAMESPACE``, ``OID``, ``NAMESPACE&OID&ISO`` or ``&OID&ISO`` (what --domain takes)."""
        spec = (spec or "").strip()
        if not spec:
            raise UsageError("empty patient identifier domain: give a namespace, an OID or NAMESPACE&OID&ISO")
        if "&" in spec:
            parts = (spec.split("&") + ["", ""])[:3]
            ns, oid, typ = (p.strip() for p in parts)
            if len(spec.split("&")) > 3 or not (ns or oid):
                raise UsageError(f"bad domain {spec!r}: give NAMESPACE, OID or NAMESPACE&OID&ISO")
            if oid and not OID_RE.fullmatch(oid):
                raise UsageError(f"bad domain {spec!r}: {oid!r} is not an OID")
            return cls(ns, oid, typ or ("ISO" if oid else ""))
        if any(c in spec for c in "^~|\\"):
            raise UsageError(f"bad domain {spec!r}: HL7 separators (^ ~ | \\) are not allowed in it")
        if OID_RE.fullmatch(spec):
            return cls("", spec, "ISO")
        return cls(spec, "", "")


@dataclass(frozen=True)
class Identifier:
    """A patient identifier in its domain (HL7 CX), with the identifier type code (CX-5)."""

    id: str
    domain: Domain = Domain()
    type_code: str = ""

    def er7(self, sep: Separators = DEFAULT, *, with_type: bool = True) -> str:
        c = sep.component
        out = c.join([escape(self.id, sep), "", "", self.domain.er7(sep)])
        if with_type and self.type_code:
            out += c + escape(self.type_code, sep)
        return out

    def __str__(self) -> str:
        return f"{self.id}^^^{self.domain}" if self.domain.key else self.id

    def as_dict(self) -> dict:
        return {"id": self.id, "namespace": self.domain.namespace, "oid": self.domain.oid,
                "oid_type": self.domain.oid_type, "type": self.type_code}

    @classmethod
    def parse(cls, spec: str, domain: str | None = None) -> "Identifier":
        """What a user types: ``ID`` with ``domain``, or a CX ``ID^^^NS&OID&ISO[^PI]``."""
        spec = (spec or "").strip()
        if not spec:
            raise UsageError("empty patient identifier")
        if "^" in spec:
            comps = spec.split("^")
            if len(comps) < 4 or not comps[0].strip() or any(c in spec for c in "~|\\"):
                raise UsageError(f"bad patient identifier {spec!r}: give ID --domain DOMAIN or ID^^^NS&OID&ISO")
            dom = Domain.parse(domain) if domain else Domain.parse(comps[3])
            return cls(comps[0].strip(), dom, comps[4].strip() if len(comps) > 4 else "")
        if any(c in spec for c in "~|\\&"):
            raise UsageError(f"bad patient identifier {spec!r}: HL7 separators are not allowed in it")
        if not domain:
            raise UsageError(f"patient identifier {spec!r} needs its domain: --domain NAMESPACE|OID|NS&OID&ISO")
        return cls(spec, Domain.parse(domain))


def cx_list(msg: Message, seg: list[str] | None, field: int) -> list[Identifier]:
    """The identifiers of a CX field (PID-3), empty repetitions and HL7 nulls ("") left out."""
    out = []
    for rep in msg.repetitions(seg, field):
        comps = rep.split(msg.sep.component)
        pid = msg.unescape(comps[0]).strip()
        if not pid or pid == '""':
            continue
        hd = comps[3].split(msg.sep.subcomponent) if len(comps) > 3 else []
        get = (lambda k: msg.unescape(hd[k]).strip() if len(hd) > k else "")  # noqa: E731
        out.append(Identifier(pid, Domain(get(0), get(1), get(2)),
                              msg.unescape(comps[4]).strip() if len(comps) > 4 else ""))
    return out


def domain_list(msg: Message, seg: list[str] | None, field: int) -> list[Domain]:
    """The assigning authorities of a field of CX repetitions with only CX-4 (QPD-4)."""
    out = []
    for rep in msg.repetitions(seg, field):
        comps = rep.split(msg.sep.component)
        hd = comps[3].split(msg.sep.subcomponent) if len(comps) > 3 else []
        get = (lambda k: msg.unescape(hd[k]).strip() if len(hd) > k else "")  # noqa: E731
        d = Domain(get(0), get(1), get(2))
        if d.key:
            out.append(d)
    return out
