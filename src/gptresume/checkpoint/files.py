"""Every file and directory name inside a checkpoint, and how checkpoints of a run are found.

One place for the names Trainer writes (checked in gptresume/compat.py) and the ones gptresume adds.
"""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST_NAME = "manifest.json"
CHECKPOINT_PREFIX = "checkpoint-"  # Trainer's PREFIX_CHECKPOINT_DIR and its dash (checked in compat.py)
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
# a committed checkpoint moved out of a new save's way
SET_ASIDE_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)\.replaced-")
# trained after a rollback point: kept, never deleted
ROLLED_BACK_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)\.rolled-back-")
PROTECTED_NAME = "protected.json"  # RUN_DIR file: checkpoints retention must keep (health: the last good one)
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
RNG_STATE_PATTERN = re.compile(r"^rng_state(_\d+)?\.pth$")
RESUME_STATE_NAME = "gptresume_state.json"  # schedule re-plan and data stream offset, when a resume changed them
TRAINING_ARGS_NAME = "training_args.bin"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# What peft's save_pretrained writes for a LoRA model (peft 0.21): a LoRA run's checkpoints, its final/ and
# adapter exports hold these instead of the model's weights.
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_WEIGHT_NAMES = (ADAPTER_WEIGHTS_NAME, "adapter_model.bin")

# Sharded trainers keep optimizer state elsewhere (transformers 5.24, accelerate 1.15): FSDP writes optimizer.bin
# (full state dict) or optimizer_0/ (sharded); DeepSpeed keeps optimizer and its own scheduler in global_stepN/.
SHARDED_OPTIMIZER_RE = re.compile(r"^(optimizer\.bin|optimizer_\d+|global_step\d+)$")
DEEPSPEED_STATE_RE = re.compile(r"^global_step\d+$")


def checkpoint_name(step: int | str) -> str:
    """The directory name of the checkpoint of optimizer step `step` (`checkpoint-N`, as Trainer names it)."""
    return f"{CHECKPOINT_PREFIX}{step}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` directories of a run, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]

