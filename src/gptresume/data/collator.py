"""The collator for packed blocks (labels = inputs, first label masked) and the optional per-batch sample log."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np


IGNORE_INDEX = -100


class PackedBlockCollator:
    """Stack fixed-length blocks; labels are the inputs (the model shifts them), EOS separators included.

    The first label of each block is -100. The model never predicts it (labels are shifted), so the loss is
    unchanged, but Trainer counts `num_items_in_batch` as the labels != -100: for GPT-2 (no `loss_type`,
    transformers 5.24) it would otherwise count every position and report the per-token loss times
    (block_size - 1) / block_size. With the mask, train and eval losses are the true mean per predicted token.
    `DataCollatorForLanguageModeling` is not used on purpose: with pad = eos it masks every EOS to -100.
    """

    def __call__(self, examples):
        import torch

        # rows are lists (datasets) or int64 arrays (memory-mapped blocks): one array, then one tensor
        ids = torch.from_numpy(np.array([ex["input_ids"] for ex in examples], dtype=np.int64))
        if SAMPLE_LOG_ENV in os.environ:
            log_batch_samples(ids, os.environ[SAMPLE_LOG_ENV])
        labels = ids.clone()
        labels[:, 0] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


# For tests and debugging data order: with GPTRESUME_SAMPLE_LOG=PATH every collated batch appends one JSON line
# (the sample_id of each row) to PATH.rankN. Identifies samples by content, so it works for any sampler.
SAMPLE_LOG_ENV = "GPTRESUME_SAMPLE_LOG"


def sample_id(row) -> str:
    return hashlib.sha256(np.asarray(row, dtype=np.int32).tobytes()).hexdigest()[:12]


def log_batch_samples(ids, path: str) -> None:
    rank = os.environ.get("RANK", "0")
    with open(f"{path}.rank{rank}", "a") as f:
        f.write(json.dumps([sample_id(row) for row in ids.numpy()]) + "\n")
