"""Writing files so that none is ever seen cut short, and making writes durable."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable


def write_whole(path: Path, data: bytes | memoryview | None = None, *, copy_from: str | os.PathLike | None = None
                ) -> None:
    """Write ``data``, or a copy of the file ``copy_from``, to ``path``: under a temporary name in
    the same folder, renamed once whole, so a file under its final name is complete (a full disk,
    Ctrl-C). On any failure the temporary file is removed and the error raised; an error about
    ``copy_from`` names that file (``e.filename``)."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        if copy_from is not None:
            shutil.copyfile(copy_from, part)
        else:
            with open(part, "wb") as fh:
                fh.write(data if data is not None else b"")
        os.replace(part, path)
    except BaseException:
        try:
            part.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def fsync(paths: Iterable[str | os.PathLike]) -> None:
    """fsync files or folders (a folder: the entries added to it, renames included)."""
    for p in set(paths):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
