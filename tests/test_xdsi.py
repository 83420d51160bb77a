"""XDS-I.b: `ihe xdsi publish` (RAD-68) into a real `ihe xds serve` registry/repository, the
archive answering Retrieve Imaging Document Set (RAD-69) on its HTTP port, `ihe xdsi retrieve`
(ITI-43 then RAD-69); the manifest checked by dciodvfy, responses by the official XDS.b schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree
from pydicom import dcmread

from helpers import run_cli
from ihecli.archive import Archive
from ihecli.net.soap import SoapClient, schemas
from ihecli.web import DicomWebServer
from ihecli.xds.server import XdsServer
from ihecli.xdsi.manifest import default_repository_uid
from ihecli.xdsi.rad69 import RAD69, XDSI, ImageRequest, request
from test_kin import dciodvfy

PID = "PID7^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
REPO = "1.3.6.1.4.1.21367.2017.2.3.9999"
SOURCE = default_repository_uid("IHE_ARCHIVE")


@pytest.fixture
def xds(tmp_path):
    a = Archive(f"sqlite:///{tmp_path / 'xds.db'}", tmp_path / "xds-storage")
    s = XdsServer(a, repository_unique_id=REPO)
    s.start()
    yield s
    s.stop()
    a.close()


@pytest.fixture
def imaging(tmp_path, corpus):
    """The archive with the corpus, answering RAD-69 at /xdsi as the default repositoryUniqueId."""
    a = Archive(f"sqlite:///{tmp_path / 'img.db'}", tmp_path / "img-storage")
    for p in corpus:
        a.store(p.read_bytes())
    # the PIX Manager said (ITI-10) that the corpus's local patient is PID7 of the affinity domain
    from ihecli.pix.ids import Domain, Identifier
    from ihecli.pix.notification import store_cross_reference

    with a.engine.begin() as conn:
        store_cross_reference(conn, [Identifier(str(dcmread(corpus[0]).PatientID), Domain("HOSP", "", "")),
                                     Identifier("PID7", Domain("", "1.3.6.1.4.1.21367.2005.3.7", "ISO"))])
    web = DicomWebServer(a, imaging_source_uid=SOURCE)
    web.start()
    yield a, web
    web.stop()
    a.close()


def _arc(tmp_path):
    return ("--db", f"sqlite:///{tmp_path / 'img.db'}", "--storage", str(tmp_path / "img-storage"))


def _study(corpus) -> tuple[str, list]:
    study = str(dcmread(corpus[0]).StudyInstanceUID)
    return study, [p for p in corpus if str(dcmread(p).StudyInstanceUID) == study]


def test_publish_then_retrieve_manifest_and_images(xds, imaging, corpus, tmp_path):
    archive, web = imaging
    study, files = _study(corpus)
    r = run_cli("xdsi", "publish", "--study", study, "--patient", PID, "--repository", xds.url, *_arc(tmp_path),
                "--json")
    assert r.code == 0, r.stderr
    pub = json.loads(r.stdout)[0]
    assert pub["instances"] == len(files) == 6 and pub["status"] == "Success"

    # the registry holds it as an XDS-I manifest
    r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", xds.url, "--json")
    entries = json.loads(r.stdout)
    assert len(entries) == 1 and entries[0]["uniqueId"] == pub["uniqueId"]
    assert entries[0]["mimeType"] == "application/dicom"
    assert entries[0]["formatCode"].startswith("1.2.840.10008.5.1.4.1.1.88.59")

    out = tmp_path / "got"
    r = run_cli("xdsi", "retrieve", pub["uniqueId"], "--repository", xds.url, "--repository-id", REPO,
                "--source", web.url + "/xdsi", "--out", str(out), "--json")
    assert r.code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["study"] == study and len(got["images"]) == 6 and not got["errors"]
    manifest = out / "manifest.dcm"
    assert dciodvfy(manifest) == []
    kos = dcmread(manifest)
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"
    series = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {s.RetrieveLocationUID for s in series} == {SOURCE} and {s.RetrieveAETitle for s in series} == {"IHE_ARCHIVE"}
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in files}
    for row in got["images"]:
        ds = dcmread(row["path"])
        assert ds.PixelData == originals[str(ds.SOPInstanceUID)].PixelData
    # the manifest is also in the archive, where C-FIND finds it
    assert len(archive.find(_kos_query(study))) == 1


def _kos_query(study):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.59"
    ds.SOPInstanceUID = ""
    return ds


def test_rad69_answers_validate_and_name_what_is_missing(imaging, corpus):
    archive, web = imaging
    study, files = _study(corpus)
    ds = dcmread(files[0])
    good = ImageRequest(study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), SOURCE)
    gone = ImageRequest(study, str(ds.SeriesInstanceUID), "1.2.3.999", SOURCE)
    elsewhere = ImageRequest(study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), "1.2.3.4.5")
    msg = SoapClient(web.url + "/xdsi").call(RAD69, request([good, gone, elsewhere], ["1.2.840.10008.1.2"]))
    schemas.validate(msg.body)  # an XDS.b RetrieveDocumentSetResponse
    rr = msg.body[0]
    assert rr.get("status").endswith(":PartialSuccess")
    errors = {e.get("location"): e.get("errorCode") for e in rr.iter("{*}RegistryError")}
    assert errors == {"1.2.3.999": "XDSDocumentUniqueIdError", str(ds.SOPInstanceUID): "XDSUnknownRepositoryId"}
    docs = msg.body.findall("{*}DocumentResponse")
    assert len(docs) == 1
    data = msg.binary(docs[0].find("{*}Document"))
    from io import BytesIO

    back = dcmread(BytesIO(data))
    # asked for Implicit VR Little Endian only: the stored Explicit VR file is re-encoded
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" and back.PixelData == ds.PixelData


def test_real_rad69_request_is_read():
    """NIST's RAD-69 request (XCA-I test iig_5409) parses: 7 images of 2 studies."""
    from helpers import DATA
    from ihecli.xdsi.rad69 import read_request

    el = etree.parse(str(DATA / "xdsi" / "RAD-69Request.xml"),
                     etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)).getroot()
    assert el.tag == f"{{{XDSI}}}RetrieveImagingDocumentSetRequest"
    images, tss = read_request(el)
    assert len(images) == 7 and len({i.study_uid for i in images}) == 2
    assert all(i.home.startswith("urn:oid:") and i.repository_uid for i in images)


