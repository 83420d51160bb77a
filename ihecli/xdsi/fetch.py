"""The images of a manifest fetched without RAD-69: WADO-URI (RAD-55) from the source's web
server, or DICOM C-GET from the node its Retrieve AE Title names (the XDS-I.b Imaging Document
Consumer's other ways to the pixels, RAD TF-2 4.16 and 4.55).

Both give what ``rad69.retrieve_imaging_document_set`` gives: the images as RetrievedDocuments
(document uniqueId = SOP Instance UID) and, for each image that did not come, an error with its
SOP Instance UID as location.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ihecli.errors import PeerUnreachable
from ihecli.xds.messages import RegistryError, RetrievedDocument
from ihecli.xdsi.rad69 import ImageRequest

DICOM = "application/dicom"
MISSING = "XDSDocumentUniqueIdError"  # as RAD-69 names an image the source does not have


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def by_wado(base_url: str, images: list[ImageRequest], *, transfer_syntax: str | None = None, timeout: float = 30,
            tls_config=None) -> tuple[list[RetrievedDocument], list[RegistryError]]:
    """WADO-URI (RAD-55): one GET per image, contentType application/dicom."""
    import requests

    from ihecli.net.soap.client import shared_session

    session = shared_session(tls_config if base_url.startswith("https://") else None)
    docs: list[RetrievedDocument] = []
    errors: list[RegistryError] = []
    for img in images:
        params = {"requestType": "WADO", "studyUID": img.study_uid, "seriesUID": img.series_uid,
                  "objectUID": img.sop_uid, "contentType": DICOM}
        if transfer_syntax:
            params["transferSyntax"] = transfer_syntax
        try:
            r = session.get(base_url, params=params, timeout=timeout)
        except requests.exceptions.RequestException as e:
            raise PeerUnreachable(f"cannot reach {base_url}: {e.__context__ or e}") from None
        if r.status_code == 200 and _is_dicom(r.content):
            docs.append(RetrievedDocument(img.repository_uid, img.sop_uid, DICOM, r.content, img.home))
        elif r.status_code == 200:
            errors.append(RegistryError(MISSING, f"WADO-URI answered {r.headers.get('Content-Type', '?')}, "
                                                 "not a DICOM object", img.sop_uid))
        else:
            errors.append(RegistryError(MISSING, f"WADO-URI answered HTTP {r.status_code}", img.sop_uid))
    return docs, errors


def by_dicom(node, images: list[ImageRequest], *, calling_aet: str = "IHE", timeout: float = 60,
             tls=None) -> tuple[list[RetrievedDocument], list[RegistryError]]:
    """C-GET at IMAGE level, one per series, from ``node`` (a config.Node)."""
    from pydicom.dataset import Dataset

    from ihecli.archive.store import safe_name
    from ihecli.dicom import scu

    by_series: dict[tuple[str, str], list[ImageRequest]] = {}
    for img in images:
        by_series.setdefault((img.study_uid, img.series_uid), []).append(img)
    docs: list[RetrievedDocument] = []
    errors: list[RegistryError] = []
    with tempfile.TemporaryDirectory(prefix="ihe-xdsi-") as tmp:
        for (study, series), imgs in by_series.items():
            ident = Dataset()
            ident.QueryRetrieveLevel = "IMAGE"
            ident.StudyInstanceUID, ident.SeriesInstanceUID = study, series
            ident.SOPInstanceUID = [i.sop_uid for i in imgs] if len(imgs) > 1 else imgs[0].sop_uid
            res = scu.get(node, ident, tmp, calling_aet=calling_aet, timeout=timeout, tls=tls)
            why = f"not returned by C-GET from {node}" + (f" (status 0x{res.status:04X})" if res.status else "")
            for img in imgs:
                path = Path(tmp) / f"{safe_name(img.sop_uid)}.dcm"  # as scu.get names them
                if path.is_file():
                    docs.append(RetrievedDocument(img.repository_uid, img.sop_uid, DICOM, path.read_bytes(), img.home))
                    path.unlink()
                else:
                    errors.append(RegistryError(MISSING, why, img.sop_uid))
    return docs, errors
