"""`gptresume resume RUN_DIR`: continue a run from the config it recorded (RUN_DIR/config.yaml: the resolved config of
its latest start, every `--set` applied), so that continuing never means retyping the `--set`s of the command that
started it. `--set` and `--allow-change` make deliberate changes on top of it, as with `train`.

The work is `gptresume train RUN_DIR/config.yaml` (cli/train.py `run`, with --resume auto): one start sequence.
A run that a Python script trained (`gptresume.train(trainer)`) has no config.yaml: re-running that script resumes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptresume.cli import train
from gptresume.errors import UsageError

EXAMPLES = """\
examples:
  gptresume resume runs/demo                         # continue exactly where it stopped
  gptresume resume runs/demo --set train.max_steps=600 --allow-change max_steps      # train longer
  gptresume resume runs/demo --set train.learning_rate=1e-4 --allow-change learning_rate
  gptresume resume runs/demo --dry-run               # what it would do; writes nothing
  gptresume resume runs/demo --print-config          # the recorded config, as it would be resumed

exit codes: as `gptresume train`: 0 done (or already complete), 2 bad input or refused resume (nothing changed),
            75 stopped after committing a checkpoint (run the same command again)."""


def add_parser(subparsers):
    p = subparsers.add_parser("resume", help="continue a run from its recorded config (RUN_DIR/config.yaml)",
                              description="Continue a run started with `gptresume train`, from the config it "
                                          "recorded: the --set options of the command that started it need not be "
                                          "typed again. The newest valid checkpoint is resumed.",
                              epilog=EXAMPLES)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the run's train.output_dir)")
    train.add_run_options(p)
    return p


def run(args) -> int:
    config = recorded_config(Path(args.run_dir), args.overrides)
    return train.run(argparse.Namespace(**vars(args), config=str(config), resume="auto", overwrite=False,
                                        adopt=False))


def recorded_config(run_dir: Path, overrides: list[str]) -> Path:
    """RUN_DIR/config.yaml, once it is known to describe RUN_DIR from here: its train.output_dir (relative paths in
    it are relative to where the run was started) must be RUN_DIR, unless `--set train.output_dir=` says otherwise
    (a moved run). Reads YAML only (no torch, no transformers)."""
    from gptresume.checkpoint import list_checkpoints
    from gptresume.config import read_config
    from gptresume.rundir import CONFIG_NAME

    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such directory; give the run directory of a run started with "
                         "`gptresume train` (its train.output_dir)")
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        if list_checkpoints(run_dir):
            raise UsageError(f"{run_dir} has checkpoints but no {CONFIG_NAME}: a Python script trained it "
                             "(gptresume.train(trainer)). Run that script again to resume: it continues from the "
                             "newest verified checkpoint in its output_dir")
        raise UsageError(f"{run_dir} holds no {CONFIG_NAME}: not a run started with `gptresume train`; start one "
                         "with `gptresume train CONFIG`")
    raw = read_config(config, overrides)
    output_dir = (raw.get("train") or {}).get("output_dir") if isinstance(raw.get("train"), dict) else None
    if isinstance(output_dir, str) and _resolved(Path(output_dir)) != _resolved(run_dir):
        raise UsageError(f"{config}: train.output_dir is {output_dir!r}, which from here is not {run_dir}. Paths in "
                         "the recorded config are relative to the directory the run was started in: run `gptresume "
                         f"resume` from there, or, if the run was moved, add --set train.output_dir={run_dir}")
    return config


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()
