"""Archive.store_many, the archive's bulk store (what `ihe pdi import` stores a medium with): the
files fsynced, every row committed in one transaction, each object's outcome in its place, a
refused or unreadable object failing alone; rejection notes act as with Archive.store."""
from __future__ import annotations

import hashlib
import io

from pydicom import dcmread
from sqlalchemy import event, func, select

from helpers import make_corpus
from ihecli.archive import Archive, StoreOutcome, schema as s
from ihecli.errors import ArchiveError
from ihecli.kos import builder, codes
from ihecli.workflow.service import attach


def _commits(archive: Archive) -> list[int]:
    """A counter of the transactions the index writer commits from now on."""
    seen = [0]

    @event.listens_for(archive.writer.engine, "commit")
    def _count(_conn):
        seen[0] += 1

    return seen


def test_a_batch_is_one_commit_and_each_object_has_its_outcome(archive, tmp_path):
    files = make_corpus(tmp_path / "c", studies=2, series=2, images=3)
    datas = [f.read_bytes() for f in files]
    before = archive.store(datas[0])
    assert before.outcome == "stored"
    commits = _commits(archive)
    batch = datas + [datas[1], b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"]
    out = archive.store_many(batch)
    assert commits[0] == 1
    assert [o.outcome for o in out[:len(datas)]] == ["duplicate"] + ["stored"] * (len(datas) - 1)
    assert isinstance(out[-2], StoreOutcome) and out[-2].outcome == "duplicate"  # the same object twice
    assert isinstance(out[-1], ArchiveError) and out[-1].status == 0xA900  # no SOP Instance UID
    assert [o.sop_uid for o in out[:len(datas)]] == [str(dcmread(f).SOPInstanceUID) for f in files]
    with archive.connect() as conn:
        rows = {r.sop_uid: r for r in conn.execute(select(s.instances.c.sop_uid, s.instances.c.path,
                                                          s.instances.c.sha256))}
        assert conn.execute(select(func.sum(s.studies.c.num_instances))).scalar_one() == len(datas)
    assert len(rows) == len(datas)
    for f, data in zip(files, datas):
        r = rows[str(dcmread(f).SOPInstanceUID)]
        stored = archive.file_path(r.path).read_bytes()
        assert stored == data and hashlib.sha256(stored).hexdigest() == r.sha256
    assert archive.check().missing_files == [] and archive.check().orphan_files == []
    assert not any(archive.blobs.tmp.iterdir())


def test_rejected_instances_fail_alone_and_notes_act(archive, tmp_path):
    attach(archive)
    files = make_corpus(tmp_path / "c", studies=1, series=1, images=4)
    note = builder.encode(builder.build_kos(codes.REJECTED_FOR_PATIENT_SAFETY_REASONS,
                                            [dcmread(f, stop_before_pixels=True) for f in files[:2]],
                                            series_description="Rejection note"))
    out = archive.store_many([note])
    assert out[0].outcome == "stored"
    out = archive.store_many([f.read_bytes() for f in files])
    assert [isinstance(o, ArchiveError) and o.status == 0xA771 for o in out] == [True, True, False, False]
    assert [o.outcome for o in out[2:]] == ["stored", "stored"]
    with archive.connect() as conn:
        held = set(conn.execute(select(s.instances.c.sop_uid)).scalars())
    assert held == {str(dcmread(f).SOPInstanceUID) for f in files[2:]} | {str(dcmread(io.BytesIO(note)).SOPInstanceUID)}
    assert not any(archive.blobs.tmp.iterdir())
