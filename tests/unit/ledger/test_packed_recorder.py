"""The packed-data ledger's count model against accelerate's real batching, in-process: a StreamSampler read through
torch's BatchSampler and accelerate's BatchSamplerShard for each rank (what each process's DataLoader draws), steps
cut as Trainer cuts them (gradient_accumulation_steps batches per rank, the epoch's last step shorter). For 1-3
processes, with and without dataloader_drop_last, with accumulation, across epochs and from a resume mid-epoch,
process 0's recorder names exactly each step's samples, repeats included."""

import math

import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from gptresume.ledger.check import check
from gptresume.ledger.packed import PackedRecorder, trained_length
from gptresume.resume.position import Geometry, StreamSampler


def trainer_steps(n, seed, offset, g: Geometry, epochs, first_step=0, recorder=None, restart=False):
    """{global step: sorted samples of all ranks} of `epochs` Trainer epochs from `first_step`, read as Trainer and
    accelerate read them; process 0's sampler is the one the recorder observes."""
    samplers = [StreamSampler(n, seed, offset) for _ in range(g.world_size)]
    if recorder is not None:
        samplers[0] = recorder.sampler
    spe = g.steps_per_epoch(n)
    steps = {}
    lost = first_step % spe if restart else 0  # train.ignore_data_skip: the resumed epoch is read from its start
    for epoch in range(first_step // spe, first_step // spe + epochs):
        per_rank = []
        for rank, sampler in enumerate(samplers):
            sampler.set_epoch(epoch)
            batches = BatchSampler(sampler, g.per_device, g.drop_last)
            if g.world_size > 1:
                batches = BatchSamplerShard(batches, g.world_size, rank)
            per_rank.append(list(batches))
        assert math.ceil(len(per_rank[0]) / g.accumulation) == spe  # Geometry agrees with accelerate
        for u in range(spe):
            step = epoch * spe + u + 1 + lost
            if step <= first_step:
                continue
            steps[step] = sorted(i for rank in per_rank for b in rank[u * g.accumulation:(u + 1) * g.accumulation]
                                 for i in b)
            if recorder is not None:
                recorder.step_done(step)
    return steps


@pytest.mark.parametrize("world, per_device, accumulation, drop_last, n", [
    (1, 4, 1, False, 37), (1, 3, 2, False, 37), (1, 4, 1, True, 37),
    (2, 2, 1, False, 37), (2, 2, 2, False, 35), (2, 3, 1, True, 37), (3, 2, 2, False, 40), (2, 4, 1, False, 5),
])
def test_each_step_names_the_samples_accelerate_gives_it(world, per_device, accumulation, drop_last, n):
    g = Geometry(per_device, accumulation, world, drop_last)
    for offset, first_step in ((0, 0), (0, g.steps_per_epoch(n) + 2), (-7, 3)):
        sampler = StreamSampler(n, 11, offset)
        recorder = PackedRecorder(sampler, g, first_step)
        expected = trainer_steps(n, 11, offset, g, 3, first_step, recorder)
        segment = recorder.take()
        got = {int(s): sorted(segment.step_ids(i).tolist()) for i, s in enumerate(segment.steps)}
        assert got == expected, (offset, first_step)
        assert segment.meta["unobserved"] == 0
        padded = int(segment.padded.sum())
        spe = g.steps_per_epoch(n)
        epochs_covered = len({(int(s) - 1) // spe for s in segment.steps if int(s) % spe == 0})
        assert padded == max(0, trained_length(g, n) - n) * epochs_covered
        assert len(recorder.epochs_yielded) <= 2  # the current Trainer epoch and the one before


def test_a_whole_run_of_exact_epochs_checks_out_and_padding_does_not():
    g = Geometry(4, 1, 2, False)
    for n, ok in ((40, True), (38, False)):
        recorder = PackedRecorder(StreamSampler(n, 3, 0), g, 0, meta={"data_fingerprint": "f"})
        trainer_steps(n, 3, 0, g, 2, 0, recorder)
        verdict = check([recorder.take()])
        assert verdict.ok is ok, verdict.violations
        if not ok:
            assert "padding" in verdict.violations[0] and "dataloader_drop_last: true" in verdict.violations[0]


def test_ignore_data_skip_restarts_the_epoch_and_its_repeats_are_recorded():
    g = Geometry(2, 1, 2, True)
    n, first = 20, 3  # 5 steps per epoch: steps 4-8 read the first epoch again from its start
    whole = PackedRecorder(StreamSampler(n, 5, 0), g, 0)
    trainer_steps(n, 5, 0, g, 1, 0, whole)
    resumed = PackedRecorder(StreamSampler(n, 5, 0), g, first, restarts_epoch=True)
    expected = trainer_steps(n, 5, 0, g, 2, first, resumed, restart=True)
    segment = resumed.take()
    assert {int(s): sorted(segment.step_ids(i).tolist()) for i, s in enumerate(segment.steps)} == expected
    head = whole.take()
    head.steps, head.counts, head.ids = head.steps[:first], head.counts[:first], head.ids[:first * 4]
    head.epochs, head.padded = head.epochs[:first * 4], head.padded[:first * 4]
    head.dropped_ids = head.dropped_epochs = None
    verdict = check([head, segment])
    assert "12 sample(s) of an epoch recorded more than once" in verdict.violations[0], verdict.violations
