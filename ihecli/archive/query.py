"""Query/Retrieve over the index: C-FIND identifiers to SQL, and matches back to responses.

Patient Root and Study Root, every level (DICOM PS3.4 C.6). Keys with an indexed column are
matched in SQL; other keys (and sequence matching) are matched on the stored header of a
representative instance, which the index keeps, so no file is ever opened to answer.

Person names are matched in SQL on candidates, then checked exactly in Python (component
groups, see ``matching``): work in Python is proportional to the candidates, never to the
whole index. Keys answered from a stored header are read from the first instance received of
the study, series or patient (for a study or series attribute every instance holds the same
value). Study Date and Study Time (like Series Date/Time) are each matched on their own:
combined date-time matching is an extended negotiation option this SCP does not accept, so
a time range applies to every day of the date range.
"""
from __future__ import annotations

import io
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import exists, func, or_, select
from sqlalchemy.engine import Connection

from ihecli.archive import matching
from ihecli.archive.ingest import unpack_header
from ihecli.archive import schema as s
from ihecli.archive import tables_pix

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
TABLES = {"PATIENT": s.patients, "STUDY": s.studies, "SERIES": s.series, "IMAGE": s.instances}

# keyword -> (level, column name, matching mode: exact | pn | int)
COLUMNS: dict[str, tuple[str, str, str]] = {
    "PatientID": ("PATIENT", "pid", "exact"),
    "IssuerOfPatientID": ("PATIENT", "issuer", "exact"),
    "PatientName": ("PATIENT", "name", "pn"),
    "PatientBirthDate": ("PATIENT", "birth_date", "exact"),
    "PatientSex": ("PATIENT", "sex", "exact"),
    "StudyInstanceUID": ("STUDY", "study_uid", "exact"),
    "StudyDate": ("STUDY", "study_date", "exact"),
    "StudyTime": ("STUDY", "study_time", "exact"),
    "AccessionNumber": ("STUDY", "accession", "exact"),
    "StudyID": ("STUDY", "study_id", "exact"),
    "ReferringPhysicianName": ("STUDY", "ref_physician", "pn"),
    "StudyDescription": ("STUDY", "description", "exact"),
    "NumberOfStudyRelatedSeries": ("STUDY", "num_series", "int"),
    "NumberOfStudyRelatedInstances": ("STUDY", "num_instances", "int"),
    "SeriesInstanceUID": ("SERIES", "series_uid", "exact"),
    "Modality": ("SERIES", "modality", "exact"),
    "SeriesNumber": ("SERIES", "series_number", "int"),
    "SeriesDescription": ("SERIES", "description", "exact"),
    "BodyPartExamined": ("SERIES", "body_part", "exact"),
    "SeriesDate": ("SERIES", "series_date", "exact"),
    "SeriesTime": ("SERIES", "series_time", "exact"),
    "NumberOfSeriesRelatedInstances": ("SERIES", "num_instances", "int"),
    "SOPInstanceUID": ("IMAGE", "sop_uid", "exact"),
    "SOPClassUID": ("IMAGE", "sop_class", "exact"),
    "InstanceNumber": ("IMAGE", "instance_number", "int"),
    "ContentDate": ("IMAGE", "content_date", "exact"),
    "ContentTime": ("IMAGE", "content_time", "exact"),
}
COMPUTED = {
    "ModalitiesInStudy": "STUDY",
    "SOPClassesInStudy": "STUDY",
    "NumberOfPatientRelatedStudies": "PATIENT",
    "NumberOfPatientRelatedSeries": "PATIENT",
    "NumberOfPatientRelatedInstances": "PATIENT",
}
# Keys that belong below a level: at that level they are returned empty.
LOWER = {
    "PATIENT": {k for k, v in COLUMNS.items() if v[0] != "PATIENT"} | {"ModalitiesInStudy", "SOPClassesInStudy"},
    "STUDY": {k for k, v in COLUMNS.items() if v[0] in ("SERIES", "IMAGE")},
    "SERIES": {k for k, v in COLUMNS.items() if v[0] == "IMAGE"},
    "IMAGE": set(),
}
CONTROL = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
           "TimezoneOffsetFromUTC", "QueryRetrieveView"}


class QueryError(Exception):
    """The identifier is not a valid query for this information model."""

    def __init__(self, message: str, status: int = 0xA900):
        super().__init__(message)
        self.status = status


