"""`gptresume train CONFIG --dry-run`: every check a start or resume makes before it writes, and nothing written.

It runs the same phases as `run_training` up to the point where the run directory would be touched: the config
(already validated by the caller), the resume plan (newest verified checkpoint, its state test-loaded, the config
compared with the checkpoint's: a refusal is the same exit 2 and table), the tokenizer, the packed data (from
RUN_DIR/data-cache when present, else packed in a staging directory removed afterwards), the model and its context,
and the data and eval-cadence checks against the checkpoint. Then it prints what `train` would do. The run lock is
not taken (nothing is written, so a training process that holds it is not disturbed); the run directory stays
byte-identical, and is not created when it does not exist (tests/e2e/test_first_hour.py checks both).
"""

from __future__ import annotations

import logging

from gptresume.config import Config
from gptresume.errors import EXIT_OK, UsageError
from gptresume.resume.changes import format_changes
from gptresume.resume.plan import RunSpec, check_inputs, loads, plan_resume

log = logging.getLogger(__name__)


def dry_run(config: Config, resume: str = "auto", overwrite: bool = False, allow_partial: bool = False,
            allow_change: list[str] | None = None, adopt_checkpoint: bool = False, calibrate: bool = False) -> int:
    from gptresume.modeling import has_dropout
    from gptresume.training import distributed
    from gptresume.training.run import _load_inputs

    if distributed.world_size() > 1:
        raise UsageError("--dry-run checks in one process; run it without torchrun or accelerate launch")
    spec = RunSpec(config.run_dir, config.to_dict(), tokenizer_from_checkpoint=True,
                   resolve=config.resolve_versioned_defaults)
    plan = plan_resume(spec, resume, overwrite, allow_partial, list(allow_change or []), adopt_checkpoint, 1,
                       check=loads(spec))
    if plan.is_complete(spec):
        print(f"Dry run: {config.run_dir} is complete at step {plan.step} ({plan.checkpoint.path.name}); `train` "
              "would train nothing. Nothing was written.")
        return EXIT_OK
    inputs = _load_inputs(config, plan)
    data, model = inputs["data"], inputs["model"]
    try:
        spec.data_fingerprint = data.fingerprint
        check_inputs(plan, data.fingerprint, has_dropout(model))
        print(summary(config, plan, data, model))
        print_cost_plan(config, plan, data, model, inputs["tokenizer"], calibrate)
    finally:
        data.discard()  # blocks packed for the check were staged in data-cache/: a dry run leaves nothing
    return EXIT_OK


def summary(config: Config, plan, data, model) -> str:
    """What `train` would do, in a few lines."""
    params = sum(p.numel() for p in model.parameters())
    n_val = 0 if data.validation is None else len(data.validation)
    lines = [f"Dry run of {config.run_dir}: config, data, model and resume plan check out; nothing was written.",
             f"  model:  {type(model).__name__}, {params:,} parameters",
             (f"  data:   {len(data.train):,} training and {n_val:,} validation blocks of {data.block_size} tokens "
              if hasattr(data.train, "__len__") else f"  data:   streamed in blocks of {data.block_size} tokens ")
             + f"(data fingerprint {data.fingerprint})"]
    if plan.checkpoint is None:
        what = "start a new run"
        if plan.overwrite:
            what += " after deleting the run's checkpoints, metrics and final model (--overwrite)"
        max_steps = config.train.get("max_steps", -1)
        length = f"to step {max_steps}" if max_steps and max_steps > 0 else "for train.num_train_epochs epochs"
        lines.append(f"  train would: {what}, {length}")
    else:
        lines.append(f"  train would: resume from {plan.checkpoint.path} (step {plan.step})"
                     + (", adopting it (--adopt)" if plan.adopt else ""))
    for skipped in plan.skipped:
        lines.append(f"  skipped {skipped.name}: {'; '.join(skipped.faults)}")
    if plan.changes:
        lines.append("  config changes since the checkpoint:\n" + format_changes(plan.changes))
    return "\n".join(lines)


def print_cost_plan(config: Config, plan, data, model, tokenizer, calibrate: bool = False) -> None:
    """The cost plan (training/cost_plan.py): from a calibration in a temporary directory when asked, else from the
    run's own measured steps when it has some."""
    from gptresume.training.cost_estimate import calibrate as measure, plan_for

    rates = measure(config, model, tokenizer, data) if calibrate else None
    print("\n".join(plan_for(config, plan, data, model, tokenizer, rates).lines()))
