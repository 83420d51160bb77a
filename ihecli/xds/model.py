"""XDS metadata as Python objects: DocumentEntry, SubmissionSet, Folder, Association (ITI TF-3 4.1-4.3).

Codes are ``Code(code, scheme, display)``, written ``CODE^DISPLAY^SCHEME`` on the command line
and in the profile file (``CODE^^SCHEME`` without a display). Patient IDs are CX strings,
``ID^^^&OID&ISO``. ``as_dict()`` gives each object keyed by the attribute names of the ITI
metadata tables (entryUUID, uniqueId, patientId, classCode, ...).
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field, fields

from ihecli.errors import UsageError

CX_RE = re.compile(r"^[^\^&~\\|]{1,256}\^\^\^&[0-2](\.(0|[1-9][0-9]*))+&ISO$")
OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def valid_cx(value: str) -> bool:
    """True for an XDS patient ID: ``ID^^^&OID&ISO`` (ITI TF-3 4.2.3.2.16; no other CX components)."""
    return bool(CX_RE.match(value or ""))


def check_cx(value: str) -> str:
    v = (value or "").strip()
    if not valid_cx(v):
        raise UsageError(f"bad patient ID {value!r}: give ID^^^&OID&ISO, e.g. 'PID123^^^&1.2.3.4&ISO'")
    return v


def cx_parts(cx: str) -> tuple[str, str]:
    """(ID, assigning authority OID) of an XDS patient ID ``ID^^^&OID&ISO`` ('' for what is absent)."""
    parts = (cx or "").split("^")
    hd = parts[3].split("&") if len(parts) > 3 else []
    return parts[0], hd[1] if len(hd) > 1 else ""


def make_cx(pid: str, authority: str) -> str:
    """A CX from an ID and an assigning authority OID (a full CX is returned unchanged)."""
    if "^" in pid:
        return check_cx(pid)
    if not authority:
        raise UsageError("patient ID without an assigning authority: give ID^^^&OID&ISO, or set "
                         "xds.assigning_authority in the profile")
    return check_cx(f"{pid}^^^&{authority}&ISO")


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def new_unique_id(root: str = "2.25") -> str:
    """An OID unique ID: under ``root``, or (default) 2.25.<UUID as integer> (ISO/IEC 9834-8)."""
    if root == "2.25":
        return f"2.25.{uuid.uuid4().int}"
    return f"{root}.{time.time_ns() // 1000}.{uuid.uuid4().int % 10**9}"


def now_dtm() -> str:
    """The current time as an HL7 DTM in UTC, to the second (as XDS wants)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    display: str = ""

    @classmethod
    def parse(cls, text: str, what: str = "code") -> "Code":
        """``CODE^DISPLAY^SCHEME`` or ``CODE^^SCHEME``."""
        parts = (text or "").split("^")
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise UsageError(f"bad {what} {text!r}: give CODE^DISPLAY^SCHEME or CODE^^SCHEME")
        return cls(parts[0], parts[2], parts[1])

    @property
    def key(self) -> str:
        """The stored-query form, ``CODE^^SCHEME``."""
        return f"{self.code}^^{self.scheme}"

    def __str__(self) -> str:
        return f"{self.code}^{self.display}^{self.scheme}"


@dataclass
class Author:
    person: str = ""
    institutions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)
    telecom: list[str] = field(default_factory=list)


def _code_out(c):
    if c is None:
        return None
    if isinstance(c, list):
        return [str(x) for x in c]
    return str(c)


