"""XCA: two communities on loopback, each an `ihe xds serve` registry/repository with an
`ihe xca serve` Responding Gateway over the same archive; `ihe xca query|retrieve` fans out to
both (and to a third that is down). Every message is checked against the official schemas
(schemas.STRICT); NIST's ITI-38/39 requests are answered."""
from __future__ import annotations

import json

import pytest
import requests
from lxml import etree

from helpers import DATA, free_port, run_cli
from ihecli.archive import Archive
from ihecli.net.soap import schemas
from ihecli.xca.responding import XcaServer
from ihecli.xds.server import XdsServer

PID = "PID7^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
HOME_A, HOME_B = "urn:oid:1.3.6.1.4.1.21367.13.70.101", "urn:oid:1.3.6.1.4.1.21367.13.70.102"
REPO_A, REPO_B = "1.3.6.1.4.1.21367.13.71.101", "1.3.6.1.4.1.21367.13.71.102"


@pytest.fixture(autouse=True)
def strict():
    schemas.STRICT = True
    yield
    schemas.STRICT = False


class Community:
    def __init__(self, tmp_path, name, home, repo):
        self.archive = Archive(f"sqlite:///{tmp_path / (name + '.db')}", tmp_path / (name + "-storage"))
        self.xds = XdsServer(self.archive, repository_unique_id=repo)
        self.xca = XcaServer(self.archive, home=home, repository_unique_id=repo)
        self.home, self.repo = home, repo
        self.xds.start()
        self.xca.start()

    def stop(self):
        self.xca.stop()
        self.xds.stop()
        self.archive.close()


@pytest.fixture
def two(tmp_path):
    a, b = Community(tmp_path, "a", HOME_A, REPO_A), Community(tmp_path, "b", HOME_B, REPO_B)
    for c, text in ((a, "from A"), (b, "from B")):
        f = tmp_path / f"{c.repo}.txt"
        f.write_text(text + "\n")
        r = run_cli("xds", "submit", str(f), "--patient", PID, "--repository", c.xds.url, "--json")
        assert r.code == 0, r.stderr
    yield a, b
    a.stop()
    b.stop()


def _comms(*cs):
    out = []
    for c in cs:
        out += ["--community", f"{c.home}={c.xca.url}" if hasattr(c, "xca") else c]
    return out


def test_query_both_communities_then_retrieve_from_one(two, tmp_path):
    a, b = two
    r = run_cli("xca", "query", "find-documents", "--patient", PID, *_comms(a, b), "--json")
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(x["community"] for x in rows) == [HOME_A, HOME_B]
    assert all(x["homeCommunityId"] == x["community"] for x in rows)  # the gateways marked their objects
    from_b = next(x for x in rows if x["community"] == HOME_B)
    r = run_cli("xca", "query", "find-documents", "--patient", PID, *_comms(a, b))  # the table names them too
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[-1] == "community"
    assert any(x["uniqueId"] in line and HOME_B in line for line in lines for x in rows if x["community"] == HOME_B)
    r = run_cli("xca", "retrieve", from_b["uniqueId"], "--home", HOME_B, "--repository-id", REPO_B,
                "--out", str(tmp_path / "docs"), *_comms(a, b), "--json")
    assert r.code == 0, r.stderr
    got = json.loads(r.stdout)
    assert len(got) == 1 and got[0]["home"] == HOME_B
    assert (tmp_path / "docs" / (from_b["uniqueId"] + ".txt")).read_text() == "from B\n"


def test_a_community_that_is_down_is_named_and_the_others_answer(two):
    a, b = two
    down = f"urn:oid:1.2.3.999=http://127.0.0.1:{free_port()}/xca"
    r = run_cli("xca", "query", "find-documents", "--patient", PID, *_comms(a, b, down), "--json", "--timeout", "5")
    assert r.code == 3, r.stderr
    assert len(json.loads(r.stdout)) == 2
    assert "urn:oid:1.2.3.999: XDSUnavailableCommunity" in r.stderr


def test_retrieve_by_unique_id_alone_asks_where_the_documents_are(two, tmp_path):
    """Without --home and --repository-id, GetDocuments across the communities finds each
    document's community and repository; a uniqueId no community knows is named (exit 3)."""
    a, b = two
    r = run_cli("xca", "query", "find-documents", "--patient", PID, *_comms(a, b), "--json")
    rows = {x["community"]: x["uniqueId"] for x in json.loads(r.stdout)}
    r = run_cli("xca", "retrieve", rows[HOME_A], rows[HOME_B], "--out", str(tmp_path / "docs"), *_comms(a, b),
                "--json")
    assert r.code == 0, r.stderr
    assert sorted((x["home"], x["repositoryUniqueId"]) for x in json.loads(r.stdout)) == [(HOME_A, REPO_A),
                                                                                          (HOME_B, REPO_B)]
    assert (tmp_path / "docs" / (rows[HOME_B] + ".txt")).read_text() == "from B\n"
    r = run_cli("xca", "retrieve", rows[HOME_B], "1.2.3.4.5", "--out", str(tmp_path / "more"), *_comms(a, b),
                "--json")
    assert r.code == 3 and "1.2.3.4.5: no document with this uniqueId in" in r.stderr
    assert [x["uniqueId"] for x in json.loads(r.stdout)] == [rows[HOME_B]]
    # asked only of the community given: A's document is not in B
    r = run_cli("xca", "retrieve", rows[HOME_A], "--home", HOME_B, "--out", str(tmp_path / "none"), *_comms(a, b))
    assert r.code == 1 and f"no document with this uniqueId in {HOME_B}" in r.stderr


