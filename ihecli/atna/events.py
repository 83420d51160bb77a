"""Audit messages (DICOM PS3.15 A.5, the format of ITI-20 Record Audit Event): the one builder module.

``AuditEvent`` is the message as plain data; ``to_xml`` writes the DICOM AuditMessage (the
PS3.15 A.5.1 schema: csd-code / codeSystemName / originalText). The functions below build the
events the project's actors report: DICOM events of PS3.15 A.5.3 (Application Activity,
Security Alert, User Authentication, Instances Transferred, Query, Begin Transferring, Patient
Record, Export/Import of media), those of the imaging workflow (Procedure Record of MPPS,
Storage Commitment RAD-10, rejection notes RAD-66) and the ITI transactions' events of ITI TF-2
(ITI-9, 10, 18, 41, 43, 47, 62).

A party of a transaction is a ``Peer``: its user id (AE title, HL7 application|facility, SOAP
endpoint URL, process), its host and, for the side that is this process, its process id.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

from lxml import etree


@dataclass(frozen=True)
class Code:
    code: str
    system: str
    display: str


def dcm(code: str, display: str) -> Code:
    return Code(code, "DCM", display)


def iti(transaction: str, display: str) -> Code:
    return Code(transaction, "IHE Transactions", display)


# PS3.16 CID 400-405 (audit event IDs, types, roles), RFC 3881 ID types
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
BEGIN_TRANSFERRING = dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
EXPORT = dcm("110106", "Export")
IMPORT = dcm("110107", "Import")
PATIENT_RECORD = dcm("110110", "Patient Record")
PROCEDURE_RECORD = dcm("110111", "Procedure Record")
QUERY = dcm("110112", "Query")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION = dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = dcm("110131", "Software Configuration")

ROLE_APPLICATION = dcm("110150", "Application")
ROLE_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = dcm("110154", "Destination Media")
ROLE_SOURCE_MEDIA = dcm("110155", "Source Media")

ID_STUDY_UID = dcm("110180", "Study Instance UID")
ID_SOP_CLASS = dcm("110181", "SOP Class UID")
ID_NODE = dcm("110182", "Node ID")
ID_PATIENT = Code("2", "RFC-3881", "Patient Number")
ID_REPORT = Code("9", "RFC-3881", "Report Number")
ID_USER = Code("11", "RFC-3881", "User Identifier")
ID_URI = Code("12", "RFC-3881", "URI")
ID_SUBMISSION_SET = Code("urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata",
                         "submission set classificationNode")

MEDIA = {"usb": dcm("110030", "USB Disk Emulation"), "email": dcm("110031", "Email"), "cd": dcm("110032", "CD"),
         "dvd": dcm("110033", "DVD"), "cf": dcm("110034", "Compact Flash"), "mmc": dcm("110035", "Multi-media Card"),
         "sd": dcm("110036", "Secure Digital Card"), "uri": dcm("110037", "URI"),
         "paper": dcm("110038", "Paper Document")}

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


@dataclass
class Participant:
    """ActiveParticipant: a user, process or node taking part."""

    user_id: str
    requestor: bool = False
    roles: list[Code] = field(default_factory=list)
    alt_user_id: str = ""
    user_name: str = ""
    host: str = ""  # NetworkAccessPointID: an IP address (type 2) or a machine name (type 1)
    media: Code | None = None


@dataclass
class ParticipantObject:
    """ParticipantObjectIdentification: a patient, study, query, document, ..."""

    id: str
    id_type: Code
    type_code: int | None = None  # 1 person, 2 system object, 3 organization, 4 other
    role: int | None = None  # 1 patient, 3 report, 13 security resource, 20 job, 24 query, ...
    lifecycle: int | None = None
    name: str = ""
    query: bytes | None = None  # stored base64
    details: list[tuple[str, bytes]] = field(default_factory=list)  # stored base64
    sop_classes: list[tuple[str, int]] = field(default_factory=list)  # (SOP Class UID, number of instances)
    accessions: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)  # ParticipantObjectContainsStudy
    mpps: list[str] = field(default_factory=list)  # MPPS SOP Instance UIDs (of a study)
    description: list[str] = field(default_factory=list)


@dataclass
class AuditSource:
    source_id: str = ""
    site_id: str = ""
    type_code: str = "4"  # application server process


@dataclass
class AuditEvent:
    event_id: Code
    action: str = "E"  # C R U D E
    outcome: int = SUCCESS
    types: list[Code] = field(default_factory=list)
    participants: list[Participant] = field(default_factory=list)
    objects: list[ParticipantObject] = field(default_factory=list)
    source: AuditSource = field(default_factory=AuditSource)
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    outcome_description: str = ""

    @property
    def summary(self) -> str:
        t = ", ".join(c.display for c in self.types)
        return f"{self.event_id.display}" + (f" ({t})" if t else "") + ("" if self.outcome == 0 else
                                                                      f" outcome {self.outcome}")


# -- the XML ------------------------------------------------------------------------------------

def _code(parent, tag: str, c: Code):
    return etree.SubElement(parent, tag, {"csd-code": c.code, "codeSystemName": c.system, "originalText": c.display})


def _nap_type(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return "2"
    except ValueError:
        return "1"


def _clean(text: str) -> str:
    """Attribute values without characters XML 1.0 cannot carry."""
    return "".join(ch for ch in str(text) if ch in "\t\n\r" or ord(ch) >= 0x20)


def to_xml(event: AuditEvent, *, default_source: AuditSource | None = None) -> bytes:
    """The DICOM AuditMessage (UTF-8, with XML declaration) of ``event``."""
    root = etree.Element("AuditMessage")
    when = event.time if event.time.tzinfo else event.time.replace(tzinfo=timezone.utc)
    ei = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": when.isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": str(event.outcome)})
    _code(ei, "EventID", event.event_id)
    for t in event.types:
        _code(ei, "EventTypeCode", t)
    if event.outcome_description:
        etree.SubElement(ei, "EventOutcomeDescription").text = _clean(event.outcome_description)
    for p in event.participants:
        attrs = {"UserID": _clean(p.user_id)}
        if p.alt_user_id:
            attrs["AlternativeUserID"] = _clean(p.alt_user_id)
        if p.user_name:
            attrs["UserName"] = _clean(p.user_name)
        attrs["UserIsRequestor"] = "true" if p.requestor else "false"
        if p.host:
            attrs["NetworkAccessPointID"] = _clean(p.host)
            attrs["NetworkAccessPointTypeCode"] = _nap_type(p.host)
        ap = etree.SubElement(root, "ActiveParticipant", attrs)
        for r in p.roles:
            _code(ap, "RoleIDCode", r)
        if p.media is not None:
            _code(etree.SubElement(ap, "MediaIdentifier"), "MediaType", p.media)
    src = event.source if event.source.source_id else (default_source or default_audit_source())
    attrs = {}
    if src.site_id:
        attrs["AuditEnterpriseSiteID"] = _clean(src.site_id)
    attrs["AuditSourceID"] = _clean(src.source_id or socket.gethostname())
    asi = etree.SubElement(root, "AuditSourceIdentification", attrs)
    etree.SubElement(asi, "AuditSourceTypeCode", {"csd-code": src.type_code or "4"})
    for o in event.objects:
        attrs = {"ParticipantObjectID": _clean(o.id)}
        if o.type_code is not None:
            attrs["ParticipantObjectTypeCode"] = str(o.type_code)
        if o.role is not None:
            attrs["ParticipantObjectTypeCodeRole"] = str(o.role)
        if o.lifecycle is not None:
            attrs["ParticipantObjectDataLifeCycle"] = str(o.lifecycle)
        po = etree.SubElement(root, "ParticipantObjectIdentification", attrs)
        _code(po, "ParticipantObjectIDTypeCode", o.id_type)
        if o.query is not None:
            etree.SubElement(po, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode("ascii")
        elif o.name:
            etree.SubElement(po, "ParticipantObjectName").text = _clean(o.name)
        for k, v in o.details:
            etree.SubElement(po, "ParticipantObjectDetail", {"type": k, "value": base64.b64encode(v).decode("ascii")})
        if o.sop_classes or o.accessions or o.studies or o.mpps:
            desc = etree.SubElement(po, "ParticipantObjectDescription")
            for uid in o.mpps:
                etree.SubElement(desc, "MPPS", {"UID": _clean(uid)})
            for acc in o.accessions:
                etree.SubElement(desc, "Accession", {"Number": _clean(acc)})
            for uid, n in o.sop_classes:
                etree.SubElement(desc, "SOPClass", {"UID": uid, "NumberOfInstances": str(int(n))})
            if o.studies:
                cs = etree.SubElement(desc, "ParticipantObjectContainsStudy")
                for s in o.studies:
                    etree.SubElement(cs, "StudyIDs", {"UID": s})
    # one line: receivers that frame syslog by lines (RFC 6587 non-transparent framing) keep it whole
    return b'<?xml version="1.0" encoding="UTF-8"?>' + etree.tostring(root, encoding="unicode").encode("utf-8")


# -- who we are -----------------------------------------------------------------------------------

_defaults = {"source": None}


def set_default_source(source: AuditSource | None) -> None:
    _defaults["source"] = source


def default_audit_source() -> AuditSource:
    return _defaults["source"] or AuditSource(source_id=socket.gethostname())


def local_host() -> str:
    """Our NetworkAccessPointID: the machine's name."""
    return socket.getfqdn() or socket.gethostname()


