"""Archive tables of the xds actors (defined on ihecli.archive.schema.metadata)."""
from __future__ import annotations

from ihecli.archive.schema import metadata  # noqa: F401
