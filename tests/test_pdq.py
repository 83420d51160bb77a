"""PDQ Consumer for HL7 V3 (ITI-47): our queries validate against the HL7 V3 NE2008 schemas, IPF's
messages validate and parse, and `ihe pdq query` works against a SOAP PDQ Supplier on the wire
(tests/pdqsupplier.py) answering from IPF's recorded response, not-found and error cases included."""
from __future__ import annotations

import copy

import pytest
from lxml import etree

from helpers import free_port, run_cli
from ihecli.net.soap import SchemaError, schemas, validate
from ihecli.pdq.messages import NS, PdqQuery, build_query, read_response
from pdqsupplier import DATA, PdqSupplier

SENDER, RECEIVER = "1.3.6.1.4.1.21367.2017.2.5.9999", "1.3.6.1.4.1.21367.2017.2.5.9998"


@pytest.fixture
def strict(monkeypatch):
    """Every message the SOAP client sends and receives is validated (as the server's)."""
    monkeypatch.setattr(schemas, "STRICT", True)


@pytest.fixture(scope="module")
def supplier():
    s = PdqSupplier()
    s.start()
    yield s
    s.stop()


def _query(**kw) -> etree._Element:
    return build_query(PdqQuery(**kw), sender=SENDER, receiver=RECEIVER, receiver_url="http://x/pdq")


def test_our_queries_are_schema_valid():
    validate(_query(family="Jones"))
    el = _query(family="Jones", given="Jimmy", birth_date="1963-08-04", gender="m", id="1234",
                id_domain="1.2.840.114350.1.13.99997.2.3412", address={"street": "3443 North Arctic Avenue",
                                                                        "city": "Some City", "postal": "60000"},
                target_domains=["2.16.840.1.113883.4.1", "1.2.3"], limit=5)
    validate(el)
    p = el.find("v3:controlActProcess/v3:queryByParameter", NS)
    assert p.find("v3:initialQuantity", NS).get("value") == "5"
    assert [c.tag.split("}")[1] for c in p.find("v3:parameterList", NS)] == [
        "livingSubjectAdministrativeGender", "livingSubjectBirthTime", "livingSubjectId", "livingSubjectName",
        "otherIDsScopingOrganization", "otherIDsScopingOrganization", "patientAddress"]
    assert p.find(".//v3:livingSubjectBirthTime/v3:value", NS).get("value") == "19630804"
    assert p.find(".//v3:livingSubjectAdministrativeGender/v3:value", NS).get("code") == "M"
    # the validator is not lenient: out of order, it fails
    broken = copy.deepcopy(el)
    params = broken.find(".//v3:parameterList", NS)
    params.append(params[0])
    with pytest.raises(SchemaError):
        validate(broken)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.xml")))
def test_ipf_messages_validate(name):
    validate(etree.parse(str(DATA / name)).getroot())


def test_ipf_responses_parse():
    a = read_response(etree.parse(str(DATA / "ipf-02_PDQQuery1Response.xml")).getroot())
    assert (a.ack, a.status, a.total, a.remaining, len(a.patients)) == ("AA", "OK", 5, 3, 7)
    p = a.patients[0]
    assert p.names == ["Jones^James"] and p.gender == "M" and p.birth_date == "19630804" and p.score == "92"
    assert str(p.ids[0]) == "1^^^&1.2.840.114350.1.13.99998.8734&ISO"
    assert [str(i) for i in p.other_ids] == ["38273D433^^^&1.2.840.114350.1.13.99997.2.3412&ISO",
                                              "999-88-6345^^^&2.16.840.1.113883.4.1&ISO"]
    assert p.addresses == ["3443 North Arctic Avenue, Some City, IL"] and p.provider == "Good Health Clinic"
    a = read_response(etree.parse(str(DATA / "ipf-03_PDQQueryEmptyResponse.xml")).getroot())
    assert (a.ack, a.status, a.total, a.patients) == ("AA", "OK", 0, [])  # OK with no subject: read as is
    a = read_response(etree.parse(str(DATA / "ipf-PDQ_Maximal_Query_Response.xml")).getroot())
    assert len(a.patients) == 1 and a.patients[0].birth_date == "19400101"
    assert "234234243^^^&2.16.840.1.113883.3.37.4.1.1.2.411.1&ISO" in [str(i) for i in a.patients[0].ids]


def test_query_finds_patients(supplier, strict):
    r = run_cli("pdq", "query", "--family", "Jones", "--given", "Jim", "--birth-date", "1963-07-13",
                "--gender", "M", "--supplier", supplier.url, "--json")
    assert r.code == 0, r.stderr
    doc = r.json
    assert doc["ack"] == "AA" and doc["status"] == "OK" and doc["total"] == 6
    assert sorted(p["ids"][0].split("^")[0] for p in doc["patients"]) == ["2", "3", "4", "5", "6", "7"]
    req = supplier.requests[-1]  # what went over the wire
    assert req.find("v3:sender/v3:device/v3:id", NS).get("root") == SENDER
    assert req.find(".//v3:livingSubjectName/v3:value/v3:given", NS).text == "Jim"
    # by identifier, a table
    r = run_cli("pdq", "query", "--id", "38273D433", "--domain", "1.2.840.114350.1.13.99997.2.3412",
                "--to", supplier.url)
    assert r.code == 0, r.stderr
    assert "Jones^James" in r.stdout and "Some City" in r.stdout and "Jones^Jim" not in r.stdout
    r = run_cli("pdq", "query", "--family", "jones", "--address", "city=Some City", "--supplier", supplier.url,
                "--json")
    assert r.code == 0 and [p["names"] for p in r.json["patients"]] == [["Jones^James"]], r.stderr


