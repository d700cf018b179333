"""Streaming sources (`data.streaming: true`): documents read lazily (hub datasets in streaming mode, local
text/jsonl/parquet files through `datasets`' streaming builders), tokenized and packed on the fly, and shuffled
through a seeded buffer of blocks. Nothing is packed ahead and nothing is written to data-cache/.

The data position is state, not a count: after each block it yields, the stream can describe itself exactly
(per part of the source: `datasets.IterableDataset.state_dict()` for the reader's file and row, the pass, the tokens
carried over to the next block; the blocks in the shuffle buffer, the buffer's random generator). The blocks a
checkpoint has trained on are known (step x per-device batch x accumulation), so the state at that count is written
into the checkpoint (`data_state.json`, `data_buffer.npy`), and a resume loads it and continues with the next block:
no batch is replayed, and the blocks are those the uninterrupted run would have trained on (bitwise, same world size).
`datasets`' own shuffle buffer is not used: its state_dict drops the buffer's contents, so a resume would differ.

Resuming positions the reader with `IterableDataset.load_state_dict`: it skips to the file and row, re-reading the
rows of the current file before that row without tokenizing them; it never replays batches.

Several processes: the source is split into parts (data/stream_state.py: `split_dataset_by_node` over
`data.stream_parts`, default the process count of the first start), each packed alone with block identities that do
not depend on the process count; each rank reads the parts it owns, shuffles them through its own buffer, and writes
its own state (`data_state_<rank>.json`, `data_buffer_<rank>.npy`, beside Trainer's `rng_state_<rank>.pth`). The
Trainer's DataLoader must then not shard the batches again (training/trainer.py). A resume on the same process count
continues each rank bit for bit; on another one (same global batch) the parts and buffered blocks are re-split, each
block trained exactly once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from gptresume.checkpoint.files import checkpoint_name
from gptresume import stopping
from gptresume.config import HUB_PREFIX, DataConfig, fingerprint_of
from gptresume.data.stream_state import (  # noqa: F401  (STATE_NAME, BUFFER_NAME, state_names: the file names)
    BUFFER_NAME,
    STATE_NAME,
    block_id,
    fresh_part,
    owned_parts,
    parts_in,
    read_state,
    resharded,
    state_names,
    too_many_processes,
    write_state,
    written_by,
)
from gptresume.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 1000  # blocks
DOCS_PER_READ = 64
KEPT_SNAPSHOTS = 64  # states of the last blocks yielded, beyond 4 optimizer steps' worth (the DataLoader reads
# ahead of the trained step: accelerate one batch, Trainer the step's accumulation batches)


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
    """An endless stream of packed blocks ({"input_ids": int64 array}); each part of the source (data/stream_state.py)
    is read again from its start when it ends (its next pass), the buffer's generator carried on. Map-style it is
    not: Trainer needs `max_steps` (checked with the config).

    `record_ledger()` makes it remember the identity of every block it yields (and of the blocks a rollback skips),
    for the sample ledger (gptresume/ledger/): written per process beside the state at each save."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int, block_size: int, rank: int = 0, world_size: int = 1,
                 run_dir: Path | None = None, held_docs: int = 0):
        self.cfg, self.tokenizer, self.seed, self.block_size = cfg, tokenizer, seed, block_size
        self.rank, self.world_size = rank, world_size
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.held_docs = held_docs  # documents held out for validation at the start of part 0 (never trained)
        self.buffer_size = cfg.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER
        self.parts_total = getattr(cfg, "stream_parts", None) or world_size
        self._restored: dict | None = None
        self.snapshots: OrderedDict[int, dict] = OrderedDict()
        self.keep = KEPT_SNAPSHOTS
        self.skip = 0  # blocks to leave untrained at the start (a rollback's health.skip_batches, this rank's share)
        self.ledger: StreamLedger | None = None

    def _start_state(self) -> dict:
        if self._restored is not None:
            return self._restored
        parts = owned_parts(self.parts_total, self.rank, self.world_size)
        if not parts:
            raise UsageError(too_many_processes(self.parts_total, self.world_size, self.world_size))
        return {"parts_total": self.parts_total, "yielded": 0, "cursor": 0, "buffer": [],
                "rng": np.random.default_rng(self.seed).bit_generator.state, "parts": [fresh_part(s) for s in parts]}

    # torch's DataLoader treats anything with __iter__ and no __getitem__ as iterable-style only if it subclasses
    # torch.utils.data.IterableDataset: `as_torch` gives that class.
    def __iter__(self):
        # Every iterator starts at the restored position (or the beginning): a second iterator (a peek, a new
        # DataLoader) must not see a different stream. The stream is endless: Trainer never starts another epoch.
        state = self._start_state()
        parts = [dict(p, pending=list(reversed(p["pending"]))) for p in state["parts"]]  # popped from the end
        buffer = list(state["buffer"])
        cursor, yielded, skip = state["cursor"], state["yielded"] or 0, self.skip
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        readers: dict[int, list] = {}
        first = yielded  # while nothing was yielded, this is the start-up (the shuffle buffer filling)
        while True:
            if len(buffer) > self.buffer_size:  # inherited from more processes (an elastic resume): drain to size
                j = int(rng.integers(len(buffer)))
                out = buffer[j]
                buffer[j] = buffer[-1]
                buffer.pop()
            else:
                part = parts[cursor]
                while not part["pending"]:
                    if yielded == first and stopping.requested():  # a stop during start-up: nothing to commit yet
                        raise stopping.StopSignal(stopping.requested())
                    self._refill(part, readers)
                block = part["pending"].pop()
                cursor = (cursor + 1) % len(parts)
                if len(buffer) < self.buffer_size:
                    buffer.append(block)
                    continue
                j = int(rng.integers(len(buffer)))
                out, buffer[j] = buffer[j], block
            if skip:  # never trained: a rollback skips it (recorded as skipped in the ledger)
                skip -= 1
                if self.ledger is not None:
                    self.ledger.skipped(out[0])
                continue
            yielded += 1
            self._snapshot(yielded, cursor, buffer, parts, rng)
            if self.ledger is not None:
                self.ledger.trained(yielded, out[0])
            yield {"input_ids": out[1]}

    def _refill(self, part: dict, readers: dict) -> None:
        """Read the part's next documents and pack them onto its carried tokens (its pending blocks, numbered);
        at the part's end, its next pass starts from the first document."""
        s = part["part"]
        if s not in readers:
            ds, column = open_documents(self.cfg, s, self.parts_total)
            if s == 0 and self.held_docs:  # every pass: the held-out documents never train (the state counts them)
                ds = ds.skip(self.held_docs)
            if part["reader"] is not None:
                ds.load_state_dict(part["reader"])
            # [reader, column, iterator, a whole pass (from the first document), tokens read in this pass]
            readers[s] = [ds, column, iter(ds), part["reader"] is None, 0]
        reader = readers[s]
        ds, column, it, whole_pass, pass_tokens = reader
        eos, bs = self.tokenizer.eos_token_id, self.block_size
        docs = self._read(ds, it, column, s)
        if not docs:
            if whole_pass and pass_tokens < bs:  # an empty part, or one too small to fill a block: never a hang
                where = (f" (part {s} of {self.parts_total}, read by process {self.rank})"
                         if self.parts_total > 1 else "")
                if s == 0 and self.held_docs:
                    where += (f" after the {self.held_docs} documents held out for validation "
                              "(data.validation_max_blocks)")
                raise UsageError(too_small(self.cfg, pass_tokens, where))
            part["passes"], part["reader"] = part["passes"] + 1, None  # the files again, in order
            del readers[s]
            return
        part["reader"] = ds.state_dict()
        ids = self.tokenizer(docs, add_special_tokens=False)["input_ids"]
        reader[4] = pass_tokens + sum(len(x) + 1 for x in ids)
        carry = np.concatenate([part["carry"]] + [np.asarray(x + [eos], dtype=np.int64) for x in ids])
        n = len(carry) // bs
        first = part["produced"]
        part["pending"] = [(block_id(s, first + i), carry[i * bs:(i + 1) * bs]) for i in reversed(range(n))]
        part["produced"] = first + n
        part["carry"] = carry[n * bs:]

    def _read(self, ds, it, column: str, part: int) -> list[str]:
        """The next documents of the reader; a read or decode failure part-way through the source (the files
        were only sampled before training) ends the run as bad input naming the file and the position."""
        try:
            rows = [row for _, row in zip(range(DOCS_PER_READ), it)]
        except Exception as e:
            where, index = self._position(ds, part)
            raise UsageError(read_problem(where, e, index) + MID_STREAM) from None
        for row in rows:
            if not isinstance(row.get(column), str):
                where, index = self._position(ds, part)
                try:
                    _text_of(row, column, where, index)
                except UsageError as e:
                    raise UsageError(str(e) + MID_STREAM) from None
        return [row[column] for row in rows]

    def _position(self, ds, part: int) -> tuple[str, int]:
        """(the file the reader is in, documents read from it) from the reader's state, for messages."""
        state = ds.state_dict()
        while isinstance(state, dict) and "shard_idx" not in state:
            state = state.get("examples_iterable") or state.get("ex_iterable")
        if not isinstance(state, dict) or self.cfg.sources[0].startswith(HUB_PREFIX):
            return str(self.cfg.source), 0
        files = local_reader(self.cfg)[0]
        shard, index = int(state.get("shard_idx", 0)), int(state.get("shard_example_idx", 0))
        if self.parts_total > 1 and len(files) % self.parts_total == 0:  # whole files per part
            shard = part + shard * self.parts_total
        return (str(files[shard]) if 0 <= shard < len(files) else _names(files)), index

    def _snapshot(self, yielded, cursor, buffer, parts, rng) -> None:
        self.snapshots[yielded] = {
            "parts_total": self.parts_total, "yielded": yielded, "cursor": cursor, "rng": rng.bit_generator.state,
            "buffer": list(buffer),
            "parts": [dict(p, pending=p["pending"][::-1]) for p in parts]}
        while len(self.snapshots) > self.keep:
            self.snapshots.popitem(last=False)

    # ------------------------------------------------------------ checkpoint state

    def begin(self, blocks: int, step: int) -> None:
        """Before the first block of a (resumed) run: `blocks` is this process's count of trained blocks at `step`
        (step x per-device batch x accumulation): a re-sharded state counts from there. A rollback to this step
        leaves this rank's share of its skipped samples untrained (health.skip_batches), as packed data does."""
        state = self._start_state()
        if state["yielded"] is None:
            state["yielded"] = blocks
        elif state["yielded"] != blocks:
            raise RuntimeError(f"streaming: the restored state has {state['yielded']} blocks trained by process "
                               f"{self.rank}, the trainer's step {step} means {blocks}")
        self._restored = state
        self.skip = self._rollback_skip(step)
        if self.ledger is not None:
            self.ledger.start(blocks)

    def _rollback_skip(self, step: int) -> int:
        if self.run_dir is None or step <= 0:
            return 0
        from gptresume.health.rollback import pending_skip
        from gptresume.rundir import read_history

        total = pending_skip(read_history(self.run_dir), step)
        if total:
            log.info("Rollback: process %d skips %d block(s) of its stream", self.rank,
                     total // self.world_size + (self.rank < total % self.world_size))
        return total // self.world_size + (1 if self.rank < total % self.world_size else 0)

    def save_state(self, blocks_trained: int, directory: Path) -> None:
        """Write the stream's state after `blocks_trained` blocks into a checkpoint directory."""
        if blocks_trained == 0:
            return
        state = self.snapshots.get(blocks_trained)
        if state is None:
            raise RuntimeError(f"streaming: no state kept for block {blocks_trained} (kept: "
                               f"{list(self.snapshots)[:1]}..{list(self.snapshots)[-1:]})")
        write_state(Path(directory), self.rank, self.world_size, state, self.block_size)

    def load_state(self, checkpoint: Path) -> None:
        """Continue after the blocks the checkpoint trained on: this rank's own state when the checkpoint was written
        by as many processes, else the union of every rank's state re-split over this process count
        (data/stream_state.py)."""
        writers = written_by(Path(checkpoint))
        if writers == self.world_size:
            state = read_state(Path(checkpoint), self.rank, writers)
        else:
            state = resharded(Path(checkpoint), self.rank, self.world_size, self.seed)
            log.info("Stream re-split: %d process(es) wrote it, %d read it; process %d takes part(s) %s and %d "
                     "buffered block(s)", writers, self.world_size, self.rank, [p["part"] for p in state["parts"]],
                     len(state["buffer"]))
        self.parts_total = int(state["parts_total"])
        self._restored = state

    def record_ledger(self) -> StreamLedger:
        if self.ledger is None:
            self.ledger = StreamLedger(self)
        return self.ledger


class StreamLedger:
    """The identity of every block this process trains (by count: its k-th yielded block belongs to optimizer step
    ceil(k / blocks per step)) and skips, since its last save; written into each checkpoint as this process's
    ledger segment (ledger/segment.py), with the blocks the stream holds at that point."""

    def __init__(self, stream: PackedStream):
        self.stream = stream
        self.base = 0  # yielded count before the first remembered block
        self.uids: list[int] = []
        self.skipped_uids: list[int] = []

    def start(self, blocks: int) -> None:
        self.base, self.uids, self.skipped_uids = blocks, [], []

    def trained(self, yielded: int, uid: int) -> None:
        if yielded == self.base + len(self.uids) + 1:  # a second iterator re-yields known blocks: counted once
            self.uids.append(uid)

    def skipped(self, uid: int) -> None:
        if uid not in self.skipped_uids:  # (a second iterator skips the same blocks again)
            self.skipped_uids.append(uid)

    def save(self, blocks_trained: int, blocks_per_step: int, directory: Path) -> None:
        from gptresume.ledger.segment import Segment, rank_segment_name

        count = blocks_trained - self.base
        if count <= 0:
            return
        snap = self.stream.snapshots[blocks_trained]
        first_step = self.base // blocks_per_step + 1
        steps = np.arange(first_step, first_step + count // blocks_per_step, dtype=np.int64)
        held = [uid for uid, _ in snap["buffer"]] + [uid for p in snap["parts"] for uid, _ in p["pending"]]
        parts = {str(p["part"]): {"produced": p["produced"], "passes": p["passes"]} for p in snap["parts"]}
        segment = Segment.of(kind="stream", steps=steps, counts=np.full(len(steps), blocks_per_step, np.int64),
                             ids=np.asarray(self.uids[:count], np.int64),
                             skipped_ids=np.asarray(self.skipped_uids, np.int64), held_ids=np.asarray(held, np.int64),
                             meta={"parts_total": self.stream.parts_total, "parts": parts,
                                   "world_size": self.stream.world_size})
        segment.write(Path(directory) / rank_segment_name(self.stream.rank, self.stream.world_size))
        self.base, self.uids, self.skipped_uids = blocks_trained, self.uids[count:], []


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
    """The first `count` blocks of part 0 (of `world_size` parts) of `cfg`'s source, packed as training packs (each
    document followed by EOS, cut into blocks), and the number of documents they took. Every process reads the same
    ones (part 0's, so the held-out documents belong to one part, whose reader skips them: no document is both
    trained on and evaluated). The last document's tokens beyond the last block are dropped."""
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
                             + (" (its part 0)" if world_size > 1 else "")
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
    """A resume of a streaming run that would need the data position as a sample count (another global batch,
    other data), or more processes than the stream has parts. Another process count with the same global batch is
    re-sharded (data/stream_state.py)."""
    for c in plan.changes:
        other_batch = c.kind == "batch" and not c.equivalent
        other_data = c.kind == "data" and not c.equivalent
        if other_batch or other_data:
            return (f"{c.key} changed ({c.old!r} -> {c.new!r}) on a streaming run: its data position is the "
                    "readers' state after the blocks trained, not a sample count, so it cannot be carried to another "
                    "global batch or data (another process count needs the same global batch: per-device batch x "
                    "accumulation x processes); resume with the original values, or start a new run (fine-tuning "
                    "from this one's final/ model)")
    for c in plan.changes:
        if c.key == "world_size" and plan.checkpoint is not None:
            parts = parts_in(plan.checkpoint.path)
            if int(c.new) > parts:
                return f"world_size changed ({c.old!r} -> {c.new!r}) on a streaming run: " + too_many_processes(
                    parts, int(c.old), int(c.new))
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


def streamed_data(cfg: DataConfig, tokenizer, run_dir: Path, seed: int, rank: int = 0, world_size: int = 1,
                  checkpoint: Path | None = None) -> StreamedData:
    if tokenizer.eos_token_id is None:
        raise UsageError("model.tokenizer: the tokenizer has no EOS token, needed between documents")
    if cfg.stream_parts is not None and cfg.stream_parts < world_size:
        raise UsageError(f"data.stream_parts: {cfg.stream_parts} part(s) cannot feed {world_size} processes (each "
                         f"part is read by one process); set it to {world_size} or more, or leave it out")
    check_stream_source(cfg, tokenizer, rank, world_size)  # opened, sampled and decoded before anything is written
    # the parts the stream is split into: the resumed checkpoint's (an elastic resume keeps them), else the config's
    parts_total = parts_in(checkpoint) if checkpoint is not None else (cfg.stream_parts or world_size)
    validation, held_docs = None, 0
    held = held_out_count(cfg)
    if held:
        if cfg.validation_source is not None:  # its first blocks; the training stream is not split
            from gptresume.data.packing import _validation_config

            validation, _ = read_held_out(_validation_config(cfg), tokenizer, held, what="data.validation_source")
        else:  # the first blocks of part 0, which the stream then skips (whichever process reads that part)
            validation, held_docs = read_held_out(cfg, tokenizer, held, parts_total)
        log.info("Validation: the first %d blocks of %s (%d tokens)", held,
                 "data.validation_source" if cfg.validation_source is not None else "the stream", held * cfg.block_size)
    stream = PackedStream(cfg, tokenizer, seed, cfg.block_size, rank, world_size, run_dir, held_docs=held_docs)
    return StreamedData(stream, stream_fingerprint(cfg, tokenizer, run_dir, seed), cfg.block_size, validation)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StreamStateCallback(_callback_base()):
    """On every save, the stream's state after the blocks the saved step trained on, into the checkpoint (before
    gptresume's commit callback, so the manifest lists and hashes it), and with the sample ledger on, this process's
    ledger segment."""

    def __init__(self, stream: PackedStream):
        self.stream = stream

    def on_train_begin(self, args, state, control, **kwargs):
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.stream.keep = KEPT_SNAPSHOTS + 4 * per_step
        self.stream.begin(state.global_step * per_step, state.global_step)

    def on_save(self, args, state, control, **kwargs):
        directory = Path(args.output_dir) / checkpoint_name(state.global_step)
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        blocks = state.global_step * per_step
        self.stream.save_state(blocks, directory)
        if self.stream.ledger is not None:
            self.stream.ledger.save(blocks, per_step, directory)
