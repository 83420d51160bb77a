"""Performed Procedure Step Manager: Modality Performed Procedure Step SCP (RAD-6 Modality PPS In
Progress, RAD-7 Modality PPS Completed, RAD-20/21 Creator PPS In Progress/Completed; DICOM PS3.4
F.7), and the forwarding of every step to the configured nodes (IHE RAD TF-2 4.6/4.7: the PPS
Manager forwards to the Department System Scheduler, Image Manager and others).

State rules (PS3.4 F.7.2): N-CREATE only with status IN PROGRESS; N-SET moves IN PROGRESS to
COMPLETED or DISCONTINUED; a completed or discontinued step may no longer be updated. Each rule
breach has its DIMSE status: 0x0111 duplicate SOP instance, 0x0112 no such SOP instance, 0x0110
with Error ID 0xA710 for a step that may no longer be updated, 0x0106 invalid attribute value,
0x0105 no such attribute (with the Attribute Identifier List), 0x0120 missing attribute and
0x0121 missing attribute value.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ihecli.archive.index import now
from ihecli.archive.tables_workflow import mpps as mpps_table, mpps_refs
from ihecli.workflow import queue

log = logging.getLogger("ihe.workflow")

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STATES = (IN_PROGRESS, COMPLETED, DISCONTINUED)

# DIMSE statuses (PS3.7 C.5 general failures; PS3.4 F.7.2.2 for 0xA710)
SUCCESS = 0x0000
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID with PROCESSING_FAILURE

# Attributes settable only by N-CREATE (PS3.4 Table F.7.2-1, "N-SET: Not allowed")
_CREATE_ONLY = {
    "ScheduledStepAttributesSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex",
    "ReferencedPatientSequence", "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription", "PerformedProcedureStepID",
    "PerformedStationAETitle", "PerformedStationName", "PerformedLocation", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "Modality", "StudyID", "ProcedureCodeSequence",
}
# Attributes an N-SET may carry (and an N-CREATE too)
_SETTABLE = {
    "SpecificCharacterSet", "PerformedProcedureStepStatus", "PerformedProcedureStepDescription",
    "PerformedProcedureTypeDescription", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "CommentsOnThePerformedProcedureStep", "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    "PerformedProtocolCodeSequence", "PerformedSeriesSequence", "ProcedureCodeSequence",
    # Radiation Dose module
    "AnatomicStructureSpaceOrRegionSequence", "TotalTimeOfFluoroscopy", "TotalNumberOfExposures",
    "DistanceSourceToDetector", "DistanceSourceToEntrance", "EntranceDose", "EntranceDoseInmGy",
    "ExposedArea", "ImageAndFluoroscopyAreaDoseProduct", "CommentsOnRadiationDose", "ExposureDoseSequence",
    "OrganDose", "OrganExposed",
    # Billing and Material Management module
    "BillingProcedureStepSequence", "FilmConsumptionSequence", "BillingSuppliesAndDevicesSequence",
}
_SETTABLE_NOT_CREATE_ONLY = _SETTABLE - {"ProcedureCodeSequence"}
_CREATE_ALLOWED = _CREATE_ONLY | _SETTABLE
# Type 1 in N-CREATE (PS3.4 Table F.7.2-1)
_CREATE_TYPE1 = ("PerformedProcedureStepID", "PerformedStationAETitle", "PerformedProcedureStepStartDate",
                 "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality",
                 "ScheduledStepAttributesSequence")
# Required with a value once the step is COMPLETED or DISCONTINUED (PS3.4 F.7.2.2.2 final state)
_FINAL_TYPE1 = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "PerformedSeriesSequence")


@dataclass
class Outcome:
    """The reply to one N-CREATE / N-SET: status, optional Error ID / comment / attribute list."""

    status: int
    comment: str = ""
    error_id: int | None = None
    attributes: list[int] = field(default_factory=list)
    sop_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def status_dataset(self, *, with_list: bool = True) -> Dataset:
        """The response's status elements. An N-CREATE response has no Attribute Identifier List
        (PS3.7 10.1.5.1.6): its tags go in the Error Comment, e.g. (0008,0060)."""
        ds = Dataset()
        ds.Status = self.status
        comment = self.comment
        if self.attributes and not with_list:
            comment = " ".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in self.attributes) + " " + comment
        if comment:
            ds.ErrorComment = comment[:64]
        if self.error_id is not None:
            ds.ErrorID = self.error_id
        if self.attributes and with_list:
            ds.AttributeIdentifierList = [Tag(t) for t in self.attributes]
        return ds


@dataclass
class Step:
    """One stored Performed Procedure Step (for listings)."""

    sop_uid: str
    status: str
    patient_id: str | None
    patient_name: str | None
    study_uid: str | None
    accession: str | None
    modality: str | None
    pps_id: str | None
    description: str | None
    started: str | None
    ended: str | None
    calling_aet: str | None
    created: object
    updated: object
    ian: str
    forwarded: str = ""


def encode(ds: Dataset) -> bytes:
    """A dataset as Explicit VR Little Endian bytes (no file meta)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp = pydicom.filebase.DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydicom.filereader import read_dataset

        return read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)