def test_no_community_reachable_is_exit_4(tmp_path):
    down = f"urn:oid:1.2.3.999=http://127.0.0.1:{free_port()}/xca"
    r = run_cli("xca", "query", "find-documents", "--patient", PID, "--community", down, "--timeout", "5")
    assert r.code == 4 and "XDSUnavailableCommunity" in r.stderr and "no matches" not in r.stdout + r.stderr
    # a retrieve that must first ask where the document is: the same
    r = run_cli("xca", "retrieve", "1.2.3.4", "--out", str(tmp_path / "d"), "--community", down, "--timeout", "5")
    assert r.code == 4 and "XDSUnavailableCommunity" in r.stderr and "no document" not in r.stderr


def test_retrieve_from_an_unknown_community_is_refused(two, tmp_path):
    a, b = two
    r = run_cli("xca", "retrieve", "1.2.3", "--home", "urn:oid:9.9.9", "--repository-id", REPO_A,
                "--out", str(tmp_path / "x"), *_comms(a, b))
    assert r.code == 1 and "XDSUnknownCommunity" in r.stderr


def test_gateway_marks_its_home_and_refuses_other_communities(two):
    a, b = two
    from ihecli.net.soap import SoapClient
    from ihecli.xca.responding import ITI39
    from ihecli.xds.messages import DocumentRequest, retrieve_request

    # a document of A asked from A with B's homeCommunityId: XDSUnknownCommunity, located
    msg = SoapClient(a.xca.url).call(ITI39, retrieve_request([DocumentRequest(REPO_A, "1.2.3.4", HOME_B)]))
    rr = msg.body[0]
    assert rr.get("status").endswith(":Failure")
    errs = [(e.get("errorCode"), e.get("location")) for e in rr.iter("{*}RegistryError")]
    assert errs == [("XDSUnknownCommunity", "1.2.3.4")]


@pytest.mark.parametrize("name,action", [("nist-soap-xcq-req.xml", "CrossGatewayQueryResponse"),
                                         ("nist-soap-xcr-req.xml", "CrossGatewayRetrieveResponse")])
def test_nist_requests_are_answered(two, name, action):
    a, _ = two
    body = (DATA / "xca" / name).read_bytes()
    r = requests.post(a.xca.url, data=body, headers={"Content-Type": "application/soap+xml; charset=UTF-8"},
                      timeout=30)
    assert r.status_code == 200, r.text[:300]
    from ihecli.net.soap import mtom

    msg = mtom.decode(r.content, r.headers["Content-Type"])
    assert msg.action == "urn:ihe:iti:2007:" + action
    schemas.validate(msg.body)
    rr = msg.body if msg.body.get("status") else msg.body.find("{*}RegistryResponse")
    if "Query" in action:  # NIST's patient is unknown here: Success with nothing found
        assert rr.get("status").endswith(":Success")
    else:  # its homeCommunityId urn:oid:1.2.3.5 is not community A's
        assert {e.get("errorCode") for e in rr.iter("{*}RegistryError")} == {"XDSUnknownCommunity"}
    assert etree.QName(msg.body).localname in ("AdhocQueryResponse", "RetrieveDocumentSetResponse")


def test_affinity_domain_gateway_needs_no_xca_knowledge_from_consumers(two, tmp_path):
    """`ihe xds query|retrieve` against the gateway as if it were a registry and repository."""
    from ihecli.xca.gateway import AffinityDomainGateway, AffinityGatewayServer

    a, b = two
    down = "urn:oid:1.2.3.999"
    comms = {a.home: a.xca.url, b.home: b.xca.url}
    with AffinityGatewayServer(AffinityDomainGateway(comms, timeout=10)) as gw:
        r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", gw.url, "--json")
        assert r.code == 0, r.stderr
        rows = json.loads(r.stdout)
        assert sorted(x["homeCommunityId"] for x in rows) == [HOME_A, HOME_B]
        from_a = next(x for x in rows if x["homeCommunityId"] == HOME_A)
        r = run_cli("xds", "retrieve", from_a["uniqueId"], "--repository", gw.url, "--repository-id", REPO_A,
                    "--home", HOME_A, "--out", str(tmp_path / "docs"), "--json")
        assert r.code == 0, r.stderr
        assert (tmp_path / "docs" / (from_a["uniqueId"] + ".txt")).read_text() == "from A\n"
        # without --repository-id the profile's is asked for, which A does not hold: said, with the way out
        r = run_cli("xds", "retrieve", from_a["uniqueId"], "--repository", gw.url, "--home", HOME_A,
                    "--out", str(tmp_path / "none"))
        assert r.code == 1 and "XDSUnknownRepositoryId" in r.stderr and "--repository-id OID" in r.stderr
    comms[down] = f"http://127.0.0.1:{free_port()}/xca"
    with AffinityGatewayServer(AffinityDomainGateway(comms, timeout=5)) as gw:
        r = run_cli("xds", "query", "find-documents", "--patient", PID, "--registry", gw.url, "--json")
        assert len(json.loads(r.stdout)) == 2  # PartialSuccess: the two that answered
        assert r.code == 3 and "urn:oid:1.2.3.999: XDSUnavailableCommunity" in r.stderr
