"""QIDO-RS (RAD-129 Query for DICOM objects over the web; PS3.18 10.6): the query string becomes a
C-FIND identifier and runs through the archive's C-FIND engine, so matching (wildcards, ranges,
UID lists, sequences, person names, character sets, hidden instances) is the same as C-FIND.
"""
from __future__ import annotations

import re

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ihecli.web.common import WebError, check_uid, flat_json, to_json

# Attributes returned by default (PS3.18 Tables 10.6.3-3 to -5), by level
STUDY_KEYS = ["StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "StudyDescription"]
SERIES_KEYS = ["Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances",
               "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "SeriesDate", "SeriesTime",
               "BodyPartExamined"]
INSTANCE_KEYS = ["SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber", "Rows", "Columns",
                 "BitsAllocated", "NumberOfFrames", "ContentDate", "ContentTime"]
# includefield=all adds these (the study, series and instance attributes of the common modules)
ALL_EXTRA = {
    "STUDY": ["IssuerOfPatientID", "OtherPatientIDs", "PatientAge", "PatientSize", "PatientWeight",
              "SOPClassesInStudy", "NumberOfPatientRelatedStudies", "AdmittingDiagnosesDescription",
              "PatientComments", "IssuerOfAccessionNumberSequence", "ProcedureCodeSequence", "NameOfPhysiciansReadingStudy"],
    "SERIES": ["Laterality", "ProtocolName", "OperatorsName", "PerformingPhysicianName", "RequestAttributesSequence",
               "Manufacturer", "InstitutionName", "StationName", "FrameOfReferenceUID"],
    "IMAGE": ["ImageType", "AcquisitionNumber", "AcquisitionDateTime", "SamplesPerPixel", "PhotometricInterpretation",
              "BitsStored", "ImageComments", "ConceptNameCodeSequence", "DocumentTitle", "MIMETypeOfEncapsulatedDocument",
              "ContentLabel", "ContentDescription"],
}
LEVEL_KEYS = {"STUDY": STUDY_KEYS, "SERIES": SERIES_KEYS, "IMAGE": INSTANCE_KEYS}
CONTROL = {"includefield", "limit", "offset", "fuzzymatching", "accept", "charset"}
NUMERIC = {"US": int, "UL": int, "SS": int, "SL": int, "UV": int, "SV": int, "FL": float, "FD": float}
TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
MAX_RESULTS = 10_000


def _tag(name: str) -> int:
    """A keyword or 8 hex digits as a tag; 400 for anything else."""
    if TAG_RE.match(name):
        return int(name, 16)
    t = tag_for_keyword(name)
    if t is None:
        raise WebError(400, f"unknown attribute {name!r} in the query")
    return int(t)


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _value(vr: str, text: str):
    if text == "":
        return None
    if vr in NUMERIC:
        try:
            return [NUMERIC[vr](x) for x in text.replace(",", "\\").split("\\")]
        except ValueError:
            raise WebError(400, f"bad number {text!r} in the query") from None
    if vr == "UI":
        for u in re.split(r"[,\\]", text):  # UID lists: comma (PS3.18) or backslash
            if not re.fullmatch(r"[0-9.*?]{1,64}", u):
                raise WebError(400, f"bad UID {u[:80]!r} in the query")
        return "\\".join(re.split(r"[,\\]", text))
    return text


def _set(ds: Dataset, path: list[int], text: str | None) -> None:
    """Put a key (a path of tags through sequences) in the identifier."""
    tag = path[0]
    vr = _vr(tag)
    if len(path) > 1:
        if vr != "SQ":
            raise WebError(400, f"{keyword_for_tag(tag) or f'{tag:08X}'} is not a sequence")
        if tag not in ds or not ds[tag].value:
            ds.add_new(tag, "SQ", Sequence([Dataset()]))
        _set(ds[tag].value[0], path[1:], text)
        return
    if vr == "SQ":
        if tag not in ds:
            ds.add_new(tag, "SQ", Sequence([]))
        return
    if text is None and tag in ds:
        return  # a return key already present as a matching key
    ds.add_new(tag, vr, _value(vr, text) if text is not None else None)


def build_query(level: str, params, *, study: str | None = None, series: str | None = None) -> tuple[Dataset, dict]:
    """(C-FIND identifier, options) from the path's UIDs and the query parameters."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    want = list(LEVEL_KEYS[level])
    if level in ("SERIES", "IMAGE") and study is None:
        want += STUDY_KEYS  # across studies: say which study each answer belongs to
    if level == "IMAGE" and series is None:
        want += SERIES_KEYS
    if level != "STUDY":
        want.append("StudyInstanceUID")
    if level == "IMAGE":
        want.append("SeriesInstanceUID")
    opts = {"limit": None, "offset": 0, "fuzzy": False}
    for name, value in params.multi_items():
        key = name.strip()
        low = key.lower()
        if low == "includefield":
            for f in value.split(","):
                f = f.strip()
                if not f:
                    continue
                if f.lower() == "all":
                    want += sum((ALL_EXTRA[lv] for lv in ("STUDY", "SERIES", "IMAGE")
                                 if lv == level or (lv == "STUDY" and study is None and level != "STUDY")), [])
                else:
                    want.append(f)
            continue
        if low in ("limit", "offset"):
            try:
                n = int(value)
                if n < 0:
                    raise ValueError
            except ValueError:
                raise WebError(400, f"bad {low} {value!r}: a whole number") from None
            opts[low] = n
            continue
        if low == "fuzzymatching":
            opts["fuzzy"] = value.strip().lower() == "true"
            continue
        if low in CONTROL:
            continue
        path = [_tag(p) for p in key.split(".")]
        _set(ds, path, value)
    for k in want:
        path = [_tag(p) for p in k.split(".")]
        _set(ds, path, None)
    for kw, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
        if uid is not None:
            setattr(ds, kw, check_uid(uid))
    if level == "STUDY" and ("ModalitiesInStudy" in ds and ds.ModalitiesInStudy):
        ds.ModalitiesInStudy = str(ds.ModalitiesInStudy).replace(",", "\\")
    return ds, opts


def check_accept(header: str | None) -> None:
    """QIDO-RS answers in DICOM JSON: 406 for a client that takes nothing of the kind."""
    from ihecli.web.common import parse_accept

    ok = {"application/dicom+json", "application/json", "*/*", "application/*"}
    if not any(m.type in ok for m in parse_accept(header)):
        raise WebError(406, "QIDO-RS answers are application/dicom+json")


def search(archive, level: str, params, base: str, *, study: str | None = None,
           series: str | None = None, fast: bool = True) -> list[dict]:
    """QIDO-RS search for studies, series or instances: a list of DICOM JSON objects."""
    from ihecli.archive.query import Finder, QueryError

    ident, opts = build_query(level, params, study=study, series=series)
    limit, offset = opts["limit"], opts["offset"]
    want = min(MAX_RESULTS, (offset + limit) if limit else MAX_RESULTS)
    try:
        with archive.connect() as conn:
            finder = Finder(conn, fuzzy=opts["fuzzy"] or archive.fuzzy_names, aet=archive.aet)
            rows = _indexed_answers(finder, ident, level, want) if fast else None
            if rows is None:
                rows = [_answer_json(r) for r in finder.find(ident, "study", want)]
    except QueryError as e:
        raise WebError(400, str(e)) from None
    rows = rows[offset:]
    if limit:
        rows = rows[:limit]
    for j in rows:
        url = f"{base}/studies/{_first(j, '0020000D')}"
        if level in ("SERIES", "IMAGE"):
            url += f"/series/{_first(j, '0020000E')}"
        if level == "IMAGE":
            url += f"/instances/{_first(j, '00080018')}"
        j["00081190"] = {"vr": "UR", "Value": [url]}  # Retrieve URL
    return [dict(sorted(j.items())) for j in rows]


def _first(j: dict, tag: str) -> str:
    v = (j.get(tag) or {}).get("Value") or [""]
    return str(v[0])


def _answer_json(r: Dataset) -> dict:
    for kw in ("QueryRetrieveLevel", "SpecificCharacterSet"):
        if kw in r:
            del r[kw]
    j = flat_json(r)
    return j if j is not None else to_json(r)


def _indexed_answers(finder, ident: Dataset, level: str, limit: int) -> list[dict] | None:
    """Answers written straight from the index rows when every key asked for has a column (or is
    counted): the same rows and values as Finder.find (the C-FIND engine), without building a
    pydicom dataset per answer, which cost most of a large answer. None when a key needs the
    stored headers."""
    from ihecli.archive import query as q

    keys = q._keys(ident)
    if any(k.keyword not in q.COLUMNS and k.keyword not in q.COMPUTED or k.vr == "SQ" for k in keys):
        return None
    rows, keys, _headers = finder._matching_rows(ident, level, limit)
    extra = finder._computed(keys, level, rows)
    lower = q.LOWER[level]
    out = []
    for r in rows:
        j: dict = {}
        for k in keys:
            kw, vr = k.keyword, k.vr
            value = None
            if kw in lower:
                value = None
            elif kw in q.COLUMNS:
                klevel, col, _ = q.COLUMNS[kw]
                value = r.get(f"{klevel}.{col}")
                if value is not None and vr == "TM":
                    value = q._tm_out(value)
            elif kw.startswith("NumberOfPatientRelated"):
                value = extra.get(("P", r["PATIENT.id"]), {}).get(kw, 0)
            else:
                value = extra.get(("S", r["STUDY.id"]), {}).get(kw)
            j[f"{k.tag:08X}"] = _attr(vr, value)
        if "RetrieveAETitle" in ident or finder.aet:
            j["00080054"] = _attr("AE", finder.aet)
        if "InstanceAvailability" in ident:
            j["00080056"] = _attr("CS", "ONLINE")
        out.append(j)
    return out


def _attr(vr: str, value) -> dict:
    from ihecli.web.common import _json_value

    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else str(value).split("\\") if isinstance(value, str) else [value]
    return {"vr": vr, "Value": [None if v == "" else _json_value(vr, v) for v in values]}
