"""Streaming sources (`data.streaming: true`): documents read lazily (hub datasets in streaming mode, local
text/jsonl/parquet files through `datasets`' streaming builders), tokenized and packed on the fly, and shuffled
through a seeded buffer of blocks. Nothing is packed ahead and nothing is written to data-cache/.

The data position is state, not a count: after each block it yields, the stream can describe itself exactly
(`datasets.IterableDataset.state_dict()` for the reader's file and row, the tokens carried over to the next
block, the blocks in the shuffle buffer, the buffer's random generator, the epoch). The blocks a checkpoint has
trained on are known (step x per-device batch x accumulation), so the state at that count is written into the
checkpoint (`data_state.json`, `data_buffer.npy`), and a resume loads it and continues with the next block: no
batch is replayed, and the blocks are those the uninterrupted run would have trained on (bitwise, same world size).
`datasets`' own shuffle buffer is not used: its state_dict drops the buffer's contents, so a resume would differ.

Resuming positions the reader with `IterableDataset.load_state_dict`: it skips to the file and row, re-reading the
rows of the current file before that row without tokenizing them; it never replays batches.

Several processes: each rank reads its own part of the documents (`datasets.distributed.split_dataset_by_node`:
whole files when their count is a multiple of the process count, else every world_size-th document), packs and
shuffles it alone, and writes its own state (`data_state_<rank>.json`, `data_buffer_<rank>.npy`, beside Trainer's
`rng_state_<rank>.pth`). The Trainer's DataLoader must then not shard the batches again (training/trainer.py).
A rank's state belongs to its part of the source, so a resume on another process count is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from gptresume.config import HUB_PREFIX, DataConfig, fingerprint_of
from gptresume.errors import UsageError

log = logging.getLogger(__name__)

STATE_NAME = "data_state.json"
BUFFER_NAME = "data_buffer.npy"
DEFAULT_SHUFFLE_BUFFER = 1000  # blocks
DOCS_PER_READ = 64
KEPT_SNAPSHOTS = 64  # states of the last blocks yielded, beyond 4 optimizer steps' worth (the DataLoader reads
# ahead of the trained step: accelerate one batch, Trainer the step's accumulation batches)


def state_names(rank: int, world_size: int) -> tuple[str, str]:
    """A rank's state and buffer file names in a checkpoint: one process keeps the unnumbered names."""
    if world_size == 1:
        return STATE_NAME, BUFFER_NAME
    return f"data_state_{rank}.json", f"data_buffer_{rank}.npy"


def open_documents(cfg: DataConfig, rank: int = 0, world_size: int = 1):
    """The source as a `datasets.IterableDataset` with one column `text` (hub: streaming=True; local files: the
    same builders as packing, streaming); with several processes, rank `rank`'s part of it."""
    import datasets

    from gptresume.data.sources import FILE_LOADERS, resolve_files

    first = cfg.sources[0]
    if first.startswith(HUB_PREFIX):
        name = first[len(HUB_PREFIX):]
        try:
            ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split, streaming=True)
        except Exception as e:  # offline, unknown id, unknown split: all user-fixable
            raise UsageError(f"data.source: could not open hub dataset {name!r} for streaming (config "
                             f"{cfg.hub_config!r}, split {cfg.hub_split!r}): {e}") from None
        column = cfg.text_column
    else:
        files = resolve_files(cfg)
        loader = FILE_LOADERS[files[0].suffix.lower()]
        kwargs = {"sample_by": cfg.text_unit} if loader == "text" else {}
        ds = datasets.load_dataset(loader, data_files=[str(f) for f in files], split="train", streaming=True,
                                   **kwargs)
        column = "text" if loader == "text" else cfg.text_column
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return ds, column


