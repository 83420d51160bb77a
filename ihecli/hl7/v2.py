"""HL7 v2 messages in ER7 encoding: reading, and original-mode acknowledgements (HL7 v2.5 ch. 2).

``parse(raw)`` reads a message of any 2.x version: segments ended by CR, LF or CRLF (blank
lines skipped), stray MLLP framing bytes dropped, encoding characters from MSH-1/MSH-2, text
decoded in the character set MSH-18 names (HL7 table 0211; none: UTF-8, else Latin-1).
``Message.value("PID", 3, comp=1)`` gives a field, component or subcomponent with escapes
undone. ``ack(msg, "AA")`` builds the ACK (MSH fields mirrored: sender and receiver swapped,
MSH-10 in MSA-2, same version, processing id and character set); ``nak(raw, error)`` answers
anything, garbage included, with AE/AR, MSA and ERR (HL7 table 0357 codes).

hl7apy is the project's HL7 v2 library (message trees, validation; ``Message.to_hl7apy()``,
and the tests validate every acknowledgement built here with it). Reading a message into an
hl7apy tree costs about 6 ms on the machines this runs on, twelve times the budget of a feed
acknowledging 500 messages a second, while the archive needs a dozen fields; so reading and the
acknowledgement text are written here by hand: ER7 splitting and escapes, nothing more.
"""
from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime

from ihecli.errors import IheError

# HL7 table 0357 (message error condition codes)
ERROR_CODES = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

# HL7 table 0211 (alternate character sets) -> Python codec
CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "iso8859-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4",
    "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8",
    "8859/9": "iso8859-9", "8859/15": "iso8859-15",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}


class Hl7Error(IheError):
    """A message the application refuses: becomes an ACK with MSA-1 ``ack_code`` (AE: error while
    processing, AR: rejected outright) and an ERR segment with ``code`` (HL7 table 0357) at
    ``location`` (segment, sequence, field, component)."""

    def __init__(self, text: str, *, ack_code: str = "AE", code: int = 207,
                 location: tuple[str, int, int, int] | None = None):
        super().__init__(text)
        self.ack_code = ack_code
        self.code = code
        self.location = location


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT = Separators()
_SEGMENT_END = re.compile(r"\r\n|\r|\n")
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


class Message:
    """A parsed message: ``segments`` holds each segment's fields as raw ER7 strings.

    Field numbers are HL7's: ``fields(seg)[n]`` is SEG-n for every segment, MSH included
    (MSH-1 is the field separator, MSH-2 the encoding characters)."""

    def __init__(self, segments: list[list[str]], sep: Separators, charset: str, encoding: str):
        self.segments = segments
        self.sep = sep
        self.charset = charset  # MSH-18 as sent ('' when absent)
        self.encoding = encoding  # the Python codec the text was decoded with

    # -- access ------------------------------------------------------------------------------
    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    def segment(self, name: str, index: int = 0) -> list[str] | None:
        found = self.all(name)
        return found[index] if index < len(found) else None

    def raw(self, seg: str | list[str] | None, field: int) -> str:
        """SEG-field as sent (escapes and separators kept); '' when absent."""
        s = self.segment(seg) if isinstance(seg, str) else seg
        if s is None or field >= len(s):
            return ""
        return s[field]

    def repetitions(self, seg: str | list[str] | None, field: int) -> list[str]:
        r = self.raw(seg, field)
        return r.split(self.sep.repetition) if r else []

    def components(self, value: str) -> list[str]:
        """The components of one (raw) repetition, escapes undone; subcomponents stay joined."""
        return [self.unescape(c) for c in value.split(self.sep.component)]

    def value(self, seg: str | list[str] | None, field: int, comp: int = 1, sub: int = 1, rep: int = 0) -> str:
        """One leaf value (escapes undone); '' when absent. HL7's null is returned as '\"\"'."""
        reps = self.repetitions(seg, field)
        if rep >= len(reps):
            return ""
        comps = reps[rep].split(self.sep.component)
        if comp > len(comps):
            return ""
        subs = comps[comp - 1].split(self.sep.subcomponent)
        if sub > len(subs):
            return ""
        return self.unescape(subs[sub - 1])

    def unescape(self, text: str) -> str:
        esc = self.sep.escape
        if not esc or esc not in text:
            return text
        s = self.sep

        def one(m: re.Match) -> str:
            code = m.group(1)
            if code in ("F", "S", "T", "R", "E"):
                return {"F": s.field, "S": s.component, "T": s.subcomponent, "R": s.repetition,
                        "E": s.escape}[code]
            if code.startswith("X"):
                try:
                    return bytes.fromhex(code[1:]).decode(self.encoding, "replace")
                except ValueError:
                    return ""
            if code == ".br":
                return "\n"
            return ""  # highlighting and other formatting: dropped

        pattern = re.escape(esc) + r"([^" + re.escape(esc) + r"]{1,64})" + re.escape(esc)
        return re.sub(pattern, one, text)

    # -- header ------------------------------------------------------------------------------
    def msh(self, field: int, comp: int = 1) -> str:
        return self.value("MSH", field, comp)

    @property
    def type(self) -> str:
        return self.msh(9, 1).strip().upper()

    @property
    def trigger(self) -> str:
        return self.msh(9, 2).strip().upper()

    @property
    def structure(self) -> str:
        return self.msh(9, 3).strip().upper()

    @property
    def control_id(self) -> str:
        return self.raw("MSH", 10)

    @property
    def version(self) -> str:
        return self.msh(12, 1).strip()

    @property
    def text(self) -> str:
        """The message as ER7 with CR segment ends."""
        f = self.sep.field
        return "\r".join("MSH" + f + f.join(s[2:]) if s[0] == "MSH" else f.join(s) for s in self.segments)

    def to_hl7apy(self, validation_level=None):
        """The message as an hl7apy tree (slow: for tools and tests, not for feeds)."""
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_message

        return parse_message(self.text, find_groups=False,
                             validation_level=validation_level or VALIDATION_LEVEL.TOLERANT)


