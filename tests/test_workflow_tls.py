"""What the archive sends on associations of its own goes over TLS to nodes marked tls (ITI-19):
MPPS forwarding (PPS Manager) and storage commitment reports on a new association, to real
pynetdicom peers listening with TLS and requiring our certificate; a peer whose certificate no
trusted CA signed is never sent to, and the outbox keeps retrying it with the reason."""
from __future__ import annotations

import ssl
import threading

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import StorageCommitmentPushModel as STGCMT

from helpers import free_port, make_corpus
from ihecli.archive.server import DicomServer
from ihecli.config import Node
from ihecli.net import tls
from ihecli.workflow import queue
from ihecli.workflow.service import WorkflowConfig, WorkflowServices
from test_move_tls import pki  # noqa: F401  (the fixture)
from test_mpps import completion, create, new_step, wait_for
from test_stgcmt import Scu, refs_of


class TlsPeer:
    """A pynetdicom SCP over TLS (its certificate; ours checked against the CA): records what
    arrives and whether it came over TLS."""

    def __init__(self, aet: str, cert: str, ca: str, *, context, handlers):
        self.aet, self.port = aet, free_port()
        self.got: list[tuple[str, bool]] = []  # (what, over TLS)
        self.arrived = threading.Event()
        ae = AE(ae_title=aet)
        context(ae)
        wrapped = [(e, self._wrap(name, fn)) for e, name, fn in handlers]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=wrapped,
                                      ssl_context=tls.context(tls.TlsConfig(cert=cert, ca=ca), server=True))

    def _wrap(self, name, fn):
        def handler(event):
            self.got.append((name, isinstance(event.assoc.dul.socket.socket, ssl.SSLSocket)))
            self.arrived.set()
            return fn(event)
        return handler

    def node(self) -> Node:
        return Node(self.aet, "127.0.0.1", self.port, tls=True)

    def stop(self):
        self.server.shutdown()


def mpps_peer(aet, cert, ca) -> TlsPeer:
    return TlsPeer(aet, cert, ca, context=lambda ae: ae.add_supported_context(MPPS), handlers=[
        (evt.EVT_N_CREATE, "create", lambda e: (0x0000, None)),
        (evt.EVT_N_SET, "set", lambda e: (0x0000, None))])


@pytest.fixture
def our_tls(pki):
    return tls.TlsConfig(cert=pki["archive"], ca=pki["ca"])


def test_mpps_forwarded_over_tls(archive, pki, our_tls):
    ris = mpps_peer("RIS", pki["dest"], pki["ca"])
    rogue = mpps_peer("ROGUE", pki["rogue"], pki["ca"])
    cfg = WorkflowConfig(mpps_forward=[ris.node(), rogue.node()], poll=0.1, retry_base=0.2, tls=our_tls)
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, cfg)])
    srv.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="IHE_ARCHIVE")
        status, uid = create(assoc, new_step())
        assert status.Status == 0
        mods, _ = completion()
        status, _ = assoc.send_n_set(mods, MPPS, uid)
        assert status.Status == 0
        assoc.release()
        assert wait_for(lambda: len(ris.got) == 2), ris.got
        assert ris.got == [("create", True), ("set", True)]
        # the rogue's certificate is refused: nothing reaches it, and its row waits with the reason
        target = str(rogue.node())
        assert target.startswith("tls://ROGUE@")

        def refused():
            rows = [r for r in queue.items(archive.engine, ref=uid) if r.target == target]
            return rows and rows[0].attempts >= 2 and "not trusted" in (rows[0].last_error or "")
        assert wait_for(refused), queue.items(archive.engine, ref=uid)
        assert rogue.got == []
    finally:
        srv.stop()
        ris.stop()
        rogue.stop()


def test_storage_commitment_report_over_tls(archive, pki, our_tls, tmp_path):
    files = make_corpus(tmp_path / "study", studies=1, series=1, images=2)
    for f in files:
        archive.store(f.read_bytes())
    reports = []

    def on_report(event):
        reports.append(event.event_information)
        return 0x0000, None

    modality = TlsPeer("MODALITY", pki["dest"], pki["ca"],
                       context=lambda ae: ae.add_supported_context(STGCMT, scu_role=False, scp_role=True),
                       handlers=[(evt.EVT_N_EVENT_REPORT, "report", on_report)])
    cfg = WorkflowConfig(commit_new_association={"MODALITY"}, nodes={"MODALITY": modality.node()}, poll=0.1,
                         tls=our_tls)
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, cfg)])
    srv.start()
    try:
        scu = Scu()
        assoc = scu.associate(srv.port)
        status, tuid = scu.request(assoc, refs_of(files))
        assert status.Status == 0
        assoc.release()
        assert modality.arrived.wait(30), "no report"
        assert modality.got == [("report", True)]
        assert str(reports[0].TransactionUID) == tuid and len(reports[0].ReferencedSOPSequence) == 2
    finally:
        srv.stop()
        modality.stop()


