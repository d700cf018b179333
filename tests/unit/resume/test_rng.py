"""resume/rng.py: which of a checkpoint's RNG files each rank restores when the process count changes, and the
seed of a rank the checkpoint did not have."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptresume.resume.rng import DERIVED, derived_seed, rng_file_name, rng_source

SAVED_BY = {1: ["rng_state.pth"], 2: ["rng_state_0.pth", "rng_state_1.pth"]}


@pytest.mark.parametrize("world_size, rank, name", [
    (1, 0, "rng_state.pth"), (2, 0, "rng_state_0.pth"), (2, 1, "rng_state_1.pth"), (8, 7, "rng_state_7.pth")])
def test_rng_file_name_is_trainers(world_size, rank, name):
    assert rng_file_name(world_size, rank) == name


def checkpoint_saved_by(tmp_path: Path, processes: int) -> Path:
    ckpt = tmp_path / "checkpoint-10"
    ckpt.mkdir()
    for name in SAVED_BY[processes]:
        (ckpt / name).write_bytes(name.encode())  # content is never read here
    (ckpt / "optimizer.pt").write_bytes(b"o")
    return ckpt


@pytest.mark.parametrize("saved, world_size, rank, source", [
    (1, 1, 0, "rng_state.pth"),
    (1, 2, 0, "rng_state.pth"),  # the single process was rank 0
    (1, 2, 1, DERIVED),  # a rank the checkpoint did not have
    (2, 1, 0, "rng_state_0.pth"),  # 2 -> 1: rank 0 continues rank 0's stream
    (2, 2, 0, "rng_state_0.pth"),
    (2, 2, 1, "rng_state_1.pth"),
    (2, 3, 0, "rng_state_0.pth"),
    (2, 3, 1, "rng_state_1.pth"),
    (2, 3, 2, DERIVED),
], ids=lambda v: str(v))
def test_rng_source_across_process_counts(tmp_path, saved, world_size, rank, source):
    ckpt = checkpoint_saved_by(tmp_path, saved)
    got = rng_source(ckpt, world_size, rank)
    assert got == (Path(DERIVED) if source == DERIVED else ckpt / source)
    if source != DERIVED:
        assert got.is_file()


@pytest.mark.parametrize("world_size, rank", [(1, 0), (2, 0), (2, 1)])
def test_no_rng_files_is_none(tmp_path, world_size, rank):
    ckpt = tmp_path / "checkpoint-10"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"m")
    assert rng_source(ckpt, world_size, rank) is None


def test_derived_seed_is_deterministic_and_distinct():
    assert derived_seed(42, 100, 1) == derived_seed(42, 100, 1)
    # the same value in every process and interpreter (no hash() randomization): pinned
    assert derived_seed(42, 100, 1) == 1955251348
    seeds = {derived_seed(s, step, r) for s in (0, 1) for step in (0, 10) for r in range(4)}
    assert len(seeds) == 16  # seed, step and rank each matter
    assert all(0 <= s < 2**32 for s in seeds)
