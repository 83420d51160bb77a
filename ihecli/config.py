"""The profile file: one TOML file, named profiles, remote nodes.

The top-level tables are the default profile; ``[profiles.NAME]`` tables overlay it when
``--profile NAME`` (or ``IHE_PROFILE``) is given. The file lives in the user config dir unless
``--config FILE`` / ``IHE_CONFIG`` say otherwise. Data (database, storage) lives in the user data
dir unless ``IHE_DATA_DIR``, the profile or ``--db`` / ``--storage`` say otherwise.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from ihecli.errors import ConfigError, UsageError

APP = "ihe"
AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """Where the profile file is read from: --config, IHE_CONFIG, then the user config dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("IHE_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def data_dir() -> Path:
    """Where the embedded archive keeps its database and files by default."""
    env = os.environ.get("IHE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP))


@dataclass(frozen=True)
class Node:
    """A remote DICOM application entity. ``tls``: associations to it are secured (ITI-19), with
    the profile's [tls] certificate and CA; written ``tls://AET@host:port``."""

    aet: str
    host: str
    port: int
    name: str = ""
    tls: bool = False

    def __str__(self) -> str:
        # the string form parses back (resolve_node): outbox targets keep the TLS flag
        return f"{'tls://' if self.tls else ''}{self.aet}@{self.host}:{self.port}"


@dataclass
class ArchiveSettings:
    aet: str = "IHE_ARCHIVE"
    bind: str = "127.0.0.1"
    port: int = 11112
    db: str = ""  # SQLAlchemy URL; empty: SQLite in the data dir
    storage: str = ""  # folder; empty: storage/ in the data dir
    duplicates: str = "keep"  # keep | overwrite
    allow: list[str] = field(default_factory=list)  # calling AE titles allowed; empty: any
    fuzzy_names: bool = False
    max_pdu: int = 0  # 0: unlimited (what we advertise)
    dest: list[str] = field(default_factory=list)  # extra C-MOVE destinations (AET@host:port)
    workers: int = 0  # server processes sharing the port; 0: one per CPU, up to 4
    mpps_forward: list[str] = field(default_factory=list)  # PPS Manager: nodes every MPPS goes on to
    ian_subscribers: list[str] = field(default_factory=list)  # nodes that get Instance Availability
    commit_reply: list[str] = field(default_factory=list)  # "CALLING_AET=NODE": where reports go
    commit_new_association: list[str] = field(default_factory=list)  # AETs whose reports go on a new one
    hide_quality_rejects: bool = True  # 113001 rejection notes hide the instances
    repository_uid: str = ""  # XDS-I Imaging Document Source repositoryUniqueId; empty: fixed per AE title

    def db_url(self) -> str:
        if self.db:
            return self.db
        return "sqlite:///" + str(data_dir() / "archive.db")

    def storage_dir(self) -> Path:
        if self.storage:
            return Path(self.storage).expanduser()
        return data_dir() / "storage"


@dataclass
class TlsSettings:
    """[tls]: our certificate and trust for every secured link (DICOM, HL7, HTTP, syslog)."""

    enabled: bool = False  # secure DICOM/HL7/HTTP links by default (--tls / --no-tls override)
    cert: str = ""  # PEM certificate chain (may hold the key too)
    key: str = ""  # PEM private key
    ca: str = ""  # PEM CA certificates we trust; servers then require client certificates
    floor: str = "1.2"  # "1.2" (BCP195) or "1.0" (legacy peers)
    require_client_cert: bool = True


@dataclass
class AuditSettings:
    """[audit]: where audit messages go (ITI-20) and how `ihe audit serve` listens."""

    repository: str = ""  # "tls://host:6514", "udp://host:514", "tcp://host:601"; empty: no auditing
    source_id: str = ""  # AuditSourceID; empty: this machine's name
    site_id: str = ""  # AuditEnterpriseSiteID
    app_name: str = "ihe"  # syslog APP-NAME
    spool: str = ""  # folder for messages while the repository is away; empty: audit-spool/ in the data dir
    spool_max_mb: int = 50
    bind: str = "127.0.0.1"  # `ihe audit serve`
    tls_port: int = 6514
    udp_port: int = 514


@dataclass
class TimeSettings:
    """[time]: the NTP server of Consistent Time (ITI-1)."""

    server: str = ""  # "host" or "host:port"; empty: none
    max_offset: float = 1.0  # seconds


@dataclass
class XdsSettings:
    """[xds]: the XDS affinity domain, the endpoints of the client commands and `ihe xds serve`."""

    registry: str = "http://127.0.0.1:8020/xds"  # ITI-18, ITI-62
    repository: str = "http://127.0.0.1:8020/xds"  # ITI-41, ITI-43
    repository_unique_id: str = "1.3.6.1.4.1.21367.2017.2.3.9999"  # ours when serving; default for retrieve
    assigning_authority: str = ""  # patient ID domain OID: --patient ID becomes ID^^^&OID&ISO
    source_id: str = "1.3.6.1.4.1.21367.2017.2.4.9999"  # our Document Source OID
    unique_id_root: str = "2.25"  # uniqueIds: 2.25.<UUID>, or <root>.<time>.<random>
    home: str = ""  # homeCommunityId (urn:oid:...) put on query results when serving; empty: none
    communities: str = ""  # XCA responding gateways: "urn:oid:1.2=http://host:8021/xca, urn:oid:..."
    class_code: str = "REPORTS^Reports^1.3.6.1.4.1.19376.1.2.6.1"
    type_code: str = "11488-4^Consultation Note^2.16.840.1.113883.6.1"
    format_code: str = "urn:ihe:iti:xds:2017:mimeTypeSufficient^mimeType Sufficient^1.3.6.1.4.1.19376.1.2.3"
    confidentiality_code: str = "N^normal^2.16.840.1.113883.5.25"
    healthcare_facility_type_code: str = "22232009^Hospital^2.16.840.1.113883.6.96"
    practice_setting_code: str = "309927009^General medical department^2.16.840.1.113883.6.96"
    content_type_code: str = "UNSPECIFIED-CONTENT-TYPE^Unspecified Clinical Activity^1.3.6.1.4.1.21367.2017.3"
    folder_code: str = "Referrals^Referrals^1.3.6.1.4.1.21367.2017.3"
    language: str = "en-US"
    timeout: float = 60.0  # seconds
    bind: str = "127.0.0.1"  # `ihe xds serve`
    port: int = 8020
    max_body_mb: int = 256  # larger requests are refused


@dataclass
class PixSettings:
    """[pix]: the PIX Manager of `ihe pix query` (ITI-9) and the listener of `ihe pix listen` (ITI-10)."""

    manager: str = "127.0.0.1:3600"  # HOST:PORT of the PIX Manager (MLLP)
    domain: str = ""  # our patient ID domain (NAMESPACE, OID or NS&OID&ISO): default of --domain
    domains: str = ""  # domains `ihe pix listen` follows, comma-separated; empty: every domain
    application: str = "IHE"  # MSH-3 of our queries, MSH-5 of our acknowledgements
    facility: str = ""  # MSH-4
    manager_application: str = ""  # MSH-5 of our queries
    manager_facility: str = ""  # MSH-6
    timeout: float = 30.0  # seconds
    bind: str = "127.0.0.1"  # `ihe pix listen`
    port: int = 3600


@dataclass
class PdqSettings:
    """[pdq]: the PDQ Supplier of `ihe pdq query` (ITI-47)."""

    supplier: str = "http://127.0.0.1:8030/pdq"  # SOAP endpoint
    sender: str = "1.3.6.1.4.1.21367.2017.2.5.9999"  # our device OID (sender/device/id)
    receiver: str = "1.3.6.1.4.1.21367.2017.2.5.9998"  # the supplier's device OID
    domain: str = ""  # OID of --id's domain when --domain is not given
    timeout: float = 30.0  # seconds


@dataclass
class DicomwebSettings:
    """[dicomweb]: the DICOMweb service of `ihe wic upload` (STOW-RS)."""

    url: str = ""  # service root, e.g. "http://pacs:8080/dicom-web"; empty: http://127.0.0.1:8080/dicom-web


@dataclass
class Settings:
    """The effective settings of one profile."""

    path: Path
    profile: str
    exists: bool
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    nodes: dict[str, Node] = field(default_factory=dict)
    calling_aet: str = "IHE"  # the AE title our client commands use
    tls: TlsSettings = field(default_factory=TlsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    time: TimeSettings = field(default_factory=TimeSettings)
    xds: XdsSettings = field(default_factory=XdsSettings)
    pix: PixSettings = field(default_factory=PixSettings)
    pdq: PdqSettings = field(default_factory=PdqSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)

    def tls_config(self):
        """The profile's certificate and trust as an ihecli.net.tls.TlsConfig."""
        from ihecli.net.tls import TlsConfig

        t = self.tls
        return TlsConfig(cert=t.cert, key=t.key, ca=t.ca, floor=t.floor, require_client_cert=t.require_client_cert)

    def node(self, spec: str) -> Node:
        """Resolve a node given by name, as ``AET@host:port`` or as ``host:port``."""
        return resolve_node(spec, self.nodes, default_aet="ANY-SCP")

    def as_dict(self, *, mask: bool = True) -> dict[str, Any]:
        arch = {f.name: getattr(self.archive, f.name) for f in fields(ArchiveSettings)}
        arch["db"] = self.archive.db_url()
        arch["storage"] = str(self.archive.storage_dir())
        if mask:
            arch["db"] = mask_url(arch["db"])
        return {
            "config": str(self.path),
            "config_exists": self.exists,
            "profile": self.profile,
            "calling_aet": self.calling_aet,
            "archive": arch,
            "nodes": {k: {"aet": n.aet, "host": n.host, "port": n.port, "tls": n.tls} for k, n in self.nodes.items()},
            "tls": {f.name: getattr(self.tls, f.name) for f in fields(TlsSettings)},
            "audit": {f.name: getattr(self.audit, f.name) for f in fields(AuditSettings)},
            "time": {f.name: getattr(self.time, f.name) for f in fields(TimeSettings)},
            "xds": {f.name: getattr(self.xds, f.name) for f in fields(XdsSettings)},
            "pix": {f.name: getattr(self.pix, f.name) for f in fields(PixSettings)},
            "pdq": {f.name: getattr(self.pdq, f.name) for f in fields(PdqSettings)},
            "dicomweb": {f.name: getattr(self.dicomweb, f.name) for f in fields(DicomwebSettings)},
        }


def mask_url(url: str) -> str:
    """Hide the password of a database URL."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return url.replace(parts.netloc, netloc, 1)
    return url


NODE_RE = re.compile(r"^(?:(?P<aet>[^@]{1,16})@)?(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")
TLS_SCHEME = "tls://"
NODE_KEYS = ("aet", "host", "port", "tls")


def resolve_node(spec: str, nodes: dict[str, Node], default_aet: str = "ANY-SCP") -> Node:
    """A node from its profile name, ``AET@host:port`` or ``host:port``; ``tls://`` before any of
    them asks for TLS on the associations to it (as the profile's ``tls = true`` does)."""
    if spec[:len(TLS_SCHEME)].lower() == TLS_SCHEME:
        return replace(resolve_node(spec[len(TLS_SCHEME):], nodes, default_aet), tls=True)
    if spec in nodes:
        return nodes[spec]
    low = {k.lower(): v for k, v in nodes.items()}
    if spec.lower() in low:
        return low[spec.lower()]
    m = NODE_RE.match(spec.strip())
    if not m:
        known = ", ".join(sorted(nodes)) or "none in the profile"
        raise UsageError(f"unknown node {spec!r}: give a profile node name ({known}), AET@host:port or "
                         "tls://AET@host:port")
    aet = m.group("aet") or default_aet
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise UsageError(f"bad port in node {spec!r}")
    if not AET_RE.match(aet) or aet.strip() == "":
        raise UsageError(f"bad AE title in node {spec!r} (1-16 characters, no backslash)")
    host = m.group("host").strip("[]")
    return Node(aet=aet, host=host, port=port)


def _line_of(text: str, key: str) -> int | None:
    """The line where ``key =`` first appears (for messages about values, which tomllib lacks)."""
    pat = re.compile(r"^\s*(?:\"%s\"|%s)\s*=" % (re.escape(key), re.escape(key)))
    for i, line in enumerate(text.splitlines(), 1):
        if pat.match(line):
            return i
    return None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load(path: str | os.PathLike | None = None, profile: str | None = None) -> Settings:
    """Read the profile file (missing file: defaults) and return the effective settings."""
    p = config_path(path)
    profile = profile or os.environ.get("IHE_PROFILE") or ""
    text = ""
    raw: dict[str, Any] = {}
    exists = p.is_file()
    if p.exists() and not exists:
        raise ConfigError(f"{p}: not a file")
    if exists:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read: {e}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
            where = f"line {m.group(1)}: " if m else ""
            raise ConfigError(f"{p}: {where}{msg}") from None

    def err(key: str, what: str) -> ConfigError:
        line = _line_of(text, key)
        where = f"line {line}: " if line else ""
        return ConfigError(f"{p}: {where}{key}: {what}")

    profiles = raw.pop("profiles", {})
    if not isinstance(profiles, dict):
        raise err("profiles", "must be a table of named profiles")
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"{p}: no profile named {profile!r} (profiles: {known})")
        raw = _merge(raw, profiles[profile])

    unknown = set(raw) - {"archive", "nodes", "calling_aet", "tls", "audit", "time", "xds", "pix", "pdq", "dicomweb"}
    if unknown:
        k = sorted(unknown)[0]
        raise err(k, "unknown setting (known: archive, nodes, calling_aet, tls, audit, time, xds, pix, pdq, "
                      "dicomweb, profiles)")

    arch = ArchiveSettings()
    types = {f.name: f.type for f in fields(ArchiveSettings)}
    for k, v in (raw.get("archive") or {}).items():
        if k not in types:
            raise err(k, f"unknown archive setting (known: {', '.join(types)})")
        want = types[k]
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
            "list[str]": isinstance(v, list) and all(isinstance(x, str) for x in v),
        }[want]
        if not ok:
            noun = {"str": "a string", "int": "an integer", "bool": "true or false",
                    "list[str]": "a list of strings"}[want]
            raise err(k, f"must be {noun}, not {v!r}")
        setattr(arch, k, v)
    if not AET_RE.match(arch.aet):
        raise err("aet", f"bad AE title {arch.aet!r} (1-16 characters, no backslash)")
    if not 0 <= arch.port < 65536:
        raise err("port", f"port out of range: {arch.port}")
    if arch.duplicates not in ("keep", "overwrite"):
        raise err("duplicates", "must be 'keep' or 'overwrite'")

    nodes: dict[str, Node] = {}
    rawnodes = raw.get("nodes") or {}
    if not isinstance(rawnodes, dict):
        raise err("nodes", "must be a table of named nodes")
    for name, spec in rawnodes.items():
        if isinstance(spec, str):
            try:
                n = resolve_node(spec, {})
            except UsageError as e:
                raise err(name, str(e)) from None
        elif isinstance(spec, dict):
            missing = {"aet", "host", "port"} - set(spec)
            if missing:
                raise err(name, f"node needs {', '.join(sorted(missing))}")
            extra = sorted(set(spec) - set(NODE_KEYS))
            if extra:
                raise err(name, f"unknown node setting {extra[0]!r} (known: {', '.join(NODE_KEYS)})")
            if not isinstance(spec.get("tls", False), bool):
                raise err(name, f"tls: must be true or false, not {spec['tls']!r}")
            if not isinstance(spec["port"], int) or not 0 < spec["port"] < 65536:
                raise err(name, f"bad port {spec['port']!r}")
            if not isinstance(spec["aet"], str) or not AET_RE.match(spec["aet"]):
                raise err(name, f"bad AE title {spec['aet']!r}")
            n = Node(aet=spec["aet"], host=str(spec["host"]), port=spec["port"], tls=spec.get("tls", False))
        else:
            raise err(name, "a node is AET@host:port, tls://AET@host:port or a table {aet, host, port, tls}")
        nodes[name] = replace(n, name=name)

    calling = raw.get("calling_aet", "IHE")
    if not isinstance(calling, str) or not AET_RE.match(calling):
        raise err("calling_aet", f"bad AE title {calling!r}")
    tls_s = _section(raw, "tls", TlsSettings(), err)
    if str(tls_s.floor) not in ("1.2", "1.0"):
        raise err("floor", "must be \"1.2\" (BCP195) or \"1.0\"")
    audit_s = _section(raw, "audit", AuditSettings(), err)
    if audit_s.repository and not re.match(r"^(tls|udp|tcp)://[^/\s]+$", audit_s.repository):
        raise err("repository", "must be tls://HOST:PORT, udp://HOST:PORT or tcp://HOST:PORT")
    time_s = _section(raw, "time", TimeSettings(), err)
    xds_s = _section(raw, "xds", XdsSettings(), err)
    for k in ("registry", "repository"):
        if not re.match(r"^https?://[^/\s]+", getattr(xds_s, k)):
            raise err(k, "must be an http:// or https:// URL")
    if xds_s.assigning_authority and not re.match(r"^[0-2](\.(0|[1-9]\d*))+$", xds_s.assigning_authority):
        raise err("assigning_authority", "must be an OID such as 1.3.6.1.4.1.21367.2005.3.7")
    if not 0 <= xds_s.port < 65536:
        raise err("port", f"port out of range: {xds_s.port}")
    pix_s = _section(raw, "pix", PixSettings(), err)
    if not re.match(r"^(\[[^\]]+\]|[^:/\s]+):\d{1,5}$", pix_s.manager):
        raise err("manager", "must be HOST:PORT")
    if not 0 <= pix_s.port < 65536:
        raise err("port", f"port out of range: {pix_s.port}")
    pdq_s = _section(raw, "pdq", PdqSettings(), err)
    if not re.match(r"^https?://[^/\s]+", pdq_s.supplier):
        raise err("supplier", "must be an http:// or https:// URL")
    for k in ("sender", "receiver", "domain"):
        if getattr(pdq_s, k) and not re.match(r"^[0-2](\.(0|[1-9]\d*))+$", getattr(pdq_s, k)):
            raise err(k, "must be an OID")
    web_s = _section(raw, "dicomweb", DicomwebSettings(), err)
    if web_s.url and not re.match(r"^https?://[^/\s]+", web_s.url):
        raise err("url", "must be an http:// or https:// URL")
    return Settings(path=p, profile=profile or "default", exists=exists, archive=arch, nodes=nodes,
                    calling_aet=calling, tls=tls_s, audit=audit_s, time=time_s, xds=xds_s, pix=pix_s, pdq=pdq_s,
                    dicomweb=web_s)


def _section(raw: dict, name: str, obj, err):
    """Fill a settings dataclass from the table ``[name]``, checking names and types."""
    table = raw.get(name) or {}
    if not isinstance(table, dict):
        raise err(name, "must be a table")
    types = {f.name: f.type for f in fields(obj)}
    for k, v in table.items():
        if k not in types:
            raise err(k, f"unknown {name} setting (known: {', '.join(types)})")
        want = types[k]
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
        }[want]
        if not ok:
            noun = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}[want]
            raise err(k, f"must be {noun}, not {v!r}")
        setattr(obj, k, float(v) if want == "float" else v)
    return obj


