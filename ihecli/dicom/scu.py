"""DICOM client operations (SCU): C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET against any node.

What DCMTK's echoscu/storescu/findscu/movescu/getscu do, as functions that return plain
results: the CLI prints them, scripts call them.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ihecli import atna
from ihecli.archive import iter_files, looks_like_dicom
from ihecli.archive.ingest import ensure_part10, valid_uid
from ihecli.archive.scan import is_dicomdir
from ihecli.archive.store import safe_name
from ihecli.atna import events as ev
from ihecli.atna.dicom import Tally, header_keys
from ihecli.atna.dicom import outcome as audit_outcome
from ihecli.config import Node
from ihecli.errors import DimseFailure, PeerUnreachable, UsageError
from ihecli.files import write_whole
from ihecli.net import dimse

MODELS = {
    ("study", "find"): StudyRootQueryRetrieveInformationModelFind,
    ("patient", "find"): PatientRootQueryRetrieveInformationModelFind,
    ("study", "move"): StudyRootQueryRetrieveInformationModelMove,
    ("patient", "move"): PatientRootQueryRetrieveInformationModelMove,
    ("study", "get"): StudyRootQueryRetrieveInformationModelGet,
    ("patient", "get"): PatientRootQueryRetrieveInformationModelGet,
}


def _model(root: str, op: str):
    try:
        return MODELS[(root, op)]
    except KeyError:
        raise UsageError(f"unknown information model {root!r} (study or patient)") from None


def _associate(ae, node: Node, op: str, model=None, *, handlers=(), **kw):
    """dimse.associate, saying which operation a peer that takes the association does not offer."""
    return dimse.associate(ae, node, handlers=handlers, op=op, need=model, **kw)


@dataclass
class EchoResult:
    node: str
    status: int
    ms: float


def echo(node: Node, *, calling_aet: str = "IHE", timeout: float = 30, tls=None) -> EchoResult:
    """C-ECHO (Verification)."""
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    ae.add_requested_context(Verification)
    t0 = time.perf_counter()
    assoc = _associate(ae, node, "C-ECHO", Verification, tls=tls)
    try:
        rsp = assoc.send_c_echo()
        if not rsp or "Status" not in rsp:
            raise PeerUnreachable(f"{node} sent no C-ECHO response (timeout or abort)")
        status = int(rsp.Status)
    finally:
        assoc.release()
    ms = (time.perf_counter() - t0) * 1000
    if status != 0:
        raise DimseFailure(f"{node} answered C-ECHO with status 0x{status:04X}", status)
    return EchoResult(str(node), status, round(ms, 1))


@dataclass
class FileFailure:
    path: str
    reason: str
    status: int | None = None


@dataclass
class StoreReport:
    node: str
    sent: int = 0
    warnings: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not DICOM
    dicomdirs: list[str] = field(default_factory=list)  # media directories: not objects, not sent
    bytes: int = 0
    seconds: float = 0.0


LOST = "association lost"  # the reason of every file left unsent when the association ended


def _sop_and_ts(path: Path) -> tuple[str, str] | None:
    try:
        meta = read_file_meta_info(path)
        cls, ts = meta.get("MediaStorageSOPClassUID"), meta.get("TransferSyntaxUID")
        if cls and ts:
            return str(cls), str(ts)
    except Exception:
        pass
    try:
        data = path.read_bytes()
        if not looks_like_dicom(data):
            return None
        data = ensure_part10(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    except Exception:
        return None



def store(node: Node, paths: Iterable[str | os.PathLike], *, calling_aet: str = "IHE", timeout: float = 30,
          progress: Callable[[str, str], None] | None = None, on_plan: Callable[[int], None] | None = None,
          tls=None) -> StoreReport:
    """C-STORE every DICOM file under ``paths`` over one association (DICOMDIRs are counted,
    not sent)."""
    report = StoreReport(str(node))
    files: list[tuple[Path, str, str]] = []
    for f in iter_files(paths):
        if is_dicomdir(f):
            report.dicomdirs.append(str(f))
            continue
        st = _sop_and_ts(f)
        if st is None:
            report.skipped.append(str(f))
            continue
        if is_dicomdir(f, st[0]):
            report.dicomdirs.append(str(f))
            continue
        files.append((f, *st))
    if on_plan:
        on_plan(len(files))
    if not files:
        return report
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    contexts = dimse.storage_contexts((c, t) for _, c, t in files)
    t0 = time.perf_counter()
    assoc = _associate(ae, node, "C-STORE", contexts=contexts, tls=tls)
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    tally = _audit_tally()
    try:
        for i, (path, _cls, _ts) in enumerate(files):
            status = None
            reason = ""
            try:
                rsp = _send_one(assoc, path, _cls, _ts, accepted)
                if rsp and "Status" in rsp:
                    status = int(rsp.Status)
                else:
                    reason = "no response (association aborted or timed out)"
            except (ValueError, AttributeError) as e:
                reason = str(e).split("\n")[0]
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            cat = dimse.status_category(status) if status is not None else "failure"
            if cat == "success":
                report.sent += 1
                report.bytes += path.stat().st_size
            elif cat == "warning":
                report.sent += 1
                report.warnings += 1
            else:
                report.failed.append(FileFailure(str(path), reason or f"status 0x{status:04X}", status))
            if tally is not None and cat in ("success", "warning"):
                tally.add_keys(header_keys(str(path)), _cls)
            if progress:
                progress(str(path), cat)
            if not assoc.is_established or (status is None and _gone(assoc)):
                for rest, _, _ in files[i + 1:]:
                    report.failed.append(FileFailure(str(rest), LOST))
                break
    except BaseException:  # Ctrl-C: abort, as a release would wait on a peer that may be stuck
        if assoc.is_established:
            assoc.abort()
        raise
    finally:
        if assoc.is_established:
            assoc.release()
        if tally is not None:
            # DICOM Instances Transferred (PS3.15 A.5.3.4), as the sender: action Read
            for patients, studies in tally.per_patient():
                atna.record(ev.instances_transferred(
                    source=ev.Peer.local(calling_aet), destination=ev.Peer(node.aet, node.host), studies=studies,
                    patients=patients, action="R", requestor="source",
                    outcome=audit_outcome(report.sent, len(report.failed))))
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _gone(assoc) -> bool:
    """The peer closed the connection or aborted (pynetdicom may not have marked it yet)."""
    try:
        return not assoc.dul.is_alive() or assoc.acse.is_aborted()
    except Exception:
        return True


def _send_one(assoc, path: Path, cls: str, ts: str, accepted: set[tuple[str, str]]):
    """C-STORE one file: its bytes as they are when the peer took its transfer syntax, else
    decoded and re-encoded in one the peer accepted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _has_meta(path):
            if (cls, ts) in accepted:
                return assoc.send_c_store(path)
            ds = pydicom.dcmread(path, force=True)
        else:
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(ensure_part10(path.read_bytes())))
        have = ds.file_meta.get("TransferSyntaxUID")
        if have is not None:
            ds = dimse.native_if_refused(ds, cls, str(have), accepted)
    return assoc.send_c_store(ds)


