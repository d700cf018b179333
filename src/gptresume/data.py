"""Text sources -> tokenized, packed `datasets.Dataset` blocks, cached in the run so a resume does not re-tokenize.

Packing: every document is tokenized, followed by EOS, the whole stream is concatenated and cut into blocks of
exactly `block_size` tokens (the tail shorter than a block is dropped). Blocks need no padding and no attention
mask; the labels are the input ids, EOS separators included (see `PackedBlockCollator`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptresume.config import BUILTIN_PREFIX, HUB_PREFIX, DataConfig, fingerprint_of
from gptresume.errors import UsageError

log = logging.getLogger(__name__)

DATA_CACHE_DIR = "data-cache"
CACHE_META_NAME = "meta.json"
SPLIT_SEED = 0  # fixed, so the validation split does not move when train.seed changes
FILE_LOADERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
                ".parquet": "parquet"}


@dataclass
class PreparedData:
    train: "datasets.Dataset"  # noqa: F821
    validation: "datasets.Dataset | None"  # noqa: F821
    fingerprint: str
    """Hash of the packed token stream (train then validation blocks): equal data, equal fingerprint."""
    num_tokens: int
    block_size: int


IGNORE_INDEX = -100


class PackedBlockCollator:
    """Stack fixed-length blocks; labels are the inputs (the model shifts them), EOS separators included.

    The first label of each block is -100. The model never predicts it (labels are shifted), so the loss is
    unchanged, but Trainer counts `num_items_in_batch` as the labels != -100: for GPT-2 (no `loss_type`,
    transformers 5.24) it would otherwise count every position and report the per-token loss times
    (block_size - 1) / block_size. With the mask, train and eval losses are the true mean per predicted token.
    `DataCollatorForLanguageModeling` is not used on purpose: with pad = eos it masks every EOS to -100.
    """

    def __call__(self, examples):
        import torch

        ids = torch.tensor([ex["input_ids"] for ex in examples], dtype=torch.long)
        if SAMPLE_LOG_ENV in os.environ:
            log_batch_samples(ids, os.environ[SAMPLE_LOG_ENV])
        labels = ids.clone()
        labels[:, 0] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


# For tests and debugging data order: with GPTRESUME_SAMPLE_LOG=PATH every collated batch appends one JSON line
# (the sample_id of each row) to PATH.rankN. Identifies samples by content, so it works for any sampler.
SAMPLE_LOG_ENV = "GPTRESUME_SAMPLE_LOG"


def sample_id(row) -> str:
    return hashlib.sha256(np.asarray(row, dtype=np.int32).tobytes()).hexdigest()[:12]


def log_batch_samples(ids, path: str) -> None:
    rank = os.environ.get("RANK", "0")
    with open(f"{path}.rank{rank}", "a") as f:
        f.write(json.dumps([sample_id(row) for row in ids.numpy()]) + "\n")


# ---------------------------------------------------------------- sources


def resolve_files(cfg: DataConfig) -> list[Path]:
    """Expand paths and globs in data.source, in sorted order; each pattern must match at least one file."""
    files: list[Path] = []
    for pattern in cfg.sources:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UsageError(f"data.source: no file matches {pattern!r} (paths are relative to {os.getcwd()}); "
                             "fix the path or glob in the config or with --set data.source=...")
        files.extend(Path(m) for m in matches)
    suffixes = {f.suffix.lower() for f in files}
    unknown = suffixes - set(FILE_LOADERS)
    if unknown:
        raise UsageError(f"data.source: unsupported file type {', '.join(sorted(unknown))}; "
                         f"use {', '.join(sorted(FILE_LOADERS))}")
    loaders = {FILE_LOADERS[s] for s in suffixes}
    if len(loaders) > 1:
        raise UsageError(f"data.source: mixes file types ({', '.join(sorted(suffixes))}); use one type per run")
    return files


def source_fingerprint(cfg: DataConfig) -> str:
    """Cheap identity of the raw source, for the tokenization cache key (content hash for local files)."""
    first = cfg.sources[0]
    if first.startswith(BUILTIN_PREFIX):
        return fingerprint_of([first, sys.version_info[:3]])
    if first.startswith(HUB_PREFIX):
        return fingerprint_of([first, cfg.hub_config, cfg.hub_split])
    h = hashlib.sha256()
    for f in resolve_files(cfg):
        h.update(str(f).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_texts(cfg: DataConfig):
    """The raw documents as a Dataset with one column `text`."""
    import datasets

    first = cfg.sources[0]
    if first.startswith(BUILTIN_PREFIX):
        from pydoc_data.topics import topics

        ds = datasets.Dataset.from_dict({"text": [topics[k] for k in sorted(topics)]})
    elif first.startswith(HUB_PREFIX):
        name = first[len(HUB_PREFIX):]
        try:
            ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split)
        except Exception as e:  # offline, unknown id, unknown split: all user-fixable
            raise UsageError(f"data.source: could not load hub dataset {name!r} "
                             f"(config {cfg.hub_config!r}, split {cfg.hub_split!r}): {e}") from None
        ds = _text_column(ds, cfg.text_column, f"hub dataset {name!r}")
    else:
        files = resolve_files(cfg)
        if all(f.stat().st_size == 0 for f in files):
            raise UsageError(f"data.source: {cfg.source!r} holds no documents (every file is empty); "
                             "point it at files with text")
        loader = FILE_LOADERS[files[0].suffix.lower()]
        kwargs = {"sample_by": cfg.text_unit} if loader == "text" else {}
        try:
            ds = datasets.load_dataset(loader, data_files=[str(f) for f in files], split="train", **kwargs)
        except Exception as e:
            raise UsageError(f"data.source: could not read {', '.join(map(str, files))}: {e}") from None
        ds = _text_column(ds, "text" if loader == "text" else cfg.text_column, ", ".join(map(str, files)))
    if len(ds) == 0:
        raise UsageError(f"data.source: {cfg.source!r} holds no documents; point it at files with text")
    return ds


def _text_column(ds, column: str, where: str):
    if column not in ds.column_names:
        raise UsageError(f"data.text_column: {where} has no column {column!r}; its columns are "
                         f"{', '.join(ds.column_names)}; set data.text_column")
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds


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


def split_blocks(blocks, validation_fraction: float):
    """Hold out a fixed random subset of blocks; the training blocks keep their stream order."""
    n_val = int(round(len(blocks) * validation_fraction))
    if validation_fraction > 0:
        n_val = max(1, n_val)
    if n_val == 0:
        return blocks, None
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(blocks))
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:])
    return blocks.select(train_idx), blocks.select(val_idx)


def token_fingerprint(*splits) -> str:
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
    """Packed train/validation blocks for this config and tokenizer, from RUN_DIR/data-cache when present.

    Nothing is written here; call `save_to_cache` once the run is accepted (bad input leaves RUN_DIR alone).
    """
    import datasets

    key = cache_key(cfg, tokenizer)
    cached = run_dir / DATA_CACHE_DIR / key
    if (cached / CACHE_META_NAME).is_file():
        meta = json.loads((cached / CACHE_META_NAME).read_text())
        dd = datasets.load_from_disk(str(cached))
        log.info("Data: %s tokens from cache %s", f"{meta['num_tokens']:,}", cached)
        return PreparedData(dd["train"], dd.get("validation"), meta["fingerprint"], meta["num_tokens"],
                            cfg.block_size)
    if texts is None:
        texts = load_texts(cfg)
    blocks, n_tokens = pack(texts, tokenizer, cfg.block_size, cfg.num_proc)
    if len(blocks) == 0:
        raise UsageError(f"data.source: the corpus has {n_tokens} tokens, fewer than one block of "
                         f"data.block_size={cfg.block_size}; add text or lower data.block_size")
    train, val = split_blocks(blocks, cfg.validation_fraction)
    if len(train) == 0:
        raise UsageError(f"data.validation_fraction: {cfg.validation_fraction} leaves no training block out of "
                         f"{len(blocks)}; lower it or add text")
    fp = token_fingerprint(train, val)
    log.info("Data: %s tokens -> %d training and %d validation blocks of %d", f"{n_tokens:,}", len(train),
             0 if val is None else len(val), cfg.block_size)
    return PreparedData(train, val, fp, n_tokens, cfg.block_size)


def cache_key(cfg: DataConfig, tokenizer) -> str:
    tok = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
    return fingerprint_of([source_fingerprint(cfg), tok, cfg.block_size, cfg.validation_fraction,
                           cfg.text_column, cfg.text_unit, SPLIT_SEED])


def save_to_cache(data: PreparedData, cfg: DataConfig, tokenizer, run_dir: Path) -> Path:
    """Write the packed splits under RUN_DIR/data-cache/<key> (temp dir, then rename: never half-written)."""
    import datasets

    final = run_dir / DATA_CACHE_DIR / cache_key(cfg, tokenizer)
    if (final / CACHE_META_NAME).is_file():
        return final
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    splits = {"train": data.train}
    if data.validation is not None:
        splits["validation"] = data.validation
    datasets.DatasetDict(splits).save_to_disk(str(tmp))
    (tmp / CACHE_META_NAME).write_text(json.dumps(
        {"fingerprint": data.fingerprint, "num_tokens": data.num_tokens, "block_size": data.block_size}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