@dataclass
class Peer:
    """One side of a transaction: ``user_id`` (AE title, app|facility, endpoint URL), its host, and
    for this process the process id (AlternativeUserID)."""

    user_id: str
    host: str = ""
    process_id: str = ""
    user_name: str = ""

    @classmethod
    def local(cls, user_id: str, host: str = "") -> "Peer":
        return cls(user_id=user_id, host=host or local_host(), process_id=str(os.getpid()))


def _ap(peer: Peer, role: Code, requestor: bool, *, alt: str = "") -> Participant:
    return Participant(user_id=peer.user_id or "unknown", requestor=requestor, roles=[role],
                       alt_user_id=alt or peer.process_id, user_name=peer.user_name, host=peer.host)


def _human(user: str | None) -> list[Participant]:
    return [Participant(user_id=user, requestor=True)] if user else []


def patient(pid: str, *, details: Sequence[tuple[str, bytes]] = (), name: str = "") -> ParticipantObject:
    return ParticipantObject(id=pid, id_type=ID_PATIENT, type_code=1, role=1, name=name, details=list(details))


def study(uid: str, sop_classes: Iterable[tuple[str, int]] = (), accessions: Iterable[str] = (),
          mpps: Iterable[str] = (), lifecycle: int | None = None) -> ParticipantObject:
    return ParticipantObject(id=uid, id_type=ID_STUDY_UID, type_code=2, role=3, sop_classes=list(sop_classes),
                             accessions=[a for a in dict.fromkeys(accessions) if a], mpps=[m for m in mpps if m],
                             lifecycle=lifecycle)