def _has_meta(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _unknown_keyword(path: str) -> str:
    """'no DICOM keyword X (did you mean Y?)' for the first part of a key path that is neither
    a keyword nor a tag; empty when they all are."""
    import difflib
    import re

    from pydicom.datadict import keyword_dict

    for part in path.split("."):
        name = re.sub(r"\[\d+\]$", "", part)
        if name in keyword_dict or re.fullmatch(r"\(?[0-9A-Fa-f]{4},?[0-9A-Fa-f]{4}\)?", name):
            continue
        close = difflib.get_close_matches(name, keyword_dict, n=1)
        return f"no DICOM keyword {name!r}" + (f" (did you mean {close[0]}?)" if close else "")
    return ""


def find(node: Node, ident: Dataset, *, root: str = "study", calling_aet: str = "IHE", timeout: float = 30,
         limit: int | None = None, tls=None) -> list[Dataset]:
    """C-FIND: every matching identifier (raises DimseFailure on a failure status)."""
    model = _model(root, "find")
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    ae.add_requested_context(model)
    assoc = _associate(ae, node, "C-FIND", model, tls=tls)
    results: list[Dataset] = []
    failed = True
    try:
        for status, identifier in assoc.send_c_find(ident, model):
            if not status or "Status" not in status:
                raise PeerUnreachable(f"{node} stopped answering the C-FIND (timeout or abort)")
            code = int(status.Status)
            cat = dimse.status_category(code)
            if cat == "pending":
                if identifier is not None:
                    results.append(identifier)
                if limit and len(results) >= limit:
                    break
            elif cat in ("success", "cancel"):
                break
            else:
                comment = status.get("ErrorComment", "")
                raise DimseFailure(f"{node} answered C-FIND with status 0x{code:04X}"
                                   + (f": {comment}" if comment else ""), code)
        failed = False
    finally:
        if assoc.is_established:
            assoc.release()
        _audit_query(node, calling_aet, model, ident, failed)
    return results


@dataclass
class RetrieveResult:
    node: str
    status: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # C-GET: files written
    seconds: float = 0.0
    write_error: str = ""  # C-GET: why we refused instances (the first file we could not write)

    @property
    def partial(self) -> bool:
        return self.failed > 0 and self.completed > 0


def _finish(result: RetrieveResult, status_ds, identifier) -> None:
    code = int(status_ds.Status)
    result.status = code
    for attr, key in (("completed", "NumberOfCompletedSuboperations"), ("failed", "NumberOfFailedSuboperations"),
                      ("warning", "NumberOfWarningSuboperations")):
        v = status_ds.get(key)
        if v is not None:
            setattr(result, attr, int(v))
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        v = identifier.FailedSOPInstanceUIDList
        result.failed_uids = [str(x) for x in (v if isinstance(v, (list, pydicom.multival.MultiValue)) else [v]) if x]


def _check(result: RetrieveResult, node: Node, op: str) -> RetrieveResult:
    code = result.status
    cat = dimse.status_category(code)
    if cat == "failure" and not result.completed:
        meaning = {0xA801: "move destination unknown", 0xA701: "out of resources (matches)",
                   0xA702: "out of resources (sub-operations)", 0xA900: "identifier does not match SOP class",
                   0xC000: "unable to process"}.get(code, "")
        raise DimseFailure(f"{node} answered {op} with status 0x{code:04X}" + (f" ({meaning})" if meaning else "")
                           + (f"; {result.failed} sub-operations failed" if result.failed else ""), code)
    return result


def move(node: Node, dest_aet: str, ident: Dataset, *, root: str = "study", calling_aet: str = "IHE",
         timeout: float = 60, progress: Callable[[int, int], None] | None = None, tls=None) -> RetrieveResult:
    """C-MOVE to ``dest_aet`` (which ``node`` must know)."""
    model = _model(root, "move")
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    ae.add_requested_context(model)
    t0 = time.perf_counter()
    assoc = _associate(ae, node, "C-MOVE", model, tls=tls)

    def pending(status) -> None:
        if progress:
            done = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
            left = int(status.get("NumberOfRemainingSuboperations", 0) or 0)
            progress(done, done + left)

    try:
        result = _retrieve(assoc, assoc.send_c_move(ident, dest_aet, model), RetrieveResult(str(node)), node,
                           "C-MOVE", t0, pending)
    except Exception:
        _audit_move(node, calling_aet, dest_aet, ident, 0, 1)
        raise
    _audit_move(node, calling_aet, dest_aet, ident, result.completed, result.failed)
    return result


def _retrieve(assoc, responses, result: RetrieveResult, node: Node, op: str, t0: float,
              pending: Callable | None = None) -> RetrieveResult:
    """Read C-MOVE / C-GET responses to the last one, then release and check the outcome."""
    last = None
    try:
        for status, identifier in responses:
            if not status or "Status" not in status:
                raise PeerUnreachable(f"{node} stopped answering the {op} (timeout or abort)")
            last = (status, identifier)
            if pending and dimse.status_category(int(status.Status)) == "pending":
                pending(status)
    finally:
        if assoc.is_established:
            assoc.release()
    if last is None:
        raise PeerUnreachable(f"{node} sent no {op} response")
    _finish(result, *last)
    result.seconds = round(time.perf_counter() - t0, 3)
    return _check(result, node, op)


def get(node: Node, ident: Dataset, out_dir: str | os.PathLike, *, root: str = "study", calling_aet: str = "IHE",
        timeout: float = 60, progress: Callable[[str], None] | None = None, tls=None) -> RetrieveResult:
    """C-GET: the instances come back on the same association and are written to ``out_dir``."""
    model = _model(root, "get")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is not a folder")
    ae = dimse.client_ae(calling_aet, timeout=timeout)
    ae.add_requested_context(model)
    roles = []
    for cx in StoragePresentationContexts[:127]:
        ae.add_requested_context(cx.abstract_syntax)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    result = RetrieveResult(str(node))
    tally = _audit_tally()

    def on_store(event):
        req = event.request
        uid = str(req.AffectedSOPInstanceUID)
        path = out / f"{safe_name(uid)}.dcm"
        try:
            write_whole(path, event.encoded_dataset(include_meta=True))
        except OSError as e:
            if not result.write_error:
                result.write_error = f"cannot write {path}: {e.strerror or e}"
            return 0xA700
        result.files.append(str(path))
        if tally is not None:
            tally.add_keys(header_keys(str(path)), str(req.AffectedSOPClassUID))
        if progress:
            progress(str(path))
        return 0x0000

    t0 = time.perf_counter()
    assoc = _associate(ae, node, "C-GET", model, ext_neg=roles, handlers=[(evt.EVT_C_STORE, on_store)], tls=tls)
    try:  # made once the peer takes the C-GET: a refusal leaves no empty folder behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        assoc.release()
        raise UsageError(f"cannot create the folder {out}: {e.strerror or e}") from None
    try:
        return _retrieve(assoc, assoc.send_c_get(ident, model), result, node, "C-GET", t0)
    except DimseFailure as e:
        if result.write_error:  # we refused them: say why
            raise DimseFailure(f"{e}: {result.write_error}", e.status) from None
        raise
    finally:
        if tally is not None:
            # DICOM Instances Transferred, as the receiver: action Create
            for patients, studies in tally.per_patient():
                atna.record(ev.instances_transferred(
                    source=ev.Peer(node.aet, node.host), destination=ev.Peer.local(calling_aet), studies=studies,
                    patients=patients, action="C", outcome=audit_outcome(len(result.files), result.failed)))


# -- audit (ITI-20): what the hook records for the operations above --------------------------------

def _audit_tally() -> Tally | None:
    """A tally of the instances moved when a repository is configured (None: no auditing)."""
    return Tally() if atna.enabled() else None


def _audit_query(node: Node, calling_aet: str, model, ident: Dataset, failed: bool) -> None:
    """Query (PS3.15 A.5.3.10), as the C-FIND SCU."""
    if not atna.enabled():
        return
    from pynetdicom.dsutils import encode

    try:
        query = encode(ident, True, True) or b""
    except Exception:
        query = b""
    atna.record(ev.dicom_query(source=ev.Peer.local(calling_aet), destination=ev.Peer(node.aet, node.host),
                               sop_class=str(model), query=query, transfer_syntax="1.2.840.10008.1.2",
                               outcome=ev.SERIOUS_FAILURE if failed else ev.SUCCESS))


def _audit_move(node: Node, calling_aet: str, dest_aet: str, ident: Dataset, done: int, failed: int) -> None:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.3), asked of ``node`` for ``dest_aet``."""
    if not atna.enabled():
        return
    tally = Tally()
    uids = ident.get("StudyInstanceUID", "") or ""
    for uid in (uids if isinstance(uids, (list, pydicom.multival.MultiValue)) else [uids]):
        if uid:
            tally.studies.setdefault(str(uid), {})
    pid = str(ident.get("PatientID", "") or "")
    atna.record(ev.begin_transferring(source=ev.Peer(node.aet, node.host), destination=ev.Peer(dest_aet),
                                      studies=tally.studies, patients=[pid] if pid else [],
                                      outcome=audit_outcome(done, failed), requestor=ev.Peer.local(calling_aet)))


def build_identifier(level: str, keys: list[str] | None, *, defaults: Iterable[str] = ()) -> Dataset:
    """An identifier from ``-k Keyword=Value`` strings (DCMTK findscu syntax; sequences as Seq[0].Key=).

    Values are checked as matching keys (see match_value): a malformed date, time, UID or code
    string is a usage error, and the library's warnings about them stay off the terminal."""
    from pynetdicom.apps.common import ElementPath

    lvl = level.strip().upper()
    if lvl in ("INSTANCE",):
        lvl = "IMAGE"
    if lvl not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        raise UsageError(f"bad level {level!r}: patient, study, series or image")
    ds = Dataset()
    ds.QueryRetrieveLevel = lvl
    for kw in defaults:
        setattr(ds, kw, "")
    for k in keys or []:
        if "=" not in k:
            k = k + "="
        path, value = k.split("=", 1)
        try:
            leaf = ElementPath(path + "=")
            while leaf.child is not None:
                leaf = leaf.child
            vr = leaf.VR
            label = leaf.keyword if leaf.keyword != "Unknown" else path.split(".")[-1]
            value = match_value(label, vr, value)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = ElementPath(f"{path}={value}").update(ds)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"bad key {k!r}: {_unknown_keyword(path) or e}") from None
        complaint = None if vr in CHECKED_VRS else _complaint(caught)
        if complaint:
            raise UsageError(f"bad {label} {value!r}: {complaint}")
    ds.QueryRetrieveLevel = lvl
    return ds


