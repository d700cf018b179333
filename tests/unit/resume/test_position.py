"""resume/position.py: Trainer's epoch geometry, the stream position and the offset that makes Trainer's own
step-based skip land on it, and StreamSampler against the stream defined in the module docstring (epoch e is
accelerate's SeedableRandomSampler permutation: torch.randperm(n) from a generator seeded seed + e)."""

from __future__ import annotations

import itertools

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler
from torch.utils.data import BatchSampler, SequentialSampler

from gptresume.resume.position import Geometry, StreamSampler, map_position

SEED = 42


def perm(n: int, data_epoch: int, seed: int = SEED) -> list[int]:
    gen = torch.Generator()
    gen.manual_seed(seed + data_epoch)
    return torch.randperm(n, generator=gen).tolist()


def stream(p: int, n: int, seed: int = SEED) -> int:
    """The docstring's definition: stream position p is sample perm(p // n)[p % n]."""
    return perm(n, p // n, seed)[p % n]


# ---------------------------------------------------------------- Geometry


@pytest.mark.parametrize("per_device, accumulation, world_size, expected",
                         [(8, 1, 1, 8), (4, 2, 1, 8), (2, 2, 2, 8), (3, 5, 7, 105)])
def test_global_batch(per_device, accumulation, world_size, expected):
    assert Geometry(per_device, accumulation, world_size).global_batch == expected


@pytest.mark.parametrize("g, n, expected", [
    (Geometry(4, 1, 1), 100, 25),
    (Geometry(8, 1, 1), 100, 13),  # the short last batch counts
    (Geometry(8, 1, 1, drop_last=True), 100, 12),  # ... unless dropped
    (Geometry(8, 2, 1), 100, 7),  # 13 batches: the last step has one batch
    (Geometry(8, 1, 2), 100, 7),  # accelerate pads the last set of batches
    (Geometry(8, 1, 2, drop_last=True), 100, 6),
    (Geometry(8, 1, 1), 3, 1),  # fewer samples than a batch: still one step
    (Geometry(8, 1, 1, drop_last=True), 3, 1),
])
def test_steps_per_epoch_examples(g, n, expected):
    assert g.steps_per_epoch(n) == expected


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_steps_per_epoch_is_what_accelerate_and_trainer_compute(world_size, drop_last):
    """Per-process batches from accelerate's BatchSamplerShard (even_batches, as Trainer prepares it), then
    Trainer's num_update_steps_per_epoch: ceil(batches / accumulation), at least 1 (transformers 5.24)."""
    for n, per_device, accumulation in itertools.product((1, 5, 7, 64, 100, 101), (1, 3, 8), (1, 2, 4)):
        batches = len(BatchSamplerShard(BatchSampler(SequentialSampler(range(n)), per_device, drop_last),
                                        num_processes=world_size, process_index=0, even_batches=True))
        trainer = max(batches // accumulation + int(batches % accumulation > 0), 1)
        g = Geometry(per_device, accumulation, world_size, drop_last)
        assert g.steps_per_epoch(n) == trainer, (n, g)


def test_position_counts_samples_and_jumps_to_the_next_epoch_at_its_end():
    g, n = Geometry(8, 1, 1), 100  # 13 steps per epoch, the last one short
    assert g.position(0, n) == 0
    assert g.position(1, n) == 8
    assert g.position(12, n) == 96
    assert g.position(13, n) == 100  # epoch 1 starts at sample n, not 13 * 8
    assert g.position(15, n) == 116
    assert g.position(15, n, offset=-40) == 76


@pytest.mark.parametrize("g", [Geometry(8, 1, 1), Geometry(3, 2, 2), Geometry(5, 1, 3, drop_last=True)])
@pytest.mark.parametrize("n", [7, 100])
def test_offset_for_is_the_inverse_of_position(g, n):
    for step in range(0, 3 * g.steps_per_epoch(n) + 1):
        for position in (0, 1, n - 1, n, 2 * n + 5, g.position(step, n) + 3):
            offset = g.offset_for(step, n, position)
            assert g.position(step, n, offset) == position, (step, position)
        assert g.offset_for(step, n, g.position(step, n)) == 0  # unchanged geometry: no offset


@pytest.mark.parametrize("position, old_n, new_n, expected", [
    (0, 100, 80, 0),
    (30, 100, 80, 30),  # same epoch, same offset within it
    (230, 100, 80, 190),  # epoch 2, sample 30
    (95, 100, 80, 80),  # beyond the new epoch's end: clipped to it (= start of the next epoch)
    (250, 100, 120, 290),
    (137, 100, 100, 137),
])
def test_map_position(position, old_n, new_n, expected):
    assert map_position(position, old_n, new_n) == expected


# ---------------------------------------------------------------- StreamSampler


def test_stream_sampler_without_offset_is_accelerates_seedable_random_sampler():
    n = 37
    ours = StreamSampler(n, SEED, 0)
    theirs = SeedableRandomSampler(range(n), data_seed=SEED)
    for epoch in range(3):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        got = list(ours)
        assert got == list(theirs), epoch
        assert got == perm(n, epoch)


def test_an_epoch_has_n_samples_and_iterating_advances_the_epoch():
    n = 10
    sampler = StreamSampler(n, SEED, 0)
    assert len(sampler) == n
    first, second = list(sampler), list(sampler)  # like SeedableRandomSampler, iteration moves to the next epoch
    assert sampler.epoch == 2
    assert sorted(first) == sorted(second) == list(range(n))
    assert first == perm(n, 0) and second == perm(n, 1) and first != second


@pytest.mark.parametrize("offset", [0, 3, 10, 25, -4])
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_trainer_epoch_e_yields_stream_positions_from_offset_plus_e_n(offset, epoch):
    n = 10
    sampler = StreamSampler(n, SEED, offset)
    sampler.set_epoch(epoch)
    got = list(sampler)
    assert len(got) == n
    start = offset + epoch * n
    expected = [stream(p, n) if p >= 0 else None for p in range(start, start + n)]
    assert [g for g, e in zip(got, expected) if e is not None] == [e for e in expected if e is not None]
    assert all(g == 0 for g, e in zip(got, expected) if e is None)  # placeholders, only ever skipped


def test_the_seed_decides_the_order():
    assert list(StreamSampler(50, 1, 0)) != list(StreamSampler(50, 2, 0))
    assert list(StreamSampler(50, 1, 0)) == list(StreamSampler(50, 1, 0))


def trainer_resumes(sampler: StreamSampler, g: Geometry, n: int, step: int) -> list[int]:
    """What a single-process Trainer trains next when it resumes at `step`: it sets the epoch to
    step // steps_per_epoch and skips step % steps_per_epoch optimizer steps of batches of that epoch."""
    spe = g.steps_per_epoch(n)
    sampler.set_epoch(step // spe)
    return list(sampler)[(step % spe) * g.global_batch:]


@pytest.mark.parametrize("old, new", [
    (Geometry(4, 1, 1), Geometry(6, 1, 1)),
    (Geometry(8, 1, 1), Geometry(2, 1, 1)),
    (Geometry(3, 2, 1), Geometry(5, 1, 1)),
])
@pytest.mark.parametrize("step", [0, 7, 13, 15, 30])
def test_after_a_batch_change_trainers_skip_lands_on_the_first_untrained_sample(old, new, step):
    n = 50
    trained = old.position(step, n)  # the stopped run trained stream positions [0, trained)
    offset = new.offset_for(step, n, trained)
    resumed = trainer_resumes(StreamSampler(n, SEED, offset), new, n, step)
    expected = [stream(p, n) for p in range(trained, trained + len(resumed))]
    assert resumed and resumed == expected


def test_an_unchanged_resume_is_trainers_own_skip():
    g, n, step = Geometry(4, 1, 1), 50, 17  # 13 steps per epoch: epoch 1, 4 steps into it
    resumed = trainer_resumes(StreamSampler(n, SEED, 0), g, n, step)
    theirs = SeedableRandomSampler(range(n), data_seed=SEED)
    theirs.set_epoch(1)
    assert resumed == list(theirs)[4 * 4:]
    assert g.position(step, n) == n + 4 * 4
