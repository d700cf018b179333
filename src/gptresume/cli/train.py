"""`gptresume train CONFIG`: train or resume a run described by a YAML config.

The run lock is taken as soon as the config names the run directory, before transformers or torch is imported:
a second `train` on a busy run is refused in well under a second (the start pipeline takes the same, re-entrant,
lock again, before any data is staged). The flags that are options are declared in gptresume/options.py; the work
lives in gptresume/training/run.py.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from gptresume.errors import UsageError
from gptresume.options import Options, add_flags, flag_values

EXAMPLES = """\
examples:
  gptresume train examples/demo.yaml
  gptresume train examples/demo.yaml --set train.max_steps=50 --set model.from_scratch.n_layer=2
  gptresume train examples/demo.yaml --resume must             # fail unless there is a checkpoint
  gptresume train examples/demo.yaml --resume runs/demo/checkpoint-60
  gptresume train examples/demo.yaml --set train.learning_rate=5e-4 --allow-change learning_rate
  gptresume train examples/demo.yaml --set train.max_steps=320 --allow-change max_steps   # train longer
  gptresume train my.yaml --resume old_script_out/checkpoint-500 --adopt  # take over a plain Trainer checkpoint
  gptresume train examples/demo.yaml --dry-run              # check config, data, model, resume; write nothing
  gptresume train examples/demo.yaml --dry-run --calibrate  # ... and time a few steps: the run's cost plan
  gptresume train examples/demo.yaml --print-config         # the resolved config, defaults included
  gptresume resume runs/demo                # continue from its recorded config: no --set to retype
  torchrun --nproc_per_node 2 -m gptresume train examples/demo.yaml

exit codes: 0 done (or already complete), 2 bad input or refused resume (nothing changed),
            75 stopped by SIGTERM/SIGINT/SIGUSR1 after committing a checkpoint, or before training with nothing
            to commit: run the same command again
            (--stop-exit-code N or GPTRESUME_STOP_EXIT_CODE=N reports that stop as N instead)."""


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train or resume a run described by a YAML config",
                              description="Train or resume. By default the newest valid checkpoint in "
                                          "train.output_dir is resumed; otherwise a new run starts.",
                              epilog=EXAMPLES)
    p.add_argument("config", metavar="CONFIG", help="YAML config (see examples/demo.yaml)")
    add_flags(p, only=TRAIN_ONLY)  # --resume, --overwrite, --adopt: declared in gptresume/options.py
    add_run_options(p)
    return p


# The option flags of `train` alone: `resume` (cli/resume.py) always continues the run it names.
TRAIN_ONLY = ("resume", "overwrite", "adopt")


def add_run_options(p) -> None:
    """The options `train` shares with `resume` (cli/resume.py), which runs `run` below on a recorded config."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.learning_rate=1e-4")
    add_flags(p, skip=TRAIN_ONLY)  # --allow-change, --allow-partial, --stop-at-step, ...: gptresume/options.py
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, the data, the model and the resume plan, print what train would do, "
                        "and write nothing (the run directory is left exactly as it is)")
    p.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: time a few training steps, one evaluation batch and one save (in a temporary "
                        "directory) so that the cost plan estimates the wall time")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (with --set applied and gptresume's defaults filled in) as "
                        "YAML, then exit")


def run(args) -> int:
    flags = flag_values(args)
    problems = Options(**flags).problems()  # the flags alone, before the config is read
    if problems:
        raise UsageError("\n".join(problems))
    if args.calibrate and not args.dry_run:
        raise UsageError("--calibrate goes with --dry-run (it times a few steps before a run; a run measures itself)")
    if args.print_config or args.dry_run:
        return _check_only(args, flags)
    from gptresume.allocator import keep_freed_memory
    from gptresume.logs import quiet_transformers
    from gptresume.training import distributed

    from gptresume.stopping import StopSignal, prompt_stops

    keep_freed_memory()  # faster CPU steps, the same numbers (allocator.py)
    distributed.setup()  # several processes: rank 0 loads and checks the config, every rank gets its verdict
    try:
        with prompt_stops(), ExitStack() as held:  # a stop before training ends at once (stopping.py)
            if distributed.world_size() > 1:
                config = distributed.on_main(_load_config_and_lock, args.config, args.overrides, held)
            else:  # one process: a plain call (on_main would import torch.distributed to find that out)
                config = _load_config_and_lock(args.config, args.overrides, held)
            quiet_transformers()  # on every rank (rank 0 did it before validating the config)
            from gptresume.training.run import run_training

            return run_training(config, Options.of(config.checkpoint, config.health, **flags))
    except StopSignal as stop:  # reading, packing, loading or checking: nothing of this start was committed
        print(f"Stopped ({stop.reason}) outside a training step (reading or packing data, loading, checking, "
              "writing final/): nothing was left half-written (a staged data cache is removed). Re-run the same "
              "command to start, or to continue from the newest committed checkpoint.", file=sys.stderr, flush=True)
        return Options(**flags).stop_code()
    finally:
        if "torch.distributed" in sys.modules:  # else no process group exists (and importing torch takes seconds)
            distributed.teardown()


def _check_only(args, flags: dict) -> int:
    """--print-config and --dry-run: the config resolved (and, for --dry-run, everything else checked) without
    the run lock, signal handlers or any write."""
    from gptresume.config import load_config
    from gptresume.logs import quiet_transformers

    quiet_transformers()
    config = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(f"# {args.config}, resolved: --set applied, gptresume's defaults filled in; train: holds the "
              "TrainingArguments fields given or defaulted by gptresume (Transformers' own defaults apply to the "
              "rest)")
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        if not args.dry_run:
            return 0
    from gptresume.training.dry_run import dry_run

    return dry_run(config, Options.of(config.checkpoint, config.health, **flags), calibrate=args.calibrate)


def _load_config_and_lock(path: str, overrides: list[str], held: ExitStack):
    """Rank 0: read CONFIG and check what needs no transformers; take the run lock at once if the run directory has
    a lock file (a busy run is refused before transformers is imported; a new run is locked first thing by the
    start pipeline, training/start.py `RunClaim`); then the full validation."""
    from gptresume.config import check_without_transformers, config_from_dict, read_config
    from gptresume.logs import quiet_transformers
    from gptresume.rundir import LOCK_NAME, run_lock

    raw = read_config(path, overrides)
    check_without_transformers(raw, source=str(path))
    run_dir = raw["train"]["output_dir"]
    if isinstance(run_dir, str) and (Path(run_dir) / LOCK_NAME).is_file():
        held.enter_context(run_lock(Path(run_dir), announce=False))
    quiet_transformers()  # transformers from here on (TrainingArguments); its known noise out (logs.py)
    return config_from_dict(raw, source=str(path))
