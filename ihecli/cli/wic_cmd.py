"""`ihe wic`: Web-based Image Capture, the capture side (photos, videos, PDFs to an Image Manager)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import PATIENT_HELP, Ca, Cert, Json, NoTls, Timeout, Tls, TlsFloor, TlsKey, state, tls_config
from ihecli.errors import ExitStatus

app = typer.Typer(help="Web-based Image Capture: send photos, videos and PDFs to an archive over STOW-RS.\n\n"
                       "Example: ihe wic upload photo.jpg --patient PID001 --new-study", no_args_is_help=True)


@app.command("upload")
def upload_cmd(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="JPEG or PNG photos, MP4 videos, PDFs.")],
    patient: Annotated[str, typer.Option("--patient", metavar="ID", help=PATIENT_HELP)],
    patient_name: Annotated[Optional[str], typer.Option("--patient-name", metavar="NAME",
                                                        help="Patient name, e.g. DOE^JOHN.")] = None,
    birth_date: Annotated[Optional[str], typer.Option("--birth-date", metavar="YYYYMMDD",
                                                      help="Patient birth date.")] = None,
    sex: Annotated[Optional[str], typer.Option("--sex", metavar="M|F|O", help="Patient sex.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", metavar="UID",
                                                 help="Study Instance UID.")] = None,
    accession: Annotated[Optional[str], typer.Option("--accession", metavar="ACC", help="Accession number.")] = None,
    new_study: Annotated[bool, typer.Option("--new-study", help="Start a new study (the default without --study "
                                                                "or --accession).")] = False,
    description: Annotated[Optional[str], typer.Option("--study-description", metavar="TEXT",
                                                       help="Study description.")] = None,
    to: Annotated[Optional[str], typer.Option(
        "--url", metavar="URL", envvar="IHE_DICOMWEB_URL",
        help="DICOMweb service root (default: IHE_DICOMWEB_URL, else dicomweb.url of the profile, else "
             "http://127.0.0.1:8080/dicom-web).")] = None,
    timeout: Timeout = 60,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
    # short spellings, hidden: the listed names above keep one meaning across every command
    name_alias: Annotated[Optional[str], typer.Option("--name", hidden=True)] = None,
    to_alias: Annotated[Optional[str], typer.Option("--to", hidden=True)] = None,
    description_alias: Annotated[Optional[str], typer.Option("--description", hidden=True)] = None,
) -> None:
    """Upload photos, videos and PDFs with their patient and study (STOW-RS, RAD-108); the archive
    converts them to DICOM. EXIF acquisition time is sent along; photos are turned upright.

    With --accession, the photos join the archive's study of that accession number (or a new
    study carrying it).

    Example: ihe wic upload wound.jpg consent.pdf --patient PID001 --accession A123
    """
    from ihecli.net import tls as tlsmod
    from ihecli.wic.upload import DEFAULT_URL, upload, warning_text

    patient_name = patient_name or name_alias
    description = description or description_alias
    url = to or to_alias or os.environ.get("IHE_DICOMWEB_URL") or state(ctx).settings().dicomweb.url or DEFAULT_URL
    ssl_context = tlsmod.context(tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca,
                                            floor=tls_floor), server=False)
    if ssl_context is not None and url.startswith("http://"):
        url = "https://" + url[len("http://"):]
    rep = upload(url, list(files), patient=patient, name=patient_name, birth_date=birth_date, sex=sex, study=study,
                 accession=accession, new_study=new_study or not (study or accession), description=description,
                 timeout=timeout, ssl_context=ssl_context)
    if json:
        output.print_json({"status": rep.status, "study": rep.study_uid,
                           "created": [{"file": c.file, "kind": c.kind, "sop_class": c.sop_class,
                                        "sop_instance_uid": c.sop_uid, "url": c.url, "coerced": c.coerced}
                                       for c in rep.created],
                           "failed": rep.failed, "warning": warning_text(rep.warning)})
    else:
        if rep.created:
            output.table([{"File": c.file, "Created": c.kind + (" (values coerced)" if c.coerced else ""),
                           "SOPInstanceUID": c.sop_uid} for c in rep.created], ["File", "Created", "SOPInstanceUID"])
        told = set()
        for f in rep.failed:
            code = ", ".join(x for x in (f["reason"], f.get("meaning")) if x)
            output.warn(f"{f['file'] or f['sop_uid'] or 'an instance'}: failed ({code})"
                        + (f": {f['text']}" if f.get("text") else ""))
            told.add(f.get("text"))
        said = warning_text(rep.warning)
        if said and said not in told:
            output.info(f"the archive said: {said}")
        if rep.created:
            output.info(f"{len(rep.created)} created in study {rep.study_uid or '(several)'}"
                        + (f", {len(rep.failed)} failed" if rep.failed else ""))
        else:
            output.info(f"nothing stored: {output.count(len(rep.failed), 'file')} failed")
    if rep.failed:
        raise typer.Exit(ExitStatus.PARTIAL if rep.created else ExitStatus.REFUSED)
