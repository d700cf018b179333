"""Adopting a checkpoint written by a plain Transformers script (no manifest): check what can be checked,
then commit it with a manifest marked `adopted`, so that from here on it is an ordinary gptresume checkpoint.

What cannot be checked: the config and data it was trained with. So exactness is promised only for the steps
trained after the adoption; the warning says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gptresume.resume.changes import OPTIMIZER_KEYS, SCHEDULE_KEYS, train_value
from gptresume.checkpoint import (
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
    CheckpointInfo,
    write_manifest,
)
from gptresume.checkpoint.files import WEIGHT_FILES
from gptresume.errors import UsageError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def adoptable_checkpoint(path: Path, need_tokenizer: bool = True, where: str | None = None) -> CheckpointInfo:
    """Check a manifest-less checkpoint: trainer state, weights, model config, tokenizer (the CLI loads it from
    there) and optimizer and scheduler state all load. Writes nothing."""
    where = where or f"--resume {path} --adopt"
    if not path.is_dir():
        raise UsageError(f"{where}: no such directory")
    state = _load_json(path / TRAINER_STATE_NAME, where)
    step = state.get("global_step")
    if not isinstance(step, int) or step < 1:
        raise UsageError(f"{where}: {TRAINER_STATE_NAME} has no global_step >= 1; this is not a Trainer checkpoint")
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise UsageError(f"{where}: no model weights (expected one of {', '.join(WEIGHT_FILES)})")
    _load_json(path / "config.json", where)
    _check_weights(path / weights[0], where)
    if need_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{where}: no tokenizer files in the checkpoint; save the tokenizer it was trained with "
                         "into it (tokenizer.save_pretrained(path)), or pass processing_class=tokenizer to Trainer")
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME):
        if (path / name).is_file():
            _check_torch_file(path / name, where)
    return CheckpointInfo(path=path, step=step, manifest=None)


# TrainingArguments fields compared with the adopting config: those that change what the next steps train.
COMPARED_FIELDS = (*(k.removeprefix("train.") for k in OPTIMIZER_KEYS), *(k.removeprefix("train.") for k in SCHEDULE_KEYS),
                   "per_device_train_batch_size", "gradient_accumulation_steps", "seed")


def trained_with(path: Path, config: dict) -> tuple[dict, dict] | None:
    """(old, new) train settings for the fields the plain script's training_args.bin records, so an adoption
    goes through the same change policy as any resume. None when the file is absent or unreadable."""
    import dataclasses

    import torch
    from transformers import TrainingArguments

    args_file = path / TRAINING_ARGS_NAME
    if not args_file.is_file():
        return None
    try:  # a pickle: loaded only on --adopt, for a checkpoint the user names as their own
        saved = torch.load(args_file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 (any unreadable pickle: fall back to no comparison, with a warning)
        log.warning("%s: could not read %s (%s): the settings it was trained with are unknown", path,
                    TRAINING_ARGS_NAME, e)
        return None
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    old, new = {}, {}
    for name in COMPARED_FIELDS:
        if name in names and hasattr(saved, name):
            value = getattr(saved, name)
            old[name] = getattr(value, "value", value)
            new[name] = train_value(config, name)
    return {"train": old}, {"train": new}


def adopt(info: CheckpointInfo, spec, world_size: int) -> None:
    """Commit the adopted checkpoint: hash every file, write a manifest marked adopted. `spec`: the RunSpec of
    the run taking it over (its config and data fingerprint are recorded from here on)."""
    state = _load_json(info.path / TRAINER_STATE_NAME, "adopt")
    info.manifest = write_manifest(info.path, step=info.step, epoch=state.get("epoch"), config=spec.config,
                                   config_fingerprint=spec.fingerprint(), data_fingerprint=spec.data_fingerprint,
                                   world_size=world_size, adopted=True, train_samples=spec.train_samples)
    log.warning("Adopted %s (step %d) with a manifest marked adopted. Its config and data are unknown, so "
                "exactness cannot be promised for the steps before the adoption; resumes from here on are exact.",
                info.path, info.step)


def _load_json(path: Path, where: str) -> dict:
    if not path.is_file():
        raise UsageError(f"{where}: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise UsageError(f"{where}: {path.name} is unreadable ({e})") from None


def _check_weights(path: Path, where: str) -> None:
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError("no tensors")
        elif path.suffix == ".bin":
            _check_torch_file(path, where)
    except UsageError:
        raise
    except Exception as e:  # any failure to parse the file is a bad checkpoint, not a bug
        raise UsageError(f"{where}: {path.name} does not load ({type(e).__name__}: {e})") from None


def _check_torch_file(path: Path, where: str) -> None:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise UsageError(f"{where}: {path.name} does not load ({type(e).__name__}: {str(e)[:200]})") from None
