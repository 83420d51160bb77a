"""`ihe xds submit|query|retrieve|delete|serve` as a user runs them, against a real server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
import requests
from pydicom.data import get_testdata_file

from helpers import free_port, run_cli, wait_port
from test_tls import pki  # noqa: F401  (the fixture)
from ihecli.archive import Archive
from ihecli.net.soap import schemas
from ihecli.xds import vocabulary as v
from ihecli.xds.server import XdsServer

PID = "PID7^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
REPO = "1.3.6.1.4.1.21367.2017.2.3.9999"


@pytest.fixture(autouse=True)
def strict():
    schemas.STRICT = True
    yield
    schemas.STRICT = False


@pytest.fixture
def srv(tmp_path):
    a = Archive(f"sqlite:///{tmp_path / 'xds.db'}", tmp_path / "xds-storage")
    s = XdsServer(a, repository_unique_id=REPO)
    s.start()
    yield s
    s.stop()
    a.close()


def ihe(srv, *args):
    """`ihe ARGS` with the server's endpoint."""
    return run_cli(*args, *(("--registry", srv.url) if args[1] in ("query", "delete") else ("--repository", srv.url)))


def js(r):
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_submit_query_retrieve_delete(srv, tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(5):
        (tmp_path / "docs" / f"note{i}.txt").write_text(f"note {i}\n")
    r = ihe(srv, "xds", "submit", str(tmp_path / "docs"), "--patient", PID, "--folder", "Notes", "--batch", "2", "--json")
    docs = js(r)
    assert len(docs) == 5 and {d["title"] for d in docs} == {f"note{i}.txt" for i in range(5)}
    assert len({d["submissionSetUniqueId"] for d in docs}) == 3  # batches of 2
    found = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))
    assert {d["uniqueId"] for d in found} == {d["uniqueId"] for d in docs}
    one = found[0]
    for key in ("entryUUID", "uniqueId", "patientId", "title", "classCode", "status", "mimeType", "hash", "size",
                "repositoryUniqueId", "creationTime", "formatCode", "confidentialityCode"):
        assert one[key], key
    assert one["status"] == "Approved" and one["repositoryUniqueId"] == REPO and one["mimeType"] == "text/plain"
    # every stored query by name answers
    (folder,) = js(ihe(srv, "xds", "query", "find-folders", "--patient", PID, "--json"))
    assert folder["title"] == "Notes"
    sets = js(ihe(srv, "xds", "query", "find-submission-sets", "--patient", PID, "--json"))
    assert len(sets) == 3
    calls = {
        "get-all": ["--patient", PID],
        "get-documents": ["--unique-id", one["uniqueId"]],
        "get-folders": ["--uuid", folder["entryUUID"]],
        "get-associations": ["--uuid", one["entryUUID"]],
        "get-documents-and-associations": ["--uuid", one["entryUUID"]],
        "get-submission-sets": ["--uuid", one["entryUUID"]],
        "get-submission-set-and-contents": ["--uuid", sets[0]["entryUUID"]],
        "get-folder-and-contents": ["--unique-id", folder["uniqueId"]],
        "get-folders-for-document": ["--uuid", one["entryUUID"]],
        "get-related-documents": ["--uuid", one["entryUUID"]],
    }
    counts = {name: len(js(ihe(srv, "xds", "query", name, *a, "--json"))) for name, a in calls.items()}
    assert counts == {"get-all": 5 + 3 + 1 + 5 + 5 + 5 + 1, "get-documents": 1, "get-folders": 1,
                      "get-associations": 2, "get-documents-and-associations": 3, "get-submission-sets": 2,
                      "get-submission-set-and-contents": 1 + 2 + 1 + 2 + 1 + 2 + 2,
                      "get-folder-and-contents": 1 + 5 + 5, "get-folders-for-document": 1,
                      "get-related-documents": 0}
    refs = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--object-ref", "--json"))
    assert {x["objectType"] for x in refs} == {"ObjectRef"} and len(refs) == 5
    table = ihe(srv, "xds", "query", "get-all", "--patient", PID)
    assert table.code == 0 and "Folders" in table.stdout and "Notes" in table.stdout
    # retrieve two, one unknown: partial success, exit 3
    out = tmp_path / "out"
    r = ihe(srv, "xds", "retrieve", docs[0]["uniqueId"], docs[1]["uniqueId"], "2.25.404", "--out", str(out), "--json")
    assert r.code == 3 and "XDSDocumentUniqueIdError" in r.stderr
    got = json.loads(r.stdout)
    titles = {d["uniqueId"]: d["title"] for d in docs}
    assert len(got) == 2
    for d in got:
        assert (out / (d["uniqueId"] + ".txt")).read_text() == (tmp_path / "docs" / titles[d["uniqueId"]]).read_text()
    # replace, then delete the new version
    (tmp_path / "v2.txt").write_text("note 0, corrected\n")
    r = ihe(srv, "xds", "submit", str(tmp_path / "v2.txt"), "--patient", PID, "--replace", docs[0]["entryUUID"],
            "--json")
    (new,) = js(r)
    dep = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--status", "deprecated", "--json"))
    assert [d["entryUUID"] for d in dep] == [docs[0]["entryUUID"]]
    rel = js(ihe(srv, "xds", "query", "get-related-documents", "--uuid", new["entryUUID"], "--json"))
    assert {x["objectType"] for x in rel} == {"DocumentEntry", "Association"} and len(rel) == 3
    dry = ihe(srv, "xds", "delete", new["entryUUID"], "--dry-run", "--json")
    plan = js(dry)
    kinds = sorted(x["objectType"] for x in plan)
    # the entry, its HasMember from its set, the RPLC, the folder membership it got from the replaced
    # entry (made by the registry), and its submission set, which would be left empty
    assert kinds == ["Association"] * 3 + ["DocumentEntry", "SubmissionSet"]
    assert len(js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))) == 5  # dry run: all there
    r = ihe(srv, "xds", "delete", new["entryUUID"])
    assert r.code == 2 and "--yes" in r.stderr  # not a terminal: no silent deletion
    r = ihe(srv, "xds", "delete", new["entryUUID"], "--yes")
    assert r.code == 0, r.stderr
    left = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))
    assert new["uniqueId"] not in {d["uniqueId"] for d in left} and len(left) == 4
    r = ihe(srv, "xds", "delete", new["entryUUID"], "--yes")
    assert r.code == 1 and "UnresolvedReferenceException" in r.stderr


