"""Sending key objects: C-STORE to a node, or straight into the local archive."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset

from ihecli.errors import ArchiveError, DimseFailure, IheError
from ihecli.kos.document import encode


def send_documents(node, docs: Sequence[Dataset], *, calling_aet: str = "IHE", timeout: float = 30,
                   tls=None) -> int:
    """C-STORE the documents over one association (audited by the client as DICOM Instances
    Transferred), over TLS with a ``tls`` client context; raises DimseFailure when one is refused."""
    from ihecli.dicom import scu

    with tempfile.TemporaryDirectory(prefix="ihe-kos-") as d:
        paths = []
        for ds in docs:
            p = Path(d) / f"{ds.SOPInstanceUID}.dcm"
            p.write_bytes(encode(ds))
            paths.append(p)
        rep = scu.store(node, paths, calling_aet=calling_aet, timeout=timeout, tls=tls)
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