def _str(ds: Dataset, kw: str) -> str:
    try:
        v = ds.get(kw)
    except Exception:
        return ""
    if v is None:
        return ""
    return str(v).strip()


def _unknown(ds: Dataset, allowed: set[str]) -> list[int]:
    """Tags of standard attributes outside ``allowed`` (private attributes are kept, not refused)."""
    bad = []
    for elem in ds:
        tag = elem.tag
        if tag.is_private or tag.group in (0x0000, 0x0002):
            continue
        if elem.keyword not in allowed:
            bad.append(int(tag))
    return bad


def _missing_final(ds: Dataset) -> list[int]:
    out = []
    for kw in _FINAL_TYPE1:
        if kw not in ds:
            out.append(pydicom.datadict.tag_for_keyword(kw))
        elif kw == "PerformedSeriesSequence":
            if not ds.PerformedSeriesSequence:
                out.append(pydicom.datadict.tag_for_keyword(kw))
        elif not _str(ds, kw):
            out.append(pydicom.datadict.tag_for_keyword(kw))
    return out


def _columns(ds: Dataset) -> dict:
    ssa = ds.get("ScheduledStepAttributesSequence") or []
    first = ssa[0] if len(ssa) else Dataset()
    start = (_str(ds, "PerformedProcedureStepStartDate") + _str(ds, "PerformedProcedureStepStartTime")) or None
    end = (_str(ds, "PerformedProcedureStepEndDate") + _str(ds, "PerformedProcedureStepEndTime")) or None
    return {
        "status": _str(ds, "PerformedProcedureStepStatus"),
        "patient_id": _str(ds, "PatientID") or None,
        "patient_name": _str(ds, "PatientName") or None,
        "study_uid": _str(first, "StudyInstanceUID")[:64] or None,
        "accession": _str(first, "AccessionNumber") or None,
        "modality": _str(ds, "Modality") or None,
        "pps_id": _str(ds, "PerformedProcedureStepID") or None,
        "description": _str(ds, "PerformedProcedureStepDescription") or None,
        "started": start,
        "ended": end,
    }


def referenced_instances(ds: Dataset) -> list[tuple[str, str, str]]:
    """(series UID, SOP Class UID, SOP Instance UID) of every instance a step references."""
    out = []
    for series in ds.get("PerformedSeriesSequence") or []:
        se = _str(series, "SeriesInstanceUID")
        for kw in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(kw) or []:
                sop = _str(ref, "ReferencedSOPInstanceUID")
                if sop:
                    out.append((se, _str(ref, "ReferencedSOPClassUID"), sop))
    return out


def pack(sop_uid: str, ds: Dataset) -> bytes:
    """An outbox payload: the SOP Instance UID, NUL, the dataset."""
    return sop_uid.encode("ascii") + b"\x00" + encode(ds)


def unpack(payload: bytes) -> tuple[str, Dataset]:
    uid, _, body = payload.partition(b"\x00")
    return uid.decode("ascii"), decode(body)


