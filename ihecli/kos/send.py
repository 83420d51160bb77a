"""Sending key objects: C-STORE to a node, or straight into the local archive."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset

from ihecli.errors import ArchiveError, DimseFailure, IheError
from ihecli.kos.document import encode


def send_documents(node, docs: Sequence[Dataset], *, calling_aet: str = "IHE", timeout: float = 30) -> int:
    """C-STORE the documents over one association; raises DimseFailure when one is refused."""
    from ihecli.dicom import scu

    with tempfile.TemporaryDirectory(prefix="ihe-kos-") as d:
        paths = []
        for ds in docs:
            p = Path(d) / f"{ds.SOPInstanceUID}.dcm"
            p.write_bytes(encode(ds))
            paths.append(p)
        rep = scu.store(node, paths, calling_aet=calling_aet, timeout=timeout)
    _audit(node, docs, calling_aet, ok=not rep.failed)
    if rep.failed:
        f = rep.failed[0]
        raise DimseFailure(f"{node} did not store the key object ({f.reason})"
                           + (f"; {rep.sent} of {len(docs)} stored" if rep.sent else ""), f.status)
    return rep.sent


def store_documents(archive, docs: Sequence[Dataset]) -> int:
    """Store the documents in the local archive (as a C-STORE to it would)."""
    n = 0
    for ds in docs:
        try:
            archive.store(encode(ds))
        except ArchiveError as e:
            raise IheError(f"the archive refused the key object {ds.SOPInstanceUID}: {e}") from None
        n += 1
    return n


def _audit(node, docs: Sequence[Dataset], calling_aet: str, *, ok: bool) -> None:
    """DICOM Instances Transferred, as the sender reports it (PS3.15 A.5.3.4)."""
    from ihecli import atna
    from ihecli.atna import events as ev

    if not atna.enabled():
        return
    studies: dict[str, dict] = {}
    for ds in docs:
        entry = studies.setdefault(str(ds.StudyInstanceUID), {"sop_classes": {}, "accessions": []})
        entry["sop_classes"][str(ds.SOPClassUID)] = entry["sop_classes"].get(str(ds.SOPClassUID), 0) + 1
        if ds.get("AccessionNumber"):
            entry["accessions"].append(str(ds.AccessionNumber))
    atna.record(ev.instances_transferred(
        source=ev.Peer.local(calling_aet), destination=ev.Peer(node.aet, node.host), studies=studies,
        patients=[str(ds.get("PatientID", "") or "") for ds in docs], action="R", requestor="source",
        outcome=ev.SUCCESS if ok else ev.MINOR_FAILURE))