def _outcome(ok: bool | int) -> int:
    if isinstance(ok, bool):
        return SUCCESS if ok else SERIOUS_FAILURE
    return int(ok)


# -- DICOM events (PS3.15 A.5.3) ------------------------------------------------------------------

def application_activity(started: bool, *, app: str, aets: Sequence[str] = (), launcher: str = "",
                         outcome: int = SUCCESS) -> AuditEvent:
    """Application Activity (A.5.3.1): the application started or stopped."""
    parts = [Participant(user_id=app, requestor=False, roles=[ROLE_APPLICATION], host=local_host(),
                         alt_user_id=("AETITLES=" + ";".join(aets)) if aets else str(os.getpid()))]
    if launcher:
        parts.append(Participant(user_id=launcher, requestor=True, roles=[ROLE_LAUNCHER]))
    return AuditEvent(APPLICATION_ACTIVITY, action="E", outcome=outcome,
                      types=[APPLICATION_START if started else APPLICATION_STOP], participants=parts)


def security_alert(kind: Code, *, reporter: str, subject: str, description: str, outcome: int = MINOR_FAILURE,
                   performer: Peer | None = None) -> AuditEvent:
    """Security Alert (A.5.3.11): ``kind`` is e.g. NODE_AUTHENTICATION for a refused peer."""
    parts = [Participant(user_id=reporter, requestor=False, host=local_host(), alt_user_id=str(os.getpid()))]
    if performer is not None:
        parts.append(Participant(user_id=performer.user_id or performer.host, requestor=True, host=performer.host))
    obj = ParticipantObject(id=subject, id_type=ID_NODE, type_code=2, role=13,
                            details=[("Alert Description", description.encode("utf-8"))])
    return AuditEvent(SECURITY_ALERT, action="E", outcome=outcome, types=[kind], participants=parts, objects=[obj],
                      outcome_description=description)


