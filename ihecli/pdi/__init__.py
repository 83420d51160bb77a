"""IHE Portable Data for Imaging (PDI): RAD-47 Distribute Imaging Information on Media.

Portable Media Creator (``burn``: ISO 9660 or a USB folder, DICOMDIR, README.TXT, INDEX.HTM and
IHE_PDI web content), Portable Media Importer (``import_media``, with reconciliation) and Image
Display (``list_media``, ``MediaViewServer``).

The names are loaded when first used: a command imports only the part it runs (start-up is part
of every `ihe pdi` command's time).
"""
from __future__ import annotations

import importlib

_WHERE = {
    "burn": "creator", "BurnReport": "creator", "VolumeReport": "creator", "select_from_archive": "creator",
    "import_media": "importer", "ImportReport": "importer", "MediaPatient": "importer", "Candidate": "importer",
    "list_media": "display", "MediaContents": "display", "MediaViewServer": "display",
    "open_medium": "media", "MediumError": "media",
}

__all__ = ["burn", "BurnReport", "VolumeReport", "select_from_archive", "import_media", "ImportReport",
           "MediaPatient", "Candidate", "list_media", "MediaContents", "MediaViewServer", "open_medium",
           "MediumError"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
