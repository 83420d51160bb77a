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


def test_get_that_cannot_write_leaves_no_truncated_file_and_says_why(server, corpus, tmp_path):
    """`ihe dicom get` whose files cannot be written whole (here a file size limit, as a full
    disk would): the instances are refused, no truncated .dcm stays in the folder, and the error
    names the local cause, not only the archive's 0xA702."""
    import os
    import resource
    import subprocess
    import sys

    from pydicom import dcmread

    run_dcmtk("storescu", "-aec", server.aet, "127.0.0.1", str(server.port), *map(str, corpus))
    study = str(dcmread(corpus[0]).StudyInstanceUID)
    out = tmp_path / "get"
    limit = corpus[0].stat().st_size // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run([sys.executable, "-m", "ihecli", "dicom", "get", server.spec, "--out", str(out),
                        "-k", f"StudyInstanceUID={study}"], capture_output=True, text=True, timeout=120,
                       preexec_fn=small_files, env={**os.environ, "TCP_NODELAY": "1"})
    assert p.returncode == 1, p.stderr
    assert "0xA702" in p.stderr and "cannot write" in p.stderr and "File too large" in p.stderr, p.stderr
    assert [f for f in out.iterdir()] == []
