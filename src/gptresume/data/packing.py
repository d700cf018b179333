"""Sources -> packed blocks in RUN_DIR/data-cache/<key>, memory-mapped, so a resume neither re-tokenizes nor
holds the corpus in memory.

Packing: every document is tokenized, followed by EOS, the whole stream is concatenated and cut into blocks of
exactly `block_size` tokens (the tail shorter than a block is dropped). Blocks need no padding and no attention
mask; the labels are the input ids, EOS separators included (see `PackedBlockCollator`).

Bounded memory: the stream is written to a token file as it is produced (data/tokens.py), the split and the
fingerprint are computed from the file in chunks (data/blocks.py), and training reads the file through a memory
map. The blocks and the fingerprint are those of the in-memory packing this replaced (`pack`, kept for `eval
--data`), so runs whose checkpoints recorded the old fingerprint keep resuming; a cache the old code wrote (a
`datasets.save_to_disk` directory) still loads.

The cache is built in a staging directory under data-cache/ while the inputs are checked, and renamed into place
only when the run is accepted (`save_to_cache`); a refused run removes it (`PreparedData.discard`), so bad input
leaves RUN_DIR as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gptresume.config import DataConfig, fingerprint_of
from gptresume.data.collator import PackedBlockCollator  # noqa: F401 (re-exported)
from gptresume.data.blocks import SPLIT_SEED, BlockDataset, Split, blocks_fingerprint, split_indices
from gptresume.data.sources import remember_source_fingerprint, source_fingerprint
from gptresume.errors import UsageError
from gptresume.rundir import DATA_CACHE_DIR

log = logging.getLogger(__name__)

CACHE_META_NAME = "meta.json"
CACHE_FORMAT = 2  # 1 (no "format" key): a datasets.save_to_disk DatasetDict; 2: token files + block numbers
STAGING = ".staging-"  # data-cache/<key>.staging-<pid>: being built, not yet accepted


@dataclass
class PreparedData:
    train: object
    """Map-style dataset of blocks (`BlockDataset`, or a `datasets.Dataset` from an old cache)."""
    validation: object | None
    fingerprint: str
    """Hash of the packed token stream (train then validation blocks): equal data, equal fingerprint."""
    num_tokens: int
    block_size: int
    key: str | None = None
    """The data-cache key these blocks belong under."""
    staging: Path | None = None
    """Where the blocks were built when they did not come from the cache; renamed into place by save_to_cache."""
    created: list = field(default_factory=list)
    """Directories made for the staging area (removed again by `discard`)."""
    times: dict = field(default_factory=dict)
    """Directory -> (atime_ns, mtime_ns) before the staging area was made in it: `discard` puts them back, so a
    refused run leaves RUN_DIR exactly as it was, timestamps included."""

    def discard(self) -> None:
        """The run was refused: remove what preparing wrote (RUN_DIR as it was)."""
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:  # not empty: something else lives there
                pass
        for d, (atime, mtime) in self.times.items():
            if d.is_dir():
                os.utime(d, ns=(atime, mtime))
        self.staging, self.created, self.times = None, [], {}

    def relocate(self, old: Path, new: Path) -> None:
        for ds in (self.train, self.validation):
            if isinstance(ds, BlockDataset) and ds.split.file.parent == old:
                ds.split = replace(ds.split, file=new / ds.split.file.name)
                ds._tokens = None


# ---------------------------------------------------------------- tokenize and pack


def pack(texts, tokenizer, block_size: int, num_proc: int | None = None):
    """Tokenize every document, append EOS, concatenate, cut into `block_size` blocks. Returns (blocks, n_tokens)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    eos = tokenizer.eos_token_id
    if eos is None:
        raise UsageError("model.tokenizer: the tokenizer has no EOS token, needed between documents")

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    tokenized = texts.map(tokenize, batched=True, remove_columns=texts.column_names, num_proc=num_proc,
                          desc="Tokenizing")
    column = tokenized.data.column("input_ids")
    flat = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else pa.array([], pa.int32())
    flat = flat.cast(pa.int32())
    n_tokens = len(flat)
    n_blocks = n_tokens // block_size
    blocks = pa.FixedSizeListArray.from_arrays(flat.slice(0, n_blocks * block_size), block_size)
    return datasets.Dataset(InMemoryTable(pa.table({"input_ids": blocks}))), n_tokens


