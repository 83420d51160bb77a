"""Image Display of PDI media (IHE PDI, RAD-47): what a medium holds, and a local read-only web
view of it (pages with rendered images; mammograms shown in their display orientation).
"""
from __future__ import annotations

import io
import socket
import threading
import warnings
from dataclasses import dataclass, field

from ihecli.pdi import values as v
from ihecli.pdi.media import Medium, Survey, iter_objects
from ihecli.pdi.objects import sop_class_name
from ihecli.pdi.web import Links, WebObject, index_page, object_page, series_page, study_page, tree


@dataclass
class SeriesView:
    series_uid: str
    number: str | None
    modality: str | None
    description: str | None
    objects: int = 0


@dataclass
class StudyView:
    study_uid: str
    date: str | None
    description: str | None
    accession: str | None
    series: list[SeriesView] = field(default_factory=list)


@dataclass
class PatientView:
    patient_id: str | None
    name: str | None
    birth_date: str | None
    sex: str | None
    studies: list[StudyView] = field(default_factory=list)


@dataclass
class MediaContents:
    source: str
    kind: str
    dicomdirs: list[str]
    fileset_id: str
    patients: list[PatientView]
    objects: list[dict]  # every object: path, status, reason, SOP class, UIDs
    unsupported: list[dict]
    problems: list[dict]  # dangling, refused, unreadable
    skipped: list[tuple[str, str]]
    notes: list[str]

    @property
    def counts(self) -> dict:
        return {"patients": len(self.patients), "studies": sum(len(p.studies) for p in self.patients),
                "series": sum(len(s.series) for p in self.patients for s in p.studies),
                "objects": sum(1 for o in self.objects if o["status"] == "ok"),
                "unsupported": len(self.unsupported), "problems": len(self.problems), "files_skipped": len(self.skipped)}


def list_media(medium: Medium) -> MediaContents:
    """Patients, studies, series and objects of a medium (RAD-47, Image Display), from the headers."""
    survey = Survey(medium.name, medium.kind)
    for _ in iter_objects(medium, survey):
        pass
    return contents_of(survey)


def contents_of(survey: Survey) -> MediaContents:
    patients: dict[tuple, PatientView] = {}
    studies: dict[str, StudyView] = {}
    series: dict[str, SeriesView] = {}
    objects, unsupported, problems = [], [], []
    for f in survey.objects:
        i = f.info
        row = {"path": f.path, "status": f.status, "reason": f.reason, "in_dicomdir": f.in_dicomdir,
               "sop_class": i.sop_class if i else (f.ref.sop_class if f.ref else None),
               "sop_class_name": sop_class_name(i.sop_class) if i else None,
               "sop_uid": i.sop_uid if i else (f.ref.sop_uid if f.ref else None),
               "study_uid": i.study_uid if i else (f.ref.study_uid if f.ref else None),
               "series_uid": i.series_uid if i else (f.ref.series_uid if f.ref else None),
               "modality": i.modality if i else (f.ref.modality if f.ref else None)}
        objects.append(row)
        if f.status == "unsupported":
            unsupported.append(row)
        elif f.status != "ok":
            problems.append(row)
        if i is None or f.status not in ("ok", "unsupported"):
            continue
        pk = (i.patient_id or "", i.patient_name or "")
        p = patients.get(pk)
        if p is None:
            p = patients[pk] = PatientView(i.patient_id, i.patient_name, v.clean_da(i.birth_date), i.sex)
        st = studies.get(i.study_uid)
        if st is None:
            st = studies[i.study_uid] = StudyView(i.study_uid, v.clean_da(i.study_date), i.study_description,
                                                  i.accession)
            p.studies.append(st)
        se = series.get(i.series_uid)
        if se is None:
            se = series[i.series_uid] = SeriesView(i.series_uid, i.series_number, i.modality, i.series_description)
            st.series.append(se)
        se.objects += 1
    return MediaContents(survey.medium, survey.kind, survey.dicomdirs, survey.fileset_id, list(patients.values()),
                         objects, unsupported, problems, survey.skipped, survey.notes)


# -- the web view ----------------------------------------------------------------------------------

