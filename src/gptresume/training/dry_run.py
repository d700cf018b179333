"""`gptresume train CONFIG --dry-run`: the start pipeline of `train` (training/start.py) with writing off, then what
`train` would do.

It is the same function `train` runs, so it cannot disagree with it: the config (already validated by the caller),
the resume plan (newest verified local checkpoint, its state test-loaded; with checkpoint.remote and none usable
locally, the newest valid remote one, downloaded into a temporary directory to be checked; a rollback's data skip;
the config compared with the checkpoint's: a refusal is the same exit 2 and table), the tokenizer, the packed data
(from RUN_DIR/data-cache when present, else packed in a staging directory removed afterwards), the model and its
context, the data and eval-cadence checks, and the streaming checks. The run lock is not taken (nothing is written,
so a training process that holds it is not disturbed); the run directory stays byte-identical, and is not created
when it does not exist (tests/e2e/test_first_hour.py checks both); a remote is listed and read, never written.
"""

from __future__ import annotations

import logging

from gptresume.config import Config
from gptresume.errors import EXIT_OK, UsageError
from gptresume.options import Options
from gptresume.resume.changes import format_changes

log = logging.getLogger(__name__)


def dry_run(config: Config, options: Options, calibrate: bool = False) -> int:
    from gptresume.training import distributed
    from gptresume.training.run import ConfigSource
    from gptresume.training.start import start

    if distributed.world_size() > 1:
        raise UsageError("--dry-run checks in one process; run it without torchrun or accelerate launch")
    with start(ConfigSource(config), options, write=False) as s:
        if s.complete:
            print(f"Dry run: {config.run_dir} is complete at step {s.plan.step} ({s.checkpoint.name}); `train` "
                  f"would train nothing. Nothing was written.")
            return EXIT_OK
        print(summary(config, s))
        print_cost_plan(config, s.plan, s.inputs.data, s.inputs.model, s.inputs.tokenizer, calibrate)
    return EXIT_OK


def summary(config: Config, s) -> str:
    """What `train` would do, in a few lines."""
    plan, data, model = s.plan, s.inputs.data, s.inputs.model
    params = sum(p.numel() for p in model.parameters())
    n_val = 0 if data.validation is None else len(data.validation)
    lines = [f"Dry run of {config.run_dir}: config, data, model and resume plan check out; nothing was written.",
             f"  model:  {type(model).__name__}, {params:,} parameters",
             (f"  data:   {len(data.train):,} training and {n_val:,} validation blocks of {data.block_size} tokens "
              if hasattr(data.train, "__len__") else f"  data:   streamed in blocks of {data.block_size} tokens ")
             + f"(data fingerprint {data.fingerprint})"]
    what = s.action.describe()
    if plan.checkpoint is None:
        max_steps = config.train.get("max_steps", -1)
        what += ", " + (f"to step {max_steps}" if max_steps and max_steps > 0 else "for train.num_train_epochs epochs")
    lines.append(f"  train would: {what}")
    if config.checkpoint.remote and s.action.downloaded_from is None:
        lines.append(f"  remote: {config.checkpoint.remote} listed (train also writes and deletes a probe there)")
    for skipped in plan.skipped:
        lines.append(f"  skipped {skipped.path.name}: {'; '.join(skipped.faults)}")
    if plan.changes:
        lines.append("  config changes since the checkpoint:\n" + format_changes(plan.changes))
    return "\n".join(lines)


def print_cost_plan(config: Config, plan, data, model, tokenizer, calibrate: bool = False) -> None:
    """The cost plan (training/cost_plan.py): from a calibration in a temporary directory when asked, else from the
    run's own measured steps when it has some."""
    from gptresume.training.cost_estimate import calibrate as measure, plan_for

    rates = measure(config, model, tokenizer, data) if calibrate else None
    print("\n".join(plan_for(config, plan, data, model, tokenizer, rates).lines()))
