"""Instance Availability Notification (RAD-49; DICOM PS3.4 R), the archive as SCU.

Option "Availability of PPS-Referenced Instances" (IHE RAD TF-1 SWF): once a step is COMPLETED
and every instance it references is stored, an IAN N-CREATE goes to each subscriber, one per
study, through the outbox (so it survives restarts and is retried). Steps wait here until their
instances arrive; ``notify_ready`` is run by the outbox runner at each turn.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from ihecli.archive import schema as s
from ihecli.archive.tables_workflow import mpps, mpps_refs
from ihecli.workflow import queue
from ihecli.workflow.mpps import MPPS_SOP_CLASS, pack

log = logging.getLogger("ihe.workflow")

IAN_SOP_CLASS = "1.2.840.10008.5.1.4.33"


def availability_notification(mpps_uid: str, study_uid: str, series: "OrderedDict[str, list[tuple[str, str]]]",
                              retrieve_aet: str) -> Dataset:
    """The IAN for one study (PS3.3 C.4.23): the step, then every series with its instances ONLINE."""
    ds = Dataset()
    pps = Dataset()
    pps.ReferencedSOPClassUID = MPPS_SOP_CLASS
    pps.ReferencedSOPInstanceUID = mpps_uid
    pps.PerformedWorkitemCodeSequence = []
    ds.ReferencedPerformedProcedureStepSequence = [pps]
    ds.StudyInstanceUID = study_uid
    items = []
    for series_uid, instances in series.items():
        se = Dataset()
        se.SeriesInstanceUID = series_uid
        refs = []
        for sop_class, sop_uid in instances:
            r = Dataset()
            r.ReferencedSOPClassUID = sop_class
            r.ReferencedSOPInstanceUID = sop_uid
            r.InstanceAvailability = "ONLINE"
            r.RetrieveAETitle = retrieve_aet
            refs.append(r)
        se.ReferencedSOPSequence = refs
        items.append(se)
    ds.ReferencedSeriesSequence = items
    return ds


def notify_ready(engine, subscribers: list[str], retrieve_aet: str) -> int:
    """Queue an IAN for each completed step whose instances are all stored. Returns how many steps."""
    if not subscribers:
        return 0
    with engine.connect() as conn:
        waiting = list(conn.execute(select(mpps.c.sop_uid).where(mpps.c.ian == "waiting")).scalars())
    done = 0
    for uid in waiting:
        i, se, st = s.instances, s.series, s.studies
        with engine.connect() as conn:
            wanted = conn.execute(select(mpps_refs.c.sop_uid).where(mpps_refs.c.mpps_uid == uid)).scalars().all()
            rows = conn.execute(
                select(i.c.sop_uid, i.c.sop_class, se.c.series_uid, st.c.study_uid)
                .select_from(mpps_refs.join(i, i.c.sop_uid == mpps_refs.c.sop_uid)
                             .join(se, i.c.series_fk == se.c.id).join(st, se.c.study_fk == st.c.id))
                .where(mpps_refs.c.mpps_uid == uid).order_by(mpps_refs.c.id)).all()
        if len({r.sop_uid for r in rows}) < len(set(wanted)):
            continue  # not all there yet
        studies: OrderedDict[str, OrderedDict[str, list]] = OrderedDict()
        for r in rows:
            studies.setdefault(r.study_uid, OrderedDict()).setdefault(r.series_uid, []).append(
                (r.sop_class, r.sop_uid))
        with engine.begin() as conn:
            claimed = conn.execute(update(mpps).where(mpps.c.sop_uid == uid, mpps.c.ian == "waiting")
                                   .values(ian="queued")).rowcount
            if not claimed:
                continue
            for study_uid, series in studies.items():
                ds = availability_notification(uid, study_uid, series, retrieve_aet)
                ian_uid = generate_uid()  # fixed now: a retried notification is the same instance
                for target in subscribers:
                    queue.enqueue(conn, "ian", target, pack(ian_uid, ds), ref=uid)
        log.info("IAN for step %s queued to %d subscriber%s", uid, len(subscribers), "" if len(subscribers) == 1 else "s")
        done += 1
    return done