class PackedStream:
    """An endless stream of packed blocks ({"input_ids": int64 array}); epoch e+1 re-reads the source with the
    buffer's generator carried on. Map-style it is not: Trainer needs `max_steps` (checked with the config)."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int, block_size: int, rank: int = 0, world_size: int = 1,
                 skip_docs: int = 0):
        self.cfg, self.tokenizer, self.seed, self.block_size = cfg, tokenizer, seed, block_size
        self.rank, self.world_size = rank, world_size
        self.skip_docs = skip_docs  # the documents held out for validation at the start of this rank's part
        self.buffer_size = cfg.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER
        self._restored: dict | None = None
        self.snapshots: OrderedDict[int, dict] = OrderedDict()
        self.keep = KEPT_SNAPSHOTS

    # torch's DataLoader treats anything with __iter__ and no __getitem__ as iterable-style only if it subclasses
    # torch.utils.data.IterableDataset: `as_torch` gives that class.
    def __iter__(self):
        # Every iterator starts at the restored position (or the beginning): a second iterator (a peek, a new
        # DataLoader) must not see a different stream. The stream is endless: Trainer never starts another epoch.
        state = self._restored or {"epoch": 0, "reader": None, "carry": [], "buffer": [], "pending": [],
                                   "yielded": 0, "rng": np.random.default_rng(self.seed).bit_generator.state}
        epoch, reader_state = state["epoch"], state["reader"]
        carry = np.asarray(state["carry"], dtype=np.int64)
        buffer, pending = list(state["buffer"]), list(state["pending"])
        pending.reverse()  # popped from the end
        yielded = state["yielded"]
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        eos = self.tokenizer.eos_token_id
        bs = self.block_size
        while True:
            ds, column = open_documents(self.cfg, self.rank, self.world_size)
            if self.skip_docs:  # every epoch: the held-out documents never train (the reader's state counts them)
                ds = ds.skip(self.skip_docs)
            if reader_state is not None:
                ds.load_state_dict(reader_state)
            it, docs_seen = iter(ds), reader_state is not None
            while True:
                while pending:
                    block = pending.pop()
                    if len(buffer) < self.buffer_size:
                        buffer.append(block)
                        continue
                    j = int(rng.integers(len(buffer)))
                    out, buffer[j] = buffer[j], block
                    yielded += 1
                    self._snapshot(yielded, epoch, reader_state, carry, buffer, pending, rng)
                    yield {"input_ids": out}
                docs = [ex[column] for _, ex in zip(range(DOCS_PER_READ), it)]
                if not docs:
                    break
                docs_seen = True
                reader_state = ds.state_dict()
                ids = self.tokenizer(docs, add_special_tokens=False)["input_ids"]
                carry = np.concatenate([carry] + [np.asarray(x + [eos], dtype=np.int64) for x in ids])
                n = len(carry) // bs
                pending = [carry[i * bs:(i + 1) * bs] for i in reversed(range(n))]
                carry = carry[n * bs:]
            if not docs_seen:
                part = f" for process {self.rank} of {self.world_size}" if self.world_size > 1 else ""
                held = (f" after the {self.skip_docs} held out for validation (data.validation_max_blocks)"
                        if self.skip_docs else "")
                raise UsageError(f"data.source: {self.cfg.source!r} holds no documents to stream{part}{held}")
            epoch, reader_state = epoch + 1, None  # the files again, in order; the buffer's generator carries on

    def _snapshot(self, yielded, epoch, reader_state, carry, buffer, pending, rng) -> None:
        self.snapshots[yielded] = {"epoch": epoch, "reader": reader_state, "carry": carry, "buffer": list(buffer),
                                   "pending": pending[::-1], "yielded": yielded, "rng": rng.bit_generator.state}
        while len(self.snapshots) > self.keep:
            self.snapshots.popitem(last=False)

    # ------------------------------------------------------------ checkpoint state

    def save_state(self, blocks_trained: int, directory: Path) -> None:
        """Write the stream's state after `blocks_trained` blocks into a checkpoint directory."""
        if blocks_trained == 0:
            return
        state = self.snapshots.get(blocks_trained)
        if state is None:
            raise RuntimeError(f"streaming: no state kept for block {blocks_trained} (kept: "
                               f"{list(self.snapshots)[:1]}..{list(self.snapshots)[-1:]})")
        rows = state["buffer"] + state["pending"]
        state_name, buffer_name = state_names(self.rank, self.world_size)
        np.save(directory / buffer_name, np.stack(rows) if rows else np.zeros((0, self.block_size), np.int64))
        record = {k: v for k, v in state.items() if k not in ("buffer", "pending")}
        record.update(carry=[int(x) for x in state["carry"]], buffered=len(state["buffer"]))
        (directory / state_name).write_text(json.dumps(record))

    def load_state(self, checkpoint: Path) -> None:
        """Continue after the blocks the checkpoint trained on (this rank's data_state and data_buffer files)."""
        state_name, buffer_name = state_names(self.rank, self.world_size)
        path = Path(checkpoint) / state_name
        if not path.is_file():
            raise UsageError(f"streaming: {checkpoint} has no {state_name} (not written by a streaming run with "
                             f"{self.world_size} process(es)); resume it as it was started, or start a new run")
        state = json.loads(path.read_text())
        rows = [row for row in np.load(Path(checkpoint) / buffer_name, allow_pickle=False).astype(np.int64)]
        state["buffer"], state["pending"] = rows[:state["buffered"]], rows[state["buffered"]:]
        self._restored = state