def test_kos_manifest_and_metadata_file(srv, tmp_path):
    kos = get_testdata_file("rtplan.dcm")  # any DICOM: application/dicom
    r = ihe(srv, "xds", "submit", kos, "--patient", PID, "--json")
    (d,) = js(r)
    assert d["mimeType"] == "application/dicom"
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(kos)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = v.KOS_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "manifest.dcm")
    (m,) = js(ihe(srv, "xds", "submit", str(tmp_path / "manifest.dcm"), "--patient", PID, "--json"))
    (e,) = js(ihe(srv, "xds", "query", "get-documents", "--uuid", m["entryUUID"], "--json"))
    assert e["formatCode"].startswith("1.2.840.10008.5.1.4.1.1.88.59^") and e["mimeType"] == "application/dicom"
    # --metadata: full control over the ebRIM (the IPF sample; its document comes from a file)
    meta = os.path.join(os.path.dirname(__file__), "data", "xds", "ipf-SubmitObjectsRequest_ebrs30.xml")
    (tmp_path / "cda.xml").write_text("<ClinicalDocument/>")
    r = ihe(srv, "xds", "submit", str(tmp_path / "cda.xml"), "--metadata", meta, "--patient", PID)
    assert r.code == 2 and "--patient would not be used" in r.stderr  # the metadata names its own patient
    r = ihe(srv, "xds", "submit", str(tmp_path / "cda.xml"), "--metadata", meta, "--json")
    assert r.code == 0, r.stderr
    (row,) = r.json  # what was registered, as the metadata gives it
    assert (row["uniqueId"], row["title"], row["mimeType"]) == ("1.3.6.1.4.1.21367.2005.3.9999.32", "Physical",
                                                                "text/xml")
    assert row["entryUUID"] == "Document01 (symbolic)"
    (ipf,) = js(ihe(srv, "xds", "query", "get-documents", "--unique-id", "1.3.6.1.4.1.21367.2005.3.9999.32", "--json"))
    assert ipf["patientId"] == "SELF-5^^^&1.3.6.1.4.1.21367.2005.3.7&ISO" and ipf["size"] == 19


