"""C-FIND attribute matching (DICOM PS3.4 C.2.2.2): one parser, two evaluators.

A key's value is parsed once into a ``Match``; ``to_sql`` turns it into a condition on an
indexed column, ``matches`` evaluates it on a value read from a stored header (keys that have
no column, and sequence matching).

Kinds: universal (empty value), empty-value matching (``""``), single value, wildcard
(``*`` and ``?``), list (values separated by ``\\``, UID list matching and its equivalent for
other VRs), range (DA, TM, DT: ``a-b``, ``-b``, ``a-``).

Person names (PN) are matched per component group (PS3.5 6.2.1.2): a value with ``=`` matches
group by group (an empty group matches anything); a value without ``=`` matches the alphabetic
group, and, when it holds East Asian characters (CJK ideographs, kana, hangul: what those
groups are for), also the ideographic and phonetic groups. A Latin, Greek or Cyrillic value can
only mean the alphabetic group, and its SQL keeps using the name index. For PN, ``to_sql``
gives a superset (candidates): the caller checks each candidate with ``matches``, which is exact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import and_, false, or_
from sqlalchemy.sql import ColumnElement

from ihecli.archive.ingest import fold, normalize_time

WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
RANGE_VRS = {"DA", "TM", "DT"}


@dataclass(frozen=True)
class Match:
    kind: str  # universal | empty | single | wild | list | range
    values: tuple = ()  # single/wild/list: the value(s); range: (low or None, high or None)
    vr: str = ""

    @property
    def is_universal(self) -> bool:
        return self.kind == "universal"


def parse(value, vr: str) -> Match:
    """A query key's value (str, number, list or None) as a Match."""
    if value is None:
        return Match("universal", vr=vr)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        vals = [str(v) for v in value]
        raw = "\\".join(vals)
    else:
        raw = str(value)
    if raw.strip() == "":
        return Match("universal", vr=vr)
    if raw.strip() == '""':
        return Match("empty", vr=vr)
    parts = raw.split("\\")
    if len(parts) > 1:
        subs = tuple(parse(p, vr) for p in parts if p.strip() != "")  # empty values are left out
        if not subs or any(m.is_universal for m in subs):  # e.g. 'SMITH\\*': everything matches
            return Match("universal", vr=vr)
        return Match("list", subs, vr)
    raw = raw.strip() if vr not in ("LT", "ST", "UT") else raw
    if vr in RANGE_VRS and "-" in raw and not (vr == "DT" and _dt_offset_only(raw)):
        low, high = _split_range(raw, vr)
        return Match("range", (_norm(low, vr, False), _norm(high, vr, True)), vr)
    if vr in WILDCARD_VRS and ("*" in raw or "?" in raw):
        if raw.strip("*") == "":
            return Match("universal", vr=vr)  # '*' alone matches everything, empty values too
        return Match("wild", (raw,), vr)
    if vr in RANGE_VRS:
        return Match("single", (_norm(raw, vr, False),), vr)
    return Match("single", (raw,), vr)


def _dt_offset_only(raw: str) -> bool:
    """A DT value whose only '-' starts its UTC offset (20240101120000-0500), not a range."""
    m = re.fullmatch(r"(\d{5,}(?:\.\d*)?)-(\d\d)(\d\d)", raw)
    return m is not None and int(m.group(2)) <= 14 and int(m.group(3)) < 60


def _split_range(raw: str, vr: str) -> tuple[str, str]:
    """The two bounds of a range; for DT, a '-' that starts a bound's UTC offset is kept."""
    if vr == "DT":
        for i, ch in enumerate(raw):
            if ch == "-" and (i == 0 or not _dt_offset_only(raw[:i + 5])):
                return raw[:i], raw[i + 1:]
    low, _, high = raw.partition("-")
    return low, high


def _norm(v: str, vr: str, upper: bool) -> str | None:
    v = v.strip()
    if not v:
        return None
    if vr == "DA":
        return v.replace(".", "")
    if vr == "TM":
        n = normalize_time(v)
        if n is None:
            return v
        if upper:  # 1230 as an upper bound means up to 12:30:59.999999: missing parts maximised
            digits = len(v.split(".")[0].replace(":", ""))
            hh, mm, ss = n[0:2], n[2:4], n[4:6]
            if digits <= 2:
                mm, ss = "59", "59"
            elif digits <= 4:
                ss = "59"
            frac = n[7:] if "." in v else "999999"
            return f"{hh}{mm}{ss}.{frac}"
        return n
    if vr == "DT" and upper:  # 2026 as an upper bound means up to the end of 2026
        return v + DT_MAX[len(v):] if len(v) < len(DT_MAX) and v.isdigit() else v
    return v


DT_MAX = "99991231235959.999999"