def test_partial_retrieve_exits_3_and_names_the_missing_image(xds, imaging, corpus, tmp_path):
    archive, web = imaging
    study, files = _study(corpus)
    r = run_cli("xdsi", "publish", "--study", study, "--patient", PID, "--repository", xds.url, *_arc(tmp_path),
                "--json")
    uid = json.loads(r.stdout)[0]["uniqueId"]
    lost = dcmread(files[1])
    archive.blobs.path(archive.blobs.rel_path(str(lost.SOPInstanceUID))).unlink()
    r = run_cli("xdsi", "retrieve", uid, "--repository", xds.url, "--repository-id", REPO,
                "--source", web.url + "/xdsi", "--out", str(tmp_path / "part"))
    assert r.code == 3, r.stderr
    assert str(lost.SOPInstanceUID) in r.stderr and "XDSRepositoryError" in r.stderr
    assert len(list((tmp_path / "part").glob("*.dcm"))) == 6  # the manifest and 5 images


def test_a_study_is_not_registered_under_another_patient(xds, imaging, corpus, tmp_path):
    """PID8 is neither the study's Patient ID nor cross-referenced with it: refused, nothing
    registered; the study's own ID is taken."""
    study, _ = _study(corpus)
    other = "PID8^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
    r = run_cli("xdsi", "publish", "--study", study, "--patient", other, "--repository", xds.url, *_arc(tmp_path))
    assert r.code == 2 and f"belongs to patient {dcmread(corpus[0]).PatientID}" in " ".join(r.stderr.split())
    r = run_cli("xds", "query", "find-documents", "--patient", other, "--registry", xds.url, "--json")
    assert r.code == 0 and json.loads(r.stdout) == []
    own = f"{dcmread(corpus[0]).PatientID}^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
    r = run_cli("xdsi", "publish", "--study", study, "--patient", own, "--repository", xds.url, *_arc(tmp_path))
    assert r.code == 0, r.stderr


def test_publishing_a_study_again_replaces_its_manifest(xds, imaging, corpus, tmp_path):
    """The second manifest of a study replaces the first (RPLC): one approved entry, the first
    deprecated; the consumer finds the newer one."""
    study, _ = _study(corpus)
    args = ("xdsi", "publish", "--study", study, "--patient", PID, "--repository", xds.url, "--registry", xds.url,
            *_arc(tmp_path), "--json")
    r = run_cli(*args)
    assert r.code == 0, r.stderr
    (first,) = json.loads(r.stdout)
    assert first["replaces"] == ""
    r = run_cli(*args)
    assert r.code == 0, r.stderr
    (second,) = json.loads(r.stdout)
    assert second["replaces"] == first["entryUUID"] and second["uniqueId"] != first["uniqueId"]
    assert second["instances"] == first["instances"]  # the earlier manifest is not referenced by the new one
    q = ("xds", "query", "find-documents", "--patient", PID, "--registry", xds.url, "--json")
    approved = json.loads(run_cli(*q).stdout)
    assert [e["uniqueId"] for e in approved] == [second["uniqueId"]]
    deprecated = json.loads(run_cli(*q, "--status", "deprecated").stdout)
    assert [e["uniqueId"] for e in deprecated] == [first["uniqueId"]]