@dataclass
class DocumentEntry:
    entry_uuid: str = ""
    unique_id: str = ""
    patient_id: str = ""
    title: str = ""
    comments: str = ""
    mime_type: str = ""
    status: str = ""
    object_type: str = ""
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    healthcare_facility_type_code: Code | None = None
    practice_setting_code: Code | None = None
    confidentiality_codes: list[Code] = field(default_factory=list)
    event_codes: list[Code] = field(default_factory=list)
    creation_time: str = ""
    service_start_time: str = ""
    service_stop_time: str = ""
    language_code: str = ""
    source_patient_id: str = ""
    source_patient_info: list[str] = field(default_factory=list)
    legal_authenticator: str = ""
    authors: list[Author] = field(default_factory=list)
    hash: str = ""
    size: int | None = None
    repository_unique_id: str = ""
    uri: str = ""
    home: str = ""
    lid: str = ""
    slots: dict[str, list[str]] = field(default_factory=dict)  # other slots, kept as received

    def as_dict(self) -> dict:
        return {
            "objectType": "DocumentEntry", "entryUUID": self.entry_uuid, "uniqueId": self.unique_id,
            "patientId": self.patient_id, "title": self.title, "comments": self.comments,
            "mimeType": self.mime_type, "status": _short(self.status),
            "availabilityStatus": self.status,
            "classCode": _code_out(self.class_code), "typeCode": _code_out(self.type_code),
            "formatCode": _code_out(self.format_code),
            "healthcareFacilityTypeCode": _code_out(self.healthcare_facility_type_code),
            "practiceSettingCode": _code_out(self.practice_setting_code),
            "confidentialityCode": _code_out(self.confidentiality_codes), "eventCodeList": _code_out(self.event_codes),
            "creationTime": self.creation_time, "serviceStartTime": self.service_start_time,
            "serviceStopTime": self.service_stop_time, "languageCode": self.language_code,
            "sourcePatientId": self.source_patient_id, "sourcePatientInfo": self.source_patient_info,
            "legalAuthenticator": self.legal_authenticator,
            "author": [a.__dict__ for a in self.authors], "hash": self.hash, "size": self.size,
            "repositoryUniqueId": self.repository_unique_id, "URI": self.uri, "homeCommunityId": self.home,
            "type": "on-demand" if self.object_type.endswith("34268e47-fdf5-41a6-ba33-82133c465248") else "stable",
        }


@dataclass
class SubmissionSet:
    entry_uuid: str = ""
    unique_id: str = ""
    source_id: str = ""
    patient_id: str = ""
    submission_time: str = ""
    title: str = ""
    comments: str = ""
    status: str = ""
    content_type_code: Code | None = None
    authors: list[Author] = field(default_factory=list)
    intended_recipients: list[str] = field(default_factory=list)
    home: str = ""
    lid: str = ""
    slots: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "objectType": "SubmissionSet", "entryUUID": self.entry_uuid, "uniqueId": self.unique_id,
            "sourceId": self.source_id, "patientId": self.patient_id, "submissionTime": self.submission_time,
            "title": self.title, "comments": self.comments, "status": _short(self.status),
            "availabilityStatus": self.status, "contentTypeCode": _code_out(self.content_type_code),
            "author": [a.__dict__ for a in self.authors], "intendedRecipient": self.intended_recipients,
            "homeCommunityId": self.home,
        }


@dataclass
class Folder:
    entry_uuid: str = ""
    unique_id: str = ""
    patient_id: str = ""
    title: str = ""
    comments: str = ""
    status: str = ""
    codes: list[Code] = field(default_factory=list)
    last_update_time: str = ""
    home: str = ""
    lid: str = ""
    slots: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "objectType": "Folder", "entryUUID": self.entry_uuid, "uniqueId": self.unique_id,
            "patientId": self.patient_id, "title": self.title, "comments": self.comments,
            "status": _short(self.status), "availabilityStatus": self.status, "codeList": _code_out(self.codes),
            "lastUpdateTime": self.last_update_time, "homeCommunityId": self.home,
        }


@dataclass
class Association:
    entry_uuid: str = ""
    association_type: str = ""
    source: str = ""
    target: str = ""
    status: str = ""
    submission_set_status: str = ""  # Original | Reference (SubmissionSet -> DocumentEntry)
    slots: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "objectType": "Association", "entryUUID": self.entry_uuid,
            "associationType": self.association_type.rsplit(":", 1)[-1], "sourceObject": self.source,
            "targetObject": self.target, "status": _short(self.status),
            "SubmissionSetStatus": self.submission_set_status,
        }


@dataclass
class ObjectRef:
    entry_uuid: str
    home: str = ""

    def as_dict(self) -> dict:
        return {"objectType": "ObjectRef", "entryUUID": self.entry_uuid, "homeCommunityId": self.home}


def _short(status: str) -> str:
    return (status or "").rsplit(":", 1)[-1]


RegistryObject = DocumentEntry | SubmissionSet | Folder | Association | ObjectRef


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]
