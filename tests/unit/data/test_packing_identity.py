"""Bounded-memory packing gives the blocks and the data fingerprint of the in-memory packing it replaced, so runs
whose checkpoints recorded the old fingerprint keep resuming, and caches written by the old code still load.

`reference_*` below is the packing of gptresume before bounded memory (data/packing.py at commit 2987fb2), kept
verbatim as the oracle.
"""

import hashlib
import json

import numpy as np
import pytest

from conftest import corpus_texts
from gptresume.config import DataConfig
from gptresume.data import prepare_data, save_to_cache
from gptresume.data.packing import cache_key
from gptresume.modeling import train_tokenizer


def reference_pack(texts, tokenizer, block_size):
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    tokenized = texts.map(tokenize, batched=True, remove_columns=texts.column_names)
    column = tokenized.data.column("input_ids")
    flat = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else pa.array([], pa.int32())
    flat = flat.cast(pa.int32())
    n_blocks = len(flat) // block_size
    blocks = pa.FixedSizeListArray.from_arrays(flat.slice(0, n_blocks * block_size), block_size)
    return datasets.Dataset(InMemoryTable(pa.table({"input_ids": blocks}))), len(flat)


def reference_split(blocks, validation_fraction):
    n_val = int(round(len(blocks) * validation_fraction))
    if validation_fraction > 0:
        n_val = max(1, n_val)
    if n_val == 0:
        return blocks, None
    perm = np.random.default_rng(0).permutation(len(blocks))
    return blocks.select(np.sort(perm[n_val:])), blocks.select(np.sort(perm[:n_val]))


def reference_fingerprint(*splits):
    h = hashlib.sha256()
    for ds in splits:
        if ds is None:
            continue
        h.update(np.ascontiguousarray(ds.with_format("numpy")["input_ids"], dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def rows(ds) -> np.ndarray:
    return np.array([np.asarray(ds[i]["input_ids"]) for i in range(len(ds))]).reshape(len(ds), -1)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), 400)


@pytest.mark.parametrize("unit,block_size,fraction,num_proc", [
    ("paragraph", 32, 0.1, 1), ("document", 16, 0.0, 1), ("line", 7, 0.3, 2)])
def test_bounded_packing_equals_the_in_memory_packing(tmp_path, tokenizer, unit, block_size, fraction, num_proc):
    from gptresume.data import load_texts

    (tmp_path / "a.txt").write_text("\n\n".join(corpus_texts(6)))
    (tmp_path / "b.txt").write_text("\n\n".join(corpus_texts(9)[6:]))
    cfg = DataConfig(source=str(tmp_path / "*.txt"), text_unit=unit, block_size=block_size,
                     validation_fraction=fraction, num_proc=num_proc)
    blocks, n_tokens = reference_pack(load_texts(cfg), tokenizer, block_size)
    ref_train, ref_val = reference_split(blocks, fraction)

    got = prepare_data(cfg, tokenizer, tmp_path / "run")
    assert got.num_tokens == n_tokens
    assert got.fingerprint == reference_fingerprint(ref_train, ref_val)
    assert np.array_equal(rows(got.train), rows(ref_train))
    assert (got.validation is None) == (ref_val is None)
    if ref_val is not None:
        assert np.array_equal(rows(got.validation), rows(ref_val))
    save_to_cache(got, cfg, tokenizer, tmp_path / "run")  # and read back from the cache: the same again
    again = prepare_data(cfg, tokenizer, tmp_path / "run")
    assert again.fingerprint == got.fingerprint and np.array_equal(rows(again.train), rows(ref_train))


def test_a_cache_written_by_the_old_packing_still_loads(tmp_path, tokenizer):
    """A run directory from before bounded memory: its data-cache/<key> is a datasets.save_to_disk directory."""
    import datasets

    from gptresume.data import load_texts

    (tmp_path / "c.txt").write_text("\n\n".join(corpus_texts(5)))
    cfg = DataConfig(source=str(tmp_path / "c.txt"), text_unit="paragraph", block_size=16)
    blocks, n_tokens = reference_pack(load_texts(cfg), tokenizer, 16)
    train, val = reference_split(blocks, cfg.validation_fraction)
    old = tmp_path / "run" / "data-cache" / cache_key(cfg, tokenizer)
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(old))
    fp = reference_fingerprint(train, val)
    (old / "meta.json").write_text(json.dumps({"fingerprint": fp, "num_tokens": n_tokens, "block_size": 16}))

    class NoTokenizing:  # proves the old cache is what is read
        backend_tokenizer = tokenizer.backend_tokenizer

        def __call__(self, *a, **k):
            raise AssertionError("re-tokenized")

    got = prepare_data(cfg, NoTokenizing(), tmp_path / "run")
    assert got.fingerprint == fp == prepare_data(cfg, tokenizer, tmp_path / "other").fingerprint
    assert np.array_equal(rows(got.train), rows(train))