def as_torch(stream: PackedStream):
    """The stream as a `torch.utils.data.IterableDataset` (what DataLoader and Trainer test for)."""
    from torch.utils.data import IterableDataset

    class TorchPackedStream(IterableDataset):
        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            return iter(self.inner)

    return TorchPackedStream(stream)


def stream_fingerprint(cfg: DataConfig, tokenizer, run_dir: Path, seed: int) -> str:
    """The identity of a streamed training stream: its source (content hash of local files, stat-cached; name,
    config and split of a hub dataset), the tokenizer and the packing and shuffling settings; and its held-out
    validation blocks when it has some (a run without them keeps the fingerprint it had before they existed)."""
    from gptresume.data.sources import source_fingerprint

    tok = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
    parts = ["stream", source_fingerprint(cfg, run_dir), tok, cfg.block_size,
             cfg.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER, seed]
    held = held_out_count(cfg)
    if held:
        parts.append(["validation_blocks", held])
        if cfg.validation_source is not None:
            from gptresume.data.packing import _validation_config

            parts.append(["validation", source_fingerprint(_validation_config(cfg), run_dir)])
    return fingerprint_of(parts)


# ---------------------------------------------------------------- held-out validation blocks


def held_out_count(cfg: DataConfig) -> int:
    """Validation blocks of a streamed run: data.validation_max_blocks when validation_fraction is above 0 (the
    first blocks of the stream) or a validation_source is named (its first blocks); else none."""
    if not (cfg.validation_fraction > 0 or cfg.validation_source is not None):
        return 0
    return int(cfg.validation_max_blocks or 0)


def read_held_out(cfg: DataConfig, tokenizer, count: int, world_size: int = 1, what: str = "data.source"
                  ) -> tuple[list[dict], int]:
    """The first `count` blocks of process 0's part of `cfg`'s source, packed as training packs (each document
    followed by EOS, cut into blocks), and the number of documents they took. Every process reads the same ones
    (rank 0's part, so the held-out documents belong to one process's stream, which skips them: no document is
    both trained on and evaluated). The last document's tokens beyond the last block are dropped."""
    ds, column = open_documents(cfg, 0, world_size)
    eos, bs, need = tokenizer.eos_token_id, cfg.block_size, count * cfg.block_size
    parts, have, docs_used = [], 0, 0
    it = iter(ds)
    while have < need:
        docs = [ex[column] for _, ex in zip(range(DOCS_PER_READ), it)]
        if not docs:
            blocks = have // bs
            raise UsageError(f"data.validation_max_blocks: {what} {cfg.source!r} holds {blocks} block(s) of {bs} "
                             "tokens"
                             + (" (process 0's part)" if world_size > 1 else "")
                             + f", fewer than the {count} to hold out for validation; lower "
                             "data.validation_max_blocks, or set data.validation_fraction: 0 (no evaluation)")
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray(ids + [eos], dtype=np.int64))
            have += len(ids) + 1
            docs_used += 1
            if have >= need:
                break
    tokens = np.concatenate(parts)[:need]
    return [{"input_ids": tokens[i * bs:(i + 1) * bs]} for i in range(count)], docs_used


