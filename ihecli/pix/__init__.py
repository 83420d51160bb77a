"""PIX Consumer (Patient Identifier Cross-referencing, HL7 v2; ITI TF-1 5, ITI TF-2a 3.9 and 3.10).

- ``query_identifiers`` (ITI-9 PIX Query): QBP^Q23 to a PIX Manager, RSP^K23 read into a
  ``PixAnswer`` (``ihecli.pix.query``).
- ``UpdateNotificationReceiver`` (ITI-10 PIX Update Notification): ADT^A31 over MLLP into the
  archive database's cross-references, which C-FIND and ``ihe archive ls`` follow when matching
  a Patient ID (``ihecli.pix.notification``, ``ihecli.archive.tables_pix``).
- ``Identifier`` and ``Domain``: HL7 CX and HD, shared with PDQ (``ihecli.pix.ids``).
"""
from ihecli.pix.ids import Domain, Identifier  # noqa: F401
from ihecli.pix.query import PixAnswer, query_identifiers  # noqa: F401


def __getattr__(name: str):
    # the receiver writes to the archive database: its imports (SQLAlchemy, pydicom) wait until
    # it is used, so that a query or PDQ starts quickly
    if name in ("UpdateNotificationReceiver", "links"):
        from ihecli.pix import notification

        return getattr(notification, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