def test_usage_errors_and_unreachable(srv, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    r = ihe(srv, "xds", "submit", str(tmp_path / "a.txt"), "--patient", "12345")
    assert r.code == 2 and "ID^^^&OID&ISO" in r.stderr
    r = ihe(srv, "xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--class", "no-scheme")
    assert r.code == 2 and "CODE^DISPLAY^SCHEME" in r.stderr
    r = ihe(srv, "xds", "submit", str(tmp_path / "missing.txt"), "--patient", PID)
    assert r.code == 2 and "no such file" in r.stderr
    r = ihe(srv, "xds", "query", "find-everything", "--patient", PID)
    assert r.code == 2 and "find-documents" in r.stderr
    r = ihe(srv, "xds", "query", "get-documents")
    assert r.code == 2 and "needs entryUUIDs (--uuid urn:uuid:...) or uniqueIds (--unique-id)" in r.stderr
    r = ihe(srv, "xds", "query", "get-associations")
    assert r.code == 2 and "needs entryUUIDs (--uuid urn:uuid:...)" in r.stderr
    r = ihe(srv, "xds", "query", "get-documents", "--uuid", "urn:uuid:4c8d9a52-1e2f-4a6b-9c3d-0e1f2a3b4c5d",
            "--unique-id", "1.2.3")
    assert r.code == 2 and "not both: give --uuid or --unique-id" in r.stderr
    r = ihe(srv, "xds", "delete", "1.2.3", "--yes")
    assert r.code == 2 and "urn:uuid" in r.stderr
    port = free_port()
    r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", f"http://127.0.0.1:{port}/xds")
    assert r.code == 4 and r.stderr.startswith("ihe: error: cannot reach")
    # the patient ID domain from the profile turns a bare ID into a CX
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[xds]\nassigning_authority = "1.3.6.1.4.1.21367.2005.3.7"\nregistry = "{srv.url}"\n'
                   f'repository = "{srv.url}"\n')
    r = run_cli("--config", str(cfg), "xds", "submit", str(tmp_path / "a.txt"), "--patient", "PID7", "--json")
    assert r.code == 0 and json.loads(r.stdout)[0]["patientId"] == PID
    r = run_cli("--config", str(cfg), "xds", "query", "find-documents", "--patient", "PID7", "--json")
    assert [d["title"] for d in json.loads(r.stdout)] == ["a.txt"]


def test_serve_command_answers_and_stops(tmp_path):
    port = free_port()
    env = {**os.environ, "IHE_DATA_DIR": str(tmp_path / "data"), "IHE_CONFIG": str(tmp_path / "none.toml")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "xds", "serve", "--port", str(port)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 20)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        (tmp_path / "a.txt").write_text("served")
        r = run_cli("xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--repository",
                    f"http://127.0.0.1:{port}/xds/repository", "--json")
        assert r.code == 0, r.stderr
        stored = [f for f in (tmp_path / "data" / "storage" / "xds").rglob("*") if f.is_file()]
        assert [f.read_text() for f in stored] == ["served"]
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert f"127.0.0.1:{port}/xds" in err
    # a second server on a taken port fails with a usage error
    with Archive(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "x") as a:
        s = XdsServer(a, repository_unique_id=REPO)
        s.start()
        try:
            r = run_cli("xds", "serve", "--port", str(s.port))
            assert r.code == 2 and "cannot listen" in r.stderr
        finally:
            s.stop()