def node_authentication_failure(peer: str, reason: str, *, service: str) -> AuditEvent:
    """A peer refused at the TLS handshake (ITI-19): Security Alert, Node Authentication."""
    host = peer.rsplit(":", 1)[0].strip("[]") if peer else ""
    return security_alert(NODE_AUTHENTICATION, reporter=service, subject=peer or "unknown",
                          description=f"TLS handshake refused: {reason}", performer=Peer(user_id=peer, host=host))


def user_authentication(login: bool, *, user: str, node: str = "", outcome: int = SUCCESS) -> AuditEvent:
    """User Authentication (A.5.3.12): login or logout of ``user``."""
    parts = [Participant(user_id=user, requestor=True, host=local_host())]
    if node:
        parts.append(Participant(user_id=node, requestor=False, host=local_host(), alt_user_id=str(os.getpid())))
    return AuditEvent(USER_AUTHENTICATION, action="E", outcome=outcome, types=[LOGIN if login else LOGOUT],
                      participants=parts)


def _studies_and_patients(studies: dict[str, dict], patients: Iterable[str]) -> list[ParticipantObject]:
    objs = [study(uid, sorted((info.get("sop_classes") or {}).items()), info.get("accessions") or ())
            for uid, info in studies.items()]
    objs += [patient(p) for p in dict.fromkeys(p for p in patients if p)]
    return objs


def instances_transferred(*, source: Peer, destination: Peer, studies: dict[str, dict], patients: Iterable[str],
                          action: str = "C", outcome: int = SUCCESS, user: str | None = None,
                          requestor: str = "destination", transaction: Code | None = None,
                          description: str = "") -> AuditEvent:
    """DICOM Instances Transferred (A.5.3.4). ``studies``: {Study UID: {"sop_classes": {uid: n},
    "accessions": [...]}}. The receiver reports action C (created) or U, the sender R."""
    return AuditEvent(INSTANCES_TRANSFERRED, action=action, outcome=outcome, types=[transaction] if transaction else [],
                      participants=[_ap(source, ROLE_SOURCE, requestor == "source"),
                                    _ap(destination, ROLE_DESTINATION, requestor == "destination"), *_human(user)],
                      objects=_studies_and_patients(studies, patients), outcome_description=description)


STORAGE_COMMITMENT = Code("RAD-10", "IHE Transactions", "Storage Commitment")
REJECTION_NOTE_STORED = Code("RAD-66", "IHE Transactions", "Rejection Note Stored")


def storage_commitment(*, requester: Peer, archive: Peer, studies: dict[str, dict], patients: Iterable[str],
                       outcome: int = SUCCESS, description: str = "") -> AuditEvent:
    """Storage Commitment (RAD-10), reported by the archive as it takes responsibility for the
    instances: DICOM Instances Transferred from the requester (the source, which asked) to the
    archive, action R (PS3.15: the receiver already holds the instances and needs no change);
    ``studies`` as for instances_transferred, counting the committed instances; ``outcome`` a
    failure when some were not committed (``description`` says how many and why)."""
    return instances_transferred(source=requester, destination=archive, studies=studies, patients=patients,
                                 action="R", outcome=outcome, requestor="source", transaction=STORAGE_COMMITMENT,
                                 description=description)


def procedure_record(action: str, *, source: Peer, destination: Peer, patient_id: str, patient_name: str = "",
                     studies: dict[str, Iterable[str]], mpps_uid: str, requestor: str = "source",
                     outcome: int = SUCCESS, description: str = "") -> AuditEvent:
    """Procedure Record (PS3.15 A.5.3, 110111) of a Modality Performed Procedure Step: created
    (C, N-CREATE: RAD-6/RAD-20) or updated (U, N-SET: RAD-7/RAD-21), by the SCU ``source`` at the
    SCP ``destination`` (the PPS Manager receiving, or forwarding as the SCU). ``studies``: the
    step's Study Instance UIDs with their accession numbers; each names the step's MPPS UID.
    One patient per message, as PS3.15 asks."""
    objs = [study(uid, accessions=accs, mpps=[mpps_uid]) for uid, accs in studies.items() if uid]
    if patient_id:
        objs.append(patient(patient_id, name=patient_name))
    return AuditEvent(PROCEDURE_RECORD, action=action, outcome=outcome, outcome_description=description,
                      participants=[_ap(source, ROLE_SOURCE, requestor == "source"),
                                    _ap(destination, ROLE_DESTINATION, requestor == "destination")],
                      objects=objs)


