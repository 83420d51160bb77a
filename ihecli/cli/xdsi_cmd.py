"""`ihe xdsi`: XDS-I.b Imaging Document Source (publish) and Imaging Document Consumer (retrieve)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import (Ca, Cert, Db, Json, OptionalOut, OptionalTimeout, Storage, StudyOpt, TlsFloor, TlsKey,
                                state)
from ihecli.cli.xca_cmd import Community
from ihecli.cli.xds_cmd import Home, Patient, Registry, Repository, RepositoryId, _client, _xds, out_folder
from ihecli.errors import ExitStatus, IheError, UsageError
from ihecli.files import write_whole

app = typer.Typer(help="XDS-I.b: publish archive studies as imaging manifests; retrieve manifests and their "
                       "images.\n\nExample: ihe xdsi publish --study 1.2.3.4 --patient 'PID1^^^&1.2.3&ISO'",
                  no_args_is_help=True)

Source = Annotated[Optional[str], typer.Option(
    "--source", metavar="URL",
    help="RAD-69 endpoint of the Imaging Document Source the manifest points at, e.g. "
         "http://pacs:8080/xdsi (`ihe archive serve --http-port 8080`).")]


Wado = Annotated[Optional[str], typer.Option(
    "--wado", metavar="URL",
    help="Fetch the images with WADO-URI (RAD-55) from this endpoint instead of RAD-69, e.g. "
         "http://pacs:8080/wado.")]
DicomNode = Annotated[Optional[str], typer.Option(
    "--dicom", metavar="NODE",
    help="Fetch the images by DICOM C-GET from this node instead of RAD-69 (a profile node, or AET@host:port). "
         "Without --source, --wado or --dicom, the profile node whose AE title is the manifest's Retrieve AE "
         "Title is asked so.")]


def _repository_uid(ctx: typer.Context) -> tuple[str, str]:
    from ihecli.xdsi.manifest import default_repository_uid

    a = state(ctx).settings().archive
    return a.aet, a.repository_uid or default_repository_uid(a.aet)


@app.command("publish")
def publish_cmd(
    ctx: typer.Context,
    study: StudyOpt = None,
    patient: Patient = None,
    repository: Repository = None,
    registry: Registry = None,
    db: Db = None,
    storage: Storage = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not keep the manifest in the archive too.")] = False,
    timeout: OptionalTimeout = None,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Publish studies of the archive: a KOS manifest per study, registered with Provide and
    Register Imaging Document Set (RAD-68).

    The manifest references every instance of the study with the archive's AE title and
    repositoryUniqueId (archive.repository_uid), which answers Retrieve Imaging Document Set
    (RAD-69) on `ihe archive serve --http-port`. Its DocumentEntry: uniqueId = the KOS SOP
    Instance UID, formatCode 1.2.840.10008.5.1.4.1.1.88.59, the Accession Number in
    referenceIdList, the modalities in eventCodeList. A study published before gets a new
    manifest that replaces the earlier one (RPLC; the registry, --registry, tells which entry).

    Example: ihe xdsi publish --study 1.2.840.113619.2.1.1 --patient 'PID1^^^&1.2.3&ISO'
    """
    from ihecli.xdsi.manifest import publish

    if not study:
        raise UsageError("give the study to publish with --study UID")
    aet, repo_uid = _repository_uid(ctx)
    tls = dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor)
    cli = _client(ctx, repository, "repository", timeout, tls)
    reg = _client(ctx, registry, "registry", timeout, tls)  # where an earlier manifest of the study is found
    rows = []
    from ihecli.cli.archive_cmd import open_archive

    with open_archive(ctx, db, storage) as archive:
        for uid in study:
            p = publish(cli, archive, uid, domain=_xds(ctx), patient=patient, retrieve_aet=aet,
                        repository_uid=repo_uid, store=not no_store, registry=reg)
            rows.append({"studyInstanceUID": uid, "uniqueId": p.unique_id, "entryUUID": p.entry_uuid,
                         "patientId": p.patient_id, "instances": p.manifest.instances,
                         "accession": p.manifest.accession, "status": p.status.rsplit(":", 1)[-1],
                         "replaces": p.replaced})
    if json:
        output.print_json(rows)
    else:
        output.table(rows, ["studyInstanceUID", "uniqueId", "instances", "accession", "status"])


