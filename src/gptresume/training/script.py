"""What a script's own Trainer says about its run: the settings a checkpoint records (so a resume can compare
them), the identity of its data, and the resume mode its `TrainingArguments` asked for.

The CLI describes its runs from its YAML config; everything here is for `gptresume.train(trainer)`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gptresume.checkpoint.files import MANIFEST_NAME
from gptresume.checkpoint.manifest import newest_valid
from gptresume.config.hf_fields import ENVIRONMENT_FIELDS, json_value
from gptresume.errors import UsageError
from gptresume.resume.plan import RESUME_MODES, RunSpec

log = logging.getLogger(__name__)

# Model config fields that name or version the model, or change what it returns, without changing training.
MODEL_NEUTRAL_FIELDS = frozenset({"transformers_version", "_name_or_path", "architectures", "use_cache",
                                  "output_attentions", "output_hidden_states", "return_dict"})


def training_args_record(args) -> dict:
    """Every `TrainingArguments` field the run trains with (defaults included; not those of the machine or the launch,
    config/hf_fields.py ENVIRONMENT_FIELDS), in its stable JSON form (enums as their values, tuples as lists), so the
    checkpoint says what the run really used and a resume's change table shows real values on both sides.

    Checkpoints written before recorded only the fields that differed from their declared defaults; a resume reads a
    field absent from a record as the default of the Transformers release that wrote it (resume/effective.py), so
    they resume without a change, and so does a newer Transformers that adds a field."""
    return {k: json_value(v) for k, v in args.to_dict().items() if k not in ENVIRONMENT_FIELDS}


def model_record(model) -> dict:
    """The model's config fields that differ from its class defaults (architecture, dropout, vocabulary)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_diff_dict"):
        return {}
    return {k: v for k, v in config.to_diff_dict().items() if k not in MODEL_NEUTRAL_FIELDS}


def spec_for_trainer(trainer, data_fingerprint: str | None, keep_last: int | None, keep_best: bool) -> RunSpec:
    """The RunSpec of a script's Trainer: its arguments, its model's config and its training data."""
    from gptresume.data.fingerprint import dataset_fingerprint

    dataset = trainer.train_dataset
    if dataset is None:
        raise UsageError("the Trainer has no train_dataset; pass train_dataset= to Trainer(...)")
    config = {"train": training_args_record(trainer.args), "model": model_record(trainer.model),
              "checkpoint": {"keep_last": keep_last, "keep_best": keep_best}}
    fingerprint = data_fingerprint or dataset_fingerprint(dataset)
    shapes = {name: tuple(t.shape) for name, t in trainer.model.state_dict().items()}  # what a resume loads into
    return RunSpec(Path(trainer.args.output_dir), config, fingerprint, len(dataset), model_shapes=shapes)


def resume_mode(resume, args) -> tuple[str, bool]:
    """(mode, adopt) for `gptresume.train(trainer, resume=...)`.

    `TrainingArguments(resume_from_checkpoint=PATH)` is never read by `Trainer.train()` (training silently
    starts at step 0); here it is honoured while the run has no committed checkpoint of its own: PATH is resumed
    (verified, or adopted when a plain Trainer wrote it). Once the run has committed checkpoints, re-running the
    same script resumes the newest of them, as a restart after preemption must."""
    resume = str(resume) if isinstance(resume, Path) else resume
    if resume is True:
        resume = "must"
    if resume in (False, None):
        resume = "never"
    if not isinstance(resume, str) or not resume:
        raise UsageError(f"resume={resume!r}: give 'auto', 'never', 'must' or a checkpoint directory")
    requested = getattr(args, "resume_from_checkpoint", None)
    if resume != "auto" or not requested:
        return resume, resume not in RESUME_MODES and not (Path(resume) / MANIFEST_NAME).is_file()
    newest, _ = newest_valid(Path(args.output_dir))
    if newest is not None:
        log.info("TrainingArguments.resume_from_checkpoint=%s: the run already has committed checkpoints; resuming "
                 "the newest, %s", requested, newest.path)
        return "auto", False
    log.info("TrainingArguments.resume_from_checkpoint=%s: resuming it (Trainer.train() alone would ignore it)",
             requested)
    return str(requested), not (Path(requested) / MANIFEST_NAME).is_file()
