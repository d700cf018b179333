"""The streamed source's position as state: a stream restored from the state saved after block k yields exactly
the blocks the uninterrupted stream yields after k (across file and epoch boundaries, with the shuffle buffer);
resumes that would need the position as a count are refused."""

import numpy as np
import pytest

from conftest import corpus_texts
from gptresume.config import DataConfig
from gptresume.data.streaming import PackedStream, streaming_refusal
from gptresume.errors import UsageError
from gptresume.modeling import train_tokenizer
from gptresume.resume.changes import BATCH, DATA, Change


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), 400)


def take(stream, n):
    it = iter(stream)
    return [next(it)["input_ids"] for _ in range(n)]


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "hub"])
def test_a_restored_stream_continues_with_the_next_block(tmp_path, tokenizer, fmt):
    """`hub`: a dataset repository laid out as on the hub (data/train-0000K-of-00002.jsonl), opened through the
    `hub:NAME` path (`datasets.load_dataset(NAME, split=..., streaming=True)`) from a local directory: the hub's
    own HTTP reads cannot be exercised offline, the rest of the path can."""
    import json

    docs = [d[:700] for d in corpus_texts(5)]  # ~60 blocks: 200 blocks are several epochs
    if fmt == "txt":
        (tmp_path / "a.txt").write_text("\n\n".join(docs[:3]))
        (tmp_path / "b.txt").write_text("\n\n".join(docs[3:]))
        cfg = DataConfig(source=str(tmp_path / "*.txt"), text_unit="paragraph", block_size=16, streaming=True,
                         validation_fraction=0, shuffle_buffer=7)
    elif fmt == "jsonl":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for d in docs
                                                  for p in d.split("\n\n")))
        cfg = DataConfig(source=str(tmp_path / "d.jsonl"), block_size=16, streaming=True, validation_fraction=0,
                         shuffle_buffer=7)
    else:
        (tmp_path / "repo" / "data").mkdir(parents=True)
        for i, part in enumerate((docs[:2], docs[2:])):
            (tmp_path / "repo" / "data" / f"train-0000{i}-of-00002.jsonl").write_text(
                "".join(json.dumps({"body": p, "id": n}) + "\n" for n, d in enumerate(part) for p in d.split("\n\n")))
        cfg = DataConfig(source=f"hub:{tmp_path / 'repo'}", hub_split="train", text_column="body", block_size=16,
                         streaming=True, validation_fraction=0, shuffle_buffer=7)
    whole = PackedStream(cfg, tokenizer, seed=3, block_size=16)
    blocks = take(whole, 200)  # several epochs of this small source
    passes = {p["passes"] for s in whole.snapshots.values() for p in s["parts"]}
    assert max(passes) >= 1, "the test must cross an epoch boundary (the source's end)"
    assert len({b.tobytes() for b in blocks[:50]}) > 45  # shuffled blocks, not one block repeated
    for k in (1, 123, 190):
        source = PackedStream(cfg, tokenizer, seed=3, block_size=16)
        take(source, k + 5)  # read ahead of the trained count, as the DataLoader does
        ckpt = tmp_path / f"ckpt-{k}"
        ckpt.mkdir()
        source.save_state(k, ckpt)
        resumed = PackedStream(cfg, tokenizer, seed=3, block_size=16)
        resumed.load_state(ckpt)
        resumed.begin(k, 1)
        assert all(np.array_equal(a, b) for a, b in zip(take(resumed, 10), blocks[k:k + 10]))
    other_seed = take(PackedStream(cfg, tokenizer, seed=4, block_size=16), 20)
    assert not all(np.array_equal(a, b) for a, b in zip(other_seed, blocks[:20]))