def instances_rejected(*, requester: Peer, archive: Peer, study_uid: str, sop_classes: dict[str, int],
                       patient_id: str, reason: Code, whole_study: bool, erased: bool,
                       outcome: int = SUCCESS) -> AuditEvent:
    """A rejection note (IOCM, RAD-66) took instances of one study out of the archive: DICOM Study
    Deleted when none of the study's instances is left (its rejection notes aside), else DICOM
    Instances Accessed with action D. Hidden instances (113001/113037/113038) are a logical
    deletion (life cycle 14), deleted ones (113039 Data Retention Policy Expired) a permanent
    erasure (15). ``reason``: the note's title, given as the outcome description."""
    parts = [Participant(user_id=requester.user_id or "unknown", requestor=True, host=requester.host),
             Participant(user_id=archive.user_id, requestor=False, alt_user_id=archive.process_id,
                         host=archive.host)]
    objs = [study(study_uid, sorted(sop_classes.items()), lifecycle=15 if erased else 14)]
    if patient_id:
        objs.append(patient(patient_id))
    return AuditEvent(STUDY_DELETED if whole_study else INSTANCES_ACCESSED, action="D", outcome=outcome,
                      types=[REJECTION_NOTE_STORED], participants=parts, objects=objs,
                      outcome_description=f"{reason.code} {reason.display}")


def begin_transferring(*, source: Peer, destination: Peer, studies: dict[str, dict], patients: Iterable[str],
                       outcome: int = SUCCESS, requestor: Peer | None = None) -> AuditEvent:
    """Begin Transferring DICOM Instances (A.5.3.3): a C-MOVE or C-GET starts sending. The
    requestor is the destination unless another party (the C-MOVE SCU) is given."""
    parts = [_ap(source, ROLE_SOURCE, False), _ap(destination, ROLE_DESTINATION, requestor is None)]
    if requestor is not None:
        parts.append(Participant(user_id=requestor.user_id, requestor=True, alt_user_id=requestor.process_id,
                                 host=requestor.host))
    return AuditEvent(BEGIN_TRANSFERRING, action="E", outcome=outcome, participants=parts,
                      objects=_studies_and_patients(studies, patients))


def dicom_query(*, source: Peer, destination: Peer, sop_class: str, query: bytes, transfer_syntax: str = "",
                outcome: int = SUCCESS) -> AuditEvent:
    """Query (A.5.3.10) of a C-FIND: ``query`` is the encoded identifier, ``source`` the SCU."""
    details = [("TransferSyntax", transfer_syntax.encode("ascii"))] if transfer_syntax else []
    obj = ParticipantObject(id=sop_class, id_type=ID_SOP_CLASS, type_code=2, role=3, query=query, details=details)
    return AuditEvent(QUERY, action="E", outcome=outcome,
                      participants=[_ap(source, ROLE_SOURCE, True), _ap(destination, ROLE_DESTINATION, False)],
                      objects=[obj])


def patient_record(action: str, *, patients: Iterable[str], user: str, transaction: Code | None = None,
                   outcome: int = SUCCESS) -> AuditEvent:
    """Patient Record (A.5.3.9): a patient's record created (C), read (R), updated (U) or deleted (D)."""
    return AuditEvent(PATIENT_RECORD, action=action, outcome=outcome, types=[transaction] if transaction else [],
                      participants=[Participant(user_id=user, requestor=True, host=local_host(),
                                                alt_user_id=str(os.getpid()))],
                      objects=[patient(p) for p in patients])


def media_event(export: bool, *, media: str, media_id: str, user: str, studies: dict[str, dict],
                patients: Iterable[str], outcome: int = SUCCESS) -> AuditEvent:
    """Export (A.5.3.6) to or Import (A.5.3.7) from media such as a PDI CD or USB stick."""
    mcode = MEDIA.get(media.lower(), MEDIA["cd"])
    app = Participant(user_id=user, requestor=True, host=local_host(), alt_user_id=str(os.getpid()),
                      roles=[ROLE_SOURCE if export else ROLE_DESTINATION])
    med = Participant(user_id=media_id or mcode.display, requestor=False,
                      roles=[ROLE_DESTINATION_MEDIA if export else ROLE_SOURCE_MEDIA], media=mcode)
    return AuditEvent(EXPORT if export else IMPORT, action="R" if export else "C", outcome=outcome,
                      participants=[app, med], objects=_studies_and_patients(studies, patients))


