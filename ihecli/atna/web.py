"""Audit events of the DICOMweb services (ITI-20 through ``atna.record``): QIDO-RS (RAD-129) as a
Query, STOW-RS (RAD-108) and WADO-RS (RAD-107) as DICOM Instances Transferred, each event typed
with its transaction. The web layer calls these with what it already has; each is a no-op when
no repository is configured."""
from __future__ import annotations

from typing import Iterable

from ihecli import atna
from ihecli.atna import events as ev
from ihecli.atna.dicom import Tally, by_patient, study_patients
from ihecli.atna.dicom import outcome as audit_outcome

QIDO = ev.iti("RAD-129", "Query based on ID for DICOM Objects")
WADO = ev.iti("RAD-107", "WADO-RS Retrieve")
STOW = ev.iti("RAD-108", "Store Instances over the Web")


def _peer(client: str | None) -> ev.Peer:
    return ev.Peer(user_id=client or "unknown", host=client or "")


def query(client: str | None, service_url: str, level: str, query_string: str) -> None:
    """A QIDO-RS search: the query string is the query."""
    if not atna.enabled():
        return
    e = ev.dicom_query(source=_peer(client), destination=ev.Peer.local(service_url),
                       sop_class=f"QIDO-RS {level}", query=query_string.encode("utf-8"))
    e.types = [QIDO]
    atna.record(e)


def stored(client: str | None, service_url: str, outcomes: Iterable, archive=None) -> None:
    """A STOW-RS request: ``outcomes`` have sop_class, study_uid and failure (None when stored);
    one message per patient of ``archive``'s studies."""
    if not atna.enabled():
        return
    tally, failed = Tally(), 0
    for o in outcomes:
        if getattr(o, "failure", None) is None and getattr(o, "study_uid", ""):
            tally.add(o.study_uid, sop_class=o.sop_class)
        else:
            failed += 1
    for patients, studies in by_patient(tally.studies, study_patients(archive, tally.studies)):
        e = ev.instances_transferred(source=_peer(client), destination=ev.Peer.local(service_url),
                                     studies=studies, patients=patients, action="C", requestor="source",
                                     outcome=audit_outcome(tally.count, failed))
        e.types = [STOW]
        atna.record(e)


def retrieved(client: str | None, service_url: str, refs: Iterable, archive=None) -> None:
    """A WADO-RS retrieve of instances (InstanceRef: study_uid, sop_class); one message per
    patient of ``archive``'s studies."""
    if not atna.enabled():
        return
    tally = Tally()
    for r in refs:
        tally.add(r.study_uid, sop_class=r.sop_class)
    for patients, studies in by_patient(tally.studies, study_patients(archive, tally.studies)):
        e = ev.instances_transferred(source=ev.Peer.local(service_url), destination=_peer(client),
                                     studies=studies, patients=patients, action="R", requestor="destination")
        e.types = [WADO]
        atna.record(e)
