"""Two communities on loopback, as a tester would set them up: community B publishes a study
as an XDS-I manifest (its archive is the Imaging Document Source, with an XDS registry and
repository, an XCA Responding Gateway and an XCA-I Responding Imaging Gateway); from community
A, a consumer queries across communities, retrieves the manifest and then the images through
A's Initiating Imaging Gateway. Then B's imaging gateway stops halfway."""
from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from helpers import run_cli
from ihecli.archive import Archive
from ihecli.web import DicomWebServer
from ihecli.xca.responding import XcaServer
from ihecli.xds.server import XdsServer
from ihecli.xdsi.manifest import default_repository_uid
from ihecli.xdsi.xcai import GatewayServer, InitiatingImagingGateway, RespondingImagingGateway

AUTHORITY = "1.3.6.1.4.1.21367.2005.3.7"


def _pid(corpus) -> str:
    """The affinity domain ID of the first corpus study's patient (its own Patient ID)."""
    return f"{dcmread(corpus[0]).PatientID}^^^&{AUTHORITY}&ISO"
HOME_B = "urn:oid:1.3.6.1.4.1.21367.13.70.102"
XDS_REPO_B = "1.3.6.1.4.1.21367.13.71.202"
SRC_B = default_repository_uid("IHE_ARCHIVE")


def test_publish_in_b_query_and_retrieve_from_a(tmp_path, corpus):
    db = tmp_path / "b.db"
    arc = Archive(f"sqlite:///{db}", tmp_path / "b-storage")
    for p in corpus:
        arc.store(p.read_bytes())
    study = str(dcmread(corpus[0]).StudyInstanceUID)
    pid = _pid(corpus)
    servers = [XdsServer(arc, repository_unique_id=XDS_REPO_B), XcaServer(arc, home=HOME_B, repository_unique_id=XDS_REPO_B),
               DicomWebServer(arc, imaging_source_uid=SRC_B)]
    for s in servers:
        s.start()
    xds_b, xca_b, web_b = servers
    rig_b = GatewayServer(RespondingImagingGateway(HOME_B, {SRC_B: web_b.url + "/xdsi"}, timeout=10), path="/xcai")
    rig_b.start()
    iig_a = GatewayServer(InitiatingImagingGateway({HOME_B: rig_b.url}, timeout=5), path="/xcai")
    iig_a.start()
    try:
        # B publishes
        r = run_cli("xdsi", "publish", "--study", study, "--patient", pid, "--repository", xds_b.url,
                    "--db", f"sqlite:///{db}", "--storage", str(tmp_path / "b-storage"), "--json")
        assert r.code == 0, r.stderr
        # A queries across communities and fetches the manifest
        community = ["--community", f"{HOME_B}={xca_b.url}"]
        r = run_cli("xca", "query", "find-documents", "--patient", pid, *community, "--json")
        assert r.code == 0, r.stderr
        entry = json.loads(r.stdout)[0]
        assert entry["homeCommunityId"] == HOME_B and entry["mimeType"] == "application/dicom"
        r = run_cli("xca", "retrieve", entry["uniqueId"], "--home", HOME_B, "--repository-id",
                    entry["repositoryUniqueId"], "--out", str(tmp_path / "a"), *community, "--json")
        assert r.code == 0, r.stderr
        manifest = json.loads(r.stdout)[0]["path"]
        # ... and the images through its own imaging gateway
        r = run_cli("xdsi", "retrieve", "--manifest", manifest, "--home", HOME_B, "--source", iig_a.url,
                    "--out", str(tmp_path / "images"), "--json")
        assert r.code == 0, r.stderr
        assert len(json.loads(r.stdout)["images"]) == 6
        # the same in one step: the manifest by its uniqueId from community B (GetDocuments finds
        # its repository, ITI-39 brings it), then the images
        r = run_cli("xdsi", "retrieve", entry["uniqueId"], "--home", HOME_B, *community, "--source", iig_a.url,
                    "--out", str(tmp_path / "one-step"), "--json")
        assert r.code == 0, r.stderr
        assert len(json.loads(r.stdout)["images"]) == 6
        assert (tmp_path / "one-step" / "manifest.dcm").read_bytes() == Path(manifest).read_bytes()
        # B's imaging gateway goes away: A's consumer is told which community failed, once for all
        # of its images
        rig_b.stop()
        r = run_cli("xdsi", "retrieve", "--manifest", manifest, "--home", HOME_B, "--source", iig_a.url,
                    "--out", str(tmp_path / "again"))
        assert r.code == 1 and r.stderr.count("XDSUnavailableCommunity") == 1 and "(6 images" in r.stderr
        # and B's responding gateway too: the manifest cannot come (exit 4)
        xca_b.stop()
        r = run_cli("xdsi", "retrieve", entry["uniqueId"], "--home", HOME_B, *community, "--source", iig_a.url,
                    "--out", str(tmp_path / "gone"), "--timeout", "5")
        assert r.code == 4 and "XDSUnavailableCommunity" in r.stderr
    finally:
        for s in (iig_a, rig_b, *reversed(servers)):
            s.stop()
        arc.close()