def test_not_found_and_errors(supplier, strict):
    r = run_cli("pdq", "query", "--family", "Nobody", "--supplier", supplier.url, "--json")
    assert r.code == 1 and "no patient matches (status NF)" in r.stderr and r.stdout == ""
    r = run_cli("pdq", "query", "--family", "ERROR", "--supplier", supplier.url)
    assert r.code == 1 and "(AE/AE)" in r.stderr and "ERROR is not a name" in r.stderr
    r = run_cli("pdq", "query", "--family", "FAULT", "--supplier", supplier.url)
    assert r.code == 1 and "SOAP fault" in r.stderr and "broken today" in r.stderr


def test_usage_and_unreachable(supplier):
    r = run_cli("pdq", "query", "--supplier", supplier.url)
    assert r.code == 2 and "say what to look for" in r.stderr
    assert run_cli("pdq", "query", "--birth-date", "1963-13", "--supplier", supplier.url).code == 2
    assert run_cli("pdq", "query", "--gender", "X", "--supplier", supplier.url).code == 2
    r = run_cli("pdq", "query", "--id", "1", "--domain", "HZLN", "--supplier", supplier.url)
    assert r.code == 2 and "OID" in r.stderr
    assert run_cli("pdq", "query", "--id", "1", "--supplier", supplier.url).code == 2
    assert run_cli("pdq", "query", "--family", "X", "--address", "planet=Mars", "--supplier", supplier.url).code == 2
    r = run_cli("pdq", "query", "--family", "X", "--supplier", f"http://127.0.0.1:{free_port()}/pdq")
    assert r.code == 4 and "cannot reach" in r.stderr
    assert run_cli("pdq", "query", "--family", "X", "--supplier", "ftp://x").code == 2


def test_silent_supplier_times_out():
    """A supplier that accepts the connection and never answers: exit 4 after --timeout."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        started = time.monotonic()
        r = run_cli("pdq", "query", "--family", "X", "--supplier", f"http://127.0.0.1:{s.getsockname()[1]}/pdq",
                    "--timeout", "0.5")
        assert r.code == 4 and "no answer within 0.5 s" in r.stderr, r.stderr
        assert time.monotonic() - started < 5


def test_an_answer_that_is_no_pdq_response():
    from ihecli.net.http import HttpServer
    from ihecli.net.soap import Reply, SoapService
    from ihecli.pdq.messages import QUERY_ACTION

    app = SoapService({QUERY_ACTION: lambda msg: Reply(etree.Element("{urn:hl7-org:v3}MCCI_IN000002UV01"),
                                                       "urn:hl7-org:v3:MCCI_IN000002UV01")})
    http = HttpServer(app, port=0)
    http.start()
    try:
        r = run_cli("pdq", "query", "--family", "Jones", "--supplier", http.url + "/pdq")
        assert r.code == 1 and "answered MCCI_IN000002UV01, not PRPA_IN201306UV02" in r.stderr, r.stderr
    finally:
        http.stop()


def test_pages_and_query_continuation(supplier, strict):
    """--limit asks for a first page (initialQuantity); --all fetches the rest with query
    continuations (QUQI_IN000003UV01), each schema-valid."""
    r = run_cli("pdq", "query", "--family", "Jones", "--limit", "2", "--supplier", supplier.url, "--json")
    assert r.code == 0, r.stderr
    assert len(r.json["patients"]) == 2 and r.json["total"] == 7 and r.json["remaining"] == 5
    before = supplier.continuations
    r = run_cli("pdq", "query", "--family", "Jones", "--limit", "2", "--all", "--supplier", supplier.url, "--json")
    assert r.code == 0, r.stderr
    ids = [p["ids"][0].split("^")[0] for p in r.json["patients"]]
    assert ids == ["1", "2", "3", "4", "5", "6", "7"] and r.json["remaining"] == 0
    assert supplier.continuations - before == 3  # 2 + 2 + 2 + 1
    last = supplier.requests[-1]
    assert etree.QName(last).localname == "QUQI_IN000003UV01"
    assert last.find(".//v3:queryContinuation/v3:continuationQuantity", NS).get("value") == "2"


def test_tls_options_with_an_http_supplier_are_a_usage_error(supplier):
    r = run_cli("pdq", "query", "--family", "Jones", "--supplier", supplier.url, "--tls")
    assert r.code == 2 and r.stderr == f"ihe: error: --tls given, but {supplier.url} is no TLS link: use https://\n"