STARTER = '''\
# ihe profile file (TOML). Top-level tables are the default profile;
# [profiles.NAME] tables overlay them when you run `ihe --profile NAME ...`.

# AE title used by client commands (ihe dicom ...)
calling_aet = "IHE"

[archive]
# AE title, address and port of `ihe archive serve`
aet = "IHE_ARCHIVE"
bind = "127.0.0.1"          # "0.0.0.0" to accept other machines
port = 11112
# Index database: empty for SQLite in the data dir, or a URL such as
# "postgresql+psycopg://ihe:secret@dbhost/ihe"
db = ""
# Folder for the DICOM files: empty for storage/ in the data dir
storage = ""
# Same SOP Instance UID stored twice: "keep" the first copy or "overwrite" it
duplicates = "keep"
# Calling AE titles allowed to associate (empty: any)
allow = []
# Person names match in C-FIND regardless of case; fuzzy_names: regardless of accents too
fuzzy_names = false
# C-MOVE destinations besides the nodes below, as "AET@host:port"
dest = []
# Server processes sharing the port (0: one per CPU, up to 4)
workers = 0
# Performed Procedure Step Manager: nodes (names below or AET@host:port) that every
# MPPS N-CREATE / N-SET received is forwarded to (queued, retried until delivered)
mpps_forward = []
# Instance Availability Notification: nodes told when a completed MPPS's instances are all stored
ian_subscribers = []
# Storage commitment: the report goes back on the requester's association while it is open,
# else on a new association to the node whose AE title is the requester's. Send a requester's
# reports elsewhere with "CALLING_AET=NODE" (e.g. a modality listening on another port), and
# always on a new association for the AE titles in commit_new_association.
commit_reply = []                   # e.g. ["CT1=CT1@10.0.0.7:4104"]
commit_new_association = []         # e.g. ["CT1"]
# Rejection notes: 113001 (Rejected for Quality Reasons) hides the instances from C-FIND,
# C-MOVE and C-GET like 113037/113038 do; false keeps them visible (the note is still stored)
hide_quality_rejects = true
# XDS-I.b: the repositoryUniqueId the archive answers Retrieve Imaging Document Set (RAD-69) as,
# at http://HOST:HTTP_PORT/xdsi, and puts in its manifests; empty: one fixed for the AE title
repository_uid = ""

[tls]
# Our certificate for every secured link (DICOM, HL7/MLLP, HTTP/SOAP, syslog), PEM files.
# With a CA, servers require and check client certificates (mutual authentication).
enabled = false             # secure links by default (--tls / --no-tls override per command)
cert = ""                   # "/etc/ihe/node.pem" (the key may be in the same file)
key = ""
ca = ""                     # "/etc/ihe/ca.pem": the CA certificates we trust
floor = "1.2"               # "1.2": TLS 1.2 floor using BCP195; "1.0" only for legacy peers

[audit]
# Audit Record Repository our actors send audit messages to (ITI-20):
# "tls://arr.example.org:6514" or "udp://arr.example.org:514"; empty: no auditing
repository = ""
source_id = ""              # AuditSourceID; empty: this machine's name
site_id = ""                # AuditEnterpriseSiteID
spool = ""                  # folder for messages while the repository is away (empty: data dir)
spool_max_mb = 50           # the spool's size limit; the oldest messages give way
# `ihe audit serve`: address and ports of our own repository
bind = "127.0.0.1"
tls_port = 6514
udp_port = 514

[time]
# NTP server for Consistent Time (ITI-1): `ihe time check` and the archive's start-up check
server = ""                 # "ntp.example.org" or "host:port"
max_offset = 1.0            # seconds

[xds]
# XDS.b endpoints of `ihe xds submit|query|retrieve|delete` (--registry / --repository override)
registry = "http://127.0.0.1:8020/xds"      # Stored Query (ITI-18), Delete (ITI-62)
repository = "http://127.0.0.1:8020/xds"    # Provide and Register (ITI-41), Retrieve (ITI-43)
# The affinity domain: patient ID domain (--patient ID becomes ID^^^&OID&ISO), our source OID,
# the repository's uniqueId (ours with `ihe xds serve`), the root of new uniqueIds
assigning_authority = ""    # e.g. "1.3.6.1.4.1.21367.2005.3.7"
source_id = "1.3.6.1.4.1.21367.2017.2.4.9999"
repository_unique_id = "1.3.6.1.4.1.21367.2017.2.3.9999"
unique_id_root = "2.25"     # 2.25.<UUID>; or your OID: <root>.<time>.<random>
home = ""                   # homeCommunityId put on query results by `ihe xds serve` (urn:oid:...)
# XCA: the responding gateways `ihe xca query|retrieve` ask, homeCommunityId=endpoint
communities = ""            # e.g. "urn:oid:1.3.6.1.4.1.21367.13.70.101=http://gw-a:8021/xca"
# Default codes of a submission, CODE^DISPLAY^SCHEME (the NIST connectathon code set)
class_code = "REPORTS^Reports^1.3.6.1.4.1.19376.1.2.6.1"
type_code = "11488-4^Consultation Note^2.16.840.1.113883.6.1"
format_code = "urn:ihe:iti:xds:2017:mimeTypeSufficient^mimeType Sufficient^1.3.6.1.4.1.19376.1.2.3"
confidentiality_code = "N^normal^2.16.840.1.113883.5.25"
healthcare_facility_type_code = "22232009^Hospital^2.16.840.1.113883.6.96"
practice_setting_code = "309927009^General medical department^2.16.840.1.113883.6.96"
content_type_code = "UNSPECIFIED-CONTENT-TYPE^Unspecified Clinical Activity^1.3.6.1.4.1.21367.2017.3"
folder_code = "Referrals^Referrals^1.3.6.1.4.1.21367.2017.3"
language = "en-US"
timeout = 60.0              # seconds
# `ihe xds serve`: Document Registry and Repository
bind = "127.0.0.1"
port = 8020
max_body_mb = 256           # larger requests are refused

[pix]
# PIX Manager of `ihe pix query` (ITI-9, MLLP; --to overrides) and the identifiers' domains
manager = "127.0.0.1:3600"
domain = ""                 # our patient ID domain: NAMESPACE, OID or NAMESPACE&OID&ISO (--domain)
domains = ""                # `ihe pix listen` (ITI-10): domains followed, comma-separated; "": all
application = "IHE"         # MSH-3/MSH-4 of our queries
facility = ""
manager_application = ""    # MSH-5/MSH-6 of our queries
manager_facility = ""
timeout = 30.0              # seconds
bind = "127.0.0.1"          # `ihe pix listen`
port = 3600

[pdq]
# PDQ Supplier of `ihe pdq query` (ITI-47, SOAP; --to overrides)
supplier = "http://127.0.0.1:8030/pdq"
sender = "1.3.6.1.4.1.21367.2017.2.5.9999"      # our device OID
receiver = "1.3.6.1.4.1.21367.2017.2.5.9998"    # the supplier's device OID
domain = ""                 # OID of --id's domain when --domain is not given
timeout = 30.0              # seconds

[dicomweb]
# DICOMweb service root of `ihe wic upload` (STOW-RS; --url and IHE_DICOMWEB_URL override);
# empty: http://127.0.0.1:8080/dicom-web, as `ihe archive serve --http-port 8080` serves
url = ""

[nodes]
# Remote DICOM nodes, usable by name wherever a command takes a node, and as
# C-MOVE destinations of the archive.
# pacs = { aet = "PACS", host = "10.0.0.5", port = 104 }
# viewer = "VIEWER@127.0.0.1:11113"
# With tls = true (or "tls://AET@host:port") every association to the node is secured with
# the [tls] certificate and CA above: C-MOVE sub-operations, storage commitment reports, MPPS
# forwarding and IAN from the archive, the `ihe dicom` commands and `ihe archive export --to`.
# ris = { aet = "RIS", host = "ris.example.org", port = 2762, tls = true }

# [profiles.test.archive]
# port = 11113
# storage = "/srv/ihe-test/storage"
'''


def init(path: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Write the commented starter profile file; refuse to overwrite unless ``force``."""
    p = config_path(path)
    if p.exists() and not force:
        raise UsageError(f"{p} already exists (use --force to overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(STARTER, encoding="utf-8")
    return p
