"""The data position, counted in samples, so a resume can continue where the last run stopped even when the
batch geometry or the data changed.

The training samples form one stream: data epoch e is a seeded permutation of the n training blocks, exactly
the permutation Trainer's sampler draws (accelerate's SeedableRandomSampler: `torch.randperm(n)` from a
generator seeded with seed + e). Stream position p is sample `perm(p // n)[p % n]`.

An unchanged resume needs none of this: Trainer skips `step % steps_per_epoch` optimizer steps of batches.
After a change of global batch or data, Trainer's step-based skip would land elsewhere, so `StreamSampler`
shifts the stream by a constant `offset` chosen so that Trainer's own skip lands exactly on the first sample
the stopped run had not trained on. The offset is saved in every later checkpoint (`RESUME_STATE_NAME`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """How many samples each optimizer step takes, and how Trainer groups them into epochs."""

    per_device: int
    accumulation: int
    world_size: int
    drop_last: bool = False

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.world_size

    def steps_per_epoch(self, n: int) -> int:
        """Trainer's num_update_steps_per_epoch (transformers 5.24, drop_last off, accelerate's even batches)."""
        if self.drop_last:  # whole batches only, and whole sets of one batch per process
            batches = (n // self.per_device) // self.world_size
        else:  # accelerate pads the last set of batches with samples from the epoch's start
            batches = math.ceil(math.ceil(n / self.per_device) / self.world_size)
        return max(1, math.ceil(batches / self.accumulation))

    def position(self, step: int, n: int, offset: int = 0) -> int:
        """Stream position (samples consumed since the start of the run) after `step` optimizer steps."""
        spe = self.steps_per_epoch(n)
        return offset + (step // spe) * n + (step % spe) * self.global_batch

    def offset_for(self, step: int, n: int, position: int) -> int:
        """The stream offset that makes Trainer's step-based skip at `step` land on `position`."""
        return position - self.position(step, n)


def map_position(position: int, old_n: int, new_n: int) -> int:
    """Same data epoch and the same offset within it in a dataset of another size (clipped to its end)."""
    epoch, within = divmod(position, old_n)
    return epoch * new_n + min(within, new_n)


class StreamSampler:
    """Trainer epoch E yields stream positions [offset + E*n, offset + (E+1)*n): n samples like any epoch, so
    Trainer's step and epoch arithmetic is unchanged, but the samples are the stream's from `offset` on."""

    def __init__(self, n: int, seed: int, offset: int):
        self.n, self.seed, self.offset = n, seed, offset
        self.epoch = 0
        self._perms: dict[int, list[int]] = {}
        self.observer = None
        """Called with (stream position, sample index) for every sample yielded (the sample ledger, ledger/)."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def _perm(self, data_epoch: int) -> list[int]:
        import torch

        if data_epoch not in self._perms:
            self._perms.clear()  # at most one epoch cached: a permutation of a large corpus is large
            gen = torch.Generator()
            gen.manual_seed(self.seed + data_epoch)
            self._perms[data_epoch] = torch.randperm(self.n, generator=gen).tolist()
        return self._perms[data_epoch]

    def __iter__(self):
        start = self.offset + self.epoch * self.n
        for p in range(start, start + self.n):
            data_epoch, i = divmod(p, self.n)
            # Positions before the stream's start exist only to be skipped by Trainer, never trained on.
            index = self._perm(data_epoch)[i] if p >= 0 else 0
            if self.observer is not None:
                self.observer(p, index)
            yield index
        self.epoch += 1
