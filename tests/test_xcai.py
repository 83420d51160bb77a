"""XCA-I: community B's archive is an Imaging Document Source (RAD-69 at /xdsi) behind B's
Responding Imaging Gateway; community A's consumer asks A's Initiating Imaging Gateway with
`ihe xdsi retrieve --home B`. Also: B's gateway down, unknown communities and sources, NIST's
RAD-75 body; responses checked against the XDS.b schema."""
from __future__ import annotations

import json

import pytest
from lxml import etree
from pydicom import dcmread

from helpers import DATA, free_port, run_cli
from ihecli.archive import Archive
from ihecli.kos import codes
from ihecli.kos.builder import build_kos
from ihecli.kos.document import encode
from ihecli.kos.selection import Selection, from_archive
from ihecli.net.soap import SoapClient, schemas
from ihecli.web import DicomWebServer
from ihecli.xdsi.rad69 import read_request, request
from ihecli.xdsi.xcai import RAD75, GatewayServer, InitiatingImagingGateway, RespondingImagingGateway

HOME_B = "urn:oid:1.3.6.1.4.1.21367.13.70.102"
SRC_B = "1.3.6.1.4.1.21367.13.71.102"


@pytest.fixture
def community_b(tmp_path, corpus):
    a = Archive(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b-storage")
    for p in corpus:
        a.store(p.read_bytes())
    web = DicomWebServer(a, imaging_source_uid=SRC_B)
    web.start()
    rig = GatewayServer(RespondingImagingGateway(HOME_B, {SRC_B: web.url + "/xdsi"}, timeout=10), path="/xcai")
    rig.start()
    yield a, web, rig
    rig.stop()
    web.stop()
    a.close()


def _manifest(archive, corpus, tmp_path):
    study = str(dcmread(corpus[0]).StudyInstanceUID)
    sel = from_archive(archive, Selection(studies=[study]))
    kos = build_kos(codes.MANIFEST, sel.found, retrieve_aet="B_ARCHIVE", retrieve_location_uid=SRC_B)
    path = tmp_path / "manifest.dcm"
    path.write_bytes(encode(kos))
    return path, sel.found


def test_consumer_in_a_gets_images_of_b_through_both_gateways(community_b, corpus, tmp_path):
    archive, web, rig = community_b
    manifest, found = _manifest(archive, corpus, tmp_path)
    with GatewayServer(InitiatingImagingGateway({HOME_B: rig.url}, timeout=10), path="/xcai") as iig:
        r = run_cli("xdsi", "retrieve", "--manifest", str(manifest), "--source", iig.url, "--home", HOME_B,
                    "--out", str(tmp_path / "got"), "--json")
    assert r.code == 0, r.stderr
    got = json.loads(r.stdout)
    assert len(got["images"]) == len(found) == 6 and not got["errors"]
    sops = {str(d.SOPInstanceUID) for d in found}
    assert {str(dcmread(x["path"]).SOPInstanceUID) for x in got["images"]} == sops


def test_responding_gateway_down_fails_each_image_named(community_b, corpus, tmp_path):
    archive, web, rig = community_b
    manifest, found = _manifest(archive, corpus, tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/xcai"
    with GatewayServer(InitiatingImagingGateway({HOME_B: dead}, timeout=5), path="/xcai") as iig:
        r = run_cli("xdsi", "retrieve", "--manifest", str(manifest), "--source", iig.url, "--home", HOME_B,
                    "--out", str(tmp_path / "got"))
    assert r.code == 1, r.stderr
    assert "XDSUnavailableCommunity" in r.stderr


def test_gateways_answer_partial_success_with_located_errors(community_b, corpus):
    archive, web, rig = community_b
    from ihecli.xdsi.rad69 import ImageRequest

    ds = dcmread(corpus[0])
    ok = ImageRequest(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), SRC_B, HOME_B)
    other_src = ImageRequest(ok.study_uid, ok.series_uid, "1.2.3.1", "1.2.3.4.5", HOME_B)
    other_home = ImageRequest(ok.study_uid, ok.series_uid, "1.2.3.2", SRC_B, "urn:oid:9.9")
    # the XDS-I.b request schema is not among the official schemas shipped: the answer is checked
    msg = SoapClient(rig.url).call(RAD75, request([ok, other_src, other_home], []))
    schemas.validate(msg.body)
    rr = msg.body[0]
    assert rr.get("status").endswith(":PartialSuccess")
    assert {(e.get("errorCode"), e.get("location")) for e in rr.iter("{*}RegistryError")} == {
        ("XDSUnknownRepositoryId", "1.2.3.1"), ("XDSUnknownCommunity", "1.2.3.2")}
    docs = msg.body.findall("{*}DocumentResponse")
    assert len(docs) == 1 and docs[0].findtext("{*}HomeCommunityId") == HOME_B


def test_nist_rad75_body_is_answered(community_b):
    _archive, _web, rig = community_b
    el = etree.parse(str(DATA / "xdsi" / "RAD-75Request.xml"),
                     etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)).getroot()
    images, tss = read_request(el)
    assert images
    msg = SoapClient(rig.url).call(RAD75, el)
    schemas.validate(msg.body)
    codes_ = {e.get("errorCode") for e in msg.body.iter("{*}RegistryError")}
    assert codes_ and codes_ <= {"XDSUnknownCommunity", "XDSUnknownRepositoryId"}
