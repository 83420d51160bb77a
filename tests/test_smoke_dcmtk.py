"""The archive driven by real DCMTK clients: storescu, findscu, movescu (to storescp), getscu."""
from __future__ import annotations

from helpers import run_dcmtk


def test_storescu_then_findscu_movescu_getscu(server, storescp, corpus, tmp_path):
    run_dcmtk("storescu", "-aec", server.aet, "127.0.0.1", str(server.port), *map(str, corpus))
    assert server.archive.counts()["instances"] == len(corpus)

    p = run_dcmtk("findscu", "-S", "-aec", server.aet, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=TEST*",
                  "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(server.port))
    text = p.stdout + p.stderr
    assert text.count("Find Response:") == 2
    assert "NumberOfStudyRelatedInstances" in text and "[6 ]" in text

    from pydicom import dcmread

    study = str(dcmread(corpus[0]).StudyInstanceUID)
    run_dcmtk("movescu", "-S", "-aec", server.aet, "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.port))
    _, out = storescp
    moved = sorted(out.iterdir())
    assert len(moved) == 6
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in corpus}
    for p in moved:  # sent as stored
        ds = dcmread(p)
        orig = originals[str(ds.SOPInstanceUID)]
        assert ds.PixelData == orig.PixelData and ds.PatientName == orig.PatientName
        assert len(ds) == len(orig) - (0xFFFCFFFC in orig)  # storescp drops trailing padding

    got = tmp_path / "get"
    got.mkdir()
    run_dcmtk("getscu", "-S", "-aec", server.aet, "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.port))
    assert len(list(got.iterdir())) == 6
