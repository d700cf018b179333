"""Elastic streaming in-process (data/stream_state.py): a stream stopped on 2 processes, continued on 1, then on 2
again, trains every block it produced exactly once -- each block's content the one its identity (part, number)
names -- with the rest held in the buffers; its ledger segments say so (ledger/check.py). A format-1 state (before
parts existed) still resumes bit for bit on its process count, and a rollback's skip leaves blocks untrained and
listed."""

import json

import numpy as np
import pytest

from conftest import corpus_texts
from gptresume.config import DataConfig
from gptresume.data.stream_state import PART_STRIDE, parts_in
from gptresume.data.streaming import PackedStream
from gptresume.errors import UsageError
from gptresume.ledger.check import check
from gptresume.ledger.segment import read_checkpoint_segment
from gptresume.modeling import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), 400)


def source(tmp_path, files=2, parts=None, buffer=5):
    docs = [p for d in corpus_texts(4) for p in d[:500].split("\n\n") if p.strip()]
    for i in range(files):
        (tmp_path / f"{i}.txt").write_text("\n\n".join(docs[i::files]))
    return DataConfig(source=str(tmp_path / "*.txt"), text_unit="paragraph", block_size=16, streaming=True,
                      validation_fraction=0, shuffle_buffer=buffer, stream_parts=parts)


class Process:
    """One rank's stream as a trainer drives it: begin at the resumed step, read ahead, save at a step."""

    def __init__(self, cfg, tokenizer, rank, world, per_step, ckpt=None, step=0, run_dir=None):
        self.stream = PackedStream(cfg, tokenizer, seed=3, block_size=16, rank=rank, world_size=world, run_dir=run_dir)
        self.stream.keep = 10_000
        self.per_step, self.step = per_step, step
        if ckpt is not None:
            self.stream.load_state(ckpt)
        self.ledger = self.stream.record_ledger()
        self.stream.begin(step * per_step, step)
        self.it = iter(self.stream)
        self.blocks = []  # (uid, content) of each block trained

    def train(self, steps):
        for _ in range(steps * self.per_step):
            block = next(self.it)["input_ids"]
            self.blocks.append((self.ledger.uids[len(self.blocks)] if len(self.ledger.uids) > len(self.blocks)
                                else None, block))
        self.step += steps
        for _ in range(3):  # the DataLoader reads ahead of the trained step
            next(self.it)

    def save(self, ckpt):
        ckpt.mkdir(exist_ok=True)
        blocks = self.step * self.per_step
        self.stream.save_state(blocks, ckpt)
        uids = self.ledger.uids[:]
        self.ledger.save(blocks, self.per_step, ckpt)
        return uids


def reference_blocks(cfg, tokenizer, parts, count=400):
    """Each part's blocks in production order, by identity: what (part, number) must contain."""
    out = {}
    for s in range(parts):
        producer = PackedStream(cfg, tokenizer, seed=3, block_size=16, rank=s, world_size=parts)
        part = {"part": s, "reader": None, "passes": 0, "carry": np.zeros(0, np.int64), "pending": [], "produced": 0}
        readers = {}
        while part["produced"] < count:
            producer._refill(part, readers)
            for uid, block in reversed(part["pending"]):
                out[uid] = block
    return out


