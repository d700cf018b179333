"""Adopting a checkpoint written by a plain Transformers script (no manifest): check what can be checked,
then commit it with a manifest marked `adopted`, so that from here on it is an ordinary gptresume checkpoint.

Adoption writes only inside the adopting run's own output_dir: a checkpoint already there is committed where it is;
one anywhere else (another user's run, a read-only share, a download) is copied into RUN_DIR/checkpoint-N and the
copy committed, the original left byte for byte as it was. A re-run of the same adoption finds the committed copy
and resumes it.

What cannot be checked: the config and data it was trained with. So exactness is promised only for the steps
trained after the adoption; the warning says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from gptresume.resume.changes import OPTIMIZER_KEYS, SCHEDULE_KEYS, train_value
from gptresume.checkpoint import (
    CHECKPOINT_PREFIX,
    MANIFEST_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
    CheckpointInfo,
    file_digest,
    verify_checkpoint,
    write_manifest,
)
from gptresume.checkpoint.files import WEIGHT_FILES
from gptresume.durable import fsync_dir, hash_file
from gptresume.errors import UsageError
from gptresume.rundir import remove_path

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


def adoption(source: Path, run_dir: Path, need_tokenizer: bool = True, check=None) -> tuple[CheckpointInfo, bool]:
    """(checkpoint, adopt) for `--resume SOURCE --adopt` into `run_dir`: SOURCE checked by `adoptable_checkpoint`
    (adopt: True), or, when an earlier adoption already committed its copy as RUN_DIR/checkpoint-N, that copy
    (verified, holding SOURCE's very files; adopt: False). Any other RUN_DIR/checkpoint-N in the way is refused:
    adoption never replaces a directory of the run. Writes nothing."""
    where = f"--resume {source} --adopt"
    if not source.is_dir():
        raise UsageError(f"{where}: no such directory")
    step = _load_json(source / TRAINER_STATE_NAME, where).get("global_step")
    target = adopted_path(run_dir, step) if isinstance(step, int) and not isinstance(step, bool) else None
    if target is None or _same_directory(source, target) or not (target.exists() or target.is_symlink()):
        return adoptable_checkpoint(source, need_tokenizer, where, check), True
    copy = verify_checkpoint(target)
    if copy.valid and copy.manifest.get("adopted") is True and _same_files(copy, source):
        if check is not None:
            copy.faults.extend(check(copy))
        if copy.valid:
            log.info("%s was adopted before as %s: resuming that copy", source, target)
            return copy, False
    raise UsageError(f"{where}: {target} already exists and is not a committed copy of {source}; adoption never "
                     "replaces a directory of the run. Resume the run's own checkpoints with --resume auto, or adopt "
                     "into a new train.output_dir")


def adopted_path(run_dir: Path, step: int) -> Path:
    """Where an adopted checkpoint of `step` is committed: the run's own checkpoint-N."""
    return Path(run_dir) / f"{CHECKPOINT_PREFIX}{step}"


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _same_files(copy: CheckpointInfo, source: Path) -> bool:
    """`source` holds exactly the files `copy`'s manifest lists (the manifest aside), with the same bytes."""
    listed = copy.manifest["files"]
    found = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    if found != set(listed):
        return False
    for rel, meta in listed.items():
        name, expected = file_digest(meta)
        if hash_file(source / rel, digest=name) != (meta["bytes"], expected):
            return False
    return True


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
    """Commit the adopted checkpoint inside the run directory, with a manifest marked adopted: where it is when it
    is the run's own checkpoint-N, else as a copy there (files copied into a temporary directory, committed, then
    renamed into place: a kill leaves no half copy a resume would take), the original never written. `info` then
    describes the committed checkpoint. `spec`: the RunSpec of the run taking it over (its config and data
    fingerprint are recorded from here on)."""
    source = info.path
    epoch = _load_json(source / TRAINER_STATE_NAME, "adopt").get("epoch")
    epoch = epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None
    target = adopted_path(spec.run_dir, info.step)
    in_place = _same_directory(source, target)
    where = target if in_place else spec.run_dir / f".{target.name}.tmp-adopt"  # rundir.TEMPORARIES: ".*.tmp-*"
    if not in_place:
        if where.exists():
            remove_path(where)
        _copy_files(source, where)
    info.manifest = write_manifest(where, step=info.step, epoch=epoch, config=spec.config,
                                   config_fingerprint=spec.fingerprint(), data_fingerprint=spec.data_fingerprint,
                                   world_size=world_size, adopted=True, train_samples=spec.train_samples)
    if not in_place:
        os.rename(where, target)
        fsync_dir(spec.run_dir)
        info.path = target
    log.warning("Adopted %s (step %d)%s with a manifest marked adopted. Its config and data are unknown, so "
                "exactness cannot be promised for the steps before the adoption; resumes from here on are exact.",
                source, info.step, "" if in_place else f" as {target} (a copy: {source} is left as it is)")


def _copy_files(source: Path, dest: Path) -> None:
    """Every file under `source` (but a manifest) into the new directory `dest`, contents only: the copies are the
    run's own (writable, deletable by retention) whatever the permissions of the original."""
    dest.mkdir(parents=True)
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source)
        if p.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        elif p.is_file() and p.name != MANIFEST_NAME:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest / rel)


def _load_json(path: Path, where: str) -> dict:
    if not path.is_file():
        raise UsageError(f"{where}: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise UsageError(f"{where}: {path.name} is unreadable ({e})") from None