def _like(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch in "%_!":
            out.append("!" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _transform(v: str, mode: str) -> str:
    if mode == "ci":
        return v.upper()
    if mode == "fold":
        return fold(v) or ""
    return v


def to_sql(m: Match, col: ColumnElement, mode: str = "exact") -> ColumnElement | None:
    """A SQL condition for ``m`` on ``col``; None when it matches everything.

    ``mode``: exact, ci (column holds upper case), fold (column holds upper case without accents).
    """
    if m.kind == "universal":
        return None
    if m.kind == "empty":
        # an integer column holds no empty string (and PostgreSQL refuses to compare with one)
        return col.is_(None) if _is_int(col) else or_(col.is_(None), col == "")
    if m.kind == "list":
        conds = [to_sql(sub, col, mode) for sub in m.values]
        if any(c is None for c in conds):
            return None
        return or_(*conds)
    if m.kind == "range":
        low, high = m.values
        conds = []
        if low is not None:
            conds.append(col >= low)
        if high is not None:
            conds.append(col <= high)
        return and_(*conds) if conds else None
    if m.vr == "PN":
        return _pn_sql(m, col, mode)
    if m.kind == "wild":
        return col.like(_like(_transform(m.values[0], mode)), escape="!")
    v = m.values[0]
    if _is_int(col):  # an IS value: '7', '+7', '007' and '7.0' all mean 7
        n = _number(v)
        return col == int(n) if n is not None and n.is_integer() else false()
    return col == _transform(v, mode)


def _is_int(col: ColumnElement) -> bool:
    try:
        return col.type.python_type is int
    except NotImplementedError:
        return False


def _pn_query_groups(value: str) -> list[str]:
    """A PN query value's component groups, without trailing empty ones (at least one)."""
    groups = value.split("=")[:3]
    while len(groups) > 1 and groups[-1] == "":
        groups.pop()
    return groups


def _pn_sql(m: Match, col: ColumnElement, mode: str) -> ColumnElement:
    """Candidates for a single or wildcard PN match (see the module docstring)."""
    groups = _pn_query_groups(_transform(m.values[0], mode))
    wild = m.kind == "wild"
    if len(groups) == 1:
        p = _like(groups[0]) if wild else _escape(groups[0])
        arms = [col.like(p, escape="!") if wild else col == groups[0]]
        if not (wild and groups[0].endswith("*")):  # the alphabetic group followed by other groups
            arms.append(col.like(p + "=%", escape="!"))
        if _east_asian(groups[0]):  # the ideographic or phonetic group
            arms += [col.like("%=" + p, escape="!"), col.like("%=" + p + "=%", escape="!")]
        return or_(*arms)
    p = "=".join((_like(g) if wild else _escape(g)) if g else "%" for g in groups)
    arms = [col.like(p, escape="!")]
    if not (wild and groups[-1].endswith("*")):
        arms.append(col.like(p + "=%", escape="!"))
    return or_(*arms)


def _east_asian(v: str) -> bool:
    """Holds a character of the scripts ideographic and phonetic name groups are written in
    (Hangul Jamo, CJK radicals to ideographs incl. kana, Hangul syllables, compatibility
    ideographs, half- and full-width forms, supplementary ideographs)."""
    return any(0x1100 <= o <= 0x11FF or 0x2E80 <= o <= 0xD7FF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF
               or o >= 0x20000 for o in map(ord, v))


def _escape(v: str) -> str:
    """A literal value as a LIKE pattern (escape character ``!``)."""
    return "".join("!" + ch if ch in "%_!" else ch for ch in v)


def _pn_match(m: Match, stored: str, mode: str) -> bool:
    groups = _pn_query_groups(_transform(m.values[0], mode))
    have = _transform(stored, mode).split("=")

    def one(q: str, v: str) -> bool:
        if m.kind == "wild":
            return _wild_re(q).fullmatch(v) is not None
        return q == v

    if len(groups) == 1:
        candidates = have[:3] if _east_asian(groups[0]) else have[:1]
        return any(one(groups[0], v) for v in candidates)
    return all(not q or one(q, have[i] if i < len(have) else "") for i, q in enumerate(groups))


def _wild_re(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def matches(m: Match, value, mode: str = "exact") -> bool:
    """Evaluate ``m`` on a stored value (str, number, multi-valued or None)."""
    if m.kind == "universal":
        return True
    if value is None:
        values = []
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        values = [str(v) for v in value]
    else:
        values = [str(value)]
    values = [v.strip() for v in values]
    if m.kind == "empty":
        return not any(values)
    if m.kind == "list":
        return any(matches(sub, value, mode) for sub in m.values)
    if not values:
        return False
    for v in values:
        if m.vr == "PN" and m.kind in ("single", "wild"):
            if _pn_match(m, v, mode):
                return True
            continue
        if m.vr == "DA":
            v = v.replace(".", "")
        elif m.vr == "TM":
            v = normalize_time(v) or v
        if m.kind == "range":
            low, high = m.values
            if (low is None or v >= low) and (high is None or v <= high):
                return True
        elif m.kind == "wild":
            if _wild_re(_transform(m.values[0], mode)).fullmatch(_transform(v, mode)):
                return True
        elif m.vr in NUMBER_VRS:
            if _number(v) is not None and _number(v) == _number(m.values[0]):
                return True
        elif _transform(v, mode) == _transform(m.values[0], mode):
            return True
    return False


NUMBER_VRS = {"IS", "DS", "SL", "SS", "SV", "UL", "US", "UV", "FL", "FD"}


def _number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None
