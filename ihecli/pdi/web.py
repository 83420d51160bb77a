"""Web pages of DICOM content: the IHE_PDI web content of a medium (IHE PDI Web Content option,
RAD-47) and the pages of the local media view. XHTML 1.0 Strict without script, one index of
patients and studies, one page per study and per series, JPEG renderings inline; the pages
mirror only DICOM content.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Callable

from ihecli import __version__
from ihecli.pdi import values as v
from ihecli.pdi.objects import ObjectInfo, sop_class_name

DOCTYPE = ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
           '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">')
STYLE = """body{font-family:sans-serif;margin:1em 2em;background:#fff;color:#111}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ccc;padding:.25em .75em;text-align:left}
.images div{display:inline-block;margin:0 1em 1em 0;vertical-align:top;border:1px solid #ccc;padding:4px}
.images img{display:block;max-width:100%;height:auto}p.nav{font-size:90%}.note{color:#555}"""


@dataclass
class WebObject:
    info: ObjectInfo
    image: str | None = None  # link to its rendering
    width: int = 0
    height: int = 0
    note: str = ""  # why there is no rendering
    # a multi-frame object: its other frames shown on its own page, (frame number, link, width, height)
    frames: list[tuple[int, str, int, int]] = field(default_factory=list)
    key: str = ""  # its page's name, given by the writer of the pages


@dataclass
class WebSeries:
    key: str
    first: ObjectInfo
    objects: list[WebObject] = field(default_factory=list)


@dataclass
class WebStudy:
    key: str
    first: ObjectInfo
    series: list[WebSeries] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(s.objects) for s in self.series)

    @property
    def modalities(self) -> str:
        return "/".join(sorted({s.first.modality or "OT" for s in self.series}))


@dataclass
class WebPatient:
    first: ObjectInfo
    studies: list[WebStudy] = field(default_factory=list)


@dataclass
class Links:
    """Where the pages are, relative to the page that links (static files or URLs)."""

    index: Callable[[], str]
    study: Callable[[WebStudy], str]
    series: Callable[[WebSeries], str]
    home: str | None = None  # the medium's INDEX.HTM, from the web pages
    object: Callable[[WebObject], str] | None = None  # the page of a multi-frame object's frames


def tree(objects: list[WebObject]) -> list[WebPatient]:
    """Patients, studies, series in the order the objects come (sorted by the caller)."""
    patients: dict[tuple, WebPatient] = {}
    studies: dict[str, WebStudy] = {}
    series: dict[str, WebSeries] = {}
    for o in objects:
        i = o.info
        pk = (i.patient_id or "", i.patient_name or "")
        p = patients.get(pk)
        if p is None:
            p = patients[pk] = WebPatient(i)
        st = studies.get(i.study_uid)
        if st is None:
            st = studies[i.study_uid] = WebStudy(f"{len(studies) + 1:06d}", i)
            p.studies.append(st)
        se = series.get(i.series_uid)
        if se is None:
            se = series[i.series_uid] = WebSeries(f"{len(series) + 1:06d}", i)
            st.series.append(se)
        se.objects.append(o)
    return list(patients.values())


def _page(title: str, body: str) -> str:
    return (f'{DOCTYPE}\n<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n<head>\n'
            f'<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />\n'
            f'<title>{escape(title)}</title>\n<style type="text/css">\n{STYLE}\n</style>\n</head>\n'
            f'<body>\n{body}\n</body>\n</html>\n')


def _e(x) -> str:
    return escape("" if x is None else str(x))


def _patient_line(i: ObjectInfo) -> str:
    bits = [f"<strong>{_e(v.person(i.patient_name) or 'Unnamed patient')}</strong>"]
    if i.patient_id:
        bits.append(f"ID {_e(i.patient_id)}")
    if v.pretty_date(i.birth_date):
        bits.append(f"born {v.pretty_date(i.birth_date)}")
    if i.sex:
        bits.append(_e(i.sex))
    return ", ".join(bits)


def index_page(patients: list[WebPatient], links: Links, title: str) -> str:
    parts = [f"<h1>{_e(title)}</h1>"]
    if links.home:
        parts.append(f'<p class="nav"><a href="{_e(links.home)}">Medium home</a></p>')
    for p in patients:
        parts.append(f"<h2>{_patient_line(p.first)}</h2>")
        parts.append("<table>\n<tr><th>Date</th><th>Description</th><th>Accession</th><th>Modalities</th>"
                     "<th>Series</th><th>Objects</th></tr>")
        for st in p.studies:
            i = st.first
            when = " ".join(x for x in (v.pretty_date(i.study_date), v.pretty_time(i.study_time)) if x)
            parts.append(f'<tr><td><a href="{_e(links.study(st))}">{_e(when or "no date")}</a></td>'
                         f'<td><a href="{_e(links.study(st))}">{_e(i.study_description or "Study")}</a></td>'
                         f"<td>{_e(i.accession)}</td><td>{_e(st.modalities)}</td><td>{len(st.series)}</td>"
                         f"<td>{st.count}</td></tr>")
        parts.append("</table>")
    parts.append(f'<p class="note">Written by ihe {_e(__version__)} from the DICOM objects of this medium. '
                 "The renderings are for viewing, not for diagnosis.</p>")
    return _page(title, "\n".join(parts))


def study_page(patient: WebPatient, st: WebStudy, links: Links) -> str:
    i = st.first
    when = " ".join(x for x in (v.pretty_date(i.study_date), v.pretty_time(i.study_time)) if x)
    title = f"{i.study_description or 'Study'} {when}".strip()
    parts = [f'<p class="nav"><a href="{_e(links.index())}">All studies</a></p>',
             f"<h1>{_e(title)}</h1>", f"<p>{_patient_line(patient.first)}</p>",
             f"<p>Accession {_e(i.accession or '-')}, study ID {_e(i.study_id or '-')}"
             f"{', ' + _e(i.institution) if i.institution else ''}</p>",
             "<table>\n<tr><th>Series</th><th>Modality</th><th>Description</th><th>Objects</th><th>First image</th></tr>"]
    for se in st.series:
        s = se.first
        thumb = next((o for o in se.objects if o.image), None)
        img = (f'<img src="{_e(thumb.image)}" alt="first image of series {_e(s.series_number)}" width="96" '
               f'height="{max(1, round(96 * thumb.height / thumb.width)) if thumb.width else 96}" />'
               if thumb else "")
        parts.append(f'<tr><td><a href="{_e(links.series(se))}">{_e(s.series_number if s.series_number is not None else se.key)}</a></td>'
                     f"<td>{_e(s.modality)}</td><td><a href=\"{_e(links.series(se))}\">"
                     f"{_e(s.series_description or 'Series')}</a></td><td>{len(se.objects)}</td>"
                     f'<td><a href="{_e(links.series(se))}">{img}</a></td></tr>')
    parts.append("</table>")
    return _page(title, "\n".join(parts))


def _caption(o: WebObject) -> str:
    i = o.info
    bits = []
    if i.instance_number is not None:
        bits.append(f"#{i.instance_number}")
    if i.modality == "MG" or i.laterality:
        bits.append(" ".join(x for x in (i.laterality, i.view) if x))
    if i.frames > 1:
        bits.append(f"frame 1 of {i.frames}")
    return " ".join(b for b in bits if b)


def series_page(patient: WebPatient, st: WebStudy, se: WebSeries, links: Links) -> str:
    s = se.first
    title = f"{s.modality or ''} {s.series_description or 'Series'}".strip()
    parts = [f'<p class="nav"><a href="{_e(links.index())}">All studies</a> &gt; '
             f'<a href="{_e(links.study(st))}">{_e(st.first.study_description or "Study")}</a></p>',
             f"<h1>{_e(title)}</h1>", f"<p>{_patient_line(patient.first)}; series {_e(s.series_number)}, "
                                      f"{len(se.objects)} object{'' if len(se.objects) == 1 else 's'}</p>", '<div class="images">']
    others = []
    for o in se.objects:
        if o.image:
            img = (f'<img src="{_e(o.image)}" alt="{_e(_caption(o) or "image")}" width="{o.width}" '
                   f'height="{o.height}" />')
            more = ""
            if o.frames and links.object:
                img = f'<a href="{_e(links.object(o))}">{img}</a>'
                more = f' <a href="{_e(links.object(o))}">all {o.info.frames} frames</a>'
            parts.append(f"<div>{img}<span>{_e(_caption(o))}{more}</span></div>")
        else:
            others.append(o)
    parts.append("</div>")
    if others:
        parts.append("<table>\n<tr><th>Number</th><th>Object</th><th>Note</th></tr>")
        for o in others:
            parts.append(f"<tr><td>{_e(o.info.instance_number)}</td><td>{_e(sop_class_name(o.info.sop_class))}</td>"
                         f"<td>{_e(o.note)}</td></tr>")
        parts.append("</table>")
    return _page(title, "\n".join(parts))


def object_page(patient: WebPatient, st: WebStudy, se: WebSeries, o: WebObject, links: Links) -> str:
    """The frames of one multi-frame object, in order (all, or an even sample of a long one)."""
    s, i = se.first, o.info
    title = f"{s.modality or ''} {s.series_description or 'Series'} #{i.instance_number or ''}".strip(" #")
    shown = [(1, o.image, o.width, o.height), *o.frames]
    sampled = "" if len(shown) == i.frames else f", {len(shown)} of them shown, evenly spread"
    parts = [f'<p class="nav"><a href="{_e(links.index())}">All studies</a> &gt; '
             f'<a href="{_e(links.study(st))}">{_e(st.first.study_description or "Study")}</a> &gt; '
             f'<a href="{_e(links.series(se))}">{_e(s.series_description or "Series")}</a></p>',
             f"<h1>{_e(title)}</h1>", f"<p>{_patient_line(patient.first)}; {_e(sop_class_name(i.sop_class))}, "
                                      f"{i.frames} frames{sampled}</p>", '<div class="images">']
    for number, image, width, height in shown:
        parts.append(f'<div><img src="{_e(image)}" alt="frame {number}" width="{width}" height="{height}" />'
                     f"<span>frame {number} of {i.frames}</span></div>")
    parts.append("</div>")
    return _page(title, "\n".join(parts))


def home_page(patients: list[WebPatient], *, web_index: str | None, study_link: Callable[[WebStudy], str] | None,
              title: str, volume: str) -> str:
    """The medium's root INDEX.HTM: what is on it and where to look."""
    parts = [f"<h1>{_e(title)}</h1>", f"<p>{_e(volume)}</p>"]
    if web_index:
        parts.append(f'<p><a href="{_e(web_index)}">View the images in this web browser</a> '
                     "(no software is installed or run).</p>")
    parts.append('<p>DICOM viewers: open the DICOMDIR file at the root of this medium. '
                 'See <a href="README.TXT">README.TXT</a>.</p>')
    for p in patients:
        parts.append(f"<h2>{_patient_line(p.first)}</h2><table>\n<tr><th>Date</th><th>Description</th>"
                     "<th>Modalities</th><th>Objects</th></tr>")
        for st in p.studies:
            i = st.first
            desc = _e(i.study_description or "Study")
            if study_link:
                desc = f'<a href="{_e(study_link(st))}">{desc}</a>'
            parts.append(f"<tr><td>{_e(v.pretty_date(i.study_date))}</td><td>{desc}</td>"
                         f"<td>{_e(st.modalities)}</td><td>{st.count}</td></tr>")
        parts.append("</table>")
    return _page(title, "\n".join(parts))
