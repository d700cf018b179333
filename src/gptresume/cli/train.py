"""`gptresume train CONFIG`: train or resume a run described by a YAML config.

The run lock is taken as soon as the config names the run directory, before transformers or torch is imported:
a second `train` on a busy run is refused in well under a second (the session takes the same, re-entrant, lock
again). The work lives in gptresume/training/run.py.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from gptresume.errors import STOP_EXIT_CODE_ENV, UsageError, resolve_stop_exit_code

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
  torchrun --nproc_per_node 2 -m gptresume train examples/demo.yaml

exit codes: 0 done (or already complete), 2 bad input or refused resume (nothing changed),
            75 stopped by SIGTERM/SIGINT/SIGUSR1 after committing a checkpoint: run the same command again
            (--stop-exit-code N or GPTRESUME_STOP_EXIT_CODE=N reports that stop as N instead)."""


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train or resume a run described by a YAML config",
                              description="Train or resume. By default the newest valid checkpoint in "
                                          "train.output_dir is resumed; otherwise a new run starts.",
                              epilog=EXAMPLES)
    p.add_argument("config", metavar="CONFIG", help="YAML config (see examples/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.learning_rate=1e-4")
    p.add_argument("--resume", default="auto", metavar="auto|never|must|PATH",
                   help="auto (default): newest valid checkpoint, else start fresh; never: start fresh, refuse "
                        "if checkpoints exist; must: fail if there is none; PATH: that checkpoint directory")
    p.add_argument("--overwrite", action="store_true",
                   help="with --resume never: delete the run's checkpoints, metrics and final model first")
    p.add_argument("--allow-partial", action="store_true",
                   help="resume from a checkpoint that lacks optimizer, scheduler or RNG state (the run will "
                        "differ from an uninterrupted one; the warning says how)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="accept a changed field on resume and apply it correctly (repeatable): a field "
                        "(learning_rate, max_steps, per_device_train_batch_size, ...), or a class: optimizer, "
                        "schedule, batch, data. Without it such a change is refused with a table of differences")
    p.add_argument("--adopt", action="store_true",
                   help="with --resume PATH: take over a checkpoint written by a plain Transformers script (no "
                        "manifest) after checking that its files load")
    p.add_argument("--stop-exit-code", type=int, default=None, metavar="N",
                   help=f"exit with N instead of 75 after a committed stop (default: ${STOP_EXIT_CODE_ENV}, else "
                        "75); e.g. 143 for Kubeflow's restartPolicy: ExitCode, which restarts only codes >= 128")
    p.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                   help="save and commit a checkpoint at step N, then exit 75 as if preempted (for splitting a "
                        "run into chunks and for testing resume)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, the data, the model and the resume plan, print what train would do, "
                        "and write nothing (the run directory is left exactly as it is)")
    p.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: time a few training steps, one evaluation batch and one save (in a temporary "
                        "directory) so that the cost plan estimates the wall time")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (with --set applied and gptresume's defaults filled in) as "
                        "YAML, then exit")
    return p


def run(args) -> int:
    if args.overwrite and args.resume != "never":
        raise UsageError("--overwrite only goes with --resume never (it deletes the run's checkpoints)")
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise UsageError("--stop-at-step: must be at least 1")
    stop_exit_code = resolve_stop_exit_code(args.stop_exit_code, "--stop-exit-code")
    if args.calibrate and not args.dry_run:
        raise UsageError("--calibrate goes with --dry-run (it times a few steps before a run; a run measures itself)")
    if args.print_config or args.dry_run:
        return _check_only(args)
    from gptresume.allocator import keep_freed_memory
    from gptresume.logs import quiet_transformers
    from gptresume.training import distributed

    keep_freed_memory()  # faster CPU steps, the same numbers (allocator.py)
    distributed.setup()  # several processes: rank 0 loads and checks the config, every rank gets its verdict
    try:
        with ExitStack() as held:
            if distributed.world_size() > 1:
                config = distributed.on_main(_load_config_and_lock, args.config, args.overrides, held)
            else:  # one process: a plain call (on_main would import torch.distributed to find that out)
                config = _load_config_and_lock(args.config, args.overrides, held)
            quiet_transformers()  # on every rank (rank 0 did it before validating the config)
            from gptresume.training.run import run_training

            return run_training(config, resume=args.resume, overwrite=args.overwrite,
                                stop_at_step=args.stop_at_step, allow_partial=args.allow_partial,
                                allow_change=args.allow_change, adopt_checkpoint=args.adopt,
                                stop_exit_code=stop_exit_code)
    finally:
        if "torch.distributed" in sys.modules:  # else no process group exists (and importing torch takes seconds)
            distributed.teardown()


def _check_only(args) -> int:
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

    return dry_run(config, resume=args.resume, overwrite=args.overwrite, allow_partial=args.allow_partial,
                   allow_change=args.allow_change, adopt_checkpoint=args.adopt, calibrate=args.calibrate)


def _load_config_and_lock(path: str, overrides: list[str], held: ExitStack):
    """Rank 0: read CONFIG and check what needs no transformers; take the run lock if the run directory has one
    (as `Session.lock` does, a run that never held it is locked when first written); then the full validation."""
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
