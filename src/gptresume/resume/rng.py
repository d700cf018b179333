"""RNG state across process counts: which of a checkpoint's per-rank RNG files each rank restores, and the seed
of a rank the checkpoint did not have. The file names are Trainer's (checked in gptresume/compat.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path


DERIVED = "<derived>"


def rng_file_name(world_size: int, rank: int) -> str:
    """The file Trainer reads for this rank (transformers 5.24 `_load_rng_state`)."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


def rng_source(checkpoint: Path, world_size: int, rank: int) -> Path | None:
    """Which RNG file rank `rank` of `world_size` restores from `checkpoint`: its own when present, else the
    checkpoint's rank of the same number, else DERIVED (a rank the checkpoint did not have). None: no RNG files."""
    own = checkpoint / rng_file_name(world_size, rank)
    if own.is_file():
        return own
    saved = sorted(p.name for p in checkpoint.glob("rng_state*.pth"))
    if not saved:
        return None
    if saved == ["rng_state.pth"]:  # written by one process: it was rank 0
        return checkpoint / saved[0] if rank == 0 else Path(DERIVED)
    same_rank = checkpoint / f"rng_state_{rank}.pth"
    return same_rank if same_rank.is_file() else Path(DERIVED)


def derived_seed(seed: int, step: int, rank: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:4], "little")