def split_blocks(blocks, validation_fraction: float, max_blocks: int | None = None):
    """Hold out a fixed random subset of blocks (at most `max_blocks`); the training blocks keep their stream
    order."""
    train_idx, val_idx = split_indices(len(blocks), validation_fraction, max_blocks)
    if val_idx is None:
        return blocks, None
    return blocks.select(train_idx), blocks.select(val_idx)


def token_fingerprint(*splits) -> str:
    """The fingerprint of in-memory splits (datasets of blocks), as `blocks_fingerprint` computes it from files."""
    h = hashlib.sha256()
    for ds in splits:
        if ds is None:
            continue
        arr = ds.with_format("numpy")["input_ids"]
        h.update(np.ascontiguousarray(arr, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- cache


def prepare_data(cfg: DataConfig, tokenizer, run_dir: Path, texts=None) -> PreparedData:
    """Packed train/validation blocks for this config and tokenizer, from RUN_DIR/data-cache when present, else
    built in a staging directory there (`save_to_cache` keeps it once the run is accepted, `discard` drops it)."""
    key = cache_key(cfg, tokenizer, run_dir)
    cached = run_dir / DATA_CACHE_DIR / key
    if (cached / CACHE_META_NAME).is_file():
        data = open_cache(cached, cfg.block_size)
        data.key = key
        log.info("Data: %s tokens from cache %s", f"{data.num_tokens:,}", cached)
        return data
    from gptresume.data.pretokenized import check_token_file, pretokenized_kind, token_file

    vocab = len(tokenizer)
    external = {}  # checked before anything is written: a flat token file is used where it lies
    for role, sources in (("train", cfg.sources), ("validation", _validation_sources(cfg))):
        if sources and pretokenized_kind(sources) == "tokens":
            field_name = "data.source" if role == "train" else "data.validation_source"
            path = token_file(sources, field_name)
            external[role] = (path.resolve(), check_token_file(path, cfg.token_dtype, vocab, field_name))
    data = PreparedData(None, None, "", 0, cfg.block_size, key=key)
    data.staging = _make_staging(run_dir, key, data)
    try:
        _build(cfg, tokenizer, texts, data, external)
    except BaseException:
        data.discard()
        raise
    return data


def _validation_sources(cfg: DataConfig) -> list[str] | None:
    v = cfg.validation_source
    return None if v is None else ([v] if isinstance(v, str) else list(v))


def _make_staging(run_dir: Path, key: str, data: PreparedData) -> Path:
    staging = run_dir / DATA_CACHE_DIR / f"{key}{STAGING}{os.getpid()}"
    for d in (run_dir, run_dir / DATA_CACHE_DIR):
        if d.is_dir():
            st = d.stat()
            data.times.setdefault(d, (st.st_atime_ns, st.st_mtime_ns))
        else:
            d.mkdir(parents=True)
            data.created.append(d)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _token_stream(cfg: DataConfig, tokenizer, texts, out: Path, role: str, external: dict,
                  max_tokens: int | None) -> tuple[Path, str, int]:
    """(file, dtype, tokens) of one source's token stream: a checked flat token file where it lies, a saved
    dataset flattened into `out`, or text tokenized into `out`."""
    from gptresume.data.pretokenized import copy_saved_tokens, open_saved_dataset, pretokenized_kind
    from gptresume.data.sources import _batches_of, text_batches
    from gptresume.data.tokens import BATCH_DOCS, TOKEN_DTYPE, tokenize_to_file

    field_name = "data.source" if role == "train" else "data.validation_source"
    if role in external:
        path, n = external[role]
        return path, cfg.token_dtype, n if max_tokens is None else min(n, max_tokens)
    sources = cfg.sources if role == "train" else _validation_sources(cfg)
    out.touch()
    if pretokenized_kind(sources) == "saved":
        ds = open_saved_dataset(sources, field_name)
        n = copy_saved_tokens(ds, out, len(tokenizer), f"{field_name}: {sources[0]}", max_tokens)
        return out, np.dtype(TOKEN_DTYPE).name, n
    if tokenizer.eos_token_id is None:
        raise UsageError("model.tokenizer: the tokenizer has no EOS token, needed between documents")
    if texts is not None and role == "train":  # already loaded (to train the tokenizer): read from it
        batches, text_bytes = _batches_of(texts, BATCH_DOCS), getattr(texts.data, "nbytes", 0)
    else:
        batches, text_bytes = text_batches(cfg if role == "train" else _validation_config(cfg), BATCH_DOCS)
    n = tokenize_to_file(batches, text_bytes, tokenizer, out, cfg.num_proc, max_tokens)
    return out, np.dtype(TOKEN_DTYPE).name, n


def _validation_config(cfg: DataConfig) -> DataConfig:
    hub = isinstance(cfg.validation_source, str) and cfg.validation_source.startswith("hub:")
    return replace(cfg, source=cfg.validation_source, validation_source=None, max_train_tokens=None,
                   hub_split=(cfg.validation_hub_split or "validation") if hub else cfg.hub_split)


def _blocks_of(file: Path, dtype: str, n_tokens: int, block_size: int, staged: bool) -> int:
    n_blocks = n_tokens // block_size
    if staged:  # the tail shorter than a block is never read: drop it from the file
        os.truncate(file, n_blocks * block_size * np.dtype(dtype).itemsize)
    return n_blocks


def _build(cfg: DataConfig, tokenizer, texts, data: PreparedData, external: dict) -> None:
    bs = cfg.block_size
    file, dtype, n_tokens = _token_stream(cfg, tokenizer, texts, data.staging / "tokens.bin", "train", external,
                                          cfg.max_train_tokens)
    n_blocks = _blocks_of(file, dtype, n_tokens, bs, file.parent == data.staging)
    if n_blocks == 0:
        raise UsageError(f"data.source: the corpus has {n_tokens} tokens, fewer than one block of "
                         f"data.block_size={bs}; add text or lower data.block_size")
    if cfg.validation_source is not None:
        train = Split(file, dtype, bs, n_blocks)
        vfile, vdtype, v_tokens = _token_stream(cfg, tokenizer, None, data.staging / "validation.bin",
                                                "validation", external, None)
        v_blocks = _blocks_of(vfile, vdtype, v_tokens, bs, vfile.parent == data.staging)
        if v_blocks == 0:
            raise UsageError(f"data.validation_source: {cfg.validation_source!r} has {v_tokens} tokens, fewer than "
                             f"one block of data.block_size={bs}; add text or lower data.block_size")
        val = Split(vfile, vdtype, bs, v_blocks)
    else:
        train_idx, val_idx = split_indices(n_blocks, cfg.validation_fraction, cfg.validation_max_blocks)
        if train_idx is not None and len(train_idx) == 0:
            raise UsageError(f"data.validation_fraction: {cfg.validation_fraction} leaves no training block out "
                             f"of {n_blocks}; lower it or add text")
        train = Split(file, dtype, bs, n_blocks, train_idx)
        val = None if val_idx is None else Split(file, dtype, bs, n_blocks, val_idx)
    data.fingerprint = blocks_fingerprint(train, val)
    data.num_tokens = n_tokens
    data.train, data.validation = BlockDataset(train), (BlockDataset(val) if val is not None else None)
    meta = {"format": CACHE_FORMAT, "fingerprint": data.fingerprint, "num_tokens": n_tokens, "block_size": bs,
            "train": _split_record(train, "train", data.staging),
            "validation": _split_record(val, "validation", data.staging) if val is not None else None}
    (data.staging / CACHE_META_NAME).write_text(json.dumps(meta))
    log.info("Data: %s tokens -> %d training and %d validation blocks of %d", f"{n_tokens:,}", len(train),
             0 if val is None else len(val), bs)


def _split_record(split: Split, name: str, staging: Path) -> dict:
    inside = split.file.parent == staging
    record = {"file": split.file.name if inside else str(split.file), "dtype": split.dtype, "blocks": split.blocks,
              "indices": None}
    if split.indices is not None:
        record["indices"] = f"{name}.npy"
        np.save(staging / record["indices"], split.indices)
    return record


def open_cache(cached: Path, block_size: int) -> PreparedData:
    """The packed splits in a data-cache directory: token files and block numbers (format 2), or the
    datasets.save_to_disk directory the in-memory packing wrote (format 1)."""
    meta = json.loads((cached / CACHE_META_NAME).read_text())
    if meta.get("format") is None:
        import datasets

        dd = datasets.load_from_disk(str(cached))
        return PreparedData(dd["train"], dd.get("validation"), meta["fingerprint"], meta["num_tokens"], block_size)

    def split(record):
        if record is None:
            return None
        file = Path(record["file"]) if os.path.isabs(record["file"]) else cached / record["file"]
        idx = np.load(cached / record["indices"]) if record["indices"] else None
        return BlockDataset(Split(file, record["dtype"], block_size, int(record["blocks"]), idx))

    return PreparedData(split(meta["train"]), split(meta["validation"]), meta["fingerprint"], meta["num_tokens"],
                        block_size)


def cache_key(cfg: DataConfig, tokenizer, run_dir: Path | None = None) -> str:
    """The cache directory name: source identity, tokenizer, and every packing setting. Settings added after the
    first format enter the key only when set, so caches written before them keep their names."""
    tok = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
    parts = [source_fingerprint(cfg, run_dir), tok, cfg.block_size, cfg.validation_fraction, cfg.text_column,
             cfg.text_unit, SPLIT_SEED]
    if cfg.token_dtype is not None:
        parts.append(["token_dtype", cfg.token_dtype])
    if cfg.max_train_tokens is not None:
        parts.append(["max_train_tokens", cfg.max_train_tokens])
    if cfg.validation_source is not None:
        parts.append(["validation", source_fingerprint(_validation_config(cfg), run_dir)])
    if cfg.validation_max_blocks is not None and cfg.validation_fraction > 0 and cfg.validation_source is None:
        parts.append(["validation_max_blocks", cfg.validation_max_blocks])
    return fingerprint_of(parts)


def save_to_cache(data: PreparedData, cfg: DataConfig, tokenizer, run_dir: Path) -> Path:
    """Keep the staged blocks as RUN_DIR/data-cache/<key> (a rename: never half-written), and the source files'
    stat records, so the next start finds both without reading the sources."""
    key = data.key or cache_key(cfg, tokenizer, run_dir)
    final = run_dir / DATA_CACHE_DIR / key
    remember_source_fingerprint(run_dir)
    for stale in (run_dir / DATA_CACHE_DIR).glob(f"*{STAGING}*"):  # of killed processes (we hold the run lock)
        if stale != data.staging:
            shutil.rmtree(stale, ignore_errors=True)
    if data.staging is None:
        if not (final / CACHE_META_NAME).is_file():  # blocks from elsewhere (a caller's own PreparedData)
            raise UsageError(f"data: nothing staged to cache under {final}")
        return final
    staging, data.staging, data.created = data.staging, None, []
    if (final / CACHE_META_NAME).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        opened = open_cache(final, data.block_size)
        data.train, data.validation = opened.train, opened.validation
        return final
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    data.relocate(staging, final)
    return final