def run_chain(tmp_path, cfg, tokenizer, chain):
    """Processes counts and steps per stage, e.g. [(2, 10), (1, 5), (2, 6)]; global batch 4 blocks per step."""
    blocks, ckpt, step = [], None, 0
    for world, steps in chain:
        procs = [Process(cfg, tokenizer, r, world, 4 // world, ckpt, step) for r in range(world)]
        for p in procs:
            p.train(steps)
        step += steps
        ckpt = tmp_path / f"checkpoint-{step}"
        for p in procs:
            p.save(ckpt)
            blocks += p.blocks
    return blocks, ckpt


@pytest.mark.parametrize("files", [1, 2])  # 1 file: parts split by documents; 2: one file per part
def test_two_to_one_to_two_trains_every_block_exactly_once(tmp_path, tokenizer, files):
    cfg = source(tmp_path, files)
    blocks, last = run_chain(tmp_path, cfg, tokenizer, [(2, 10), (1, 7), (2, 9)])
    assert parts_in(last) == 2
    reference = reference_blocks(cfg, tokenizer, 2)
    uids = [u for u, _ in blocks]
    assert len(uids) == 4 * 26 and len(set(uids)) == len(uids)  # 26 steps x 4 blocks, none twice
    assert all(np.array_equal(b, reference[u]) for u, b in blocks)  # each block is the one its identity names
    held = read_checkpoint_segment(last).held_ids
    produced = {int(k): v["produced"] for k, v in read_checkpoint_segment(last).meta["parts"].items()}
    everything = {s * PART_STRIDE + k for s, n in produced.items() for k in range(n)}
    assert set(uids) | set(held.tolist()) == everything and not set(uids) & set(held.tolist())
    assert max(v["passes"] for v in read_checkpoint_segment(last).meta["parts"].values()) >= 1  # past the end

    segments = [read_checkpoint_segment(tmp_path / f"checkpoint-{s}") for s in (10, 17, 26)]
    verdict = check(segments)
    assert verdict.ok, verdict.violations
    segments[1].ids[3] = segments[1].ids[2]  # one block recorded twice, another lost: both found
    verdict = check(segments)
    assert not verdict.ok and "trained more than once" in verdict.violations[0], verdict.violations
    assert any("neither trained, skipped nor held" in v for v in verdict.violations)


def test_same_process_count_stays_bitwise_and_parts_allow_growth(tmp_path, tokenizer):
    cfg = source(tmp_path, 2, parts=4)  # 4 parts: a run started on 1 process may grow to 2, 3 or 4
    whole = Process(cfg, tokenizer, 0, 1, 4)
    whole.train(20)
    (tmp_path / "a").mkdir()
    blocks, _ = run_chain(tmp_path / "a", cfg, tokenizer, [(1, 8), (1, 12)])
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(blocks, whole.blocks))  # same count: bit for bit
    (tmp_path / "b").mkdir()
    grown, _ = run_chain(tmp_path / "b", cfg, tokenizer, [(1, 8), (2, 6), (4, 6)])
    uids = [u for u, _ in grown]
    assert len(set(uids)) == len(uids) == 4 * 20
    with pytest.raises(UsageError, match="4 part.*cannot feed 8 processes"):
        Process(cfg, tokenizer, 0, 8, 1, tmp_path / "a" / "checkpoint-8", 8)


def test_a_format_1_state_resumes_on_its_process_count(tmp_path, tokenizer):
    """Checkpoints written before parts existed: one reader per rank, `epoch`, `buffered`, no block identities."""
    cfg = source(tmp_path, 2)
    for rank in (0, 1):
        whole = Process(cfg, tokenizer, rank, 2, 2)
        whole.train(30)
        snap = whole.stream.snapshots[40]
        (part,) = snap["parts"]
        rows = [b for _, b in snap["buffer"]] + [b for _, b in part["pending"]]
        ckpt = tmp_path / f"old-{rank}"
        ckpt.mkdir()
        np.save(ckpt / f"data_buffer_{rank}.npy", np.stack(rows))
        (ckpt / f"data_state_{rank}.json").write_text(json.dumps(
            {"epoch": part["passes"], "reader": part["reader"], "carry": part["carry"].tolist(), "yielded": 40,
             "rng": snap["rng"], "buffered": len(snap["buffer"])}))
        (ckpt / "manifest.json").write_text(json.dumps({"world_size": 2}))
        resumed = Process(cfg, tokenizer, rank, 2, 2, ckpt, 20)
        resumed.train(10)
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(resumed.blocks, whole.blocks[40:]))


def test_a_rollback_skips_this_ranks_share_and_lists_it(tmp_path, tokenizer):
    cfg = source(tmp_path, 2)
    run = tmp_path / "run"
    run.mkdir()
    first = Process(cfg, tokenizer, 0, 1, 4)
    first.train(5)
    first.save(tmp_path / "checkpoint-5")
    later = Process(cfg, tokenizer, 0, 1, 4, tmp_path / "checkpoint-5", 5)
    later.train(3)
    (run / "history.jsonl").write_text(json.dumps({"event": "start"}) + "\n" + json.dumps(
        {"event": "rollback", "to_step": 5, "skip_samples": 8}) + "\n")
    skipping = Process(cfg, tokenizer, 0, 1, 4, tmp_path / "checkpoint-5", 5, run_dir=run)
    skipping.train(1)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(skipping.blocks, later.blocks[8:12]))
    assert skipping.ledger.skipped_uids == [u for u, _ in later.blocks[:8]]
    skipping.save(tmp_path / "checkpoint-6")
    verdict = check([read_checkpoint_segment(tmp_path / "checkpoint-5"),
                     read_checkpoint_segment(tmp_path / "checkpoint-6")])
    assert verdict.ok, verdict.violations
    assert "8 skipped" in verdict.lines[-1]


def test_stream_parts_is_checked(tmp_path, tokenizer):
    from gptresume.data.streaming import streamed_data

    assert any("stream_parts" in p for p in DataConfig(streaming=True, stream_parts=0).problems("data"))
    assert any("only with streaming" in p for p in DataConfig(stream_parts=2).problems("data"))
    cfg = source(tmp_path, 2, parts=2)
    with pytest.raises(UsageError, match="data.stream_parts: 2 part.*cannot feed 4 processes"):
        streamed_data(cfg, tokenizer, tmp_path, 3, rank=0, world_size=4)