class PpsManager:
    """MPPS N-CREATE / N-SET over the index, forwarding to ``forward`` (targets as AET@host:port).

    ``on_final(sop_uid)`` is called after a step becomes COMPLETED (IAN looks at it)."""

    def __init__(self, engine, *, forward: list[str] | None = None, ian_wanted: bool = False, wake=None):
        self.engine = engine
        self.forward = list(forward or [])
        self.ian_wanted = ian_wanted
        self.wake = wake or (lambda: None)

    def create(self, sop_uid: str | None, ds: Dataset, calling_aet: str = "") -> Outcome:
        """N-CREATE (RAD-6, RAD-20): a new step, IN PROGRESS."""
        from pydicom.uid import generate_uid

        bad = _unknown(ds, _CREATE_ALLOWED)
        if bad:
            return Outcome(NO_SUCH_ATTRIBUTE, "attributes not in the MPPS N-CREATE", attributes=bad)
        missing = [pydicom.datadict.tag_for_keyword(k) for k in _CREATE_TYPE1 if k not in ds]
        if missing:
            return Outcome(MISSING_ATTRIBUTE, "type 1 attributes missing", attributes=missing)
        empty = [pydicom.datadict.tag_for_keyword(k) for k in _CREATE_TYPE1
                 if k != "ScheduledStepAttributesSequence" and not _str(ds, k)]
        if not ds.ScheduledStepAttributesSequence:
            empty.append(pydicom.datadict.tag_for_keyword("ScheduledStepAttributesSequence"))
        else:
            for item in ds.ScheduledStepAttributesSequence:
                if not _str(item, "StudyInstanceUID"):
                    empty.append(pydicom.datadict.tag_for_keyword("StudyInstanceUID"))
                    break
        if empty:
            return Outcome(MISSING_ATTRIBUTE_VALUE, "type 1 attributes without a value", attributes=empty)
        status = _str(ds, "PerformedProcedureStepStatus")
        if status != IN_PROGRESS:
            return Outcome(INVALID_ATTRIBUTE_VALUE, f"N-CREATE status must be IN PROGRESS, not {status[:30]}",
                           attributes=[0x00400252])
        sop_uid = sop_uid or generate_uid()
        t = now()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(mpps_table).values(sop_uid=sop_uid, calling_aet=calling_aet, created=t,
                                                       updated=t, ian="none", attrs=encode(ds), **_columns(ds)))
                for target in self.forward:
                    queue.enqueue(conn, "mpps-create", target, pack(sop_uid, ds), ref=sop_uid)
        except IntegrityError:
            return Outcome(DUPLICATE_INSTANCE, "a step with this SOP Instance UID exists", sop_uid=sop_uid)
        if self.forward:
            self.wake()
        return Outcome(SUCCESS, sop_uid=sop_uid)

    def set(self, sop_uid: str, mods: Dataset) -> Outcome:
        """N-SET (RAD-7, RAD-21): update a step IN PROGRESS; COMPLETED and DISCONTINUED are final."""
        bad = [t for t in _unknown(mods, _CREATE_ALLOWED | _SETTABLE)]
        not_settable = [int(e.tag) for e in mods if not e.tag.is_private and e.keyword in _CREATE_ONLY
                        and e.keyword not in _SETTABLE]
        if bad or not_settable:
            return Outcome(NO_SUCH_ATTRIBUTE, "attributes an N-SET may not carry", attributes=bad + not_settable)
        new_status = _str(mods, "PerformedProcedureStepStatus") if "PerformedProcedureStepStatus" in mods else None
        if new_status is not None and new_status not in STATES:
            return Outcome(INVALID_ATTRIBUTE_VALUE, f"no such step status {new_status[:30]}",
                           attributes=[0x00400252])
        for _attempt in range(20):
            with self.engine.connect() as conn:
                row = conn.execute(select(mpps_table.c.status, mpps_table.c.attrs, mpps_table.c.updated)
                                   .where(mpps_table.c.sop_uid == sop_uid)).first()
            if row is None:
                return Outcome(NO_SUCH_INSTANCE, "no such Performed Procedure Step", sop_uid=sop_uid)
            if row.status != IN_PROGRESS:
                return Outcome(PROCESSING_FAILURE, f"step is {row.status}: it may no longer be updated",
                               error_id=MAY_NO_LONGER_BE_UPDATED, sop_uid=sop_uid)
            merged = decode(row.attrs)
            for elem in mods:
                if elem.tag.group in (0x0000, 0x0002):
                    continue
                merged[elem.tag] = elem
            final = _str(merged, "PerformedProcedureStepStatus")
            if final in (COMPLETED, DISCONTINUED):
                missing = _missing_final(merged)
                if missing:
                    return Outcome(MISSING_ATTRIBUTE_VALUE, f"{final} needs end date, end time and performed "
                                   "series", attributes=missing, sop_uid=sop_uid)
            refs = referenced_instances(merged) if final == COMPLETED else []
            ian = "waiting" if refs and self.ian_wanted else "none"
            t = now()
            with self.engine.begin() as conn:
                done = conn.execute(update(mpps_table).where(
                    mpps_table.c.sop_uid == sop_uid, mpps_table.c.status == IN_PROGRESS,
                    mpps_table.c.updated == row.updated).values(
                    attrs=encode(merged), updated=t, ian=ian, **_columns(merged))).rowcount
                if not done:
                    continue  # changed meanwhile: look again
                if refs:
                    conn.execute(insert(mpps_refs), [{"mpps_uid": sop_uid, "series_uid": se[:64],
                                                      "sop_class": cls[:64], "sop_uid": sop[:64]}
                                                     for se, cls, sop in refs])
                for target in self.forward:
                    queue.enqueue(conn, "mpps-set", target, pack(sop_uid, mods), ref=sop_uid)
            if self.forward or ian == "waiting":
                self.wake()
            return Outcome(SUCCESS, sop_uid=sop_uid)
        return Outcome(PROCESSING_FAILURE, "step busy: try again", sop_uid=sop_uid)