# -- ITI transactions (ITI TF-2) --------------------------------------------------------------------

def _transaction(event_id: Code, action: str, tx: Code, *, source: Peer, destination: Peer, requestor: str,
                 objects: list[ParticipantObject], outcome: int, user: str | None) -> AuditEvent:
    return AuditEvent(event_id, action=action, outcome=outcome, types=[tx],
                      participants=[_ap(source, ROLE_SOURCE, requestor == "source"),
                                    _ap(destination, ROLE_DESTINATION, requestor == "destination"), *_human(user)],
                      objects=objects)


def pix_query(*, source: Peer, destination: Peer, query: bytes, message_id: str, patient_ids: Iterable[str] = (),
              outcome: int = SUCCESS, user: str | None = None) -> AuditEvent:
    """ITI-9 PIX Query (ITI TF-2a 3.9.5.1): Query event; ``query`` the QBP^Q23 message, ``source`` the Consumer."""
    q = ParticipantObject(id=message_id, id_type=iti("ITI-9", "PIX Query"), type_code=2, role=24, query=query,
                          details=[("MSH-10", message_id.encode("utf-8"))])
    return _transaction(QUERY, "E", iti("ITI-9", "PIX Query"), source=source, destination=destination,
                        requestor="source", objects=[*(patient(p) for p in patient_ids), q], outcome=outcome,
                        user=user)


def pix_update_notification(*, source: Peer, destination: Peer, patient_ids: Iterable[str], message_id: str,
                            outcome: int = SUCCESS) -> AuditEvent:
    """ITI-10 PIX Update Notification (ITI TF-2a 3.10.5.1): Patient Record, update; ``source`` the Manager."""
    pats = [patient(p, details=[("MSH-10", message_id.encode("utf-8"))]) for p in patient_ids]
    return _transaction(PATIENT_RECORD, "U", iti("ITI-10", "PIX Update Notification"), source=source,
                        destination=destination, requestor="source", objects=pats, outcome=outcome, user=None)


def registry_stored_query(*, source: Peer, destination: Peer, query_id: str, query: bytes,
                          patient_id: str = "", home_community_id: str = "", outcome: int = SUCCESS,
                          user: str | None = None, transaction: Code | None = None) -> AuditEvent:
    """ITI-18 Registry Stored Query (ITI TF-2a 3.18.5.1): ``query`` the AdhocQueryRequest, ``source`` the Consumer.
    ``transaction``: ITI-38 Cross Gateway Query has the same event with its own code (3.38.5.1)."""
    tx = transaction or iti("ITI-18", "Registry Stored Query")
    details = [("QueryEncoding", b"UTF-8")]
    if home_community_id:
        details.append(("urn:ihe:iti:xca:2010:homeCommunityId", home_community_id.encode("utf-8")))
    q = ParticipantObject(id=query_id, id_type=tx, type_code=2, role=24, query=query, details=details)
    pats = [patient(patient_id)] if patient_id else []
    return _transaction(QUERY, "E", tx, source=source, destination=destination,
                        requestor="source", objects=[*pats, q], outcome=outcome, user=user)


def provide_and_register(*, source: Peer, destination: Peer, submission_set_uid: str, patient_id: str,
                         sender: bool = True, outcome: int = SUCCESS, user: str | None = None) -> AuditEvent:
    """ITI-41 Provide and Register Document Set-b (ITI TF-2b 3.41.7.1): the Document Source reports
    Export (``sender``), the Repository or Recipient Import."""
    ss = ParticipantObject(id=submission_set_uid, id_type=ID_SUBMISSION_SET, type_code=2, role=20)
    tx = iti("ITI-41", "Provide and Register Document Set-b")
    return _transaction(EXPORT if sender else IMPORT, "R" if sender else "C", tx, source=source,
                        destination=destination, requestor="source", objects=[patient(patient_id), ss],
                        outcome=outcome, user=user if sender else None)


