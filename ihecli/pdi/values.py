"""Cleaning values copied from source objects into directory records and web pages.

Real objects carry values that break their VR (Study Time ``08:30:00``, an Instance Number
``1.0``, a Modality in lower case, a description over 64 characters). A directory record built
from them must still be valid (PS3.3 F.5, PS3.5 6.2), so every value is reshaped to its VR here
or left out.
"""
from __future__ import annotations

import datetime as _dt
import re

_CS_BAD = re.compile(r"[^A-Z0-9 _]")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


def clean_da(value) -> str | None:
    """A DA value (YYYYMMDD) of a real date; ``2024-05-01`` and ``2024.05.01`` are read too."""
    if value is None:
        return None
    s = str(value).strip().replace("-", "").replace(".", "").replace("/", "")
    if not re.fullmatch(r"\d{8}", s):
        return None
    try:
        _dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None
    return s


def clean_tm(value) -> str | None:
    """A TM value (HHMMSS.FFFFFF); ``08:30:00`` becomes ``083000``."""
    if value is None:
        return None
    s = str(value).strip().replace(":", "")
    m = _TM.fullmatch(s)
    if not m:
        return None
    hh, mm, ss, frac = m.group(1), m.group(2), m.group(3), m.group(4)
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    out = hh + (mm or "") + ((ss or "") if mm else "")
    if frac and mm and ss:
        out += "." + frac
    return out


def clean_is(value) -> str | None:
    """An IS value: an integer that fits (``1.0`` and `` 7 `` are read as integers)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        if value is None:
            return None
    s = str(value).strip()
    try:
        f = float(s)
    except ValueError:
        return None
    if f != int(f) or not -(2 ** 31) <= f < 2 ** 31:
        return None
    return str(int(f))


def clean_cs(value, limit: int = 16) -> str | None:
    """A single CS value: upper case, only A-Z 0-9 space and underscore."""
    if value is None:
        return None
    s = _CS_BAD.sub("_", str(value).strip().upper())[:limit].strip()
    return s or None


def clean_text(value, limit: int) -> str | None:
    """An SH/LO value: no backslash or control characters, at most ``limit`` characters."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = "/".join(str(v) for v in value)
    s = "".join(c if c.isprintable() else " " for c in str(value)).replace("\\", "/").strip()
    return s[:limit].rstrip() or None


def clean_pn(value) -> str | None:
    """A PN value: at most three component groups of at most 64 characters each."""
    if value is None:
        return None
    s = "".join(c for c in str(value) if c.isprintable() or c == "\x1b").replace("\\", " ").strip()
    groups = s.split("=")[:3]
    s = "=".join(g[:64] for g in groups).rstrip("=")
    return s or None


def clean_uid(value) -> str | None:
    if value is None:
        return None
    s = str(value).strip().rstrip("\x00")
    return s if len(s) <= 64 and _UID.match(s) else None


def person(value) -> str:
    """A person name for people: ``SMITH^JOHN`` as ``SMITH, JOHN``."""
    if not value:
        return ""
    first = str(value).split("=")[0] or str(value)
    parts = [p for p in first.split("^") if p]
    if len(parts) >= 2:
        return f"{parts[0]}, {' '.join(parts[1:])}"
    return " ".join(parts)


def pretty_date(value) -> str:
    d = clean_da(value)
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if d else ""


def pretty_time(value) -> str:
    t = clean_tm(value)
    if not t or len(t) < 4:
        return ""
    return f"{t[:2]}:{t[2:4]}"