def audit_event(action: str, step: Dataset | None, sop_uid: str, *, source, destination, requestor: str = "source",
                status: int = SUCCESS, comment: str = ""):
    """The Procedure Record audit event (ITI-20) of an MPPS N-CREATE (``action`` C) or N-SET (U):
    the patient and studies come from ``step`` (the step's attributes as stored, or as sent);
    ``source`` and ``destination`` are the SCU and SCP (ihecli.atna.events.Peer); a failure status
    makes a minor failure naming it."""
    from ihecli.atna import events as ev
    from ihecli.net.dimse import status_category

    ds = step if step is not None else Dataset()
    studies: dict[str, list[str]] = {}
    try:
        for item in ds.get("ScheduledStepAttributesSequence") or []:
            studies.setdefault(_str(item, "StudyInstanceUID"), []).append(_str(item, "AccessionNumber"))
    except Exception:  # an unreadable sequence in a refused request: the event still says what happened
        studies = {}
    failed = status_category(status) == "failure"
    desc = f"status 0x{status:04X}" + (f": {comment}" if comment else "") if failed else ""
    return ev.procedure_record(action, source=source, destination=destination, patient_id=_str(ds, "PatientID"),
                               patient_name=_str(ds, "PatientName"), studies=studies, mpps_uid=sop_uid,
                               requestor=requestor, outcome=ev.MINOR_FAILURE if failed else ev.SUCCESS,
                               description=desc)


def list_steps(engine, *, status: str | None = None, patient: str | None = None,
               limit: int | None = None) -> list[Step]:
    """Stored steps, newest first, each with its forwarding state ("2/2 sent")."""
    from ihecli.archive.tables_workflow import outbox

    q = select(*(c for c in mpps_table.c if c.name not in ("id", "attrs"))).order_by(mpps_table.c.id.desc())
    if status:
        q = q.where(mpps_table.c.status == status.upper())
    if patient:
        if "*" in patient or "?" in patient:
            like = patient.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(mpps_table.c.patient_id.like(like.replace("*", "%").replace("?", "_"), escape="\\"))
        else:
            q = q.where(mpps_table.c.patient_id == patient)
    if limit:
        q = q.limit(limit)
    with engine.connect() as conn:
        steps = [Step(**dict(r._mapping)) for r in conn.execute(q)]
        for st in steps:
            rows = conn.execute(select(outbox.c.state).where(outbox.c.ref == st.sop_uid,
                                                             outbox.c.kind.in_(("mpps-create", "mpps-set")))).all()
            if rows:
                st.forwarded = f"{sum(1 for r in rows if r.state == 'done')}/{len(rows)} sent"
    return steps