def key_value(label: str, keyword: str, value: str) -> str:
    """``value`` as the matching key ``keyword`` (an option such as --accession), checked and
    normalized as ``-k`` values are; ``label`` names it in the usage error."""
    from pydicom.datadict import dictionary_VR

    vr = dictionary_VR(keyword)
    v = match_value(label, vr, value)
    if v and vr not in CHECKED_VRS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setattr(Dataset(), keyword, v)
        complaint = _complaint(caught)
        if complaint:
            raise UsageError(f"bad {label} {value!r}: {complaint}")
    return v


def _complaint(caught) -> str | None:
    """pydicom's objection to a value (too long, wrong characters), as the end of one line."""
    for w in caught:
        text = str(w.message).split(". Please see")[0].rstrip(".")
        if issubclass(w.category, UserWarning) and ("value" in text.lower()):
            return text[:1].lower() + text[1:]
    return None


# -- matching key values (PS3.4 C.2.2.2): checked before they leave, as a one-line usage error ------

CHECKED_VRS = ("DA", "TM", "DT", "UI", "CS")
_TM = re.compile(r"([01][0-9]|2[0-3])(([0-5][0-9])(([0-5][0-9]|60)(\.[0-9]{1,6})?)?)?")
_DT = re.compile(r"([0-9]{4})(([0-9]{2})(([0-9]{2})(([0-9]{2})(([0-9]{2})(([0-9]{2})(\.[0-9]{1,6})?)?)?)?)?)?"
                 r"([+-][0-9]{4})?")
