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
    """Process 0's record of the samples of each step, from the sampler's yields (`observe`), taken at each commit.

    Each Trainer epoch's yields go into an array indexed by their position in the epoch (-1: not yielded yet), so a
    step's attribution is an array slice; at most two epochs' arrays are held (the current one and the one before)."""

    def __init__(self, sampler: StreamSampler, geometry: Geometry, resume_step: int, skip_samples: int = 0,
                 meta: dict | None = None, restarts_epoch: bool = False):
        """`restarts_epoch`: train.ignore_data_skip on a resume: Trainer reads the resumed epoch again from its
        start, so the resumed step's samples are the epoch's first (its earlier steps' samples come again)."""
        self.sampler, self.g, self.n = sampler, geometry, sampler.n
        self.spe, self.gb = geometry.steps_per_epoch(self.n), geometry.global_batch
        self.length = trained_length(geometry, self.n)
        self.resume_step = self.last_done = resume_step
        self.origin = resume_step % self.spe if restarts_epoch else 0  # steps the resumed epoch lost to the restart
        epoch, within = divmod(resume_step, self.spe)
        self.keep_from = sampler.offset + epoch * self.n + within * self.gb  # first position of the next step
        self.epochs_yielded: dict[int, np.ndarray] = {}  # Trainer epoch -> index yielded at each position, or -1
        self._base, self._current = None, None
        self.unobserved = 0
        self.meta = {"samples": self.n, "global_batch": self.gb, "per_device": geometry.per_device,
                     "accumulation": geometry.accumulation, "world_size": geometry.world_size,
                     "drop_last": geometry.drop_last, **(meta or {})}
        self._perm_epoch, self._perm = None, None
        self._reset()
        if skip_samples:
            positions = np.arange(self.keep_from - skip_samples, self.keep_from)
            self.skipped = (self._indices_at(positions), positions // self.n)
        sampler.observer = self.observe

    def _reset(self) -> None:
        self.steps, self.counts, self.ids, self.epochs, self.padded = [], [], [], [], []
        self.dropped, self.dropped_epochs = [], []
        self.skipped = (np.zeros(0, np.int64), np.zeros(0, np.int64))

    def observe(self, position: int, index: int) -> None:
        q = position - self._base if self._base is not None else -1
        if not 0 <= q < self.n:  # the first yield of a Trainer epoch
            epoch = (position - self.sampler.offset) // self.n
            self._base = self.sampler.offset + epoch * self.n
            if epoch not in self.epochs_yielded:
                self.epochs_yielded[epoch] = np.full(self.n, -1, np.int64)
                for old in [e for e in self.epochs_yielded if e < epoch - 1]:
                    del self.epochs_yielded[old]
            self._current = self.epochs_yielded[epoch]
            q = position - self._base
        self._current[q] = index

    def step_done(self, step: int) -> None:
        """Attribute the positions of optimizer step `step` (1-based), and of any step before it not done yet."""
        while self.last_done < step:
            self.last_done += 1
            self._attribute(self.last_done)

    def _attribute(self, step: int) -> None:
        epoch, u = divmod(step - 1 - self.origin, self.spe)
        base = self.sampler.offset + epoch * self.n
        q = np.arange(u * self.gb, max(u * self.gb, min((u + 1) * self.gb, self.length)), dtype=np.int64)
        padded = q >= self.n
        source = np.where(padded, (q - self.n) % self.n, q)  # a repeat takes the epoch's first samples again
        yielded = self.epochs_yielded.get(epoch)
        ids = yielded[source] if yielded is not None else np.full(len(q), -1, np.int64)
        missing = ids < 0
        if missing.any():  # the sampler never yielded it: the count model and Trainer disagree (reported)
            self.unobserved += int(missing.sum())
            ids[missing] = self._indices_at(base + source[missing])
        self.steps.append(step)
        self.counts.append(len(q))
        self.ids.append(ids)
        self.epochs.append((base + source) // self.n)
        self.padded.append(padded)
        if u == self.spe - 1:  # the epoch's last step: its tail (dataloader_drop_last) is never trained
            tail = base + np.arange(self.length, self.n, dtype=np.int64)
            self.dropped.append(self._indices_at(tail))
            self.dropped_epochs.append(tail // self.n)
            self.epochs_yielded.pop(epoch - 1, None)

    def _indices_at(self, positions: np.ndarray) -> np.ndarray:
        """The sampler's index at each stream position, computed (for samples never yielded to be trained)."""
        out = np.zeros(len(positions), np.int64)
        for epoch in np.unique(positions // self.n):
            if self._perm_epoch != epoch:
                import torch

                gen = torch.Generator()
                gen.manual_seed(self.sampler.seed + int(epoch))
                self._perm_epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).numpy()
            mask = positions // self.n == epoch
            out[mask] = self._perm[positions[mask] % self.n]
        return out

    def take(self) -> Segment | None:
        """The segment of the steps done since the last take (None when there are none), and start a new one."""
        if not self.steps and not len(self.skipped[0]):
            return None

        def cat(arrays, dtype):
            return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

        meta = dict(self.meta, unobserved=self.unobserved)
        segment = Segment.of(
            "packed", meta, steps=np.asarray(self.steps, np.int64), counts=np.asarray(self.counts, np.int64),
            ids=cat(self.ids, np.int64), epochs=cat(self.epochs, np.int64), padded=cat(self.padded, np.bool_),
            skipped_ids=self.skipped[0], skipped_epochs=self.skipped[1],
            dropped_ids=cat(self.dropped, np.int64), dropped_epochs=cat(self.dropped_epochs, np.int64))
        self.unobserved = 0
        self._reset()
        return segment