def get_step(engine, sop_uid: str) -> Dataset | None:
    with engine.connect() as conn:
        blob = conn.execute(select(mpps_table.c.attrs).where(mpps_table.c.sop_uid == sop_uid)).scalar()
    return decode(blob) if blob is not None else None


# -- SCU (a modality or evidence creator: RAD-6/7/20/21 outbound) ---------------------------------
def send_create(node, sop_uid: str, ds: Dataset, *, calling_aet: str = "IHE", timeout: float = 30, tls=None) -> str:
    """MPPS N-CREATE to a node (the SCU names the step, as IHE RAD TF-2 4.6 asks); ``tls``: a
    client context when the node asks for TLS."""
    return _send(node, "create", sop_uid, ds, calling_aet=calling_aet, timeout=timeout, tls=tls)


def send_set(node, sop_uid: str, mods: Dataset, *, calling_aet: str = "IHE", timeout: float = 30, tls=None,
             about: Dataset | None = None) -> str:
    """MPPS N-SET to a node. ``about``: the step's patient and studies (as performed_series
    gathers them) for the audit record; an N-SET carries neither."""
    return _send(node, "set", sop_uid, mods, calling_aet=calling_aet, timeout=timeout, tls=tls, about=about)


def _send(node, op: str, sop_uid: str, ds: Dataset, *, calling_aet: str, timeout: float, tls=None,
          about: Dataset | None = None) -> str:
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    from ihecli.errors import DimseFailure, PeerUnreachable
    from ihecli.net import dimse

    subject = about if about is not None else ds  # what the audit record names
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    try:
        assoc = dimse.associate(ae, node, tls=tls, op="MPPS", need=ModalityPerformedProcedureStep)
    except PeerUnreachable as e:
        _audit_sent(op, subject, sop_uid, node, calling_aet, PROCESSING_FAILURE, str(e))
        raise
    try:
        if op == "create":
            status, _attrs = assoc.send_n_create(ds, ModalityPerformedProcedureStep, sop_uid)
        else:
            status, _attrs = assoc.send_n_set(ds, ModalityPerformedProcedureStep, sop_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        _audit_sent(op, subject, sop_uid, node, calling_aet, PROCESSING_FAILURE, "no response")
        raise PeerUnreachable(f"{node} sent no N-{op.upper()} response (timeout or abort)")
    code = int(status.Status)
    _audit_sent(op, subject, sop_uid, node, calling_aet, code, str(status.get("ErrorComment", "") or ""))
    if code != 0 and dimse.status_category(code) == "failure":
        extra = []
        if "ErrorComment" in status:
            extra.append(str(status.ErrorComment))
        if "ErrorID" in status:
            extra.append(f"Error ID 0x{int(status.ErrorID):04X}")
        if "AttributeIdentifierList" in status:
            tags = status.AttributeIdentifierList
            tags = tags if isinstance(tags, (list, tuple)) or type(tags).__name__ == "MultiValue" else [tags]
            extra.append("attributes " + ", ".join(f"({Tag(t).group:04X},{Tag(t).element:04X})" for t in tags))
        raise DimseFailure(f"{node} refused the N-{op.upper()}: status 0x{code:04X}"
                           + (f" ({'; '.join(extra)})" if extra else ""), code)
    return sop_uid


def _audit_sent(op: str, ds: Dataset, sop_uid: str, node, calling_aet: str, status: int, comment: str) -> None:
    """Procedure Record (ITI-20) of an N-CREATE or N-SET we sent, when a repository is configured."""
    from ihecli import atna

    if not atna.enabled():
        return
    from ihecli.atna.events import Peer

    atna.record(audit_event("C" if op == "create" else "U", ds, sop_uid, source=Peer.local(calling_aet),
                            destination=Peer(node.aet, node.host), status=status, comment=comment))


def dataset_from_json(text: str) -> Dataset:
    """A dataset from JSON: the DICOM JSON model (PS3.18 F.2, {"00100020": {"vr": "LO", ...}}) or
    plain keywords ({"PatientID": "P1", "PerformedSeriesSequence": [{...}]})."""
    import json

    from ihecli.errors import UsageError

    try:
        obj = json.loads(text)
    except ValueError as e:
        raise UsageError(f"bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise UsageError("the JSON must be an object of attributes")
    if obj and all(isinstance(k, str) and len(k) == 8 and all(c in "0123456789abcdefABCDEF" for c in k)
                   for k in obj):
        try:
            return Dataset.from_json(obj)
        except Exception as e:
            raise UsageError(f"bad DICOM JSON: {e}") from None
    return _from_keywords(obj)


def _from_keywords(obj: dict) -> Dataset:
    from ihecli.errors import UsageError

    ds = Dataset()
    for k, v in obj.items():
        if pydicom.datadict.tag_for_keyword(k) is None:
            raise UsageError(f"unknown attribute keyword {k!r} in the JSON")
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            setattr(ds, k, [_from_keywords(x) for x in v])
        elif isinstance(v, list) and not v and pydicom.datadict.dictionary_VR(k) == "SQ":
            setattr(ds, k, [])
        else:
            try:
                setattr(ds, k, v)
            except Exception as e:
                raise UsageError(f"bad value for {k}: {e}") from None
    return ds


def performed_series(paths, about: Dataset | None = None) -> list[Dataset]:
    """Performed Series Sequence items for the DICOM files under paths (one item per series).
    ``about``, when given, gets the files' patient (PatientID, PatientName) and their studies
    (ScheduledStepAttributesSequence: StudyInstanceUID, AccessionNumber), as a step names them."""
    import warnings as _w

    from ihecli.archive import iter_files

    series: dict[str, Dataset] = {}
    for p in iter_files(paths):
        try:
            with _w.catch_warnings():
                _w.simplefilter("ignore")
                f = pydicom.dcmread(p, stop_before_pixels=True)
            se_uid = str(f.SeriesInstanceUID)
        except Exception:
            continue
        item = series.get(se_uid)
        if item is None:
            item = Dataset()
            item.SeriesInstanceUID = se_uid
            item.SeriesDescription = f.get("SeriesDescription", "")
            item.PerformingPhysicianName = ""
            item.OperatorsName = ""
            item.ProtocolName = f.get("ProtocolName", "") or "UNKNOWN"
            item.RetrieveAETitle = ""
            item.ReferencedImageSequence = []
            item.ReferencedNonImageCompositeSOPInstanceSequence = []
            series[se_uid] = item
        if about is not None:
            _note_study(about, f)
        ref = Dataset()
        ref.ReferencedSOPClassUID = str(f.SOPClassUID)
        ref.ReferencedSOPInstanceUID = str(f.SOPInstanceUID)
        if "Rows" in f:
            item.ReferencedImageSequence.append(ref)
        else:
            item.ReferencedNonImageCompositeSOPInstanceSequence.append(ref)
    return list(series.values())


def _note_study(about: Dataset, f: Dataset) -> None:
    if "PatientID" not in about:
        about.PatientID = _str(f, "PatientID")
        about.PatientName = _str(f, "PatientName")
    study = _str(f, "StudyInstanceUID")
    if "ScheduledStepAttributesSequence" not in about:
        about.ScheduledStepAttributesSequence = []
    items = about.ScheduledStepAttributesSequence
    if study and not any(str(x.StudyInstanceUID) == study for x in items):
        item = Dataset()
        item.StudyInstanceUID = study
        item.AccessionNumber = _str(f, "AccessionNumber")
        items.append(item)