@pytest.mark.parametrize("files", [1, 2])  # 1 file: every other document per rank; 2 files: one file per rank
def test_each_rank_streams_its_own_part_and_resumes_its_own_position(tmp_path, tokenizer, files):
    docs = [p for d in corpus_texts(4) for p in d[:600].split("\n\n") if p.strip()]
    for i in range(files):
        (tmp_path / f"{i}.txt").write_text("\n\n".join(docs[i::files]))
    cfg = DataConfig(source=str(tmp_path / "*.txt"), text_unit="paragraph", block_size=16, streaming=True,
                     validation_fraction=0, shuffle_buffer=5)

    def stream(rank, world_size=2):
        return PackedStream(cfg, tokenizer, seed=3, block_size=16, rank=rank, world_size=world_size)

    whole = {b.tobytes() for b in take(stream(0, 1), 40)}
    parts = [take(stream(r), 60) for r in (0, 1)]
    assert all(len(p) == 60 for p in parts)
    seen = [{b.tobytes() for b in p} for p in parts]
    assert not seen[0] & seen[1]  # disjoint documents, so (almost surely) no shared block
    assert seen[0] != whole and seen[1] != whole
    for rank in (0, 1):
        source = stream(rank)
        take(source, 45)
        ckpt = tmp_path / f"ckpt-{rank}"
        ckpt.mkdir()
        source.save_state(37, ckpt)
        assert sorted(p.name for p in ckpt.iterdir()) == [f"data_buffer_{rank}.npy", f"data_state_{rank}.json"]
        resumed = stream(rank)
        resumed.load_state(ckpt)
        resumed.begin(37, 1)
        assert all(np.array_equal(a, b) for a, b in zip(take(resumed, 15), parts[rank][37:52]))
        with pytest.raises(UsageError, match=f"no data_state_{1 - rank}.json"):
            stream(1 - rank).load_state(ckpt)


class Plan:
    def __init__(self, *changes, checkpoint=None):
        self.changes = list(changes)
        self.checkpoint = type("Info", (), {"path": checkpoint})() if checkpoint else None


