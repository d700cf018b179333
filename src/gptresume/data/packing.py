"""Text sources -> tokenized, packed `datasets.Dataset` blocks, cached in the run so a resume does not re-tokenize.

Packing: every document is tokenized, followed by EOS, the whole stream is concatenated and cut into blocks of
exactly `block_size` tokens (the tail shorter than a block is dropped). Blocks need no padding and no attention
mask; the labels are the input ids, EOS separators included (see `PackedBlockCollator`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptresume.config import DataConfig, fingerprint_of
from gptresume.data.collator import PackedBlockCollator  # noqa: F401 (re-exported)
from gptresume.data.sources import load_texts, source_fingerprint
from gptresume.errors import UsageError
from gptresume.rundir import DATA_CACHE_DIR  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

CACHE_META_NAME = "meta.json"
SPLIT_SEED = 0  # fixed, so the validation split does not move when train.seed changes


@dataclass
class PreparedData:
    train: "datasets.Dataset"  # noqa: F821
    validation: "datasets.Dataset | None"  # noqa: F821
    fingerprint: str
    """Hash of the packed token stream (train then validation blocks): equal data, equal fingerprint."""
    num_tokens: int
    block_size: int


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