@dataclass
class InstanceRef:
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    path: str
    study_uid: str
    series_uid: str


def _level_of(ident: Dataset, root: str) -> str:
    level = str(getattr(ident, "QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(f"bad Query/Retrieve Level {level!r}")
    if root == "study" and level == "PATIENT":
        raise QueryError("Study Root has no PATIENT level")
    return level


def _joined(level: str):
    """The FROM clause for a level: the level's table joined with everything above."""
    j = s.patients
    if level in ("STUDY", "SERIES", "IMAGE"):
        j = j.join(s.studies, s.studies.c.patient_fk == s.patients.c.id)
    if level in ("SERIES", "IMAGE"):
        j = j.join(s.series, s.series.c.study_fk == s.studies.c.id)
    if level == "IMAGE":
        j = j.join(s.instances, s.instances.c.series_fk == s.series.c.id)
    return j


def _levels_upto(level: str) -> list[str]:
    return list(LEVELS[: LEVELS.index(level) + 1])


@dataclass
class _Key:
    keyword: str
    tag: int
    vr: str
    elem: object
    match: matching.Match | None  # None for sequences


def _keys(ident: Dataset) -> list[_Key]:
    keys = []
    for elem in ident:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag.element == 0 or elem.keyword in CONTROL:
            continue
        vr = elem.VR
        if vr == "SQ":
            keys.append(_Key(elem.keyword, int(elem.tag), vr, elem, None))
            continue
        try:
            value = elem.value
        except Exception:
            value = None
        if vr == "PN" and value is not None:
            value = str(value) if not isinstance(value, (list, tuple)) and type(value).__name__ != "MultiValue" \
                else [str(v) for v in value]
        keys.append(_Key(elem.keyword, int(elem.tag), vr, elem, matching.parse(value, vr)))
    return keys


def _pn_col(table, col: str, fuzzy: bool):
    if fuzzy:
        return table.c[col + "_fold"], "fold"
    return table.c[col + "_ci"], "ci"


def _condition(key: _Key, level: str, fuzzy: bool):
    """(SQL condition, handled) for a key; handled=False means it needs the header."""
    kw = key.keyword
    if kw in COLUMNS:
        klevel, col, mode = COLUMNS[kw]
        if LEVELS.index(klevel) > LEVELS.index(level):
            return None, True  # a lower-level key at a higher level: returned empty, not matched
        table = TABLES[klevel]
        if key.match is None or key.match.is_universal:
            return None, True
        if mode == "pn":
            c, m = _pn_col(table, col, fuzzy)
            return matching.to_sql(key.match, c, m), True
        if kw == "PatientID" and key.match.kind == "single":  # also the patients PIX links to it
            return or_(matching.to_sql(key.match, table.c[col], "exact"),
                       s.patients.c.id.in_(tables_pix.linked_patient_ids(key.match.values[0]))), True
        return matching.to_sql(key.match, table.c[col], "exact"), True
    if kw in ("ModalitiesInStudy", "SOPClassesInStudy") and level != "PATIENT":
        if key.match is None or key.match.is_universal:
            return None, True
        se = s.series.alias("se_any")  # any series of the study, not the row's own series
        if kw == "ModalitiesInStudy":
            return (exists().where(se.c.study_fk == s.studies.c.id,
                                   matching.to_sql(key.match, se.c.modality, "exact"))
                    .correlate(s.studies)), True
        inst = s.instances.alias("inst_any")
        return (exists().where(se.c.study_fk == s.studies.c.id, inst.c.series_fk == se.c.id,
                               matching.to_sql(key.match, inst.c.sop_class, "exact"))
                .correlate(s.studies)), True
    if kw in COMPUTED:
        return None, True
    if key.match is not None and key.match.is_universal:
        return None, True
    return None, False


class Finder:
    """Runs C-FIND identifiers against the index."""

    def __init__(self, conn: Connection, *, fuzzy: bool = False, aet: str = ""):
        self.conn, self.fuzzy, self.aet = conn, fuzzy, aet

    def _select(self, ident: Dataset, level: str):
        """(candidate query, keys, keys to check in Python on the candidates' columns, keys for headers)."""
        keys = _keys(ident)
        cols = []
        for lv in _levels_upto(level):
            t = TABLES[lv]
            cols += [c.label(f"{lv}.{c.name}") for c in t.c if c.name != "header"]
        q = select(*cols).select_from(_joined(level))
        recheck: list[tuple[_Key, str, str]] = []
        post: list[_Key] = []
        for key in keys:
            cond, handled = _condition(key, level, self.fuzzy)
            if cond is not None:
                q = q.where(cond)
                klevel, col, mode = COLUMNS.get(key.keyword, ("", "", ""))
                if mode == "pn":  # SQL gives candidates for names: check them exactly
                    recheck.append((key, f"{klevel}.{col}", "fold" if self.fuzzy else "ci"))
            if not handled:
                post.append(key)
        order = TABLES[level].c.id
        return q.order_by(order), keys, recheck, post

    def _matching_rows(self, ident: Dataset, level: str, limit: int | None = None):
        """(rows matching every key, keys, header cache or None)."""
        q, keys, recheck, post = self._select(ident, level)
        if limit and not post and not recheck:
            q = q.limit(limit)
        headers = _HeaderCache(self.conn, level) if post or any(
            k.keyword not in COLUMNS and k.keyword not in COMPUTED for k in keys) else None
        rows = []
        for r in self.conn.execute(q):
            r = r._mapping
            if recheck and not all(matching.matches(k.match, r[label], mode) for k, label, mode in recheck):
                continue
            if post and not _post_match(post, headers.get(r), self.fuzzy):
                continue
            rows.append(r)
            if limit and len(rows) >= limit:
                break
        return rows, keys, headers

    def find(self, ident: Dataset, root: str = "study", limit: int | None = None) -> Iterator[Dataset]:
        """Responses (identifiers) for a C-FIND request, in index order."""
        level = _level_of(ident, root)
        rows, keys, headers = self._matching_rows(ident, level, limit)
        extra = self._computed(keys, level, rows)
        for r in rows:
            yield self._response(ident, keys, level, r, headers, extra)

    def _computed(self, keys: list[_Key], level: str, rows) -> dict:
        """Computed values by (level, id): ("S", study id) and ("P", patient id)."""
        want = {k.keyword for k in keys} & set(COMPUTED)
        out: dict = defaultdict(dict)
        if not rows or not want:
            return out
        if level != "PATIENT" and want & {"ModalitiesInStudy", "SOPClassesInStudy"}:
            ids = sorted({r["STUDY.id"] for r in rows})
            for chunk in _chunks(ids, 500):
                if "ModalitiesInStudy" in want:
                    for st, mod in self.conn.execute(
                            select(s.series.c.study_fk, s.series.c.modality).distinct()
                            .where(s.series.c.study_fk.in_(chunk)).order_by(s.series.c.study_fk, s.series.c.modality)):
                        if mod:
                            out[("S", st)].setdefault("ModalitiesInStudy", []).append(mod)
                if "SOPClassesInStudy" in want:
                    for st, cls in self.conn.execute(
                            select(s.series.c.study_fk, s.instances.c.sop_class).distinct()
                            .select_from(s.instances.join(s.series, s.instances.c.series_fk == s.series.c.id))
                            .where(s.series.c.study_fk.in_(chunk))
                            .order_by(s.series.c.study_fk, s.instances.c.sop_class)):
                        out[("S", st)].setdefault("SOPClassesInStudy", []).append(cls)
        if want & {"NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                   "NumberOfPatientRelatedInstances"}:
            ids = sorted({r["PATIENT.id"] for r in rows})
            for chunk in _chunks(ids, 500):
                q = (select(s.studies.c.patient_fk, func.count(s.studies.c.id), func.sum(s.studies.c.num_series),
                            func.sum(s.studies.c.num_instances))
                     .where(s.studies.c.patient_fk.in_(chunk)).group_by(s.studies.c.patient_fk))
                for pid, nst, nse, nin in self.conn.execute(q):
                    out[("P", pid)] = {"NumberOfPatientRelatedStudies": nst,
                                       "NumberOfPatientRelatedSeries": int(nse or 0),
                                       "NumberOfPatientRelatedInstances": int(nin or 0)}
        return out

    def _response(self, ident: Dataset, keys: list[_Key], level: str, row, headers, extra) -> Dataset:
        rsp = Dataset()
        charset = row.get(f"{level}.charset") or row.get("PATIENT.charset")
        values: dict[int, tuple[str, object]] = {}
        header = None
        for key in keys:
            kw = key.keyword
            vr = key.vr
            value = None
            if kw in LOWER[level]:
                value = None
            elif kw in COLUMNS:
                klevel, col, _ = COLUMNS[kw]
                value = row.get(f"{klevel}.{col}")
                if value is not None and vr in ("TM",):
                    value = _tm_out(value)
            elif kw in COMPUTED:
                if kw.startswith("NumberOfPatientRelated"):
                    value = extra.get(("P", row["PATIENT.id"]), {}).get(kw, 0)
                else:
                    value = extra.get(("S", row["STUDY.id"]), {}).get(kw)
            else:
                if header is None and headers is not None:
                    header = headers.get(row)
                elem = header.get(key.tag) if header is not None else None
                if elem is not None:
                    if elem.VR == "SQ":
                        value = _sequence_out(key, elem.value, self.fuzzy)
                    else:
                        vr = elem.VR if vr in ("UN", None) else vr
                        value = elem.value
            if key.vr == "SQ" and value is None:
                value = Sequence([])
            values[key.tag] = (vr, value)
        for tag, (vr, value) in sorted(values.items()):
            if vr in ("IS", "DS", "US", "UL", "SS", "SL") and isinstance(value, int):
                value = str(value) if vr in ("IS", "DS") else value
            rsp.add_new(tag, vr, value)
        rsp.QueryRetrieveLevel = level
        if "RetrieveAETitle" in ident or self.aet:
            rsp.RetrieveAETitle = self.aet
        if "InstanceAvailability" in ident:
            rsp.InstanceAvailability = "ONLINE"
        cs = _charset_for(rsp, charset)
        if cs:
            rsp.SpecificCharacterSet = cs
        return rsp

    def instances(self, ident: Dataset, root: str = "study") -> list[InstanceRef]:
        """Every stored instance a C-MOVE / C-GET identifier selects (the same matching as C-FIND)."""
        level = _level_of(ident, root)
        keys = _keys(ident)
        if not any(k.match is not None and not k.match.is_universal for k in keys):
            raise QueryError("no matching key given: refusing to retrieve everything", 0xC000)
        rows, _keys_, _headers = self._matching_rows(ident, level)
        ids = [r[f"{level}.id"] for r in rows]
        level_id = TABLES[level].c.id
        out = []
        for chunk in _chunks(ids, 500):
            q = (select(s.instances.c.sop_uid, s.instances.c.sop_class, s.instances.c.transfer_syntax,
                        s.instances.c.path, s.studies.c.study_uid, s.series.c.series_uid)
                 .select_from(_joined("IMAGE")).where(level_id.in_(chunk)).order_by(s.instances.c.id))
            out += [InstanceRef(*r) for r in self.conn.execute(q)]
        return out


def _tm_out(v: str) -> str:
    """Stored HHMMSS.ffffff back to the shortest TM that keeps its precision."""
    if "." in v:
        whole, frac = v.split(".", 1)
        frac = frac.rstrip("0")
        return whole + ("." + frac if frac else "")
    return v


def _chunks(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class _HeaderCache:
    """Stored headers of representative instances, parsed on first use."""

    def __init__(self, conn: Connection, level: str):
        self.conn, self.level = conn, level
        self.cache: dict[int, Dataset | None] = {}

    def get(self, row) -> Dataset | None:
        lid = row[f"{self.level}.id"]
        if lid not in self.cache:
            self.cache[lid] = self._load(lid)
        return self.cache[lid]

    def _load(self, lid: int) -> Dataset | None:
        i = s.instances
        if self.level == "IMAGE":
            q = select(i.c.header).where(i.c.id == lid)
        elif self.level == "SERIES":
            q = select(i.c.header).where(i.c.series_fk == lid).order_by(i.c.id).limit(1)
        elif self.level == "STUDY":
            q = (select(i.c.header).select_from(i.join(s.series, i.c.series_fk == s.series.c.id))
                 .where(s.series.c.study_fk == lid).order_by(i.c.id).limit(1))
        else:
            q = (select(i.c.header).select_from(i.join(s.series, i.c.series_fk == s.series.c.id)
                                               .join(s.studies, s.series.c.study_fk == s.studies.c.id))
                 .where(s.studies.c.patient_fk == lid).order_by(i.c.id).limit(1))
        blob = self.conn.execute(q).scalar()
        if blob is None:
            return None
        return read_header(blob)


def read_header(blob: bytes) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(unpack_header(blob)), stop_before_pixels=True, force=True)
    except Exception:
        return None


def _post_match(keys: list[_Key], header: Dataset | None, fuzzy: bool) -> bool:
    if header is None:
        header = Dataset()
    for key in keys:
        elem = header.get(key.tag)
        if key.vr == "SQ":
            if not _seq_match(key.elem.value, elem.value if elem is not None and elem.VR == "SQ" else None, fuzzy):
                return False
            continue
        value = None
        if elem is not None:
            try:
                value = elem.value
                if elem.VR == "PN" and value is not None:
                    value = [str(v) for v in value] if type(value).__name__ == "MultiValue" else str(value)
            except Exception:
                value = None
        mode = ("fold" if fuzzy else "ci") if key.vr == "PN" else "exact"
        if not matching.matches(key.match, value, mode):
            return False
    return True


def _item_keys(query_seq) -> list[_Key]:
    if not query_seq:
        return []
    return _keys(query_seq[0])


def _item_matches(ikeys: list[_Key], item: Dataset, fuzzy: bool) -> bool:
    return _post_match([k for k in ikeys if k.vr == "SQ" or not k.match.is_universal], item, fuzzy)


def _seq_match(query_seq, stored_seq, fuzzy: bool) -> bool:
    """Sequence matching: some stored item matches every key of the query's item."""
    ikeys = _item_keys(query_seq)
    active = [k for k in ikeys if k.vr == "SQ" or not k.match.is_universal]
    if not active:
        return True
    return any(_item_matches(active, item, fuzzy) for item in (stored_seq or []))


def _sequence_out(key: _Key, stored_seq, fuzzy: bool) -> Sequence:
    """The stored items that match, reduced to the keys asked for (all keys when none are)."""
    ikeys = _item_keys(key.elem.value)
    out = []
    for item in stored_seq or []:
        if ikeys and not _item_matches(ikeys, item, fuzzy):
            continue
        if not ikeys:
            out.append(item)
            continue
        new = Dataset()
        for k in ikeys:
            e = item.get(k.tag)
            if e is not None and k.vr == "SQ" and e.VR == "SQ":
                new.add_new(k.tag, "SQ", _sequence_out(k, e.value, fuzzy))  # its matching items, reduced
            elif e is not None:
                new.add(e)
            else:
                new.add_new(k.tag, k.vr, [] if k.vr == "SQ" else None)
        out.append(new)
    return Sequence(out)


def _charset_for(rsp: Dataset, stored: str | None) -> str | list[str] | None:
    """The stored object's character set when every value fits it, else UTF-8 (None: ASCII).

    A response can mix values of different objects (a patient's name from one, a study's
    description from another): those that do not fit the row's own character set make it UTF-8.
    """
    texts = []
    for e in rsp.iterall():
        if e.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") and e.value is not None:
            vals = e.value if isinstance(e.value, (list, tuple)) or type(e.value).__name__ == "MultiValue" \
                else [e.value]
            texts += [str(v) for v in vals]
    if all(t.isascii() for t in texts):
        return _split(stored) if stored else None
    if stored:
        encodings = pydicom.charset.convert_encodings(_split(stored))
        if all(_fits(t, encodings) for t in texts):
            return _split(stored)
    return "ISO_IR 192"


def _fits(text: str, encodings: list[str]) -> bool:
    """Whether ``text`` encodes without loss in these encodings (code extensions switching between
    them as needed). Checked here because pydicom's encoder silently writes replacement characters
    when it cannot; the default repertoire counts as ASCII, not Latin-1 as pydicom maps it."""
    encs = ["ascii" if e == pydicom.charset.default_encoding else e for e in encodings]
    rest = text
    while rest:
        best = 0
        for enc in encs:
            try:
                pydicom.charset._encode_string_impl(rest, enc)
                return True
            except (UnicodeError, ValueError, LookupError) as err:
                best = max(best, getattr(err, "start", 0) or 0)
        if best == 0:
            return False
        rest = rest[best:]
    return True


def _split(cs: str):
    parts = cs.split("\\")
    return parts if len(parts) > 1 else parts[0]