def test_transactions_are_audited(srv, tmp_path):
    """With audit.repository in the profile, both sides of ITI-41/18/43/62 leave their events in a
    real Audit Record Repository, and every message validates against the DICOM audit schema."""
    import time

    from ihecli import atna
    from ihecli.atna.query import query_events
    from ihecli.atna.repository import AuditRepository
    from test_atna import problems

    arr = AuditRepository(f"sqlite:///{tmp_path / 'arr.db'}", tls_port=None, udp_port=None, tcp_port=0)
    arr.start()
    try:
        cfg = tmp_path / "audit.toml"
        cfg.write_text(f'[audit]\nrepository = "tcp://127.0.0.1:{arr.tcp_port}"\nspool = "{tmp_path / "spool"}"\n'
                       f'[xds]\nregistry = "{srv.url}"\nrepository = "{srv.url}"\n')
        (tmp_path / "a.txt").write_text("audited")
        r = run_cli("--config", str(cfg), "xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--json")
        (d,) = js(r)
        js(run_cli("--config", str(cfg), "xds", "query", "find-documents", "--patient", PID, "--json"))
        r = run_cli("--config", str(cfg), "xds", "retrieve", d["uniqueId"], "--out", str(tmp_path / "o"))
        assert r.code == 0, r.stderr
        r = run_cli("--config", str(cfg), "xds", "delete", d["entryUUID"], "--yes")
        assert r.code == 0, r.stderr
        atna.flush(15)
        want = {("110106", "R", "ITI-41"), ("110107", "C", "ITI-41"),  # source exports, repository imports
                ("110112", "E", "ITI-18"),  # consumer and registry
                ("110107", "C", "ITI-43"), ("110106", "R", "ITI-43"),  # consumer imports, repository exports
                ("110110", "D", "ITI-62")}
        end = time.monotonic() + 20
        while True:  # the repository stores what arrives in batches: wait for all of it
            arr.flush()
            got = query_events(arr.engine, with_message=True)
            seen = {(e.event.split()[0], e.action, tx) for e in got for tx in ("ITI-41", "ITI-18", "ITI-43", "ITI-62")
                    if tx in e.message}
            if want <= seen or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert want <= seen, seen
        for e in got:
            assert problems(e.message.encode("utf-8")) == [], e.event
        assert any(PID in e.patients for e in got)
    finally:
        arr.stop()
        atna.configure(None)


def test_mutual_tls(pki, tmp_path):  # noqa: F811  (the fixture imported above)
    """https:// endpoints: BCP195 TLS with mutual authentication (ITI-19); a client without a
    trusted certificate is refused and told so (exit 4)."""
    from ihecli.net import tls

    a = Archive(f"sqlite:///{tmp_path / 'tls.db'}", tmp_path / "tls-storage")
    ctx = tls.context(tls.TlsConfig(cert=pki["server"], ca=pki["ca"]), server=True)
    s = XdsServer(a, repository_unique_id=REPO, ssl_context=ctx)
    s.start()
    try:
        assert s.url.startswith("https://")
        (tmp_path / "a.txt").write_text("secret")
        r = run_cli("xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--repository", s.url,
                    "--cert", pki["client"], "--ca", pki["ca"], "--json")
        (d,) = js(r)
        r = run_cli("xds", "retrieve", d["uniqueId"], "--out", str(tmp_path / "o"), "--repository", s.url,
                    "--cert", pki["client"], "--ca", pki["ca"])
        assert r.code == 0 and (tmp_path / "o" / (d["uniqueId"] + ".txt")).read_text() == "secret"
        r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", s.url, "--ca", pki["ca"])
        assert r.code == 1 and "TLS failed" in r.stderr  # no client certificate: refused, exit 1
        r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", s.url,
                    "--cert", pki["client"], "--ca", pki["other_ca"])
        assert r.code == 1 and "not trusted" in r.stderr  # the server's certificate is not from a CA we trust
    finally:
        s.stop()
        a.close()


def test_profile_xds_table(tmp_path):
    """`ihe config init` writes the [xds] table with comments; mistakes name the file and line."""
    cfg = tmp_path / "c.toml"
    assert run_cli("--config", str(cfg), "config", "init").code == 0
    assert "[xds]" in cfg.read_text() and "assigning_authority" in cfg.read_text()
    shown = js(run_cli("--config", str(cfg), "config", "show", "--json"))
    assert shown["xds"]["registry"] == "http://127.0.0.1:8020/xds" and shown["xds"]["port"] == 8020
    cfg.write_text('[xds]\nregistry = "ftp://x"\n')
    r = run_cli("--config", str(cfg), "xds", "query", "find-documents", "--patient", PID)
    assert r.code == 2 and "line 2" in r.stderr and "registry" in r.stderr
    cfg.write_text('[xds]\nassigning_authority = "not an oid"\n')
    r = run_cli("--config", str(cfg), "xds", "submit", str(cfg), "--patient", "P1")
    assert r.code == 2 and "assigning_authority" in r.stderr


