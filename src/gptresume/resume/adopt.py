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
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
    CheckpointInfo,
    write_manifest,
)
from gptresume.checkpoint.files import WEIGHT_FILES
from gptresume.errors import UsageError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def adoptable_checkpoint(path: Path, need_tokenizer: bool = True, where: str | None = None,
                         check=None) -> CheckpointInfo:
    """Check a manifest-less checkpoint: trainer state, weights, model config, tokenizer (the CLI loads it from
    there), and that optimizer, scheduler, RNG and scaler state and training_args.bin load without running code
    (`check(info)`, the resume's load check, adds the weights' fit to the model). Every file that fails is named
    in one refusal. Writes nothing."""
    where = where or f"--resume {path} --adopt"
    if not path.is_dir():
        raise UsageError(f"{where}: no such directory")
    state = _load_json(path / TRAINER_STATE_NAME, where)
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise UsageError(f"{where}: {TRAINER_STATE_NAME} has no global_step >= 1; this is not a Trainer checkpoint")
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise UsageError(f"{where}: no model weights (expected one of {', '.join(WEIGHT_FILES)})")
    _load_json(path / "config.json", where)
    if need_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{where}: no tokenizer files in the checkpoint; save the tokenizer it was trained with "
                         "into it (tokenizer.save_pretrained(path)), or pass processing_class=tokenizer to Trainer")
    info = CheckpointInfo(path=path, step=step, manifest=None)
    from gptresume.checkpoint.loadable import load_faults

    faults = check(info) if check is not None else load_faults(path)
    if (path / TRAINING_ARGS_NAME).is_file():
        faults += [why for why in [read_training_args(path / TRAINING_ARGS_NAME)[1]] if why]
    if faults:
        raise UsageError(f"{where}: the checkpoint does not load, so it cannot be adopted:\n"
                         + "\n".join(f"  - {f}" for f in faults))
    return info


# TrainingArguments fields compared with the adopting config: those that change what the next steps train.
COMPARED_FIELDS = (*(k.removeprefix("train.") for k in OPTIMIZER_KEYS),
                   *(k.removeprefix("train.") for k in SCHEDULE_KEYS),
                   "per_device_train_batch_size", "gradient_accumulation_steps", "seed")


def trained_with(path: Path, config: dict) -> tuple[dict, dict] | None:
    """(old, new) train settings for the fields the plain script's training_args.bin records, so an adoption
    goes through the same change policy as any resume. None (with a warning) when the file is absent; a file that
    does not read as TrainingArguments without running code is refused with its name."""
    args_file = path / TRAINING_ARGS_NAME
    if not args_file.is_file():
        log.warning("%s: no %s: the settings it was trained with are unknown and not compared", path,
                    TRAINING_ARGS_NAME)
        return None
    saved, why = read_training_args(args_file)
    if why:
        raise UsageError(f"--resume {path} --adopt: {why}")
    old, new = {}, {}
    for name in COMPARED_FIELDS:
        if name in saved:
            old[name] = saved[name]
            new[name] = train_value(config, name)
    return {"train": old}, {"train": new}


class _Recorded:
    """Stands in for every class a training_args.bin names (TrainingArguments, its enums and dataclasses,
    accelerate's state): it records what the pickle hands it and runs nothing, so reading the file never
    executes code from it, not even a Transformers constructor."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        for part in state if isinstance(state, tuple) else (state,):
            if isinstance(part, dict):
                self.__dict__.update(part)


# The modules whose names a TrainingArguments pickle holds; each such name is read as a `_Recorded`.
RECORDED_MODULES = ("transformers.", "accelerate.")


def read_training_args(path: Path) -> tuple[dict, str | None]:
    """(field -> value, None) for the fields a training_args.bin records (enums as their values), read with a
    weights-only unpickler in which every Transformers/accelerate class is a `_Recorded`; or ({}, why) naming
    the file and what in it is refused (any other global: a pickle that would run code)."""
    import torch

    name = path.name
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # not a torch.save file (or torn)
        return {}, f"{name} is not a readable torch file ({type(e).__name__}: {str(e)[:200]})"
    foreign = [g for g in needed if not g.startswith(RECORDED_MODULES)]
    if foreign:
        return {}, (f"{name} refers to {', '.join(foreign[:5])}, which a TrainingArguments pickle never holds: "
                    "it would run code when unpickled, so it is not read. Delete it from the checkpoint to adopt "
                    "without comparing its settings")
    try:
        with torch.serialization.safe_globals([(_Recorded, g) for g in needed]):
            saved = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # refused or malformed: named, never run
        return {}, f"{name} does not load weights-only ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    if not isinstance(saved, _Recorded):
        return {}, f"{name} holds a {type(saved).__name__}, not TrainingArguments"
    fields = {}
    for key, value in vars(saved).items():
        if key == "args":
            continue
        fields[key] = value.args[0] if isinstance(value, _Recorded) and len(value.args) == 1 else value
    return fields, None


def adopt(info: CheckpointInfo, spec, world_size: int) -> None:
    """Commit the adopted checkpoint: hash every file, write a manifest marked adopted. `spec`: the RunSpec of
    the run taking it over (its config and data fingerprint are recorded from here on)."""
    epoch = _load_json(info.path / TRAINER_STATE_NAME, "adopt").get("epoch")
    epoch = epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None
    info.manifest = write_manifest(info.path, step=info.step, epoch=epoch, config=spec.config,
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
