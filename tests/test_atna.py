"""Audit messages (ITI-20): every builder's output against the DICOM audit schema and the
connectathon Schematron rules; syslog framing and parsing; reading DICOM and RFC 3881 messages."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree, isoschematron

from ihecli.atna import events as ev
from ihecli.atna import syslog
from ihecli.atna.parse import AuditParseError, parse_audit

DATA = Path(__file__).parent / "data" / "atna"
SVRL = "{http://purl.oclc.org/dsdl/svrl}"
XSD = etree.XMLSchema(etree.parse(str(DATA / "ipf-dicom2017c.xsd")))


def schematron(name: str) -> isoschematron.Schematron:
    text = (DATA / name).read_text(encoding="utf-8")
    # The WUSTL ITI-18 rule counts a boolean ("count(A and B)=1"), a type error in XPath 1.0 that
    # stops any XSLT 1 processor; it means "A and B".
    text = re.sub(r"count\((ParticipantObjectDetail\[@type='QueryEncoding'\] and "
                  r"ParticipantObjectDetail\[@value!=''\])\)=1", r"\1", text)
    return isoschematron.Schematron(etree.fromstring(text.encode("utf-8")), validate_schema=False,
                                    store_report=True)


def problems(xml: bytes, sch: str | None = None) -> list[str]:
    """Schema errors and failed Schematron asserts of one message (empty: valid)."""
    doc = etree.fromstring(xml)
    out = [] if XSD.validate(doc) else [str(e) for e in XSD.error_log]
    if sch:
        s = schematron(sch)
        if not s.validate(doc):
            out += [f.findtext(SVRL + "text").strip() for f in s.validation_report.iter(SVRL + "failed-assert")]
    return out


ME = ev.Peer.local("IHE")
PACS = ev.Peer("PACS", "10.0.0.5")
ANON = "http://www.w3.org/2005/08/addressing/anonymous"
PID = "PID1^^^&1.2.3&ISO"
STUDIES = {"1.2.3.4": {"sop_classes": {"1.2.840.10008.5.1.4.1.1.2": 3}, "accessions": ["ACC1"]}}

DICOM_EVENTS = {
    "application start": ev.application_activity(True, app="IHE_ARCHIVE", aets=["IHE_ARCHIVE"], launcher="root"),
    "application stop": ev.application_activity(False, app="IHE_ARCHIVE", aets=["IHE_ARCHIVE"]),
    "node authentication": ev.node_authentication_failure("127.0.0.1:40000", "no client certificate",
                                                          service="dicom"),
    "login": ev.user_authentication(True, user="alice", node="ihe"),
    "instances transferred": ev.instances_transferred(source=PACS, destination=ME, studies=STUDIES,
                                                      patients=["PID1"]),
    "begin transferring": ev.begin_transferring(source=ME, destination=PACS, studies=STUDIES, patients=["PID1"]),
    "query": ev.dicom_query(source=PACS, destination=ME, sop_class="1.2.840.10008.5.1.4.1.2.2.1",
                            query=b"\x08\x00\x52\x00", transfer_syntax="1.2.840.10008.1.2.1"),
    "patient record": ev.patient_record("U", patients=[PID], user="ihe"),
    "export": ev.media_event(True, media="cd", media_id="IHE_PDI", user="alice", studies=STUDIES, patients=["PID1"]),
    "import": ev.media_event(False, media="usb", media_id="", user="alice", studies=STUDIES, patients=["PID1"]),
    "storage commitment": ev.storage_commitment(requester=PACS, archive=ME, studies=STUDIES, patients=["PID1"],
                                                outcome=ev.MINOR_FAILURE, description="1 of 4 not committed"),
    "procedure record, N-CREATE": ev.procedure_record("C", source=PACS, destination=ME, patient_id="PID1",
                                                      patient_name="DOE^JANE", studies={"1.2.3.4": ["ACC1"]},
                                                      mpps_uid="1.2.3.5"),
    "procedure record, forwarded N-SET refused": ev.procedure_record(
        "U", source=ME, destination=PACS, patient_id="PID1", studies={"1.2.3.4": []}, mpps_uid="1.2.3.5",
        outcome=ev.MINOR_FAILURE, description="0xA710"),
    "instances rejected": ev.instances_rejected(requester=PACS, archive=ME, study_uid="1.2.3.4",
                                                sop_classes={"1.2.840.10008.5.1.4.1.1.2": 2}, patient_id="PID1",
                                                reason=ev.dcm("113001", "Rejected for Quality Reasons"),
                                                whole_study=False, erased=False),
    "study deleted": ev.instances_rejected(requester=PACS, archive=ME, study_uid="1.2.3.4",
                                           sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3}, patient_id="PID1",
                                           reason=ev.dcm("113039", "Data Retention Policy Expired"),
                                           whole_study=True, erased=True),
}

ITI_EVENTS = {
    "ITI-09_110112_mt01DG.sch": ev.pix_query(source=ev.Peer.local("IHE|FAC"), destination=ev.Peer("MGR|FAC", "10.0.0.1"),
                                             query=b"MSH|^~\\&|...", message_id="MSG1", patient_ids=[PID]),
    "ITI-10_110110_mt02DG.sch": ev.pix_update_notification(source=ev.Peer("MGR|FAC", "10.0.0.1"),
                                                           destination=ev.Peer.local("IHE|FAC"), patient_ids=[PID],
                                                           message_id="MSG2"),
    "ITI-18_110112_mt01DG.sch": ev.registry_stored_query(
        source=ev.Peer.local(ANON), destination=ev.Peer("https://reg/xds", "reg.example"),
        query_id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d", query=b"<AdhocQueryRequest/>", patient_id=PID),
    "ITI-41_110106_mt01DG.sch": ev.provide_and_register(source=ev.Peer.local(ANON),
                                                        destination=ev.Peer("https://rep/xds", "rep.example"),
                                                        submission_set_uid="1.2.3.9", patient_id=PID),
    "ITI-43_110107_mt01DG.sch": ev.retrieve_document_set(source=ev.Peer("https://rep/xds", "rep.example"),
                                                         destination=ev.Peer.local(ANON),
                                                         documents=[("1.2.3.10", "1.2.3.11", "urn:oid:1.2.3.12")],
                                                         patient_id=PID),
    "ITI-47_110112_mt01DG.sch": ev.pdq_query(source=ev.Peer.local("IHE|FAC"),
                                             destination=ev.Peer("https://pdq/v3", "pdq.example"),
                                             query=b"<queryByParameter/>", message_id="MSG3"),
}


@pytest.mark.parametrize("name", DICOM_EVENTS)
def test_dicom_events_validate_against_the_dicom_audit_schema(name):
    assert problems(ev.to_xml(DICOM_EVENTS[name])) == []


@pytest.mark.parametrize("sch", ITI_EVENTS)
def test_iti_events_pass_schema_and_connectathon_schematron(sch):
    assert problems(ev.to_xml(ITI_EVENTS[sch]), sch) == []


def test_iti62_event_validates_and_names_each_removed_object():
    e = ev.delete_document_set(source=ev.Peer.local(ANON), destination=ev.Peer("https://reg/xds", "reg.example"),
                               patient_id=PID, object_uuids=["urn:uuid:a", "urn:uuid:b"])
    xml = ev.to_xml(e)
    assert problems(xml) == []
    doc = etree.fromstring(xml)
    assert doc.find("EventIdentification").get("EventActionCode") == "D"
    assert doc.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-62"
    assert len(doc.findall("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='3']")) == 2


def test_schematron_catches_a_wrong_message():
    # the ITI-9 Consumer rules fail the Manager-side record from IPF (no process id on the Source)
    errors = problems((DATA / "pixquery.xml").read_bytes(), "ITI-09_110112_mt01DG.sch")
    assert "Source must have AlternativeUserID (process id)" in errors
    # and our Consumer-side event without the query object fails too
    e = ITI_EVENTS["ITI-09_110112_mt01DG.sch"]
    bad = ev.AuditEvent(e.event_id, e.action, e.outcome, e.types, e.participants, [])
    assert any("Query Params" in p for p in problems(ev.to_xml(bad), "ITI-09_110112_mt01DG.sch"))


def test_xml_is_safe_for_hostile_values():
    e = ev.patient_record("R", patients=['<&">\x01x'], user="a\x00b")
    xml = ev.to_xml(e)
    assert problems(xml) == []
    assert parse_audit(xml).patients == ['<&">x']


def test_syslog_message_and_octet_counting():
    xml = ev.to_xml(DICOM_EVENTS["login"])
    msg = syslog.message(xml, app="ihe", hostname="host one", procid="42")
    assert re.match(rb"^<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z hostone ihe 42 IHE\+RFC-3881 - \xef\xbb\xbf<\?xml",
                    msg)
    framed = syslog.frame(msg)
    n, rest = framed.split(b" ", 1)
    assert int(n) == len(rest) == len(msg)
    parsed = syslog.parse(msg)
    assert (parsed.pri, parsed.hostname, parsed.app, parsed.procid, parsed.msgid) == (85, "hostone", "ihe", "42",
                                                                                       "IHE+RFC-3881")
    assert parsed.body == xml


def test_parse_real_syslog_messages_with_bom_and_structured_data():
    full = syslog.parse((DATA / "wustl-fullmsg.txt").read_bytes())
    assert full.app == "OHT" and full.msgid == "IHE+RFC-3881"
    a = parse_audit(full.body)
    assert (a.format, a.event_id, a.types) == ("RFC3881", "110100", [("110120", "Application Start")])
    raw = (DATA / "wustl-msg.txt").read_bytes()
    m = syslog.parse(raw[3:])
    assert m.msgid == "-" and parse_audit(m.body).event_id
    sd = syslog.parse(b'<85>1 - h app 1 IHE+RFC-3881 [x@1 a="b\\]c"] ' + (DATA / "start.xml").read_bytes())
    assert parse_audit(sd.body).event_id == "110100"


def test_parse_dicom_and_rfc3881_with_junk_around():
    a = parse_audit((DATA / "pixquery.xml").read_bytes())
    assert (a.format, a.event_id, a.action) == ("DICOM", "110112", "E")
    assert a.patients == ["27^^^MPI&2.16.840.1.113883.3.37.4.1.1.2.1.1&ISO^PI",
                          "78106^^^PKLN&2.16.840.1.113883.3.37.4.1.1.2.511.1&ISO"]
    assert "MESA_DEPARTMENT|MESA_PIX_CLIENT" in a.users
    # the WUSTL template: a comment before the XML declaration, declared ASCII
    r = parse_audit(b"junk junk " + (DATA / "ITI-18_110112.rfc.xml").read_bytes() + b"\ntrailing junk")
    assert (r.format, r.event_id, r.types[0][0]) == ("RFC3881", "110112", "ITI-18")
    assert r.event_time is None  # ${timeStamp} placeholder
    with pytest.raises(AuditParseError):
        parse_audit(b"<AuditMessage><EventIdentification>")
    with pytest.raises(AuditParseError):
        parse_audit(b"hello")


def test_parser_resolves_no_entities():
    evil = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<AuditMessage><EventIdentification EventActionCode="E" EventOutcomeIndicator="0">'
            b'<EventID csd-code="&x;" codeSystemName="DCM" originalText="t"/></EventIdentification></AuditMessage>')
    try:
        a = parse_audit(evil)
    except AuditParseError:
        return
    assert "root:" not in a.event_id