def test_many_ids_in_one_query_and_a_whole_submission_set_deleted(srv, tmp_path):
    """Twelve entryUUIDs or uniqueIds in one stored query, and the delete of a submission set of
    twelve documents (its plan names them all), stay within rim:Value's 256 characters by
    spreading the ids over several Values (ORed): the registry validates every request."""
    (tmp_path / "docs").mkdir()
    for i in range(12):
        (tmp_path / "docs" / f"n{i:02d}.txt").write_text(f"n {i}\n")
    docs = js(ihe(srv, "xds", "submit", str(tmp_path / "docs"), "--patient", PID, "--json"))
    uuids = [d["entryUUID"] for d in docs]
    got = js(ihe(srv, "xds", "query", "get-documents", *[x for u in uuids for x in ("--uuid", u)], "--json"))
    assert sorted(d["entryUUID"] for d in got) == sorted(uuids)
    got = js(ihe(srv, "xds", "query", "get-documents", *[x for d in docs for x in ("--unique-id", d["uniqueId"])],
                 "--json"))
    assert len(got) == 12
    (ss,) = js(ihe(srv, "xds", "query", "find-submission-sets", "--patient", PID, "--json"))
    plan = js(ihe(srv, "xds", "delete", ss["entryUUID"], "--dry-run", "--json"))
    assert sorted(x["objectType"] for x in plan) == ["Association"] * 12 + ["DocumentEntry"] * 12 + ["SubmissionSet"]
    # an id the stored queries do not know is said, not counted silently as something to remove
    unknown = "urn:uuid:00000000-0000-4000-8000-000000000001"
    r = ihe(srv, "xds", "delete", uuids[0], unknown.upper().replace("URN:UUID:", "urn:uuid:"), "--dry-run")
    said = " ".join(r.stderr.split())
    assert r.code == 0 and unknown in said and "not in the registry" in said
    r = ihe(srv, "xds", "delete", ss["entryUUID"], "--yes")
    said = " ".join(r.stderr.split())
    assert r.code == 0 and "25 objects removed" in said and "documents stay" in said
    assert js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json")) == []
    r = ihe(srv, "xds", "delete", "urn:uuid:not-a-uuid", "--yes")
    assert r.code == 2 and "not an entryUUID" in r.stderr


# A CDA R2 header (no CDA sample is among the shared fixtures: written here after the HL7 CDA R2
# standard's header, with the IDs and codes of the NIST connectathon code set)
CDA = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="2.16.840.1.113883.19.4" extension="c266"/>
  <code code="34133-9" codeSystem="2.16.840.1.113883.6.1" displayName="Summary of episode note"/>
  <title>Entlassungsbrief  Innere Medizin</title>
  <effectiveTime value="20240305143000+0100"/>
  <confidentialityCode code="R" codeSystem="2.16.840.1.113883.5.25" displayName="restricted"/>
  <languageCode code="de-DE"/>
  <recordTarget><patientRole><id root="1.3.6.1.4.1.21367.2005.3.7" extension="{pid}"/></patientRole></recordTarget>
  <author><time value="20240305"/><assignedAuthor><id root="1.2.3"/>
    <assignedPerson><name><given>Anna</given><family>Berg</family></name></assignedPerson></assignedAuthor></author>
  <documentationOf><serviceEvent><effectiveTime><low value="20240301"/><high value="20240305"/></effectiveTime>
  </serviceEvent></documentationOf>
  <component><nonXMLBody><text mediaType="text/plain">Entlassung in gutem Allgemeinzustand.</text></nonXMLBody></component>
