"""`ihe xds serve` (Document Registry and Repository) against real NIST and IPF messages, our own
Document Source/Consumer/Administrator, and hostile input. Every message either side emits is
validated against the official schemas (schemas.STRICT), and every error code returned must be
one the NIST list allows for the transaction."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests
from lxml import etree

from helpers import DATA
from ihecli.archive import Archive
from ihecli.config import XdsSettings
from ihecli.net.soap import SoapClient, decode, schemas
from ihecli.net.soap.xml import NS, RIM, q, parse_xml
from ihecli.xds import client as xc
from ihecli.xds import vocabulary as v
from ihecli.xds.messages import DocumentRequest, XdsError, read_registry_response
from ihecli.xds.model import DocumentEntry, Folder, SubmissionSet, Association
from ihecli.xds.server import XdsServer
from ihecli.xds.source import Options, make_submissions

XDS = DATA / "xds"
REPO = "1.3.6.1.4.1.21367.2017.2.3.9999"
PID = "P100^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
DOMAIN = XdsSettings(assigning_authority="1.3.6.1.4.1.21367.2005.3.7")

# allowed error codes per transaction: the NIST list, plus the ebRS/NIST codes of ITI-62
ALLOWED: dict[str, set[str]] = {}
for line in (XDS / "nist-TransactionDefinedErrorCodes.txt").read_text().splitlines()[1:]:
    tx, code = [x.strip() for x in line.split(",")[:2]]
    ALLOWED.setdefault(tx, set()).add(code)
ALLOWED["D"] = {"UnresolvedReferenceException", "ReferencesExistException", "XDSUnreferencedObjectException",
                "XDSRegistryError"}


@pytest.fixture(autouse=True)
def strict():
    schemas.STRICT = True
    yield
    schemas.STRICT = False


def check_codes(tx: str, errors) -> list[str]:
    codes = [e.code for e in errors]
    assert set(codes) <= ALLOWED[tx], f"{set(codes) - ALLOWED[tx]} not allowed on {tx}"
    return codes


@pytest.fixture
def xds(tmp_path):
    a = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage")
    srv = XdsServer(a, repository_unique_id=REPO, max_body=4 * 1024 * 1024)
    srv.start()
    yield srv
    srv.stop()
    a.close()


@pytest.fixture
def xds_db(db_url, tmp_path):
    """The server on each database back end."""
    a = Archive(db_url, tmp_path / "storage-db")
    srv = XdsServer(a, repository_unique_id=REPO)
    srv.start()
    yield srv
    srv.stop()
    a.close()


def submit(url: str, files: list[bytes], *, patient: str = PID, **opts) -> list[DocumentEntry]:
    subs = make_submissions([(f"doc{i}.txt", d) for i, d in enumerate(files)], DOMAIN, Options(patient=patient, **opts))
    client = SoapClient(url)
    out = []
    for s in subs:
        xc.provide_and_register(client, s)
        out += [de for de, _ in s.documents]
    return out


def query(url: str, name: str, params: dict, **kw):
    return xc.registry_stored_query(SoapClient(url), name, params, **kw).objects


def find(url: str, patient: str = PID, status=(v.APPROVED,)):
    return query(url, "find-documents", {"$XDSDocumentEntryPatientId": patient,
                                         "$XDSDocumentEntryStatus": list(status)})


def post_raw(url: str, data: bytes, ctype: str = "application/soap+xml"):
    r = requests.post(url, data=data, headers={"Content-Type": ctype}, timeout=20)
    msg = decode(r.content, r.headers["content-type"])
    if msg.fault() is None:
        schemas.validate(msg.body)
    return r, msg


# -- the whole cycle, on SQLite and PostgreSQL -------------------------------------------------------
def test_submit_query_retrieve_replace_delete(xds_db):
    url = xds_db.url
    d1, d2 = submit(url, [b"first document\n", b"second\x00\xff binary"])
    got = {o.unique_id: o for o in find(url)}
    assert set(got) == {d1.unique_id, d2.unique_id}
    e = got[d1.unique_id]
    import hashlib

    assert e.hash == hashlib.sha1(b"first document\n").hexdigest() and e.size == 15
    assert e.repository_unique_id == REPO and e.status == v.APPROVED and e.patient_id == PID
    res = xc.retrieve_document_set(SoapClient(url), [DocumentRequest(REPO, d1.unique_id),
                                                     DocumentRequest(REPO, d2.unique_id)])
    assert res.ok and {d.document_unique_id: d.data for d in res.documents} == {
        d1.unique_id: b"first document\n", d2.unique_id: b"second\x00\xff binary"}
    # replace d1: the old one is deprecated, the new one approved
    (d3,) = submit(url, [b"first document, v2\n"], replace=d1.entry_uuid)
    assert {o.unique_id for o in find(url)} == {d2.unique_id, d3.unique_id}
    assert [o.unique_id for o in find(url, status=[v.DEPRECATED])] == [d1.unique_id]
    with pytest.raises(XdsError) as err:
        submit(url, [b"again"], replace=d1.entry_uuid)
    assert check_codes("P", err.value.errors) == ["XDSRegistryDeprecatedDocumentError"]
    # delete d2 with its associations and (now empty) submission set? d2 shares its set with d1
    assocs = query(url, "get-associations", {"$uuid": [d2.entry_uuid]})
    assert len(assocs) == 1 and assocs[0].association_type == v.HAS_MEMBER
    xc.remove_metadata(SoapClient(url), [d2.entry_uuid, assocs[0].entry_uuid])
    assert {o.unique_id for o in find(url)} == {d3.unique_id}
    assert query(url, "get-documents", {"$XDSDocumentEntryEntryUUID": [d2.entry_uuid]}) == []


# -- the real NIST and IPF messages -----------------------------------------------------------------
def test_nist_mtom_capture_is_registered_and_retrievable(xds):
    raw = (XDS / "nist-http-mtom-pnr.txt").read_bytes()
    head, body = raw.split(b"\n\n", 1)
    ctype = re.search(rb"Content-Type: (.*)", head).group(1).strip().decode()
    r, msg = post_raw(xds.url, body, ctype)
    assert r.status_code == 200 and msg.mtom  # answered in kind
    res = read_registry_response(msg.body)
    assert res.status == v.SUCCESS, res.errors
    assert msg.relates_to == "urn:uuid:3D4B161591CD1DEC0C1286850962146"
    sub = parse_xml(body.split(b"\n\n", 1)[1].split(b"\n--MIMEBoundary")[0])
    pid = sub.xpath("//rim:ExternalIdentifier[@identificationScheme=$s]/@value", namespaces=NS, s=v.DE_PATIENT_ID)[0]
    (de,) = find(xds.url, pid)
    text = body.rsplit(b"@apache.org> \n\n", 1)[1].rsplit(b"\n--MIMEBoundary", 1)[0]
    import hashlib

    assert de.title == "DocA" and de.size == len(text) and de.hash == hashlib.sha1(text).hexdigest()
    assert de.repository_unique_id == REPO
    res = xc.retrieve_document_set(SoapClient(xds.url), [DocumentRequest(REPO, de.unique_id)])
    assert res.documents[0].data.startswith(b"Four score and seven years ago")
    assert res.documents[0].mime_type == "text/plain"


def test_nist_negative_pnr_messages(xds):
    r, msg = post_raw(xds.url, (XDS / "nist-soap-pnr.xml").read_bytes())
    res = read_registry_response(msg.body)
    assert res.status == v.FAILURE and set(check_codes("P", res.errors)) == {"XDSMissingDocument"}
    r, msg = post_raw(xds.url, (XDS / "nist-soap-noaction-pnr.xml").read_bytes())
    assert r.status_code == 400 and msg.fault().subcode == "wsa:MessageAddressingHeaderRequired"


def test_ipf_submit_objects_request_registers(xds):
    body = parse_xml((XDS / "ipf-SubmitObjectsRequest_ebrs30.xml").read_bytes())
    msg = SoapClient(xds.url).call(v.ITI42, body)
    res = read_registry_response(msg.body)
    assert res.status == v.SUCCESS, res.errors
    (de,) = find(xds.url, "SELF-5^^^&1.3.6.1.4.1.21367.2005.3.7&ISO")
    assert de.unique_id == "1.3.6.1.4.1.21367.2005.3.9999.32" and de.entry_uuid.startswith("urn:uuid:")
    # the same again: its uniqueIds are taken now
    msg = SoapClient(xds.url).call(v.ITI42, body)
    res = read_registry_response(msg.body)
    assert res.status == v.FAILURE and "XDSDuplicateUniqueIdInRegistry" in check_codes("R", res.errors)


def _soap(body: bytes, action: str) -> bytes:
    return (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            b'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header><a:Action s:mustUnderstand="1">'
            + action.encode() + b'</a:Action><a:MessageID>urn:uuid:0fbfdced-6c01-4d09-a110-2201afedaa02</a:MessageID>'
            b'</s:Header><s:Body>' + re.sub(rb"^<\?xml[^>]*\?>", b"", body.strip()) + b"</s:Body></s:Envelope>")


def test_nist_and_ipf_stored_queries(xds):
    submit(xds.url, [b"x"], patient="c4d77e21d0dd487^^^&1.3.6.1.4.1.21367.2005.3.7&ISO")
    r, msg = post_raw(xds.url, (XDS / "nist-soap-sq-req.xml").read_bytes())  # default-namespace AdhocQuery
    assert read_registry_response(msg.body).status == v.SUCCESS
    assert msg.body.find(q(RIM, "RegistryObjectList")) is not None  # classCode 'value^^scheme' matches nothing
    r, msg = post_raw(xds.url, _soap((XDS / "nist-sq-req.xml").read_bytes(), v.ITI18))
    assert read_registry_response(msg.body).status == v.SUCCESS
    expect = {"nist-sq-req-missing-stat.xml": "XDSStoredQueryMissingParam",
              "nist-sq-req-bad-pid-format.xml": "XDSRegistryError",
              "ipf-iti18request.xml": "XDSRegistryError"}  # the SQL injection attempt is a malformed value
    for name, code in expect.items():
        r, msg = post_raw(xds.url, _soap((XDS / name).read_bytes(), v.ITI18))
        res = read_registry_response(msg.body)
        assert res.status == v.FAILURE and check_codes("SQ", res.errors) == [code], name
    assert len(find(xds.url, "c4d77e21d0dd487^^^&1.3.6.1.4.1.21367.2005.3.7&ISO")) == 1  # still there
    (de,) = submit(xds.url, [b"y"])
    tmpl = (XDS / "nist-testkit-11901-GetDocuments-template.xml").read_bytes().replace(b"$uid$", de.unique_id.encode())
    r, msg = post_raw(xds.url, _soap(tmpl, v.ITI18))
    assert [e.get("id") for e in msg.body.iter(q(RIM, "ExtrinsicObject"))] == [de.entry_uuid]
    unknown = (XDS / "nist-sq-req.xml").read_bytes().replace(b"14d4debf-8f97-4251-9a74-a90016b0af0d",
                                                            b"00000000-0000-0000-0000-000000000000")
    r, msg = post_raw(xds.url, _soap(unknown, v.ITI18))
    assert check_codes("SQ", read_registry_response(msg.body).errors) == ["XDSUnknownStoredQuery"]


def test_nist_retrieve_request_unknown_repository(xds):
    r, msg = post_raw(xds.url, (XDS / "nist-soap-ret-req.xml").read_bytes())
    res = read_registry_response(msg.body)
    assert res.status == v.FAILURE and check_codes("RS", res.errors) == ["XDSUnknownRepositoryId"] * 2
    (de,) = submit(xds.url, [b"z"])
    res = xc.retrieve_document_set(SoapClient(xds.url), [DocumentRequest(REPO, de.unique_id),
                                                         DocumentRequest(REPO, "1.2.3.404")])
    assert res.partial and [d.data for d in res.documents] == [b"z"]
    assert check_codes("RS", res.errors) == ["XDSDocumentUniqueIdError"]


def test_nist_remove_metadata_test_plan_30001(xds):
    """ITI-62 outcomes of NIST testkit 30001: SS alone -> ReferencesExistException; DE + its
    association -> XDSUnreferencedObjectException; all three -> Success."""
    (de,) = submit(xds.url, [b"to be removed"])
    (hm,) = query(xds.url, "get-associations", {"$uuid": [de.entry_uuid]})
    ss = hm.source
    ids = {b"$Document01$": de.entry_uuid.encode(), b"$AssociationHM01$": hm.entry_uuid.encode(),
           b"$SubmissionSet01$": ss.encode()}

    def remove(name: str):
        data = (XDS / name).read_bytes()
        if name.endswith("remove_remove.xml"):  # test 30000 names one object: make it the SubmissionSet
            data = data.replace(b"urn:uuid:11111111-2222-3333-4444-999999999999", b"$SubmissionSet01$")
        for k, val in ids.items():
            data = data.replace(k, val)
        r, msg = post_raw(xds.url, _soap(data, v.ITI62))
        return read_registry_response(msg.body)

    res = remove("nist-testkit-30000_remove_remove.xml")
    assert res.status == v.FAILURE and set(check_codes("D", res.errors)) == {"ReferencesExistException"}
    res = remove("nist-testkit-30001_remove_remove_de.xml")
    assert check_codes("D", res.errors) == ["XDSUnreferencedObjectException"]
    assert len(find(xds.url)) == 1  # a refused request removes nothing
    res = remove("nist-testkit-30001_remove_remove_all.xml")
    assert res.status == v.SUCCESS and find(xds.url) == []
    res = remove("nist-testkit-30001_remove_remove_all.xml")
    assert set(check_codes("D", res.errors)) == {"UnresolvedReferenceException"}


def test_nist_sample_responses_parse():
    for name in ("nist-soap-pnr-resp.xml", "nist-soap-r-resp.xml"):
        msg = decode((XDS / name).read_bytes(), "application/soap+xml")
        assert read_registry_response(msg.body).status == v.SUCCESS
    res = read_registry_response(parse_xml((XDS / "nist-regresp-suc-err.xml").read_bytes()))
    assert res.status == v.SUCCESS and res.errors
    from ihecli.xds import ebrim

    lc = parse_xml((XDS / "nist-sq-resp-lc.xml").read_bytes())
    objs = ebrim.from_rim(lc.find(q(RIM, "RegistryObjectList")))
    de = [o for o in objs if isinstance(o, DocumentEntry)][0]
    assert de.patient_id and de.unique_id and de.class_code and de.mime_type and de.authors
    refs = ebrim.from_rim(parse_xml((XDS / "nist-sq-resp-objectref.xml").read_bytes())
                          .find(q(RIM, "RegistryObjectList")))
    assert refs and all(r.entry_uuid.startswith("urn:uuid:") for r in refs)
    msg = decode((XDS / "nist-soap-ret-resp.xml").read_bytes(), "application/soap+xml")
    docs = msg.body.findall("xdsb:DocumentResponse/xdsb:Document", NS)
    assert docs and all(msg.binary(d) for d in docs)  # inline base64, not MTOM


# -- the registry's rules ---------------------------------------------------------------------------
def _pnr(url, ss, docs, assocs=(), folders=()):
    return xc.provide_and_register(SoapClient(url), xc.Submission(ss, documents=docs, associations=list(assocs),
                                                                  folders=list(folders)))


def test_registry_refuses_broken_submissions(xds):
    (sub,) = make_submissions([("a.txt", b"aaa")], DOMAIN, Options(patient=PID))
    de, data = sub.documents[0]
    # hash and size that disagree with the document
    de.hash, de.size = "0" * 40, 99
    with pytest.raises(XdsError) as e:
        xc.provide_and_register(SoapClient(xds.url), sub)
    assert set(check_codes("P", e.value.errors)) == {"XDSNonIdenticalHash", "XDSNonIdenticalSize"}
    de.hash, de.size = "", None
    # patient of the document differs from the submission set's
    de.patient_id = "OTHER^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
    with pytest.raises(XdsError) as e:
        xc.provide_and_register(SoapClient(xds.url), sub)
    assert check_codes("P", e.value.errors) == ["XDSPatientIdDoesNotMatch"]
    # a malformed patient ID and a missing class code
    de.patient_id, de.class_code = "12345", None
    with pytest.raises(XdsError) as e:
        xc.provide_and_register(SoapClient(xds.url), sub)
    assert check_codes("P", e.value.errors) == ["XDSRepositoryMetadataError"] * 2
    de.patient_id, de.class_code = PID, sub.documents[0][0].type_code
    xc.provide_and_register(SoapClient(xds.url), sub)
    # the same submission set uniqueId and document again
    with pytest.raises(XdsError) as e:
        xc.provide_and_register(SoapClient(xds.url), sub)
    assert set(check_codes("P", e.value.errors)) >= {"XDSDuplicateUniqueIdInRegistry"}
    # RPLC of a document of another patient
    (other,) = submit(xds.url, [b"other"], patient="P2^^^&1.3.6.1.4.1.21367.2005.3.7&ISO")
    with pytest.raises(XdsError) as e:
        submit(xds.url, [b"new"], replace=other.entry_uuid)
    assert check_codes("P", e.value.errors) == ["XDSPatientIdDoesNotMatch"]
    # a document without its MIME part, and a part without a document entry
    (s2,) = make_submissions([("b.txt", b"b")], DOMAIN, Options(patient=PID))
    s2.documents[0][0].entry_uuid, extra = "Document01", s2.documents[0][0].entry_uuid
    obj_list = s2.object_list()
    from ihecli.net.soap import Attachments
    from ihecli.xds.messages import provide_and_register_request

    parts = Attachments()
    body = provide_and_register_request(obj_list, [(extra, b"b", "text/plain")], parts)
    msg = SoapClient(xds.url).call(v.ITI41, body, attachments=parts)
    res = read_registry_response(msg.body)
    assert set(check_codes("P", res.errors)) == {"XDSMissingDocument", "XDSMissingDocumentMetadata"}
    assert len(find(xds.url)) == 1
    # nothing of the refused submissions is left in the storage folder: the two accepted documents only
    files = [f for f in (Path(xds.service.blobs.root) / "xds").rglob("*") if f.is_file()]
    assert sorted(f.read_bytes() for f in files) == [b"aaa", b"other"]


def test_every_stored_query(xds):
    url = xds.url
    a, b = submit(url, [b"a", b"b"], folder="Referrals")
    (c,) = submit(url, [b"c"], replace=a.entry_uuid)
    p = {"$XDSDocumentEntryPatientId": PID, "$XDSDocumentEntryStatus": [v.APPROVED]}
    assert {o.entry_uuid for o in query(url, "find-documents", p)} == {b.entry_uuid, c.entry_uuid}
    assert query(url, "find-documents", {**p, "$XDSDocumentEntryClassCode": ["nope^^1.2"]}) == []
    assert len(query(url, "find-documents", {**p, "$XDSDocumentEntryClassCode": [DOMAIN.class_code.split("^")[0]]})) == 2
    assert len(query(url, "find-documents", {**p, "$XDSDocumentEntryConfidentialityCode": ["N^^2.16.840.1.113883.5.25"],
                                             "$XDSDocumentEntryCreationTimeFrom": "20000101"})) == 2
    assert query(url, "find-documents", {**p, "$XDSDocumentEntryCreationTimeTo": "20000101"}) == []
    refs = query(url, "find-documents", p, object_ref=True)
    assert {r.entry_uuid for r in refs} == {b.entry_uuid, c.entry_uuid} and refs[0].as_dict()["objectType"] == "ObjectRef"
    sets = query(url, "find-submission-sets", {"$XDSSubmissionSetPatientId": PID, "$XDSSubmissionSetStatus": [v.APPROVED]})
    assert len(sets) == 2 and all(isinstance(s, SubmissionSet) for s in sets)
    (fd,) = query(url, "find-folders", {"$XDSFolderPatientId": PID, "$XDSFolderStatus": [v.APPROVED]})
    assert isinstance(fd, Folder) and fd.title == "Referrals"
    everything = query(url, "get-all", {"$patientId": PID, "$XDSDocumentEntryStatus": [v.APPROVED, v.DEPRECATED],
                                        "$XDSSubmissionSetStatus": [v.APPROVED], "$XDSFolderStatus": [v.APPROVED]})
    kinds = [type(o).__name__ for o in everything]
    assert kinds.count("DocumentEntry") == 3 and kinds.count("SubmissionSet") == 2 and kinds.count("Folder") == 1
    assert kinds.count("Association") >= 7
    assert [o.entry_uuid for o in query(url, "get-documents", {"$XDSDocumentEntryUniqueId": [a.unique_id]})] == [a.entry_uuid]
    assert [o.entry_uuid for o in query(url, "get-folders", {"$XDSFolderEntryUUID": [fd.entry_uuid]})] == [fd.entry_uuid]
    got = query(url, "get-documents-and-associations", {"$XDSDocumentEntryEntryUUID": [b.entry_uuid]})
    assert [type(o).__name__ for o in got].count("Association") == 2  # from the set and from the folder
    ss_of_c = query(url, "get-submission-sets", {"$uuid": [c.entry_uuid]})
    assert [type(o).__name__ for o in ss_of_c] == ["SubmissionSet", "Association"]
    contents = query(url, "get-submission-set-and-contents", {"$XDSSubmissionSetEntryUUID": [sets[0].entry_uuid]})
    assert {o.entry_uuid for o in contents if isinstance(o, DocumentEntry)} == {a.entry_uuid, b.entry_uuid}
    assert any(isinstance(o, Folder) for o in contents)
    fc = query(url, "get-folder-and-contents", {"$XDSFolderUniqueId": [fd.unique_id]})
    # the replacement joined the folder of the document it replaced
    assert {o.entry_uuid for o in fc if isinstance(o, DocumentEntry)} == {a.entry_uuid, b.entry_uuid, c.entry_uuid}
    assert [o.entry_uuid for o in query(url, "get-folders-for-document", {"$XDSDocumentEntryEntryUUID": [c.entry_uuid]})] \
        == [fd.entry_uuid]
    rel = query(url, "get-related-documents", {"$XDSDocumentEntryUniqueId": [c.unique_id], "$AssociationTypes": [v.RPLC]})
    assert {o.entry_uuid for o in rel if isinstance(o, DocumentEntry)} == {a.entry_uuid, c.entry_uuid}
    assert [o.association_type for o in rel if isinstance(o, Association)] == [v.RPLC]
    with pytest.raises(XdsError) as e:
        query(url, "get-documents", {})
    assert check_codes("SQ", e.value.errors) == ["XDSStoredQueryMissingParam"]
    with pytest.raises(XdsError) as e:
        query(url, "get-documents", {"$XDSDocumentEntryUniqueId": [a.unique_id], "$XDSDocumentEntryEntryUUID": [a.entry_uuid]})
    assert check_codes("SQ", e.value.errors) == ["XDSStoredQueryParamNumber"]


def test_query_answers_are_the_registered_objects_with_status_and_home(tmp_path):
    """Objects are answered from the XML kept at registration, status and home written into it
    as text: each must equal the stored object parsed with status and home set as attributes,
    including objects that came with a home of their own, deprecated ones and a folder."""
    from sqlalchemy import select

    from ihecli.archive.tables_xds import xds_objects
    from ihecli.net.soap.xml import QUERY
    from ihecli.xds.messages import adhoc_query_request

    home = "urn:oid:1.3.6.1.4.1.21367.13.70.200"
    a = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage")
    srv = XdsServer(a, repository_unique_id=REPO, home=home)
    srv.start()
    try:
        subs = make_submissions([("a.txt", b"a"), ("b.txt", b"b")], DOMAIN, Options(patient=PID, folder="Notes"))
        (sub,) = subs
        sub.documents[1][0].home = "urn:oid:9.9.9"  # submitted with a home: the gateway's replaces it
        xc.provide_and_register(SoapClient(srv.url), sub)
        d1, d2 = [de for de, _ in sub.documents]
        (d3,) = submit(srv.url, [b"a, v2"], replace=d1.entry_uuid)
        with a.engine.connect() as conn:
            stored = {r.entry_uuid: r for r in conn.execute(select(xds_objects))}
        assert ' home="' in stored[d2.entry_uuid].xml and "xmlns:lcm" not in stored[d1.entry_uuid].xml

        def answer(qid: str, params: dict, return_type: str = "LeafClass") -> list:
            msg = SoapClient(srv.url).call(v.ITI18, adhoc_query_request(qid, params, return_type=return_type))
            assert msg.body.tag == q(QUERY, "AdhocQueryResponse") and msg.body.get("status") == v.SUCCESS
            return list(msg.body.find(q(RIM, "RegistryObjectList")))

        def expected(entry_uuid: str) -> etree._Element:
            row = stored[entry_uuid]
            el = parse_xml(row.xml)
            el.set("status", "urn:oasis:names:tc:ebxml-regrep:StatusType:" + row.status)
            el.set("home", home)
            return el

        def c14n(el: etree._Element) -> bytes:
            return etree.tostring(el, method="c14n", exclusive=True)

        find_id = v.STORED_QUERIES["find-documents"][0]
        got = answer(find_id, {"$XDSDocumentEntryPatientId": PID, "$XDSDocumentEntryStatus": [v.APPROVED, v.DEPRECATED]})
        assert sorted(el.get("id") for el in got) == sorted([d1.entry_uuid, d2.entry_uuid, d3.entry_uuid])
        for el in got:
            assert c14n(el) == c14n(expected(el.get("id")))
        assert {el.get("id"): el.get("status").rsplit(":", 1)[1] for el in got}[d1.entry_uuid] == "Deprecated"
        assert all(el.get("home") == home for el in got)
        refs = answer(find_id, {"$XDSDocumentEntryPatientId": PID, "$XDSDocumentEntryStatus": [v.APPROVED]},
                      return_type="ObjectRef")
        assert sorted((r.tag, r.get("id"), r.get("home")) for r in refs) == sorted(
            (q(RIM, "ObjectRef"), u, home) for u in (d2.entry_uuid, d3.entry_uuid))
        # a folder's lastUpdateTime is kept in its column: its answer goes through a tree
        (fd,) = answer(v.STORED_QUERIES["find-folders"][0], {"$XDSFolderPatientId": PID,
                                                              "$XDSFolderStatus": [v.APPROVED]})
        assert fd.get("status").endswith(":Approved") and fd.get("home") == home
        assert fd.xpath("rim:Slot[@name='lastUpdateTime']/rim:ValueList/rim:Value/text()", namespaces=NS) == \
            [stored[fd.get("id")].last_update_time]
    finally:
        srv.stop()
        a.close()


def test_hostile_input(xds):
    xxe = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           + _soap(b"<q:AdhocQueryRequest xmlns:q='urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0'>&x;"
                   b"</q:AdhocQueryRequest>", v.ITI18).split(b"?>", 1)[1])
    r, msg = post_raw(xds.url, xxe)
    assert r.status_code == 400 and b"root:" not in r.content and "DOCTYPE" in msg.fault().reason
    r = requests.post(xds.url, data=b"x" * (5 * 1024 * 1024), headers={"Content-Type": "application/soap+xml"},
                      timeout=20)
    assert r.status_code == 413
    t = time.monotonic()
    r, msg = post_raw(xds.url, b"--b\r\nContent-Type: text/plain\r\n\r\nno envelope", 'multipart/related; boundary="b"')
    assert r.status_code == 400 and time.monotonic() - t < 2
    # wrong body for the action
    r, msg = post_raw(xds.url, _soap((XDS / "nist-sq-req.xml").read_bytes(), v.ITI43))
    assert r.status_code == 400 and "RetrieveDocumentSetRequest" in msg.fault().reason
    # the server still answers
    assert find(xds.url) == []


def test_provide_and_register_without_mtom_is_refused(xds):
    """ITI-41 must be MTOM/XOP: the same request with the document inline (base64) is refused
    with a RegistryError, and nothing is stored."""
    import base64

    from ihecli.net.soap.xml import XDSB
    from ihecli.xds.messages import provide_and_register_request

    (sub,) = make_submissions([("a.txt", b"inline")], DOMAIN, Options(patient=PID))
    body = provide_and_register_request(sub.object_list(), [], None)
    doc = etree.SubElement(body, q(XDSB, "Document"), id=sub.documents[0][0].entry_uuid)
    doc.text = base64.b64encode(b"inline").decode()
    msg = SoapClient(xds.url).call(v.ITI41, body)
    assert not msg.mtom
    res = read_registry_response(msg.body)
    assert res.status == v.FAILURE and check_codes("P", res.errors) == ["XDSRepositoryError"]
    assert "MTOM" in res.errors[0].context and find(xds.url) == []


def test_archive_check_leaves_documents_alone(xds):
    """The repository's files live beside the DICOM files: `archive check --repair` must not take
    them for orphans."""
    (de,) = submit(xds.url, [b"keep me"])
    rep = xds.service.archive.check(repair=True)
    assert rep.orphan_files == []
    res = xc.retrieve_document_set(SoapClient(xds.url), [DocumentRequest(REPO, de.unique_id)])
    assert res.documents[0].data == b"keep me"


def test_concurrent_submissions_of_one_unique_id(xds):
    """Two sources submitting the same document uniqueId at once: exactly one is registered."""
    from concurrent.futures import ThreadPoolExecutor

    subs = []
    for body in (b"one", b"two"):
        (s,) = make_submissions([("a.txt", body)], DOMAIN, Options(patient=PID))
        subs.append(s)
    subs[1].documents[0][0].unique_id = subs[0].documents[0][0].unique_id

    def send(s):
        try:
            xc.provide_and_register(SoapClient(xds.url), s)
            return "ok"
        except XdsError as e:
            return check_codes("P", e.errors)

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(send, subs), key=str)
    assert outcomes[1] == "ok" and outcomes[0] in (["XDSNonIdenticalHash"], ["XDSNonIdenticalSize"],
                                                    ["XDSRepositoryMetadataError"])
    (de,) = find(xds.url)
    res = xc.retrieve_document_set(SoapClient(xds.url), [DocumentRequest(REPO, de.unique_id)])
    assert res.documents[0].data in (b"one", b"two") and len(res.documents) == 1
    files = [f for f in (Path(xds.service.blobs.root) / "xds").rglob("*") if f.is_file()]
    assert len(files) == 1  # the refused one left nothing behind