def test_usage_errors(xds, tmp_path):
    r = run_cli("xdsi", "publish", "--repository", xds.url)
    assert r.code == 2 and "--study" in r.stderr
    r = run_cli("xdsi", "retrieve", "--out", str(tmp_path))
    assert r.code == 2 and "uniqueId or --manifest" in r.stderr
    nist = Path(__file__).parent / "data" / "kos" / "IDS-DEPT022-a-kos.dcm"  # Retrieve AE DCM4CHEE: no such node
    r = run_cli("xdsi", "retrieve", "--manifest", str(nist), "--out", str(tmp_path / "n"))
    assert r.code == 2 and "--source URL" in r.stderr and "--dicom NODE" in r.stderr
    r = run_cli("xdsi", "publish", "--study", "1.2.3", "--patient", PID, "--repository", xds.url, *_arc(tmp_path))
    assert r.code == 1 and "not in the archive" in r.stderr
    (tmp_path / "file").write_text("")  # an --out that cannot be a folder: said before anything is fetched
    r = run_cli("xdsi", "retrieve", "--manifest", str(nist), "--out", str(tmp_path / "file" / "out"))
    assert r.code == 2 and f"cannot make the folder {tmp_path / 'file' / 'out'}" in r.stderr


def test_images_by_wado_uri_or_dicom_instead_of_rad69(xds, imaging, corpus, tmp_path):
    """The Imaging Document Consumer's other ways to the images: WADO-URI (RAD-55, --wado) and
    DICOM C-GET (--dicom, or with no endpoint given the profile node whose AE title is the
    manifest's Retrieve AE Title); an image the source lost is named, exit 3."""
    from ihecli.archive.server import DicomServer

    archive, web = imaging
    study, files = _study(corpus)
    r = run_cli("xdsi", "publish", "--study", study, "--patient", PID, "--repository", xds.url, *_arc(tmp_path),
                "--json")
    uid = json.loads(r.stdout)[0]["uniqueId"]
    fetch = ("xdsi", "retrieve", uid, "--repository", xds.url, "--repository-id", REPO)
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p).PixelData for p in files}
    dicom = DicomServer(archive, port=0)
    dicom.start()
    cfg = tmp_path / "nodes.toml"  # the manifest says IHE_ARCHIVE: the profile knows where that is
    cfg.write_text(f'[nodes.pacs]\naet = "IHE_ARCHIVE"\nhost = "127.0.0.1"\nport = {dicom.port}\n')
    try:
        ways = {"wado": ["--wado", web.url + "/wado"], "dicom": ["--dicom", f"IHE_ARCHIVE@127.0.0.1:{dicom.port}"],
                "profile node": ["--config", str(cfg)]}
        for way, args in ways.items():
            out = tmp_path / way.replace(" ", "-")
            cmd = [*args[:2], *fetch, *args[2:]] if way == "profile node" else [*fetch, *args]
            r = run_cli(*cmd, "--out", str(out), "--json")
            assert r.code == 0, (way, r.stderr)
            got = json.loads(r.stdout)
            assert len(got["images"]) == 6 and not got["errors"], way
            for row in got["images"]:
                ds = dcmread(row["path"])
                assert ds.PixelData == originals[str(ds.SOPInstanceUID)], way
        r = run_cli(*fetch, "--wado", web.url + "/wado", "--dicom", "pacs", "--out", str(tmp_path / "x"))
        assert r.code == 2 and "give one of" in r.stderr
        lost = dcmread(files[2])
        archive.blobs.path(archive.blobs.rel_path(str(lost.SOPInstanceUID))).unlink()
        for way, args in (("wado", ["--wado", web.url + "/wado"]), ("dicom", ["--dicom", f"IHE_ARCHIVE@127.0.0.1:{dicom.port}"])):
            r = run_cli(*fetch, *args, "--out", str(tmp_path / f"part-{way}"), "--json")
            assert r.code == 3, (way, r.stderr)
            assert [e["location"] for e in json.loads(r.stdout)["errors"]] == [str(lost.SOPInstanceUID)], way
            assert len(json.loads(r.stdout)["images"]) == 5, way
    finally:
        dicom.stop()
