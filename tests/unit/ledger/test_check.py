"""The ledger's verdict (ledger/check.py) on hand-made segments, and its books (ledger/books.py): what a resume, a
kill between a commit and its booking, and a rollback do to RUN_DIR/ledger/, and `gptresume ledger`'s output and
exit code."""

import numpy as np
import pytest

from conftest import fake_checkpoint
from gptresume.cli import main
from gptresume.data.stream_state import PART_STRIDE
from gptresume.ledger.books import booked, lineage, prepare_for_resume
from gptresume.ledger.check import check
from gptresume.ledger.segment import CHECKPOINT_SEGMENT, Segment, SegmentError

N = 6  # blocks per epoch


def packed(first, per_step, epochs, **extra):
    """A packed segment of steps `first`, first + 1, ...: per_step = [[block ids of the step], ...]."""
    ids = [i for step in per_step for i in step]
    return Segment.of("packed", {"samples": N, "data_fingerprint": "f", "unobserved": 0},
                      steps=np.arange(first, first + len(per_step)), counts=[len(s) for s in per_step], ids=ids,
                      epochs=epochs, padded=np.zeros(len(ids), bool), **extra)


def two_epochs():
    # epoch 0: 3 steps of 2 blocks; epoch 1: 2 steps so far
    return [packed(1, [[3, 1], [0, 5]], epochs=[0] * 4), packed(3, [[2, 4], [1, 0], [5, 3]], epochs=[0, 0, 1, 1, 1, 1])]


def test_two_epochs_each_block_once():
    verdict = check(two_epochs())
    assert verdict.ok, verdict.violations
    assert verdict.lines == ["steps 1-5 in 2 segment(s), 10 samples trained",
                             "epoch 0: each of the 6 blocks trained once",
                             "epoch 1: 4 of 6 blocks so far (not complete)"]


def test_a_repeat_a_missing_block_a_gap_and_a_late_start_are_named():
    a, b = two_epochs()
    b.ids[1] = 3  # epoch 0: block 3 twice (steps 1 and 3), block 4 never
    verdict = check([a, b])
    assert verdict.violations == [
        "1 sample(s) of an epoch recorded more than once; first: block 3 of epoch 0: trained at step 1, trained at "
        "step 3",
        "epoch 0: 1 of 6 blocks never trained (nor skipped or dropped): 4"]
    assert check([two_epochs()[1]]).violations[0].startswith("steps 1-2 are not in the ledger (it starts there")
    late = packed(5, [[1, 2]], epochs=[1, 1])
    assert "steps 3-4 are not in the ledger" in check([two_epochs()[0], late]).violations[0]
    assert "empty" in check([]).violations[0]


def test_skipped_and_dropped_blocks_count_once_and_never_also_trained():
    a = packed(1, [[3, 1], [0, 5]], epochs=[0] * 4)
    for name in ("skipped", "dropped"):
        extra = {f"{name}_ids": [2], f"{name}_epochs": [0]}
        b = packed(3, [[4], [1, 0], [5, 3]], epochs=[0, 1, 1, 1, 1], **extra)  # block 2 of epoch 0 never trained
        verdict = check([a, b])
        assert verdict.ok, verdict.violations
        assert verdict.lines[1] == f"epoch 0: each of the 6 blocks trained once (1 {name}: listed, never trained)"
        b = packed(3, [[4, 2], [1, 0], [5, 3]], epochs=[0, 0, 1, 1, 1, 1], **extra)  # ... and also trained
        assert f"block 2 of epoch 0: trained at step 3, {name}" in check([a, b]).violations[0]


def test_padding_repeats_name_their_cause():
    a, b = two_epochs()
    b.ids[5], b.epochs[5], b.padded[5] = 3, 0, True  # epoch 0's first block again, filling its last batch
    verdict = check([a, b])
    assert "block 3 of epoch 0: trained at step 1, trained at step 5 (padding)" in verdict.violations[0]
    assert "even_batches" in verdict.violations[0]


def stream(first, per_step, held, produced, **extra):
    ids = [PART_STRIDE * p + k for step in per_step for p, k in step]
    return Segment.of("stream", {"parts": {str(p): {"produced": c, "passes": 0} for p, c in produced.items()},
                                 "world_size": 2},
                      steps=np.arange(first, first + len(per_step)), counts=[len(s) for s in per_step], ids=ids,
                      held_ids=[PART_STRIDE * p + k for p, k in held], **extra)


def test_a_stream_accounts_for_every_block_produced():
    a = stream(1, [[(0, 0), (1, 0)], [(0, 2), (1, 1)]], held=[(0, 1)], produced={0: 3, 1: 2})
    b = stream(3, [[(0, 1), (1, 3)]], held=[(0, 3), (1, 2)], produced={0: 4, 1: 4})
    verdict = check([a, b])
    assert verdict.ok, verdict.violations
    assert "8 blocks produced; 6 trained, 2 held" in verdict.lines[1]
    b.held_ids = b.held_ids[:1]  # (part 1, block 2) lost
    assert check([a, b]).violations == ["part 1: 1 of its 4 blocks neither trained, skipped nor held: "
                                        "(part 1, block 2)"]
    b.held_ids = np.array([PART_STRIDE * 0 + 3, PART_STRIDE * 1 + 2, PART_STRIDE * 1 + 3])  # held and trained
    assert "trained and also held" in check([a, b]).violations[0]


def test_books_follow_the_resumed_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    segments = two_epochs()
    for seg, step in zip(segments, (2, 5)):
        ckpt = fake_checkpoint(run, step, {"model.safetensors": b"w"}, commit=False)
        seg.write(ckpt / CHECKPOINT_SEGMENT)
    from gptresume.checkpoint import write_manifest

    for step in (2, 5):
        write_manifest(run / f"checkpoint-{step}", step=step, epoch=None, config={}, config_fingerprint="c",
                       data_fingerprint=None, world_size=1)
    # a kill right after checkpoint-5's manifest: the books hold only steps 1-2
    prepare_for_resume(run, 2, run / "checkpoint-2")
    assert [(a, b) for a, b, _ in booked(run)] == [(1, 2)]
    got, notes = lineage(run)  # the tool reads checkpoint-5's own segment meanwhile
    assert [s.last for s in got] == [2, 5] and "not booked yet" in notes[0]
    prepare_for_resume(run, 5, run / "checkpoint-5")  # the resume books it
    assert [(a, b) for a, b, _ in booked(run)] == [(1, 2), (3, 5)]
    assert main(["ledger", str(run)]) == 0
    assert "exactly once" in capsys.readouterr().out
    prepare_for_resume(run, 2, run / "checkpoint-2")  # a rollback to step 2: steps 3-5 set aside
    assert [(a, b) for a, b, _ in booked(run)] == [(1, 2)]
    assert len(list((run / "ledger" / "abandoned").iterdir())) == 1
    segments[1].ids[0] = 0  # a repeat, booked: exit 2 naming it
    segments[1].write(run / "ledger" / "steps-000000003-000000005.npz")
    assert main(["ledger", str(run)]) == 2
    assert "VIOLATION: 1 sample(s) of an epoch recorded more than once; first: block 0" in capsys.readouterr().out
    (run / "ledger" / "steps-000000003-000000005.npz").write_bytes(b"not a segment")
    assert main(["ledger", str(run)]) == 2
    assert "unreadable ledger segment" in capsys.readouterr().err
    with pytest.raises(SegmentError, match="steps-000000003-000000005.npz: unreadable"):
        Segment.read(run / "ledger" / "steps-000000003-000000005.npz")