def retrieve_document_set(*, source: Peer, destination: Peer, documents: Iterable[tuple[str, str, str]],
                          patient_id: str = "", consumer: bool = True, outcome: int = SUCCESS,
                          user: str | None = None, transaction: Code | None = None) -> AuditEvent:
    """ITI-43 Retrieve Document Set (ITI TF-2b 3.43.6.1): the Consumer reports Import, the
    Repository Export. ``documents``: (document unique id, repository unique id, home community id);
    ``source`` is the Repository, ``destination`` the Consumer. ``transaction``: ITI-39, RAD-69 and
    RAD-75 report the same event with their own code."""
    docs = []
    for doc_uid, repo_uid, home in documents:
        details = [("Repository Unique Id", repo_uid.encode("utf-8"))]
        if home:
            details.append(("ihe:homeCommunityID", home.encode("utf-8")))
        docs.append(ParticipantObject(id=doc_uid, id_type=ID_REPORT, type_code=2, role=3, details=details))
    pats = [patient(patient_id)] if patient_id else []
    return _transaction(IMPORT if consumer else EXPORT, "C" if consumer else "R",
                        transaction or iti("ITI-43", "Retrieve Document Set"), source=source, destination=destination,
                        requestor="destination", objects=[*pats, *docs], outcome=outcome,
                        user=user if consumer else None)


def pdq_query(*, source: Peer, destination: Peer, query: bytes, message_id: str = "", patient_ids: Iterable[str] = (),
              outcome: int = SUCCESS, user: str | None = None) -> AuditEvent:
    """ITI-47 Patient Demographics Query HL7 V3 (ITI TF-2b 3.47.5.1): ``query`` the queryByParameter,
    ``source`` the Consumer."""
    details = [("ihe:MessageId", message_id.encode("utf-8"))] if message_id else []
    q = ParticipantObject(id=message_id or "PDQ", id_type=iti("ITI-47", "Patient Demographics Query"), type_code=2,
                          role=24, query=query, details=details)
    return _transaction(QUERY, "E", iti("ITI-47", "Patient Demographics Query"), source=source,
                        destination=destination, requestor="source",
                        objects=[*(patient(p) for p in patient_ids), q], outcome=outcome, user=user)


def delete_document_set(*, source: Peer, destination: Peer, patient_id: str, object_uuids: Iterable[str],
                        outcome: int = SUCCESS, user: str | None = None) -> AuditEvent:
    """ITI-62 Remove Metadata (Delete Document Set): Patient Record, delete; one object per removed entry."""
    objs = [patient(patient_id)] if patient_id else []
    objs += [ParticipantObject(id=u, id_type=Code("urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155",
                                                  "IHE XDS Metadata", "Registry Object UUID"),
                               type_code=2, role=3) for u in object_uuids]
    return _transaction(PATIENT_RECORD, "D", iti("ITI-62", "Remove Metadata"), source=source,
                        destination=destination, requestor="source", objects=objs, outcome=outcome, user=user)


# -- events named on a command line -------------------------------------------------------------------

SIMPLE_KINDS = ("start", "stop", "login", "logout", "alert", "patient-read", "patient-update")


def simple_event(kind: str, *, user: str = "", patients: Sequence[str] = (), outcome: int = SUCCESS,
                 app: str = "ihe", description: str = "") -> AuditEvent:
    """An event named by a word (what `ihe audit send --event` offers): start, stop, login,
    logout, alert (a Security Alert, node authentication), patient-read, patient-update."""
    k = kind.strip().lower()
    if k in ("start", "stop"):
        return application_activity(k == "start", app=app, launcher=user, outcome=outcome)
    if k in ("login", "logout"):
        return user_authentication(k == "login", user=user or os.environ.get("USER", "unknown"), node=app,
                                   outcome=outcome)
    if k == "alert":
        return security_alert(NODE_AUTHENTICATION, reporter=app, subject=user or local_host(),
                              description=description or "security alert", outcome=outcome or MINOR_FAILURE)
    if k in ("patient-read", "patient-update"):
        return patient_record("R" if k == "patient-read" else "U", patients=list(patients) or ["unknown"],
                              user=user or app, outcome=outcome)
    raise ValueError(f"unknown event {kind!r} (one of {', '.join(SIMPLE_KINDS)})")