# -- reading ---------------------------------------------------------------------------------
def _strip_framing(raw: bytes) -> bytes:
    if b"\x0b" in raw or b"\x1c" in raw:
        raw = raw.replace(b"\x0b", b"").replace(b"\x1c", b"")
    return raw.lstrip(b"\r\n\t \x00")


def _separators(raw: bytes) -> Separators:
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise Hl7Error("not an HL7 v2 message: it does not begin with an MSH segment", ack_code="AR", code=100,
                       location=("MSH", 1, 0, 0))
    fs = chr(raw[3])
    end = raw.find(raw[3:4], 4)
    enc = raw[4:end if end > 0 else 8].decode("latin-1")
    if fs.isalnum() or fs.isspace() or len(enc) not in (4, 5) or len(set(enc + fs)) != len(enc) + 1 \
            or any(c.isalnum() or c.isspace() or c == "." for c in enc + fs):  # '.': versions need it
        raise Hl7Error(f"bad encoding characters in MSH-1/MSH-2: {fs + enc!r}", ack_code="AR", code=102,
                       location=("MSH", 1, 2, 0))
    return Separators(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else "")


def _charset(raw: bytes, sep: Separators) -> tuple[str, str]:
    """(MSH-18 first repetition as sent, Python codec); reads the MSH bytes, which are ASCII."""
    first = _SEGMENT_END.split(raw[:4096].decode("latin-1"), 1)[0]
    fields = first.split(sep.field)
    cs = fields[17].split(sep.repetition)[0].split(sep.component)[0].strip() if len(fields) > 17 else ""
    if not cs:
        return "", ""
    codec = CHARSETS.get(cs.upper())
    if codec is None:
        import codecs

        try:  # a codec name some senders use (UTF-8, ISO-8859-1)
            codec = codecs.lookup(cs).name
        except LookupError:
            raise Hl7Error(f"unsupported character set {cs!r} in MSH-18", ack_code="AR", code=103,
                           location=("MSH", 1, 18, 0)) from None
        if codec.startswith(("utf_16", "utf-16", "utf_32", "utf-32")):
            raise Hl7Error(f"character set {cs!r} cannot be read in ER7 over MLLP", ack_code="AR", code=103,
                           location=("MSH", 1, 18, 0))
    return cs, codec