_CS = re.compile(r"[A-Z0-9 _*?]*")


def _da(v: str) -> bool:
    try:
        datetime.strptime(v, "%Y%m%d")
    except ValueError:
        return False
    return len(v) == 8 and v.isdigit()


def _dt(v: str) -> bool:
    m = _DT.fullmatch(v)
    if not m:
        return False
    month, day = m.group(3), m.group(5)
    if month and not 1 <= int(month) <= 12:
        return False
    if day and not _da(m.group(1) + month + day):
        return False
    return not (m.group(7) and int(m.group(7)) > 23) and not (m.group(9) and int(m.group(9)) > 59)


_SINGLE = {"DA": _da, "TM": lambda v: bool(_TM.fullmatch(v)), "DT": _dt}
_WHAT = {"DA": "a date YYYYMMDD or a range (20240101-20241231, 20240101-, -20241231)",
         "TM": "a time HHMMSS or a range (0800-1700)",
         "DT": "a date and time YYYYMMDDHHMMSS or a range"}


def _in_range_syntax(v: str, vr: str) -> bool:
    one = _SINGLE[vr]
    if one(v):
        return True
    for i, c in enumerate(v):  # a range: one '-' with a bound on at least one side (DT offsets hold '-' too)
        if c == "-":
            low, high = v[:i], v[i + 1:]
            if (low or high) and (not low or one(low)) and (not high or one(high)):
                return True
    return False


