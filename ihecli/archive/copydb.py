"""Copy the archive database to another one: SQLite to PostgreSQL when a site outgrows one
machine (or back). Every table of the archive's schema is copied, the index and the actors'
state alike (XDS registry, audit records, PIX links, MPPS, rejection notes, HL7 feed, outbox).

The source is read in one transaction, so the copy is the database as it was at one moment;
what is written to the source after that moment is not in the copy, which the count made
after the copy reports (``changed``). The target must be empty. The storage folder is not
touched: the index names files relative to it, so the copy is used with the same folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import os

from sqlalchemy import func, insert, select, text

from ihecli.archive import schema as s
from ihecli.archive.index import make_engine, sqlite_path
from ihecli.config import mask_url
from ihecli.errors import IheError, UsageError

BATCH = 2000


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    changed: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (copied, in the source now)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _counts(conn) -> dict[str, int]:
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in s.metadata.sorted_tables}


def copy_database(src_url: str, dst_url: str, *, progress=None) -> CopyReport:
    """Copy every table of ``src_url`` into the empty database ``dst_url`` (created when it is
    an SQLite file). ``progress(table, rows_so_far)`` is called as rows go. Raises UsageError
    when the target holds data, IheError when a database cannot be used."""
    if src_url == dst_url:
        raise UsageError("the source and the target are the same database")
    path = sqlite_path(src_url)
    if path is not None and not os.path.isfile(path):
        raise UsageError(f"no archive database {path}")
    path = sqlite_path(dst_url)
    if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UsageError(f"no folder {os.path.dirname(os.path.abspath(path))} for the target database {path}")
    try:
        src = make_engine(src_url)
        with src.connect() as conn:  # a source without the archive's tables is no archive
            missing = [t.name for t in s.metadata.sorted_tables if not src.dialect.has_table(conn, t.name)]
        if "instances" in missing or "ihe_meta" in missing:
            raise UsageError(f"{mask_url(src_url)} is not an archive database (no table instances)")
        s.metadata.create_all(src)  # an older archive: the tables added since, empty
    except IheError:
        raise
    except Exception as e:
        raise UsageError(f"cannot open the archive database {mask_url(src_url)}: {e}") from None
    try:
        dst = make_engine(dst_url)
        s.metadata.create_all(dst)
        with dst.connect() as conn:
            held = {k: n for k, n in _counts(conn).items() if n}
    except Exception as e:
        raise UsageError(f"cannot open the target database {mask_url(dst_url)}: {e}") from None
    if held:
        what = ", ".join(f"{k}: {n}" for k, n in held.items())
        raise UsageError(f"the target database {mask_url(dst_url)} is not empty (rows in {what}): "
                         "copy into an empty one")

    report = CopyReport()
    try:
        # one read transaction: the source as it is at this moment (SQLite WAL and PostgreSQL alike)
        with src.connect() as sc, dst.begin() as dc:
            if src.dialect.name == "postgresql":
                sc.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            else:
                sc.exec_driver_sql("BEGIN")
            for t in s.metadata.sorted_tables:  # parents before the rows that refer to them
                n = 0
                rows = sc.execution_options(yield_per=BATCH).execute(select(t).order_by(*t.primary_key.columns))
                for part in rows.partitions(BATCH):
                    dc.execute(insert(t), [dict(r._mapping) for r in part])
                    n += len(part)
                    if progress:
                        progress(t.name, n)
                report.rows[t.name] = n
            if dst.dialect.name == "postgresql":
                # ids were copied as they were: the next id of each table follows the highest one
                for t in s.metadata.sorted_tables:
                    for c in t.primary_key.columns:
                        if c.type.python_type is int:
                            dc.execute(text(f"SELECT setval(pg_get_serial_sequence('{t.name}', '{c.name}'), "
                                            f"COALESCE((SELECT MAX({c.name}) FROM {t.name}), 0) + 1, false)"))
            sc.rollback()
        with dst.connect() as conn:
            there = _counts(conn)
        wrong = {k: (n, there[k]) for k, n in report.rows.items() if there[k] != n}
        if wrong:
            raise IheError("the copy does not hold what was read: " +
                           ", ".join(f"{k} {a} read, {b} written" for k, (a, b) in wrong.items()))
        with src.connect() as conn:
            now = _counts(conn)
        report.changed = {k: (n, now[k]) for k, n in report.rows.items() if now[k] != n}
    except IheError:
        raise
    except Exception as e:
        raise IheError(f"copy to {mask_url(dst_url)} failed, nothing was committed there: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        src.dispose()
        dst.dispose()
    return report
