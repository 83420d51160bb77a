"""Document Source: turn files into submissions (ITI-41 content) with the affinity domain's defaults.

``make_submissions(files, domain, patient=..., ...)`` gives one Submission per batch of files:
a SubmissionSet, a DocumentEntry per file (uniqueId and entryUUID made here, hash and size
computed by the repository), an optional new Folder holding them, an optional RPLC of an
existing entry. DICOM Key Object Selection manifests get formatCode 1.2.840.10008.5.1.4.1.1.88.59
and mime type application/dicom (XDS-I.b); other DICOM files application/dicom.
"""
from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path

from ihecli.errors import UsageError
from ihecli.xds import vocabulary as v
from ihecli.xds.client import Submission
from ihecli.xds.model import (Association, Author, Code, DocumentEntry, Folder, SubmissionSet, cx_parts, make_cx,
                              new_unique_id, new_uuid, now_dtm)


@dataclass
class Options:
    patient: str
    title: str = ""
    class_code: str = ""
    type_code: str = ""
    format_code: str = ""
    confidentiality_code: str = ""
    folder: str = ""
    replace: str = ""
    mime_type: str = ""


def dicom_sop_class(data: bytes) -> str | None:
    """The SOP Class UID of a DICOM Part-10 file, None for anything else."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    from io import BytesIO

    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(ds.get("SOPClassUID", "")) or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    except Exception:
        return ""


def document_entry(data: bytes, name: str, domain, o: Options, patient: str) -> DocumentEntry:
    from ihecli.xds.cda import CdaRefused, read_header

    sop_class = dicom_sop_class(data)
    fmt = o.format_code or domain.format_code
    mime = o.mime_type
    try:
        cda = read_header(data) if sop_class is None else None  # a CDA document says much of it itself
    except CdaRefused as e:
        raise UsageError(f"{name}: {e}: remove the DOCTYPE; nothing submitted") from None
    if sop_class is not None:
        mime = mime or "application/dicom"
        if sop_class == v.KOS_SOP_CLASS and not o.format_code:
            fmt = v.KOS_FORMAT
    if cda is not None:
        check_cda_patient(cda, patient, name)
        mime = mime or "text/xml"
    if not mime:
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"

    def from_cda(given: str, found, default: str, what: str) -> Code:
        if given or found is None:
            return Code.parse(given or default, what)
        return Code(found[0], found[2], found[1])

    de = DocumentEntry(
        entry_uuid=new_uuid(), unique_id=new_unique_id(domain.unique_id_root), patient_id=patient,
        title=o.title or (cda.title if cda else "") or name, mime_type=mime, object_type=v.DE_STABLE,
        class_code=Code.parse(o.class_code or domain.class_code, "class code"),
        type_code=from_cda(o.type_code, cda.type_code if cda else None, domain.type_code, "type code"),
        format_code=Code.parse(fmt, "format code"),
        healthcare_facility_type_code=Code.parse(domain.healthcare_facility_type_code,
                                                 "healthcare facility type code"),
        practice_setting_code=Code.parse(domain.practice_setting_code, "practice setting code"),
        confidentiality_codes=[from_cda(o.confidentiality_code, cda.confidentiality if cda else None,
                                        domain.confidentiality_code, "confidentiality code")],
        creation_time=(cda.creation_time if cda else "") or now_dtm(),
        language_code=(cda.language if cda else "") or domain.language, source_patient_id=patient)
    if cda is not None:
        de.service_start_time, de.service_stop_time = cda.service_start, cda.service_stop
        de.authors = [Author(person=p) for p in cda.authors]
    return de


def check_cda_patient(cda, patient: str, name: str) -> None:
    """A CDA document whose recordTarget has an ID in the affinity domain must be about the patient
    it is submitted for (IDs of other domains cannot be compared here)."""
    pid, oid = cx_parts(patient)
    ours = [ext for root, ext in cda.patient_ids if root == oid]
    if ours and pid not in ours:
        raise UsageError(f"{name}: the CDA document is about patient {ours[0]} of {oid}, not {pid}: nothing submitted")


# a submission set's documents together, at most (a larger document goes alone): repositories refuse
# requests over a limit (`ihe xds serve`: 256 MiB by default), and one huge request holds the memory
MAX_SET_BYTES = 64 << 20


def _chunks(files: list[tuple[str, bytes]], batch: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    out: list[list[tuple[str, bytes]]] = []
    size = 0
    for f in files:
        if not out or len(out[-1]) >= batch or (out[-1] and size + len(f[1]) > max_bytes):
            out.append([])
            size = 0
        out[-1].append(f)
        size += len(f[1])
    return out


def make_submissions(files: list[tuple[str, bytes]], domain, o: Options, *, batch: int = 100,
                     max_bytes: int = MAX_SET_BYTES) -> list[Submission]:
    """Submissions of at most ``batch`` documents and ``max_bytes`` of them each (a larger document
    alone); ``files`` are (name, bytes)."""
    if not files:
        raise UsageError("nothing to submit: give files or folders")
    patient = make_cx(o.patient, domain.assigning_authority)
    if o.replace and len(files) != 1:
        raise UsageError("--replace takes exactly one file (the new version of that document)")
    if o.replace and not o.replace.startswith("urn:uuid:"):
        raise UsageError(f"--replace wants the entryUUID (urn:uuid:...) of the document, not {o.replace!r}")
    folder = None
    if o.folder:
        folder = Folder(entry_uuid=new_uuid(), unique_id=new_unique_id(domain.unique_id_root), patient_id=patient,
                        title=o.folder, codes=[Code.parse(domain.folder_code, "folder code")])
    out = []
    for n, chunk in enumerate(_chunks(files, max(1, batch), max_bytes)):
        ss = SubmissionSet(entry_uuid=new_uuid(), unique_id=new_unique_id(domain.unique_id_root),
                           source_id=domain.source_id, patient_id=patient, submission_time=now_dtm(),
                           title=o.title if len(files) == 1 else "",
                           content_type_code=Code.parse(domain.content_type_code, "content type code"))
        sub = Submission(ss, names=[name for name, _ in chunk])
        for name, data in chunk:
            sub.documents.append((document_entry(data, name, domain, o, patient), data))
        if folder is not None:
            if n == 0:
                sub.folders.append(folder)
            for de, _ in sub.documents:
                fa = Association(new_uuid(), v.HAS_MEMBER, folder.entry_uuid, de.entry_uuid)
                sub.associations.append(fa)
                sub.associations.append(Association(new_uuid(), v.HAS_MEMBER, ss.entry_uuid, fa.entry_uuid))
        if o.replace:
            de = sub.documents[0][0]
            sub.associations.append(Association(new_uuid(), v.RPLC, de.entry_uuid, o.replace))
        out.append(sub)
    return out


def read_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The files named, and the regular files under the folders named (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                # regular files only: a named pipe or a socket in the folder would be read for ever
                out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")
                        and (Path(dirpath) / f).is_file()]
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    return out


def metadata_submission(path: Path, files: list[Path]) -> Submission:
    """A submission from full ebRIM metadata (a SubmitObjectsRequest, a ProvideAndRegister request or
    a RegistryObjectList): the files go to its ExtrinsicObjects in document order."""
    from ihecli.net.soap.xml import RIM, XmlError, parse_xml, q
    try:
        root = parse_xml(path.read_bytes())
    except (OSError, XmlError) as e:
        raise UsageError(f"{path}: {e}") from None
    rol = root if root.tag == q(RIM, "RegistryObjectList") else root.find(f".//{q(RIM, 'RegistryObjectList')}")
    if rol is None:
        raise UsageError(f"{path}: no rim:RegistryObjectList (give a SubmitObjectsRequest, a "
                         "ProvideAndRegisterDocumentSetRequest or a RegistryObjectList)")
    entries = [el for el in rol.iter(q(RIM, "ExtrinsicObject"))]
    if len(entries) != len(files):
        raise UsageError(f"{path} has {len(entries)} ExtrinsicObjects but {len(files)} files were given")
    sub = Submission(None, metadata=rol)
    for el, f in zip(entries, files):
        try:
            data = f.read_bytes()
        except OSError as e:
            raise UsageError(f"{f}: {e.strerror or e}") from None
        sub.metadata_documents[el.get("id")] = (data, el.get("mimeType") or mimetypes.guess_type(f.name)[0]
                                                or "application/octet-stream")
    return sub