def match_value(keyword: str, vr: str, value: str) -> str:
    """``value`` as a matching key of ``vr`` (empty: universal match), or a UsageError naming what is
    wrong. Dates, times and date-times take a single value or a range; UIDs a single UID or a list
    (backslash-separated), no wildcards; code strings (CS: Modality, ...) are upper case, as their
    character repertoire is, so ``ct`` is sent as ``CT`` and can match."""
    v = value.strip() if vr in ("DA", "TM", "DT", "UI", "CS") else value
    if not v:
        return v
    if vr in _SINGLE:
        if not _in_range_syntax(v, vr):
            raise UsageError(f"bad {keyword} {value!r}: {_WHAT[vr]}")
    elif vr == "UI":
        for uid in v.split("\\"):
            if not valid_uid(uid):  # leading zeros (wrong, PS3.5 9.1, but on real media) pass: still retrievable
                raise UsageError(f"bad {keyword} {value!r}: not a UID (digits and dots, e.g. 1.2.840.10008.1.1; "
                                 "several separated by backslashes; no wildcards)")
    elif vr == "CS":
        v = v.upper()
        for code in v.split("\\"):
            if len(code) > 16 or not _CS.fullmatch(code):
                raise UsageError(f"bad {keyword} {value!r}: a code string (letters, digits, space and _, at most "
                                 "16; wildcards * ?)")
    return v


LEVEL_DEFAULTS = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    "STUDY": ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
              "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
