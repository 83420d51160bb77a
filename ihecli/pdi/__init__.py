"""IHE Portable Data for Imaging (PDI): RAD-47 Distribute Imaging Information on Media.

Portable Media Creator (``burn``: ISO 9660 or a USB folder, DICOMDIR, README.TXT, INDEX.HTM and
IHE_PDI web content), Portable Media Importer (``import_media``, with reconciliation) and Image
Display (``list_media``, ``MediaViewServer``).
"""
from ihecli.pdi.creator import BurnReport, VolumeReport, burn, select_from_archive
from ihecli.pdi.display import MediaContents, MediaViewServer, list_media
from ihecli.pdi.importer import Candidate, ImportReport, MediaPatient, import_media
from ihecli.pdi.media import MediumError, open_medium

__all__ = ["burn", "BurnReport", "VolumeReport", "select_from_archive", "import_media", "ImportReport",
           "MediaPatient", "Candidate", "list_media", "MediaContents", "MediaViewServer", "open_medium",
           "MediumError"]
