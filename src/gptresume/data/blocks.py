"""Packed blocks read from a flat token file through a memory map, the validation split, and the data fingerprint.

A token file holds the token stream; block b is tokens [b * block_size, (b + 1) * block_size). A split is the
file, its dtype, and the sorted block numbers it takes (all of them when `indices` is None). Nothing is read into
memory but the block numbers (8 bytes per block) and the rows a batch asks for.

The fingerprint and the split are the ones the in-memory packing used (tests/unit/data/test_packing_identity.py):
a fixed random subset of blocks (seed SPLIT_SEED) is held out, the training blocks keep their stream order, and the
fingerprint is sha256 over the training blocks as int32, "|", the validation blocks as int32, "|".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 0  # fixed, so the validation split does not move when train.seed changes
HASH_CHUNK_TOKENS = 1 << 20  # 4 MB of int32 per hashing step


@dataclass(frozen=True)
class Split:
    """Blocks of one token file: the file, its dtype, the block size, the first `blocks` blocks, or `indices`."""

    file: Path
    dtype: str
    block_size: int
    blocks: int
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        return self.blocks if self.indices is None else len(self.indices)


class BlockDataset:
    """Map-style dataset of fixed-length blocks, memory-mapped: row i is {"input_ids": int64 array}.

    The memory map is opened lazily in each process, so DataLoader workers pickle only the file name."""

    def __init__(self, split: Split):
        self.split = split
        self._tokens = None

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self):
        return {"split": self.split, "_tokens": None}

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            s = self.split
            self._tokens = np.memmap(s.file, dtype=s.dtype, mode="r", shape=(s.blocks * s.block_size,))
        return self._tokens

    def block_number(self, i: int) -> int:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return int(i if self.split.indices is None else self.split.indices[i])

    def __getitem__(self, i):
        bs = self.split.block_size
        b = self.block_number(int(i))
        return {"input_ids": np.asarray(self.tokens[b * bs:(b + 1) * bs], dtype=np.int64)}

    def array(self) -> np.ndarray:
        """The blocks as one (n, block_size) array: a memory-mapped view, or a copy of the chosen blocks."""
        s = self.split
        blocks = self.tokens.reshape(s.blocks, s.block_size)
        return blocks if s.indices is None else blocks[s.indices]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def split_indices(num_blocks: int, validation_fraction: float, max_blocks: int | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(train, validation) sorted block numbers; (None, None): every block trains, no validation split.

    `max_blocks` caps the held-out count (data.validation_max_blocks): the validation blocks are then the first
    `max_blocks` of the same seeded permutation, so where the cap does not bind the split is the uncapped one."""
    n_val = int(round(num_blocks * validation_fraction))
    if validation_fraction > 0:
        n_val = max(1, n_val)
        if max_blocks is not None:
            n_val = min(n_val, max_blocks)
    if n_val == 0:
        return None, None
    perm = np.random.default_rng(SPLIT_SEED).permutation(num_blocks)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def read_tokens(split: Split, start: int, count: int) -> np.ndarray:
    """Tokens [start, start + count) of the split's file, read (not memory-mapped: a pass over a file larger than
    memory must not leave it resident in this process)."""
    item = np.dtype(split.dtype).itemsize
    return np.fromfile(split.file, dtype=split.dtype, count=count, offset=start * item)


def blocks_fingerprint(*splits: Split | None) -> str:
    """sha256 of each split's blocks as int32 in order, each followed by "|"; read in chunks, never whole."""
    from gptresume.progress import Progress, size

    h = hashlib.sha256()
    total = sum(s.blocks * s.block_size * np.dtype(s.dtype).itemsize for s in splits if s is not None)
    progress = Progress("fingerprinting the blocks", total or None, unit=size)  # lines only for a large corpus
    for split in splits:
        if split is None:
            continue
        bs = split.block_size
        step = max(1, HASH_CHUNK_TOKENS // bs)
        idx = split.indices
        for a in range(0, split.blocks, step):  # file blocks [a, b): at most `step` blocks in memory
            b = min(a + step, split.blocks)
            window = read_tokens(split, a * bs, (b - a) * bs).reshape(b - a, bs)
            progress.update(progress.done + window.nbytes)
            if idx is not None:
                window = window[idx[np.searchsorted(idx, a):np.searchsorted(idx, b)] - a]
            h.update(np.ascontiguousarray(window, dtype=np.int32))  # the buffer itself, no bytes copy
        h.update(b"|")
    progress.close()
    return h.hexdigest()[:16]