</ClinicalDocument>
"""


def test_a_cda_document_gives_its_own_metadata(srv, tmp_path):
    """Title, type and confidentiality codes, language, creation and service times and author
    come from the CDA header unless options say otherwise; a CDA document about another patient
    of the affinity domain is refused, nothing submitted."""
    doc = tmp_path / "letter.xml"
    doc.write_text(CDA.format(pid="PID7"))
    (d,) = js(ihe(srv, "xds", "submit", str(doc), "--patient", PID, "--json"))
    (e,) = js(ihe(srv, "xds", "query", "get-documents", "--uuid", d["entryUUID"], "--json"))
    assert (e["title"], e["mimeType"], e["languageCode"]) == ("Entlassungsbrief Innere Medizin", "text/xml", "de-DE")
    assert e["typeCode"] == "34133-9^Summary of episode note^2.16.840.1.113883.6.1"
    assert e["confidentialityCode"] == ["R^restricted^2.16.840.1.113883.5.25"]
    assert (e["creationTime"], e["serviceStartTime"], e["serviceStopTime"]) == ("20240305133000", "20240301",
                                                                                "20240305")
    assert [a["person"] for a in e["author"]] == ["^Berg^Anna"]
    (d2,) = js(ihe(srv, "xds", "submit", str(doc), "--patient", PID, "--title", "Brief", "--json"))
    (e2,) = js(ihe(srv, "xds", "query", "get-documents", "--uuid", d2["entryUUID"], "--json"))
    assert e2["title"] == "Brief"  # an option wins over the header
    other = tmp_path / "other.xml"
    other.write_text(CDA.format(pid="PID8"))
    r = ihe(srv, "xds", "submit", str(other), "--patient", PID)
    assert r.code == 2 and "about patient PID8" in r.stderr
    assert len(js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))) == 2


def test_a_failed_submission_set_does_not_hide_the_ones_registered(tmp_path):
    """A repository that refuses one submission set (here: over its body limit) or goes away in
    the middle: the sets registered before and after are listed, the failed one names its files."""
    with Archive(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "x") as a:
        s = XdsServer(a, repository_unique_id=REPO, max_body=64 * 1024)
        s.start()
        try:
            docs = tmp_path / "docs"
            docs.mkdir()
            (docs / "a.txt").write_text("a")
            (docs / "b.bin").write_bytes(os.urandom(200 * 1024))
            (docs / "c.txt").write_text("c")
            r = ihe(s, "xds", "submit", str(docs), "--patient", PID, "--batch", "1", "--json")
            assert r.code == 3, r.stderr
            assert sorted(d["title"] for d in r.json) == ["a.txt", "c.txt"]
            assert "submission set 2/3 (b.bin)" in r.stderr and "over the limit" in r.stderr
            held = js(ihe(s, "xds", "query", "find-documents", "--patient", PID, "--json"))
            assert sorted(d["uniqueId"] for d in held) == sorted(d["uniqueId"] for d in r.json)
            # the repository refuses every set: nothing registered, exit 1
            r = ihe(s, "xds", "submit", str(docs / "b.bin"), str(docs / "b.bin"), "--patient", PID, "--batch", "1")
            assert r.code == 1 and r.stderr.count("over the limit") == 2
        finally:
            s.stop()
    # nothing reachable: the first set says so alone, exit 4
    r = run_cli("xds", "submit", str(docs), "--patient", PID, "--batch", "1", "--repository",
                f"http://127.0.0.1:{free_port()}/xds")
    assert r.code == 4 and r.stderr.count("\n") == 1 and "cannot reach" in r.stderr


def test_ctrl_c_in_a_long_submission_lists_what_was_registered(srv, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(400):
        (docs / f"d{i:03}.txt").write_bytes(os.urandom(64 * 1024))
    env = {**os.environ, "IHE_DATA_DIR": str(tmp_path / "data"), "IHE_CONFIG": str(tmp_path / "none.toml")}
    p = subprocess.Popen([sys.executable, "-m", "ihecli", "xds", "submit", str(docs), "--patient", PID, "--batch", "1",
                          "--repository", srv.url, "--json"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while len(js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))) < 3:
            assert p.poll() is None
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "interrupted" in err and "submission sets not sent, from set" in err
    listed = json.loads(out)
    held = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))
    assert 3 <= len(listed) < 400 and sorted(d["uniqueId"] for d in listed) == sorted(d["uniqueId"] for d in held)


def test_metadata_names_the_options_it_overrides_by_their_names(srv, tmp_path):
    meta = os.path.join(os.path.dirname(__file__), "data", "xds", "ipf-SubmitObjectsRequest_ebrs30.xml")
    (tmp_path / "cda.xml").write_text("<ClinicalDocument/>")
    r = ihe(srv, "xds", "submit", str(tmp_path / "cda.xml"), "--metadata", meta, "--class", "A^^1.2", "--type",
            "B^^1.2", "--format", "C^^1.2")
    assert r.code == 2 and "--class, --type, --format would not be used" in r.stderr


def test_retrieve_out_folder_and_write_errors_are_one_line(srv, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (d,) = js(ihe(srv, "xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--json"))
    # a folder that cannot be made: a usage error before anything is fetched
    r = ihe(srv, "xds", "retrieve", d["uniqueId"], "--out", str(tmp_path / "a.txt" / "docs"))
    assert r.code == 2 and r.stderr == f"ihe: error: cannot make the folder {tmp_path / 'a.txt' / 'docs'}: " \
                                       "Not a directory\n"
    # the document's file cannot be written (a folder has its name): said, nothing half-written left
    out = tmp_path / "out"
    (out / f"{d['uniqueId']}.txt").mkdir(parents=True)
    r = ihe(srv, "xds", "retrieve", d["uniqueId"], "--out", str(out))
    assert r.code == 1 and r.stderr.startswith(f"ihe: error: cannot write {out / d['uniqueId']}.txt: "), r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{d['uniqueId']}.txt"]
    r = ihe(srv, "xds", "retrieve", d["uniqueId"], "--out", str(tmp_path / "ok"), "--json")
    assert r.code == 0 and [p.read_text() for p in (tmp_path / "ok").iterdir()] == ["a"]


def test_a_file_name_that_is_not_utf8_is_submitted(srv, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / os.fsdecode(b"caf\xe9.txt")).write_text("Latin-1 name")  # as on an old share or CD
    r = ihe(srv, "xds", "submit", str(docs), "--patient", PID, "--json")
    assert r.code == 0, r.stderr
    assert [d["title"] for d in r.json] == ["café.txt"]
    (e,) = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))
    assert e["title"] == "café.txt" and e["mimeType"] == "text/plain"


class _Stalling:
    """An HTTP relay in front of a real registry that passes everything on but holds requests
    holding ``stall`` without an answer (a registry that acts, then hangs, or a lost answer)."""

    def __init__(self, target: str, stall: bytes):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.release = threading.Event()
        relay = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                r = requests.post(target, data=body, headers={"Content-Type": self.headers["Content-Type"]},
                                  timeout=30)
                if stall in body:
                    relay.release.wait(30)  # carried out by the registry, the answer held back
                    return
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers["Content-Type"])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/xds"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_an_unanswered_submission_or_delete_may_have_been_carried_out(srv, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    relay = _Stalling(srv.url, b"ProvideAndRegisterDocumentSetRequest")
    try:
        r = run_cli("xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--repository", relay.url,
                    "--timeout", "1")
    finally:
        relay.close()
    assert r.code == 4 and r.stderr.count("\n") == 1, r.stderr
    assert "no answer within 1 s (the repository may have registered it all the same" in r.stderr
    (d,) = js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))  # it had
    relay = _Stalling(srv.url, b"RemoveObjectsRequest")
    try:
        r = run_cli("xds", "delete", d["entryUUID"], "--yes", "--registry", relay.url, "--timeout", "1")
    finally:
        relay.close()
    assert r.code == 4 and "(the registry may have removed them all the same: --dry-run shows what is left)" \
        in r.stderr, r.stderr
    assert js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json")) == []  # it had
    # a query sent again does no harm: no such words
    relay = _Stalling(srv.url, b"AdhocQueryRequest")
    try:
        r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", relay.url, "--timeout", "1")
    finally:
        relay.close()
    assert r.code == 4 and r.stderr == f"ihe: error: {relay.url}: no answer within 1 s\n"


def test_tls_options_with_an_http_endpoint_are_a_usage_error(srv, pki, tmp_path):  # noqa: F811
    """--cert/--ca with http:// would send in the clear while the user believes otherwise."""
    (tmp_path / "a.txt").write_text("a")
    r = ihe(srv, "xds", "submit", str(tmp_path / "a.txt"), "--patient", PID, "--cert", pki["client"], "--ca", pki["ca"])
    assert r.code == 2 and r.stderr == f"ihe: error: --cert, --ca given, but {srv.url} is no TLS link: use https://\n"
    r = ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--ca", pki["ca"], "--json")
    assert r.code == 2 and "no TLS link" in r.stderr
    assert js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json")) == []  # nothing was sent