def test_cross_community_transactions_are_audited(tmp_path, corpus):
    """ITI-38/39 (both sides) and RAD-69 (both sides) leave events naming their own transaction
    in a real Audit Record Repository, each valid against the DICOM audit schema."""
    import time

    from ihecli import atna
    from ihecli.atna.query import query_events
    from ihecli.atna.repository import AuditRepository
    from test_atna import problems

    arr = AuditRepository(f"sqlite:///{tmp_path / 'arr.db'}", tls_port=None, udp_port=None, tcp_port=0)
    arr.start()
    arc = Archive(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b-storage")
    for p in corpus:
        arc.store(p.read_bytes())
    servers = [XdsServer(arc, repository_unique_id=XDS_REPO_B), XcaServer(arc, home=HOME_B, repository_unique_id=XDS_REPO_B),
               DicomWebServer(arc, imaging_source_uid=SRC_B)]
    for s in servers:
        s.start()
    xds_b, xca_b, web_b = servers
    try:
        cfg = tmp_path / "audit.toml"
        cfg.write_text(f'[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\nspool = "{tmp_path / "spool"}"\n')
        study = str(dcmread(corpus[0]).StudyInstanceUID)
        pid = _pid(corpus)
        r = run_cli("--config", str(cfg), "xdsi", "publish", "--study", study, "--patient", pid, "--repository",
                    xds_b.url, "--db", f"sqlite:///{tmp_path / 'b.db'}", "--storage", str(tmp_path / "b-storage"),
                    "--json")
        assert r.code == 0, r.stderr
        community = ["--community", f"{HOME_B}={xca_b.url}"]
        entry = json.loads(run_cli("--config", str(cfg), "xca", "query", "find-documents", "--patient", pid,
                                   *community, "--json").stdout)[0]
        r = run_cli("--config", str(cfg), "xca", "retrieve", entry["uniqueId"], "--home", HOME_B, "--repository-id",
                    XDS_REPO_B, "--out", str(tmp_path / "a"), *community, "--json")
        manifest = json.loads(r.stdout)[0]["path"]
        r = run_cli("--config", str(cfg), "xdsi", "retrieve", "--manifest", manifest, "--source", web_b.url + "/xdsi",
                    "--out", str(tmp_path / "img"))
        assert r.code == 0, r.stderr
        atna.flush(15)
        want = {("110112", "E", "ITI-38"), ("110107", "C", "ITI-39"), ("110106", "R", "ITI-39"),
                ("110107", "C", "RAD-69"), ("110106", "R", "RAD-69")}
        end = time.monotonic() + 20
        while True:  # the repository stores what arrives in batches: wait for all of it
            arr.flush()
            got = query_events(arr.engine, with_message=True)
            seen = {(e.event.split()[0], e.action, tx) for e in got for tx in ("ITI-38", "ITI-39", "RAD-69")
                    if tx in e.message}
            if want <= seen or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert want <= seen, seen
        for e in got:
            assert problems(e.message.encode("utf-8")) == [], e.event
    finally:
        for s in reversed(servers):
            s.stop()
        arc.close()
        arr.stop()
        atna.configure(None)