class MediaViewServer:
    """A local read-only web view of a medium (Starlette on uvicorn).

    start() surveys the medium, binds and returns when it listens; stop() is idempotent.
    """

    def __init__(self, medium: Medium, *, bind: str = "127.0.0.1", port: int = 0):
        self.medium = medium
        self.bind = bind
        self.port = port
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one reader of the medium at a time (pycdlib, zipfile)
        self._decoded: dict[int, object] = {}  # the last multi-frame objects read, their frames decoded once
        self.contents: MediaContents | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}/"

    def _app(self, survey: Survey):
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, Response
        from starlette.routing import Route

        def sort_key(f):
            i = f.info

            def num(x):
                c = v.clean_is(x)
                return int(c) if c is not None else 1 << 40

            return (i.patient_name or "", i.patient_id or "", v.clean_da(i.study_date) or "", i.study_uid,
                    num(i.series_number), i.series_uid, num(i.instance_number), f.path)

        found = sorted((f for f in survey.objects if f.info is not None and f.status in ("ok", "unsupported")),
                       key=sort_key)
        wos = []
        paths: list[str] = []
        multi: dict[int, int] = {}  # the multi-frame objects of paths: their number of frames
        for f in found:
            wo = WebObject(f.info)
            if f.status == "ok" and f.info.is_image:
                wo.image = f"/image/{len(paths)}.jpg"
                paths.append(f.path)
                w, h = f.info.columns or 0, f.info.rows or 0
                if (f.info.modality or "").upper() == "MG" and f.info.orientation:
                    from ihecli.pdi.render import mammo_target

                    tgt = mammo_target(f.info.laterality or "", f.info.orientation)
                    cur = [o.strip().upper()[:1] for o in f.info.orientation]
                    if tgt and cur[0] not in (tgt[0], {"A": "P", "P": "A"}.get(tgt[0])):
                        w, h = h, w
                scale = min(1.0, 1024 / max(w, h, 1))
                wo.width, wo.height = max(1, round(w * scale)), max(1, round(h * scale))
                if f.info.frames > 1:
                    from ihecli.pdi.render import frame_indices

                    multi[len(paths) - 1] = f.info.frames

                    wo.key = str(len(paths) - 1)
                    wo.frames = [(k + 1, f"/image/{wo.key}/{k}.jpg", wo.width, wo.height)
                                 for k in frame_indices(f.info.frames)[1:]]
            else:
                wo.note = f.reason or "not an image"
            wos.append(wo)
        patients = tree(wos)
        study_of, series_of, object_of = {}, {}, {}
        for p in patients:
            for st in p.studies:
                study_of[st.key] = (p, st)
                for se in st.series:
                    series_of[se.key] = (p, st, se)
                    for o in se.objects:
                        if o.frames:
                            object_of[o.key] = (p, st, se, o)
        links = Links(index=lambda: "/", study=lambda st: f"/study/{st.key}", series=lambda se: f"/series/{se.key}",
                      object=lambda o: f"/object/{o.key}")
        title = f"Medium {survey.fileset_id or survey.medium}"

        def index(request):
            return HTMLResponse(index_page(patients, links, title), media_type="application/xhtml+xml")

        def study(request):
            got = study_of.get(request.path_params["key"])
            if got is None:
                return HTMLResponse("<p>no such study</p>", status_code=404)
            return HTMLResponse(study_page(got[0], got[1], links), media_type="application/xhtml+xml")

        def series(request):
            got = series_of.get(request.path_params["key"])
            if got is None:
                return HTMLResponse("<p>no such series</p>", status_code=404)
            return HTMLResponse(series_page(*got, links), media_type="application/xhtml+xml")

        def obj(request):
            got = object_of.get(request.path_params["key"])
            if got is None:
                return HTMLResponse("<p>no such multi-frame object</p>", status_code=404)
            return HTMLResponse(object_page(*got, links), media_type="application/xhtml+xml")

        def image(request):
            k, frame = request.path_params["k"], request.path_params.get("frame", 0)
            if not 0 <= k < len(paths):
                return Response(status_code=404)
            import pydicom

            from ihecli.pdi.render import RenderError, render_dataset

            try:
                if k in multi:
                    # a multi-frame object (a cine loop may be gigabytes): its header once, then
                    # each frame asked for read alone from the medium
                    with self._lock, warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds = self._decoded.get(k)
                        if ds is None:
                            with self.medium.open(paths[k]) as f:
                                ds = pydicom.dcmread(f, force=True, stop_before_pixels=True)
                            self._decoded[k] = ds
                            while len(self._decoded) > 8:
                                self._decoded.pop(next(iter(self._decoded)))
                    if not 0 <= frame < multi[k]:
                        return Response(status_code=404)
                    from pydicom.pixels import pixel_array

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            with self.medium.open(paths[k]) as f:
                                arr = pixel_array(f, index=frame)
                        except Exception:  # a frame pydicom cannot find alone (a broken offset table)
                            arr = pydicom.dcmread(io.BytesIO(self.medium.read(paths[k])), force=True
                                                  ).pixel_array[frame]
                        jpeg, _w, _h = render_dataset(ds, frame, arr)
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds = pydicom.dcmread(io.BytesIO(self.medium.read(paths[k])), force=True)
                        if frame != 0:
                            return Response(status_code=404)
                        jpeg, _w, _h = render_dataset(ds, frame)
            except (RenderError, Exception) as e:
                return Response(f"cannot render: {e}", status_code=422, media_type="text/plain")
            return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

        return Starlette(routes=[Route("/", index), Route("/study/{key}", study), Route("/series/{key}", series),
                                 Route("/object/{key}", obj), Route("/image/{k:int}.jpg", image),
                                 Route("/image/{k:int}/{frame:int}.jpg", image)])

    def start(self) -> "MediaViewServer":
        import uvicorn

        survey = Survey(self.medium.name, self.medium.kind)
        for _ in iter_objects(self.medium, survey):
            pass
        self.contents = contents_of(survey)
        sock = socket.socket(socket.AF_INET6 if ":" in self.bind else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(survey), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="ihe-pdi-view")
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the web view did not start on {self.bind}:{self.port}")
            threading.Event().wait(0.02)
        self._sock = sock
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if getattr(self, "_sock", None) is not None:
            self._sock.close()
            self._sock = None
        self._server = None