def test_held_out_blocks_come_from_part_0_whichever_process_reads_it(tmp_path, tokenizer):
    """With several parts (issue 26 x issue 27) the held-out documents are the first of part 0: only the reader of
    part 0 skips them, on 2 processes as on 1 process reading both parts (an elastic resume's layout), and no
    held-out block is ever trained."""
    from gptresume.data.streaming import streamed_data

    docs = [p for d in corpus_texts(6) for p in d[:900].split("\n\n") if p.strip()]
    (tmp_path / "a.txt").write_text("\n\n".join(docs[: len(docs) // 2]))
    (tmp_path / "b.txt").write_text("\n\n".join(docs[len(docs) // 2:]))
    cfg = DataConfig(source=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], text_unit="paragraph", block_size=16,
                     streaming=True, validation_max_blocks=4, shuffle_buffer=1, stream_parts=2)
    ranks = [streamed_data(cfg, tokenizer, tmp_path, seed=3, rank=r, world_size=2) for r in (0, 1)]
    alone = streamed_data(cfg, tokenizer, tmp_path, seed=3)  # one process reading both parts
    held = {b["input_ids"].tobytes() for b in ranks[0].validation}
    assert len(held) == 4 and held == {b["input_ids"].tobytes() for b in alone.validation}
    assert ranks[0].stream.held_docs == ranks[1].stream.held_docs == alone.stream.held_docs > 0
    plain = DataConfig(**{**cfg.__dict__, "validation_fraction": 0})
    part1 = take(PackedStream(plain, tokenizer, seed=3, block_size=16, rank=1, world_size=2), 5)
    trained = [take(ranks[r].stream, 40) for r in (0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(trained[1], part1))  # part 1 is read whole
    together = {b.tobytes() for blocks in trained for b in blocks} | {b.tobytes() for b in take(alone.stream, 80)}
    assert not held & together


def test_resumes_that_need_a_sample_count_are_refused(tmp_path):
    import json

    (tmp_path / "data_state.json").write_text(json.dumps({"format": 2, "world_size": 1, "parts_total": 1}))
    assert streaming_refusal(Plan()) is None
    assert streaming_refusal(Plan(Change("train.per_device_train_batch_size", 4, 2, BATCH, True,
                                         "same global batch (8): same samples per step", equivalent=True))) is None
    assert streaming_refusal(Plan(Change("data.source", "a", "b", DATA, True, "same packed tokens",
                                         equivalent=True))) is None
    grow = Change("world_size", 1, 2, BATCH, True, "same global batch (8)", equivalent=True)
    elastic = streaming_refusal(Plan(grow, checkpoint=tmp_path))  # 1 part: at most 1 process
    assert "world_size changed (1 -> 2)" in elastic and "1 part(s)" in elastic and "data.stream_parts: 2" in elastic
    (tmp_path / "data_state.json").write_text(json.dumps({"format": 2, "world_size": 1, "parts_total": 4}))
    assert streaming_refusal(Plan(grow, checkpoint=tmp_path)) is None  # 4 parts: re-split over 2 processes
    shrink = Change("world_size", 2, 1, BATCH, True, "same global batch (8)", equivalent=True)
    assert streaming_refusal(Plan(shrink, checkpoint=tmp_path)) is None
    assert "global batch" in streaming_refusal(Plan(Change("train.per_device_train_batch_size", 4, 2, BATCH, True,
                                                           "global batch 8 -> 4")))
    assert streaming_refusal(Plan(Change("data", "f1", "f2", DATA, True, "the packed training tokens differ")))


def test_a_streamed_source_holds_out_its_first_blocks_which_never_train(tmp_path, tokenizer):
    """data.streaming with the default validation_fraction (issue 26): the first validation_max_blocks blocks of the
    source are the validation set; the training stream skips the documents they took, in every epoch, and its
    restored position (through the skip) continues exactly."""
    from gptresume.data.streaming import read_held_out, streamed_data

    docs = [p for d in corpus_texts(5) for p in d[:700].split("\n\n") if p.strip()]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    cfg = DataConfig(source=str(tmp_path / "a.txt"), text_unit="paragraph", block_size=16, streaming=True,
                     validation_max_blocks=6, shuffle_buffer=1)
    assert DataConfig().validation_fraction > 0 and not cfg.problems("data")  # no second key needed
    data = streamed_data(cfg, tokenizer, tmp_path, seed=3)
    held, used = read_held_out(cfg, tokenizer, 6)
    assert len(data.validation) == 6 and all(len(b["input_ids"]) == 16 for b in data.validation)
    assert data.stream.held_docs == used > 0
    # the held-out blocks are the stream's first 6 blocks as a stream without them would pack them
    plain = PackedStream(DataConfig(**{**cfg.__dict__, "validation_fraction": 0}), tokenizer, seed=3, block_size=16)
    first = take(plain, 6)
    assert all(np.array_equal(a["input_ids"], b) for a, b in zip(data.validation, first))
    # training never sees a held-out document: its token stream is the source's from document `used` on
    eos = tokenizer.eos_token_id
    later = np.concatenate([np.asarray(x + [eos]) for x in tokenizer(docs[used:], add_special_tokens=False)[
        "input_ids"]])
    trained = take(data.stream, 300)  # more than an epoch: the skip applies again after the source restarts
    assert max(p["passes"] for s in data.stream.snapshots.values() for p in s["parts"]) >= 1
    assert np.array_equal(trained[0], later[:16])  # shuffle_buffer 1: stream order
    held_rows = {b["input_ids"].tobytes() for b in data.validation}
    assert not held_rows & {b.tobytes() for b in trained}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    data.stream.save_state(250, ckpt)
    resumed = streamed_data(cfg, tokenizer, tmp_path, seed=3).stream
    resumed.load_state(ckpt)
    assert all(np.array_equal(a, b) for a, b in zip(take(resumed, 20), trained[250:270]))
    # its identity: a run without held-out blocks keeps the fingerprint it had; one with them differs
    no_held = streamed_data(DataConfig(**{**cfg.__dict__, "validation_fraction": 0}), tokenizer, tmp_path, seed=3)
    assert no_held.validation is None and no_held.stream.held_docs == 0
    assert no_held.fingerprint != data.fingerprint
    with pytest.raises(UsageError, match="data.validation_max_blocks: data.source .* fewer than the 100000"):
        streamed_data(DataConfig(**{**cfg.__dict__, "validation_max_blocks": 100000}), tokenizer, tmp_path, seed=3)