@app.command("retrieve")
def retrieve_cmd(
    ctx: typer.Context,
    unique_id: Annotated[Optional[str], typer.Argument(metavar="MANIFEST_UNIQUE_ID",
                                                       help="uniqueId of the manifest's DocumentEntry.")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", metavar="FILE", exists=True, dir_okay=False,
                                                     help="A manifest (KOS) file instead of fetching one.")] = None,
    out: OptionalOut = None,
    store: Annotated[bool, typer.Option("--store", help="Store them in the local archive.")] = False,
    repository_id: RepositoryId = None,
    repository: Repository = None,
    source: Source = None,
    wado: Wado = None,
    dicom: DicomNode = None,
    home: Home = None,
    community: Community = None,
    transfer_syntax: Annotated[Optional[list[str]], typer.Option(
        "--transfer-syntax", metavar="UID",
        help="Transfer syntaxes to ask the images in (repeatable; default: Explicit and Implicit VR Little "
             "Endian, and the stored ones).")] = None,
    db: Db = None,
    storage: Storage = None,
    timeout: OptionalTimeout = None,
    cert: Cert = None,
    tls_key: TlsKey = None,
    ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
) -> None:
    """Fetch a manifest (Retrieve Document Set, ITI-43) and the images it references (Retrieve
    Imaging Document Set, RAD-69).

    The manifest is written as DIR/manifest.dcm, each image as DIR/<SOP Instance UID>.dcm. Across
    communities (XCA-I) give the images' --home and, as --source, this community's Initiating
    Imaging Gateway; the manifest then comes through the responding gateways (--community or
    xds.communities; ITI-38/39). Instead of RAD-69 the images can come by WADO-URI (--wado) or
    DICOM C-GET (--dicom, or the profile node with the manifest's Retrieve AE Title). Exit status
    3 when only some images came (each missing one is named).

    Example: ihe xdsi retrieve 1.2.826.0.1.3680043.8.498.1 --source http://pacs:8080/xdsi --out ./study
    """
    import pydicom

    from ihecli.kos.document import read_kos
    from ihecli.net.soap import SoapClient
    from ihecli.xds import client as xc
    from ihecli.xds.messages import DocumentRequest, XdsError
    from ihecli.xdsi.rad69 import ImageRequest, retrieve_imaging_document_set

    if (unique_id is None) == (manifest is None):
        raise UsageError("give either the manifest's uniqueId or --manifest FILE")
    if out is None and not store:
        raise UsageError("say where the images go: --out DIR and/or --store")
    if sum(x is not None for x in (source, wado, dicom)) > 1:
        raise UsageError("give one of --source (RAD-69), --wado (WADO-URI) and --dicom (C-GET)")
    if out is not None:
        out_folder(out)  # before anything is fetched
    tls = dict(cert=cert, key=tls_key, ca=ca, floor=tls_floor)
    if manifest is not None:
        data = manifest.read_bytes()
    elif home and not repository and (community or _xds(ctx).communities) and home != _xds(ctx).home:
        data = _manifest_across(ctx, unique_id, home, repository_id, community, timeout)
    else:
        repo = repository_id or _xds(ctx).repository_unique_id
        res = xc.retrieve_document_set(_client(ctx, repository, "repository", timeout, tls),
                                       [DocumentRequest(repo, unique_id, home or "")])
        if not res.documents:
            raise UsageError(f"the repository returned no document {unique_id}")
        data = res.documents[0].data
    try:
        from io import BytesIO

        kos = read_kos(pydicom.dcmread(BytesIO(data)))
    except Exception as e:
        raise UsageError(f"the manifest is not a Key Object Selection Document: {e}") from None
    series = _series_retrieve(data)
    images = [ImageRequest(r.study_uid, r.series_uid, r.sop_uid, series.get(r.series_uid, ("", ""))[0], home or "")
              for r in kos.references]
    if not images:
        raise UsageError("the manifest references no image")
    from ihecli.cli.options import node_tls, tls_config
    from ihecli.xdsi import fetch

    def https(url: str):
        return tls_config(ctx, **tls, default_on=True) if url.startswith("https://") else None

    settings = state(ctx).settings()
    wait = timeout or _xds(ctx).timeout
    by_node = {} if source or wado else _dicom_nodes(ctx, images, series, dicom)
    if wado:
        documents, all_errors = fetch.by_wado(wado, images, timeout=wait, tls_config=https(wado),
                                              transfer_syntax=transfer_syntax[0] if transfer_syntax else None)
    elif by_node:
        documents, all_errors = [], []
        for node, imgs in by_node.items():
            got, errs = fetch.by_dicom(node, imgs, calling_aet=settings.calling_aet, timeout=wait,
                                       tls=node_tls(ctx, node))
            documents += got
            all_errors += errs
    else:
        unknown = sorted({i.series_uid for i in images if not i.repository_uid})
        if unknown:
            raise UsageError(f"the manifest gives no Retrieve Location UID for series {unknown[0]}")
        url = source or _default_source({i.repository_uid for i in images})
        tss = transfer_syntax or ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        try:
            res = retrieve_imaging_document_set(SoapClient(url, timeout=wait, tls_config=https(url)), images, tss)
            documents, all_errors = res.documents, res.errors
        except XdsError as e:  # Failure: no image came, each error said below
            documents, all_errors = [], e.errors
    rows = []
    if out is not None:
        path = out / "manifest.dcm"
        try:  # each file whole under its name (a full disk, Ctrl-C)
            write_whole(path, data)
            for d in documents:
                path = out / f"{d.document_unique_id}.dcm"
                write_whole(path, d.data)
                rows.append({"sopInstanceUID": d.document_unique_id, "size": len(d.data), "path": str(path)})
        except OSError as e:
            raise IheError(f"cannot write {path}: {e.strerror or e} ({len(rows)} of {len(documents)} images "
                           "written)") from None
    if store:
        from ihecli.cli.archive_cmd import open_archive

        with open_archive(ctx, db, storage) as archive:
            archive.store(data)
            for d in documents:
                archive.store(d.data)
        if out is None:
            rows = [{"sopInstanceUID": d.document_unique_id, "size": len(d.data), "path": ""} for d in documents]
    errors = [e for e in all_errors if e.is_error]
    if json:
        output.print_json({"manifest": kos.sop_uid, "study": kos.study_uid, "images": rows,
                           "errors": [{"code": e.code, "location": e.location, "context": e.context} for e in errors]})
    else:
        if rows:
            output.table(rows, ["sopInstanceUID", "size", "path"])
        output.info(f"{len(documents)} of {len(images)} images of study {kos.study_uid}")
    said: dict[tuple[str, str], list[str]] = {}  # the same error for many images is said once
    for e in errors:
        said.setdefault((e.code, e.context), []).append(e.location or "")
    for (code, context), where in said.items():
        if len(where) == 1:
            output.error(f"{where[0]} {code}: {context}".strip())
        else:
            output.error(f"{code}: {context} ({len(where)} images, the first {where[0]})")
    if errors or len(documents) < len(images):
        raise typer.Exit(ExitStatus.PARTIAL if documents else ExitStatus.REFUSED)


