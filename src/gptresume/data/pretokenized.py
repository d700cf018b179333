"""Pre-tokenized sources: a flat token file (nanoGPT's `train.bin`: token ids in one stated dtype, nothing else)
and a directory written by `datasets.save_to_disk` with an `input_ids` column of integer lists.

Either is a token stream, cut into `data.block_size` blocks like tokenized text (no EOS is added: the ids are
taken as they are). A token file is memory-mapped where it lies, never copied; a saved dataset is flattened into
the run's data cache. Every check runs before anything is written, and names the file: a dtype that is not an
integer type, a size that is not a multiple of the dtype, ids outside the tokenizer's vocabulary, and the tell-tale
of 32-bit ids read as 16-bit (every other id 0).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from gptresume.config.schema import TOKEN_DTYPES
from gptresume.errors import UsageError

TOKEN_FILE_SUFFIX = ".bin"
SCAN_TOKENS = 1 << 24  # ids checked per step: 64 MB of int32
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")


def pretokenized_kind(sources: list[str]) -> str | None:
    """'tokens' (one flat .bin file), 'saved' (a save_to_disk directory), or None (text)."""
    if len(sources) == 1 and os.path.isdir(os.path.expanduser(sources[0])):
        d = Path(os.path.expanduser(sources[0]))
        if any((d / m).is_file() for m in SAVED_DATASET_MARKERS):
            return "saved"
    if any(s.lower().endswith(TOKEN_FILE_SUFFIX) for s in sources):
        return "tokens"
    return None


def token_file(sources: list[str], field: str) -> Path:
    files = [Path(m) for s in sources for m in sorted(glob.glob(os.path.expanduser(s))) if os.path.isfile(m)]
    if len(files) != 1 or len(sources) != 1:
        raise UsageError(f"{field}: a token file source is exactly one .bin file (got {len(files)} files from "
                         f"{sources!r}); concatenate the files or name one")
    return files[0]


def check_token_file(path: Path, dtype: str | None, vocab_size: int, field: str) -> int:
    """The number of tokens in `path`, after checking its size, its ids and its dtype; UsageError names the file."""
    if dtype is None:
        raise UsageError(f"{field}: {path} is a flat token file; state its dtype with data.token_dtype "
                         f"({', '.join(TOKEN_DTYPES)}; nanoGPT's prepare.py writes uint16)")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size % itemsize:
        raise UsageError(f"{field}: {path} has {size} bytes, not a multiple of {itemsize} (data.token_dtype "
                         f"{dtype}): the dtype is wrong or the file is truncated")
    n = size // itemsize
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    check_ids(tokens, vocab_size, f"{field}: {path} (data.token_dtype {dtype})")
    return n


def check_ids(tokens, vocab_size: int, where: str) -> None:
    """Ids in [0, vocab_size), scanned in chunks; 32-bit ids read as 16-bit (odd positions all 0) refused."""
    n = len(tokens)
    head = np.asarray(tokens[: min(n, SCAN_TOKENS) // 2 * 2])
    if tokens.dtype.itemsize < 8 and len(head) >= 64 and not head[1::2].any() and head[0::2].any():
        wider = {2: "uint32/int32", 4: "int64"}[tokens.dtype.itemsize]
        raise UsageError(f"{where}: every other id is 0, as when {wider} ids are read as "
                         f"{tokens.dtype}; set data.token_dtype to the dtype the file was written with")
    for a in range(0, n, SCAN_TOKENS):
        chunk = np.asarray(tokens[a:a + SCAN_TOKENS])
        lo, hi = int(chunk.min()), int(chunk.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            at = a + int(np.argmax(chunk == bad))
            raise UsageError(f"{where}: token id {bad} at position {at} is outside the tokenizer's vocabulary "
                             f"(0..{vocab_size - 1}); the file was tokenized with another tokenizer or the dtype "
                             "is wrong")


def open_saved_dataset(sources: list[str], field: str):
    """The `datasets.Dataset` in a save_to_disk directory (a DatasetDict's 'train' split), checked: an
    `input_ids` column of integer lists."""
    import datasets

    path = Path(os.path.expanduser(sources[0]))
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged or foreign directory
        raise UsageError(f"{field}: could not open {path} as a datasets.save_to_disk directory: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UsageError(f"{field}: {path} holds the splits {', '.join(ds)}, no 'train'; point at one split's "
                             "directory")
        ds = ds["train"]
    feature = ds.features.get("input_ids")
    inner = getattr(feature, "feature", None)
    dtype = getattr(inner, "dtype", None)
    if dtype is None or not (dtype.startswith("int") or dtype.startswith("uint")):
        raise UsageError(f"{field}: {path} needs an 'input_ids' column of integer token ids (found "
                         f"{'no such column' if feature is None else feature}); tokenize it first or use text")
    return ds


def copy_saved_tokens(ds, out: Path, vocab_size: int, where: str, max_tokens: int | None) -> int:
    """Flatten the dataset's input_ids into `out` (int32), checking the ids batch by batch; returns the count."""
    import pyarrow.compute as pc

    written = 0
    with open(out, "ab") as f:
        for batch in ds.with_format("arrow").select_columns(["input_ids"]).iter(batch_size=8192):
            flat = pc.list_flatten(batch.column("input_ids")).to_numpy(zero_copy_only=False)
            if max_tokens is not None:
                flat = flat[: max_tokens - written]
            check_ids(flat, vocab_size, where)
            f.write(np.ascontiguousarray(flat, dtype=np.int32).tobytes())
            written += len(flat)
            if max_tokens is not None and written >= max_tokens:
                break
    return written
