"""The blocks each evaluation reads: `eval_batches` global batches of blocks, evenly spaced through the validation
split, the same ones every time.

Why bounded: the split of a real corpus is tens of thousands of blocks, and Trainer evaluates all of them at every
eval step (issue 26: 94,112 blocks, 20 minutes per save, for 150 MB of text). Why fixed: every evaluation reads the
same blocks, so eval losses compare across a run and across its resumes, and choosing them draws from no random
generator, so evaluating stays training-neutral. Why evenly spaced rather than the first ones: the split's blocks
are in corpus order, and a prefix would evaluate only the corpus's first files.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from gptresume.data.blocks import BlockDataset


def evaluation_blocks(eval_batches: int | None, global_eval_batch: int) -> int | None:
    """Blocks per evaluation: `eval_batches` batches of `global_eval_batch` blocks (per-device eval batch x
    processes); None: the whole split."""
    if eval_batches is None:
        return None
    return int(eval_batches) * max(1, int(global_eval_batch))


def spaced_positions(total: int, count: int) -> np.ndarray:
    """`count` distinct positions in [0, total), evenly spaced, the first and the last included, ascending."""
    if count >= total:
        return np.arange(total)
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    return (np.arange(count, dtype=np.int64) * (total - 1)) // (count - 1)


def subset(validation, count: int | None):
    """`count` blocks of a validation dataset, evenly spaced (all of them when it holds fewer, or `count` is None),
    as a dataset of the same kind: a BlockDataset (memory-mapped, nothing read), a `datasets.Dataset` (a cache the
    in-memory packing wrote), a list of blocks (a streamed source's held-out set), else a torch Subset."""
    if validation is None or count is None or count >= len(validation):
        return validation
    positions = spaced_positions(len(validation), count)
    if isinstance(validation, BlockDataset):
        split = validation.split
        numbers = positions if split.indices is None else np.asarray(split.indices)[positions]
        return BlockDataset(replace(split, indices=numbers))
    if hasattr(validation, "select"):
        return validation.select(positions.tolist())
    if isinstance(validation, list):
        return [validation[i] for i in positions]
    from torch.utils.data import Subset

    return Subset(validation, positions.tolist())


def evaluation_set(validation, eval_batches: int | None, global_eval_batch: int):
    """What Trainer evaluates on: data.eval_batches global batches of the validation split (all of it for None)."""
    return subset(validation, evaluation_blocks(eval_batches, global_eval_batch))
