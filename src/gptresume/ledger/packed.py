"""The ledger of map-style (packed) data: which block indices each optimizer step trained.

The training sampler is gptresume's `StreamSampler` (resume/position.py; with no change to continue, offset 0: the
same seeded permutations Trainer's own sampler draws, checked bitwise in tests/e2e/test_ledger.py). Every process
iterates the whole global order (accelerate's BatchSamplerShard then keeps every world_size-th batch), so process 0
records it alone: the index it yields at each stream position, kept only until that position's step is done.

Attribution is by count, never by time (the DataLoader reads ahead of the trained step): Trainer epoch E yields
positions offset + E*n + q, q = 0..n-1, and its in-epoch step u takes q in [u x global batch, (u+1) x global batch),
cut at the epoch's trained length (Geometry, checked with transformers 5.24 / accelerate 1.15):
- one process: n (the last batch is short);
- several processes, dataloader_drop_last off: accelerate's even_batches fills the last round of batches with the
  epoch's first samples again (q >= n repeats q - n), recorded as `padded`: those samples are trained twice;
- dataloader_drop_last on: whole rounds of batches only; the epoch's tail is recorded as `dropped` (never trained).
A rollback's skipped samples are the stream positions just before the resumed step's first: recorded as `skipped`.
"""

from __future__ import annotations

import math

import numpy as np

from gptresume.ledger.segment import Segment
from gptresume.resume.position import Geometry, StreamSampler


def trained_length(g: Geometry, n: int) -> int:
    """Samples (padding included) a Trainer epoch of n samples trains, all processes together."""
    pd, world = g.per_device, g.world_size
    if g.drop_last:
        return (n // pd // world) * world * pd
    if world > 1:  # even_batches: every process gets whole batches, the last round padded from the epoch's start
        return math.ceil(math.ceil(n / pd) / world) * world * pd
    return n


class PackedRecorder:
    """Process 0's record of the samples of each step, from the sampler's yields (`observe`), taken at each commit."""

    def __init__(self, sampler: StreamSampler, geometry: Geometry, resume_step: int, skip_samples: int = 0,
                 meta: dict | None = None):
        self.sampler, self.g, self.n = sampler, geometry, sampler.n
        self.spe, self.gb = geometry.steps_per_epoch(self.n), geometry.global_batch
        self.length = trained_length(geometry, self.n)
        self.head = min(self.n, geometry.world_size * geometry.per_device) if self.length > self.n else 0
        self.resume_step = self.last_done = resume_step
        epoch, within = divmod(resume_step, self.spe)
        self.keep_from = sampler.offset + epoch * self.n + within * self.gb  # first position of the next step
        self.yields: dict[int, int] = {}
        self.unobserved = 0
        self.meta = {"samples": self.n, "global_batch": self.gb, "per_device": geometry.per_device,
                     "accumulation": geometry.accumulation, "world_size": geometry.world_size,
                     "drop_last": geometry.drop_last, **(meta or {})}
        self._perm_epoch, self._perm = None, None
        self._reset()
        if skip_samples:
            positions = range(self.keep_from - skip_samples, self.keep_from)
            self.skipped = ([self._index_at(p) for p in positions], [p // self.n for p in positions])
        sampler.observer = self.observe

    def _reset(self) -> None:
        self.steps, self.counts, self.ids, self.epochs, self.padded = [], [], [], [], []
        self.dropped, self.dropped_epochs = [], []
        self.skipped = ([], [])

    def observe(self, position: int, index: int) -> None:
        if position < self.keep_from:  # a step already trained (Trainer skips its batches on a resume)
            base = self.sampler.offset + ((position - self.sampler.offset) // self.n) * self.n
            if position - base >= self.head:
                return
        self.yields[position] = index

    def step_done(self, step: int) -> None:
        """Attribute the positions of optimizer step `step` (1-based), and of any step before it not done yet."""
        while self.last_done < step:
            self.last_done += 1
            self._attribute(self.last_done)

    def _attribute(self, step: int) -> None:
        epoch, u = divmod(step - 1, self.spe)
        base = self.sampler.offset + epoch * self.n
        lo, hi = u * self.gb, min((u + 1) * self.gb, self.length)
        for q in range(lo, hi):
            padded = q >= self.n
            p = base + ((q - self.n) % self.n if padded else q)
            self.ids.append(self._yielded(p, keep=padded or q < self.head))
            self.epochs.append(p // self.n)
            self.padded.append(padded)
        self.steps.append(step)
        self.counts.append(max(0, hi - lo))
        if u == self.spe - 1:  # the epoch's last step: its tail (dataloader_drop_last) and its padding sources
            for q in range(self.length, self.n):  # never trained, maybe never yielded (Trainer stops reading)
                self.yields.pop(base + q, None)
                self.dropped.append(self._index_at(base + q))
                self.dropped_epochs.append((base + q) // self.n)
            for q in range(self.head):
                self.yields.pop(base + q, None)

    def _yielded(self, position: int, keep: bool) -> int:
        index = self.yields.get(position) if keep else self.yields.pop(position, None)
        if index is None:  # the sampler never yielded it: the count model and Trainer disagree (reported)
            self.unobserved += 1
            index = self._index_at(position)
        return index

    def _index_at(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if self._perm_epoch != epoch:
            import torch

            gen = torch.Generator()
            gen.manual_seed(self.sampler.seed + epoch)
            self._perm_epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).numpy()
        return int(self._perm[i])

    def take(self) -> Segment | None:
        """The segment of the steps done since the last take (None when there are none), and start a new one."""
        if not self.steps and not self.skipped[0]:
            return None
        meta = dict(self.meta, unobserved=self.unobserved)
        segment = Segment.of(
            "packed", meta, steps=np.asarray(self.steps, np.int64), counts=np.asarray(self.counts, np.int64),
            ids=np.asarray(self.ids, np.int64), epochs=np.asarray(self.epochs, np.int64),
            padded=np.asarray(self.padded, np.bool_),
            skipped_ids=np.asarray(self.skipped[0], np.int64), skipped_epochs=np.asarray(self.skipped[1], np.int64),
            dropped_ids=np.asarray(self.dropped, np.int64), dropped_epochs=np.asarray(self.dropped_epochs, np.int64))
        self.unobserved = 0
        self._reset()
        return segment