def _decode(raw: bytes, codec: str) -> tuple[str, str]:
    """Text and the codec used. No MSH-18 (or ASCII declared but 8-bit bytes sent): UTF-8 when
    the bytes are valid UTF-8, else Latin-1, as the feeds in the field send them."""
    if codec and codec != "ascii":
        try:
            return raw.decode(codec), codec
        except UnicodeDecodeError:
            raise Hl7Error(f"the message is not valid {codec} text as MSH-18 declares", ack_code="AR", code=102,
                           location=("MSH", 1, 18, 0)) from None
    try:
        return raw.decode("utf-8"), codec or "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def parse(raw: bytes | str) -> Message:
    """Read one ER7 message; raises Hl7Error (AR) for anything that is not one."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    raw = _strip_framing(raw)
    sep = _separators(raw)
    charset, codec = _charset(raw, sep)
    text, codec = _decode(raw, codec)
    segments: list[list[str]] = []
    for n, line in enumerate(_SEGMENT_END.split(text), 1):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != sep.field):
            raise Hl7Error(f"line {n} is not an HL7 segment: {line[:40]!r}", ack_code="AR", code=100,
                           location=(name if name.isalnum() else "", 1, 0, 0))
        if name == "MSH":
            if segments:
                raise Hl7Error("a second MSH segment: one message per MLLP frame", ack_code="AR", code=100,
                               location=("MSH", 2, 0, 0))
            fields = ["MSH", sep.field, *line[4:].split(sep.field)]
        else:
            fields = line.split(sep.field)
        segments.append(fields)
    msg = Message(segments, sep, charset, codec)
    if not msg.type:
        raise Hl7Error("MSH-9 (message type) is empty", ack_code="AR", code=101, location=("MSH", 1, 9, 1))
    if not msg.control_id:
        raise Hl7Error("MSH-10 (message control id) is empty", ack_code="AR", code=101, location=("MSH", 1, 10, 0))
    v = msg.version
    if not re.fullmatch(r"2\.\d+(\.\d+)*", v):
        raise Hl7Error(f"unsupported HL7 version {v!r} in MSH-12 (2.x expected)", ack_code="AR", code=203,
                       location=("MSH", 1, 12, 0))
    return msg


def _header_only(raw: bytes) -> Message | None:
    """The MSH of a message that may be broken further on, for answering it."""
    try:
        raw = _strip_framing(raw)
        sep = _separators(raw)
        line = _SEGMENT_END.split(raw[:8192].decode("latin-1"), 1)[0]
        try:
            charset, codec = _charset(raw, sep)
        except Hl7Error:
            charset, codec = "", "latin-1"
        return Message([["MSH", sep.field, *line[4:].split(sep.field)]], sep, charset, codec or "latin-1")
    except Hl7Error:
        return None


# -- writing ---------------------------------------------------------------------------------
def escape(text: str, sep: Separators = DEFAULT) -> str:
    """Text made safe for one ER7 value (escape sequences for the separators, line breaks)."""
    e = sep.escape
    out = text.replace(e, f"{e}E{e}")
    for ch, code in ((sep.field, "F"), (sep.component, "S"), (sep.subcomponent, "T"), (sep.repetition, "R")):
        out = out.replace(ch, f"{e}{code}{e}")
    return out.replace("\r\n", f"{e}.br{e}").replace("\r", f"{e}.br{e}").replace("\n", f"{e}.br{e}")


_counter = itertools.count(1)
_prefix = f"{os.getpid() % 1000:03d}"


def control_id() -> str:
    """A new message control id (MSH-10, at most 20 characters): time, process and a counter."""
    return f"{int(time.time() * 1000) % 10**13:013d}{_prefix}{next(_counter) % 10000:04d}"


def timestamp() -> str:
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (2, 5)


def ack(msg: Message | None, code: str = "AA", *, error: Hl7Error | None = None, text: str = "",
        app: str = "IHE", facility: str = "") -> bytes:
    """The original-mode ACK for ``msg`` (None: a message too broken to read), encoded as the
    message was. ``app``/``facility`` name us when the message left MSH-5/MSH-6 empty."""
    sep = msg.sep if msg is not None else DEFAULT
    f = sep.field
    version = (msg.version if msg is not None else "") or "2.5"
    if not re.fullmatch(r"2\.\d+(\.\d+)*", version):
        version = "2.5"
    vt = _version_tuple(version)
    trigger = msg.raw("MSH", 9).split(sep.component)[1] if msg is not None and \
        len(msg.raw("MSH", 9).split(sep.component)) > 1 else ""
    msg_type = "ACK" + (sep.component + trigger if trigger else "") + \
        (sep.component + "ACK" if vt >= (2, 3, 1) and trigger else "")

    def m(n: int) -> str:
        return msg.raw("MSH", n) if msg is not None else ""

    msh = ["MSH", sep.msh2, m(5) or escape(app, sep), m(6) or escape(facility, sep), m(3), m(4), timestamp(), "",
           msg_type, control_id(), m(11) or "P", m(12) if version == (msg.version if msg else "") else version]
    if msg is not None and msg.charset:  # a character set we read (and write the ACK in)
        msh += [""] * 5 + [msg.raw("MSH", 18)]
    segments = [f.join(msh)]
    if error is not None and not text:
        text = str(error)
    msa = ["MSA", code, m(10)]
    if text:
        msa.append(escape(text[:80], sep))  # MSA-3: 80 characters in v2.3.1 to v2.5
    segments.append(f.join(msa))
    if error is not None:
        desc = ERROR_CODES.get(error.code, "")
        seg, seq, fld, comp = error.location or ("", 0, 0, 0)
        c, s = sep.component, sep.subcomponent
        if vt >= (2, 5):
            parts = [seg, str(seq) if seg else "", str(fld) if fld else "", "1" if fld and comp else "",
                     str(comp) if comp else ""]
            loc = c.join(parts).rstrip(c)
            segments.append(f.join(["ERR", "", loc, f"{error.code}{c}{escape(desc, sep)}{c}HL70357",
                                    "E" if code != "AA" else "W", "", "", "", escape(str(error), sep)]))
        else:  # ERR-1 (ELD): segment^sequence^field^code&text&table
            segments.append(f.join(["ERR", c.join([seg, str(seq) if seg else "", str(fld) if fld else "",
                                                   f"{error.code}{s}{escape(desc, sep)}{s}HL70357"])]))
    out = "\r".join(segments) + "\r"
    encoding = msg.encoding if msg is not None else "utf-8"
    return out.encode(encoding or "utf-8", "replace")


def nak(raw: bytes, error: BaseException, *, app: str = "IHE", facility: str = "") -> bytes:
    """AE/AR acknowledgement for a message that failed: an Hl7Error keeps its codes, any other
    exception is an application internal error (AE, 207). Answers garbage too."""
    if not isinstance(error, Hl7Error):
        error = Hl7Error(f"application internal error: {type(error).__name__}: {error}", ack_code="AE", code=207)
    try:
        msg = parse(raw)
    except Hl7Error:
        msg = _header_only(raw)
    return ack(msg, error.ack_code, error=error, app=app, facility=facility)


@dataclass
class AckResult:
    """An acknowledgement as a client reads it."""

    code: str  # MSA-1: AA, AE, AR (CA, CE, CR in enhanced mode)
    control_id: str  # MSA-2: the control id of the message acknowledged
    text: str  # MSA-3 and ERR-8 / the ERR code text
    errors: list[str]
    message: Message

    @property
    def ok(self) -> bool:
        return self.code in ("AA", "CA")


def read_ack(raw: bytes) -> AckResult:
    """Read an ACK (or any response with an MSA segment); raises Hl7Error when it is none."""
    msg = parse(raw)
    msa = msg.segment("MSA")
    if msa is None:
        raise Hl7Error(f"the answer ({msg.type}^{msg.trigger}) has no MSA segment", ack_code="AR", code=100)
    errors = []
    for err in msg.all("ERR"):
        code = msg.value(err, 3, 1) or msg.value(err, 1, 4, 1)
        desc = msg.value(err, 3, 2) or msg.value(err, 1, 4, 2)
        detail = msg.value(err, 8) or msg.value(err, 7)
        loc = msg.value(err, 2, 1) or msg.value(err, 1, 1)
        errors.append(" ".join(x for x in (f"{code}" if code else "", desc, f"at {loc}" if loc else "",
                                          f"({detail})" if detail else "") if x))
    return AckResult(msg.value(msa, 1).strip().upper(), msg.raw(msa, 2), msg.value(msa, 3), errors, msg)