def test_mpps_client_to_a_tls_node(pki, tmp_path):
    """`ihe dicom mpps create|set` to tls://RIS@...: the profile's [tls] certificate and CA."""
    from helpers import run_cli

    ris = mpps_peer("RIS", pki["dest"], pki["ca"])
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[tls]\ncert = "{pki["archive"]}"\nca = "{pki["ca"]}"\n')
    try:
        node = f"tls://RIS@127.0.0.1:{ris.port}"
        r = run_cli("--config", cfg, "dicom", "mpps", "create", node, "--patient-id", "P1", "--modality", "CT",
                    "--json")
        assert r.code == 0, r.stderr
        r = run_cli("--config", cfg, "dicom", "mpps", "set", node, r.json["sop_uid"], "--state", "DISCONTINUED")
        assert r.code == 0, r.stderr
        assert ris.got == [("create", True), ("set", True)]
        r = run_cli("--config", cfg, "dicom", "mpps", "create", f"RIS@127.0.0.1:{ris.port}", "--patient-id", "P1",
                    "--modality", "CT", "--timeout", "5")
        assert r.code != 0 and len(ris.got) == 2  # the same node without the flag: no answer
    finally:
        ris.stop()


def test_key_objects_to_a_tls_image_manager(archive, db_url, pki, tmp_path):
    """`ihe iocm reject --to tls://...` (C-FIND for what to reject, then C-STORE of the note) and
    `ihe kin create --to tls://...` reach an archive that takes DICOM over TLS only."""
    from pydicom import dcmread

    from helpers import run_cli

    corpus = make_corpus(tmp_path / "corpus")
    for p in corpus[:3]:
        archive.store(p.read_bytes())
    study = str(dcmread(corpus[0], stop_before_pixels=True).StudyInstanceUID)
    first, second = (str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in corpus[:2])
    srv = DicomServer(archive, port=0, ssl_context=tls.context(tls.TlsConfig(cert=pki["dest"], ca=pki["ca"]),
                                                               server=True))
    srv.start()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[tls]\ncert = "{pki["archive"]}"\nca = "{pki["ca"]}"\n')
    node = f"tls://IHE_ARCHIVE@127.0.0.1:{srv.port}"
    try:
        r = run_cli("--config", cfg, "kin", "create", "--study", study, "--instance", first, "--title", "TCE001",
                    "--to", node, "--db", db_url, "--storage", tmp_path / "storage", "--json")
        assert r.code == 0, r.stderr
        r = run_cli("--config", cfg, "iocm", "reject", "--reason", "quality", "--instance", second, "--to", node,
                    "--yes", "--json")
        assert r.code == 0, r.stderr
        r = run_cli("--config", cfg, "iocm", "reject", "--reason", "quality", "--instance", first,
                    "--to", f"IHE_ARCHIVE@127.0.0.1:{srv.port}", "--yes", "--timeout", "5")
        assert r.code != 0  # the same archive without the flag: no association
    finally:
        srv.stop()
    kos = [r for r in archive.instances(_study_query(study)) if r.sop_class == "1.2.840.10008.5.1.4.1.1.88.59"]
    assert len(kos) == 2


def _study_query(study: str):
    from pydicom.dataset import Dataset

    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = study
    return q


def test_commit_client_takes_the_report_over_tls(archive, pki, our_tls, tmp_path):
    """`ihe dicom commit tls://... --report-port P`: the archive's report on a new association
    comes over TLS to a listener with the profile's certificate."""
    from helpers import run_cli

    files = make_corpus(tmp_path / "study", studies=1, series=1, images=2)
    for f in files:
        archive.store(f.read_bytes())
    report_port = free_port()
    cfg = WorkflowConfig(commit_new_association={"MODALITY"}, poll=0.1, tls=our_tls,
                         nodes={"MODALITY": Node("MODALITY", "127.0.0.1", report_port, tls=True)})
    srv = DicomServer(archive, port=0, services=[WorkflowServices(archive, cfg)],
                      ssl_context=tls.context(our_tls, server=True))
    srv.start()
    profile = tmp_path / "config.toml"
    profile.write_text(f'[tls]\ncert = "{pki["dest"]}"\nca = "{pki["ca"]}"\n')
    try:
        r = run_cli("--config", profile, "dicom", "commit", f"tls://IHE_ARCHIVE@127.0.0.1:{srv.port}", *files,
                    "--calling-aet", "MODALITY", "--report-port", report_port, "--timeout", "30", "--json")
    finally:
        srv.stop()
    assert r.code == 0, r.stderr
    assert r.json["same_association"] is False and len(r.json["committed"]) == 2


def test_media_imported_to_a_tls_node(archive, pki, tmp_path):
    """`ihe pdi import --to tls://...`: the medium's objects reach an archive that takes DICOM over
    TLS only; without the flag nothing is sent and the command fails."""
    from helpers import run_cli

    corpus = make_corpus(tmp_path / "corpus")
    r = run_cli("pdi", "burn", *corpus[:4], "--usb", tmp_path / "stick", "--no-web", "--json")
    assert r.code == 0, r.stderr
    srv = DicomServer(archive, port=0, ssl_context=tls.context(tls.TlsConfig(cert=pki["dest"], ca=pki["ca"]),
                                                               server=True))
    srv.start()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[tls]\ncert = "{pki["archive"]}"\nca = "{pki["ca"]}"\n')
    try:
        r = run_cli("--config", cfg, "pdi", "import", tmp_path / "stick", "--to",
                    f"IHE_ARCHIVE@127.0.0.1:{srv.port}", "--timeout", "5", "--json")
        assert r.code != 0 and archive.counts()["instances"] == 0  # the same archive without the flag: nothing sent
        r = run_cli("--config", cfg, "pdi", "import", tmp_path / "stick", "--to",
                    f"tls://IHE_ARCHIVE@127.0.0.1:{srv.port}", "--json")
        assert r.code == 0, r.stderr
    finally:
        srv.stop()
    assert sorted(o["outcome"] for o in r.json["objects"]) == ["sent"] * 4
    assert archive.counts()["instances"] == 4
