"""Key Image Note: the Evidence Creator's document (IHE RAD TF-2 4.29, RAD-29 Store Key Image Note).

A Key Object Selection Document titled from CID 7010 (113000 "Of Interest" unless told), with
the key image description as its TEXT item and the images referenced per series.
"""
from __future__ import annotations

from typing import Sequence

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ihecli.errors import UsageError
from ihecli.kos import codes
from ihecli.kos.builder import build_kos

SERIES_DESCRIPTION = "Key Image Note"


def title_for(text: str | None) -> Code:
    """The title a user names: a CID 7010 name ('for-referring-provider') or a code ('113002')."""
    if not text:
        return codes.OF_INTEREST
    try:
        code = codes.title_code(text)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if codes.is_rejection_title(code.value, code.scheme_designator):
        raise UsageError(f"'{code.meaning}' is a rejection note title: use ihe iocm reject")
    return code


def key_image_note(selected: Sequence[Dataset], *, title: Code = codes.OF_INTEREST, description: str | None = None,
                   observer: str | None = None, retrieve_aet: str | None = None) -> Dataset:
    """Build the Key Image Note stored by RAD-29 Store Key Image Note."""
    return build_kos(title, selected, description=description, observer=observer, retrieve_aet=retrieve_aet,
                     series_description=SERIES_DESCRIPTION)


def store_key_image_note(note: Dataset, *, node=None, archive=None, calling_aet: str = "IHE",
                         timeout: float = 30, tls=None) -> None:
    """RAD-29 Store Key Image Note: C-STORE to ``node``, or into the local ``archive``."""
    from ihecli.kos.send import send_documents, store_documents

    if node is not None:
        send_documents(node, [note], calling_aet=calling_aet, timeout=timeout, tls=tls)
    else:
        store_documents(archive, [note])