def _manifest_across(ctx: typer.Context, unique_id: str, home: str, repository_id: Optional[str],
                     community: Optional[list[str]], timeout: Optional[float]) -> bytes:
    """The manifest from community ``home`` through the responding gateways (--community or
    xds.communities; XCA: where it is kept by GetDocuments unless --repository-id says, then ITI-39)."""
    from ihecli.cli.xca_cmd import _communities
    from ihecli.xca.initiating import cross_gateway_retrieve, locate_documents
    from ihecli.xds.messages import DocumentRequest

    comms, wait = _communities(ctx, community), timeout or _xds(ctx).timeout
    if repository_id:
        reqs, found_by = [DocumentRequest(repository_id, unique_id, home)], []
    else:
        reqs, found_by, _ = locate_documents(comms, [unique_id], home=home, timeout=wait)
    results = cross_gateway_retrieve(comms, reqs, timeout=wait) if reqs else []
    for r in results or found_by:
        if r.documents:
            return r.documents[0].data
        for e in r.errors:
            if e.is_error:
                raise IheError(f"{home}: {e.code}: {e.context}", exit_status=ExitStatus.UNREACHABLE
                               if e.code == "XDSUnavailableCommunity" else ExitStatus.REFUSED)
    raise IheError(f"community {home} has no document {unique_id}")


def _series_retrieve(data: bytes) -> dict[str, tuple[str, str]]:
    """Retrieve Location UID (0040,E011) and Retrieve AE Title (0008,0054) of each referenced
    series of a manifest."""
    from io import BytesIO

    import pydicom

    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    out = {}
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for se in study.get("ReferencedSeriesSequence", []):
            aet = se.get("RetrieveAETitle", "") or ""
            aet = str(aet[0] if isinstance(aet, (list, pydicom.multival.MultiValue)) else aet).strip()
            out[str(se.SeriesInstanceUID)] = (str(se.get("RetrieveLocationUID", "") or ""), aet)
    return out


def _dicom_nodes(ctx: typer.Context, images, series: dict[str, tuple[str, str]], dicom: str | None) -> dict:
    """{node: its images} for C-GET: every image from --dicom, else each series from the profile
    node with the series' Retrieve AE Title; {} when a series has no such node (RAD-69 then)."""
    settings = state(ctx).settings()
    if dicom:
        return {settings.node(dicom): list(images)}
    by_aet = {n.aet: n for n in settings.nodes.values()}
    out: dict = {}
    for img in images:
        node = by_aet.get(series.get(img.series_uid, ("", ""))[1])
        if node is None:
            return {}
        out.setdefault(node, []).append(img)
    return out


def _default_source(repository_uids: set[str]) -> str:
    raise UsageError(f"give the RAD-69 endpoint of Imaging Document Source {sorted(repository_uids)[0]} "
                     "with --source URL (or fetch the images with --wado URL or --dicom NODE)")
