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

from gptresume import stopping
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


def local_reader(cfg: DataConfig) -> tuple[list[Path], str, dict, str]:
    """(files, datasets builder, its keywords, text column) of a local streamed source."""
    from gptresume.data.sources import FILE_LOADERS, resolve_files

    files = resolve_files(cfg)
    loader = FILE_LOADERS[files[0].suffix.lower()]
    kwargs = {"sample_by": cfg.text_unit} if loader == "text" else {}
    return files, loader, kwargs, "text" if loader == "text" else cfg.text_column


def _open_local(files: list[Path], loader: str, kwargs: dict):
    import datasets

    # the JSON builder logs each parse failure before raising it; the UsageError made of it says the same, once
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    empty = [f for f in files if f.stat().st_size == 0]
    if len(empty) == len(files):
        raise UsageError(f"data.source: {_names(files)} hold{'s' if len(files) == 1 else ''} no documents (every file "
                         "is empty); a stream of it would re-read nothing without end; point data.source at files "
                         "with text")
    try:
        return datasets.load_dataset(loader, data_files=[str(f) for f in files], split="train", streaming=True,
                                     **kwargs)
    except Exception as e:  # a file the builder cannot open or infer a schema from
        raise UsageError(f"data.source: could not open {_names(files)} as {loader}: "
                         f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def _names(files: list[Path], most: int = 5) -> str:
    shown = ", ".join(map(str, files[:most]))
    return shown + (f" and {len(files) - most} more" if len(files) > most else "")


def open_documents(cfg: DataConfig, rank: int = 0, world_size: int = 1):
    """The source as a `datasets.IterableDataset` with one column `text` (hub: streaming=True; local files: the
    same builders as packing, streaming); with several processes, rank `rank`'s part of it."""
    import datasets

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
        files, loader, kwargs, column = local_reader(cfg)
        ds = _open_local(files, loader, kwargs)
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return ds, column


PROBE_DOCS = 16  # documents read from the start of each file before anything is written
MID_STREAM = (". Training stopped here; the checkpoints committed before are intact and verify. The stream's position "
              "cannot move to changed data: fix or remove the file and start a new run (model.name_or_path: "
              "RUN_DIR/checkpoint-N continues from the trained weights)")


def check_stream_source(cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1) -> None:
    """What a streamed source must be before the run directory is written (each problem exit 2, naming the file):
    every file opens, the first documents of each are read and decoded, their text column is found and holds text,
    not every file is empty, and, when one pass over the whole source was read here, it holds at least one block of
    tokens (a smaller source would be re-read without end to fill one: `PackedStream` refuses that too, for the
    sources too large to read here). Files that hold no documents among others are named in a warning."""
    first = cfg.sources[0]
    if first.startswith(HUB_PREFIX):
        ds, column = open_documents(cfg, rank, world_size)
        docs, complete = _probe(ds, column, f"hub dataset {first[len(HUB_PREFIX):]!r}")
        if complete and not docs:
            raise UsageError(f"data.source: hub dataset {first[len(HUB_PREFIX):]!r} (split {cfg.hub_split!r}) holds "
                             "no documents to stream")
        return
    files, loader, kwargs, column = local_reader(cfg)
    ds = _open_local(files, loader, kwargs)
    if ds.num_shards != len(files):  # one shard per file is what `datasets` gives local files; else read it whole
        parts = [(_names(files), ds)]
    else:
        parts = [(str(f), ds.shard(num_shards=len(files), index=i)) for i, f in enumerate(files)]
    texts, complete, empty = [], True, []
    for name, part in parts:
        docs, done = _probe(part, column, name)
        texts += docs
        complete = complete and done
        if done and not any(doc.strip() for doc in docs):
            empty.append(name)
    if len(empty) == len(parts):
        raise UsageError(f"data.source: {', '.join(empty[:5])} hold{'s' if len(empty) == 1 else ''} no text to "
                         "stream (no documents, or only empty ones); point data.source at files with text")
    if empty:
        log.warning("data.source: %s %s no text; the stream reads past %s", ", ".join(empty[:5]),
                    *(("holds", "it") if len(empty) == 1 else ("hold", "them")))
    if complete and world_size == 1:
        tokens = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        if tokens < cfg.block_size:
            raise UsageError(too_small(cfg, tokens))


def too_small(cfg: DataConfig, tokens: int, part: str = "") -> str:
    return (f"data.source: one pass over {cfg.source!r}{part} holds {tokens} tokens, fewer than one block "
            f"(data.block_size = {cfg.block_size}): the stream would re-read it without end to fill a block; add "
            "text, or lower data.block_size")


def _probe(ds, column: str, where: str) -> tuple[list[str], bool]:
    """(the first PROBE_DOCS documents of `ds`, whether it ended within them); a read, decode or column problem
    is a UsageError naming `where`."""
    docs: list[str] = []
    it = iter(ds)
    try:
        for _ in range(PROBE_DOCS):
            row = next(it, None)
            if row is None:
                return docs, True
            docs.append(_text_of(row, column, where, len(docs)))
    except UsageError:
        raise
    except Exception as e:  # bad UTF-8, a malformed JSON line, a file whose columns differ from the others'
        raise UsageError(read_problem(where, e, len(docs))) from None
    return docs, False


def _text_of(row: dict, column: str, where: str, index: int) -> str:
    if column not in row:
        raise UsageError(f"data.text_column: {where} has no column {column!r}; its columns are "
                         f"{', '.join(map(str, row))}; set data.text_column")
    text = row[column]
    if not isinstance(text, str):
        raise UsageError(f"data.text_column: {where}: document {index + 1} holds {type(text).__name__} in column "
                         f"{column!r}, not text")
    return text


def read_problem(where: str, exc: BaseException, index: int) -> str:
    """One line for a failure to read a source file: for bad UTF-8 the byte offset and line of the first invalid
    byte (found by scanning the file), else the document it happened at."""
    if isinstance(exc, UnicodeDecodeError) and Path(where).is_file():
        bad = first_invalid_utf8(Path(where))
        at = f" at byte {bad[0]} (line {bad[1]})" if bad else ""
        return (f"data.source: {where} is not valid UTF-8{at}; re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8) "
                "or remove it from data.source")
    return (f"data.source: {where}: could not read document {index + 1}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}")


def first_invalid_utf8(path: Path) -> tuple[int, int] | None:
    """(byte offset, line number) of the first byte of `path` that is not valid UTF-8, or None (read in 1 MB
    pieces; a character split across two pieces is carried over)."""
    base, line, pending = 0, 1, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            data = pending + chunk
            if not data:
                return None
            try:
                data.decode("utf-8")
                pending = b""
            except UnicodeDecodeError as e:
                if chunk and e.reason == "unexpected end of data" and e.start >= len(data) - 3:
                    pending = data[e.start:]
                    data = data[:e.start]
                else:
                    return base + e.start, line + data[:e.start].count(b"\n")
            base += len(data)
            line += data.count(b"\n")
            if not chunk:
                return None


class PackedStream:
    """An endless stream of packed blocks ({"input_ids": int64 array}); epoch e+1 re-reads the source with the
    buffer's generator carried on. Map-style it is not: Trainer needs `max_steps` (checked with the config)."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int, block_size: int, rank: int = 0, world_size: int = 1):
        self.cfg, self.tokenizer, self.seed, self.block_size = cfg, tokenizer, seed, block_size
        self.rank, self.world_size = rank, world_size
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
        first = yielded  # while nothing was yielded, this is the start-up (the shuffle buffer filling)
        while True:
            ds, column = open_documents(self.cfg, self.rank, self.world_size)
            if reader_state is not None:
                ds.load_state_dict(reader_state)
            it, whole_pass, pass_tokens = iter(ds), reader_state is None, 0
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
                if yielded == first and stopping.requested():  # a stop during start-up: nothing to commit yet
                    raise stopping.StopSignal(stopping.requested())
                docs = self._read(ds, it, column)
                if not docs:
                    break
                reader_state = ds.state_dict()
                ids = self.tokenizer(docs, add_special_tokens=False)["input_ids"]
                pass_tokens += sum(len(x) + 1 for x in ids)
                carry = np.concatenate([carry] + [np.asarray(x + [eos], dtype=np.int64) for x in ids])
                n = len(carry) // bs
                pending = [carry[i * bs:(i + 1) * bs] for i in reversed(range(n))]
                carry = carry[n * bs:]
            if whole_pass and pass_tokens < bs:  # an empty source, or one too small to fill a block: never a hang
                part = f" (the part process {self.rank} of {self.world_size} reads)" if self.world_size > 1 else ""
                raise UsageError(too_small(self.cfg, pass_tokens, part))
            epoch, reader_state = epoch + 1, None  # the files again, in order; the buffer's generator carries on

    def _read(self, ds, it, column: str) -> list[str]:
        """The next documents of the reader; a read or decode failure part-way through the source (the files
        were only sampled before training) ends the run as bad input naming the file and the position."""
        try:
            rows = [row for _, row in zip(range(DOCS_PER_READ), it)]
        except Exception as e:
            where, index = self._position(ds)
            raise UsageError(read_problem(where, e, index) + MID_STREAM) from None
        for row in rows:
            if not isinstance(row.get(column), str):
                where, index = self._position(ds)
                try:
                    _text_of(row, column, where, index)
                except UsageError as e:
                    raise UsageError(str(e) + MID_STREAM) from None
        return [row[column] for row in rows]

    def _position(self, ds) -> tuple[str, int]:
        """(the file the reader is in, documents read from it) from the reader's state, for messages."""
        state = ds.state_dict()
        while isinstance(state, dict) and "shard_idx" not in state:
            state = state.get("examples_iterable") or state.get("ex_iterable")
        if not isinstance(state, dict) or self.cfg.sources[0].startswith(HUB_PREFIX):
            return str(self.cfg.source), 0
        files = local_reader(self.cfg)[0]
        shard, index = int(state.get("shard_idx", 0)), int(state.get("shard_example_idx", 0))
        if self.world_size > 1 and len(files) % self.world_size == 0:  # whole files per rank
            shard = self.rank + shard * self.world_size
        return (str(files[shard]) if 0 <= shard < len(files) else _names(files)), index

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
    config and split of a hub dataset), the tokenizer and the packing and shuffling settings."""
    from gptresume.data.sources import source_fingerprint

    tok = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
    return fingerprint_of(["stream", source_fingerprint(cfg, run_dir), tok, cfg.block_size,
                           cfg.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER, seed])


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
    """What `prepare_data` gives for a packed source, for a streamed one: the training stream, no validation."""

    def __init__(self, stream: PackedStream, fingerprint: str, block_size: int):
        self.stream = stream
        self.train = as_torch(stream)
        self.validation = None
        self.fingerprint = fingerprint
        self.num_tokens = None
        self.block_size = block_size

    def discard(self) -> None:  # nothing was written
        pass


def streamed_data(cfg: DataConfig, tokenizer, run_dir: Path, seed: int, rank: int = 0, world_size: int = 1
                  ) -> StreamedData:
    if tokenizer.eos_token_id is None:
        raise UsageError("model.tokenizer: the tokenizer has no EOS token, needed between documents")
    check_stream_source(cfg, tokenizer, rank, world_size)  # opened, sampled and decoded before anything is written
    stream = PackedStream(cfg, tokenizer, seed, cfg.block_size, rank, world_size)
    return StreamedData(stream, stream_fingerprint(cfg, tokenizer, run_dir, seed), cfg.block_size)


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