def test_the_submission_set_making_the_folder_fails_then_nothing_else_goes(tmp_path):
    with Archive(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "x") as a:
        s = XdsServer(a, repository_unique_id=REPO, max_body=64 * 1024)
        s.start()
        try:
            docs = tmp_path / "docs"
            docs.mkdir()
            (docs / "a.bin").write_bytes(os.urandom(200 * 1024))
            (docs / "b.txt").write_text("b")
            (docs / "c.txt").write_text("c")
            r = ihe(s, "xds", "submit", str(docs), "--patient", PID, "--batch", "1", "--folder", "Notes")
            assert r.code == 1 and r.stderr.count("\n") == 1, r.stderr
            assert r.stderr.startswith("ihe: error: submission set 1/3 (a.bin), which makes the folder, failed: ")
            assert r.stderr.endswith("; the other 2 were not sent\n")
            assert js(ihe(s, "xds", "query", "find-documents", "--patient", PID, "--json")) == []
        finally:
            s.stop()


def test_a_cda_document_with_a_doctype_is_still_checked(srv, tmp_path):
    """A bare DOCTYPE (some CDA generators write one) does not make the document 'not CDA', which
    skipped the patient check; one declaring entities is refused, nothing submitted."""
    cda = CDA.format(pid="PID8")
    i = cda.index("<ClinicalDocument")
    other = tmp_path / "other.xml"
    other.write_text(cda[:i] + '<!DOCTYPE ClinicalDocument PUBLIC "-//HL7//DTD CDA R2//EN" "CDA.dtd">\n' + cda[i:])
    r = ihe(srv, "xds", "submit", str(other), "--patient", PID)
    assert r.code == 2 and "about patient PID8" in r.stderr, r.stderr
    ours = tmp_path / "ours.xml"
    ours.write_text(CDA.format(pid="PID7")[:i] + "<!DOCTYPE ClinicalDocument>\n" + CDA.format(pid="PID7")[i:])
    (d,) = js(ihe(srv, "xds", "submit", str(ours), "--patient", PID, "--json"))
    assert (d["title"], d["mimeType"]) == ("Entlassungsbrief Innere Medizin", "text/xml")
    hostile = tmp_path / "entity.xml"
    hostile.write_text(cda[:i] + '<!DOCTYPE ClinicalDocument [<!ENTITY x "EXPANDED">]>\n' + cda[i:])
    r = ihe(srv, "xds", "submit", str(hostile), "--patient", PID)
    assert r.code == 2 and r.stderr == f"ihe: error: entity.xml: a CDA document whose DOCTYPE declares entities " \
                                       "(not read here): remove the DOCTYPE; nothing submitted\n"
    assert len(js(ihe(srv, "xds", "query", "find-documents", "--patient", PID, "--json"))) == 1