def streaming_refusal(plan) -> str | None:
    """A resume of a streaming run that would need the data position as a sample count: another process count
    (each rank's reader state belongs to its part of the source), another global batch, other data."""
    for c in plan.changes:
        other_world = c.key == "world_size"
        other_batch = c.kind == "batch" and not c.note.startswith("same")
        other_data = c.kind == "data" and c.note != "same packed tokens"
        if other_world or other_batch or other_data:
            return (f"{c.key} changed ({c.old!r} -> {c.new!r}) on a streaming run: its data position is the "
                    "reader's state after the blocks trained (per process), not a sample count, so it cannot be "
                    "carried to another process count, global batch or data; resume with the original values, or "
                    "start a new run (fine-tuning from this one's final/ model)")
    return None


class StreamedData:
    """What `prepare_data` gives for a packed source, for a streamed one: the training stream, and the held-out
    validation blocks (a list of blocks, in memory: data.validation_max_blocks of them) or None."""

    def __init__(self, stream: PackedStream, fingerprint: str, block_size: int, validation: list | None = None):
        self.stream = stream
        self.train = as_torch(stream)
        self.validation = validation
        self.fingerprint = fingerprint
        self.num_tokens = None
        self.block_size = block_size

    def discard(self) -> None:  # nothing was written
        pass


def streamed_data(cfg: DataConfig, tokenizer, run_dir: Path, seed: int, rank: int = 0, world_size: int = 1
                  ) -> StreamedData:
    if tokenizer.eos_token_id is None:
        raise UsageError("model.tokenizer: the tokenizer has no EOS token, needed between documents")
    open_documents(cfg, rank, world_size)  # a missing file or an unreachable hub dataset fails here, before
    # anything is written
    validation, skip = None, 0
    held = held_out_count(cfg)
    if held:
        if cfg.validation_source is not None:  # its first blocks; the training stream is not split
            from gptresume.data.packing import _validation_config

            validation, _ = read_held_out(_validation_config(cfg), tokenizer, held, what="data.validation_source")
        else:  # the first blocks of process 0's part, which its stream then skips
            validation, docs = read_held_out(cfg, tokenizer, held, world_size)
            skip = docs if rank == 0 else 0
        log.info("Validation: the first %d blocks of %s (%d tokens)", held,
                 "data.validation_source" if cfg.validation_source is not None else "the stream", held * cfg.block_size)
    stream = PackedStream(cfg, tokenizer, seed, cfg.block_size, rank, world_size, skip_docs=skip)
    return StreamedData(stream, stream_fingerprint(cfg, tokenizer, run_dir, seed), cfg.block_size, validation)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StreamStateCallback(_callback_base()):
    """On every save, the stream's state after the blocks the saved step trained on, into the checkpoint (before
    gptresume's commit callback, so the manifest lists and hashes it)."""

    def __init__(self, stream: PackedStream):
        self.stream = stream

    def on_train_begin(self, args, state, control, **kwargs):
        self.stream.keep = KEPT_SNAPSHOTS + 4 * args.per_device_train_batch_size * args.gradient_accumulation_steps

    def on_save(self, args, state, control, **kwargs):
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        blocks = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.stream.save_state(blocks, directory)