def test_a_named_pipe_in_a_folder_is_not_submitted(srv, tmp_path):
    import threading

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a")
    os.mkfifo(docs / "pipe")

    def writer():  # someone at the other end: the pipe would give this as a document
        with open(docs / "pipe", "w") as f:
            f.write("from a pipe")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        r = ihe(srv, "xds", "submit", str(docs), "--patient", PID, "--json")
        assert r.code == 0, r.stderr
        assert [d["title"] for d in r.json] == ["a.txt"]
    finally:
        fd = os.open(docs / "pipe", os.O_RDONLY | os.O_NONBLOCK)  # lets the writer finish
        t.join(10)
        os.close(fd)


def test_a_folder_of_large_documents_goes_in_sets_the_repository_takes(tmp_path):
    """Submission sets stay under 64 MiB of documents (a larger document goes alone), so a folder of
    scans is not refused whole by a repository's body limit (here 100 MiB; `xds serve`: 256)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"scan{i}.pdf").write_bytes(os.urandom(20 << 20))
    (docs / "scan3.pdf").write_bytes(os.urandom(70 << 20))
    with Archive(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "x") as a:
        s = XdsServer(a, repository_unique_id=REPO, max_body=100 << 20)
        s.start()
        try:
            r = ihe(s, "xds", "submit", str(docs), "--patient", PID, "--json")
            assert r.code == 0, r.stderr
            sets = Counter(d["submissionSetUniqueId"] for d in r.json)
            assert sorted(sets.values()) == [1, 3]  # 3 x 20 MiB together, the 70 MiB one alone
            held = js(ihe(s, "xds", "query", "find-documents", "--patient", PID, "--json"))
            assert sorted(d["size"] for d in held) == [20 << 20] * 3 + [70 << 20]
        finally:
            s.stop()
