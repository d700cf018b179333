"""gptresume: train and fine-tune GPT-2 (and other causal LMs) with Hugging Face Transformers, stop at any instant,
resume exactly.

For a script that already builds its own `transformers.Trainer`, one line changes::

    import gptresume

    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    gptresume.train(trainer)            # instead of trainer.train()

Run the script again after any stop (Ctrl-C, SIGTERM, a crash, kill -9) and it continues from the newest verified
checkpoint in `args.output_dir`, bit for bit. `gptresume train CONFIG` (the CLI) runs this same function on a
Trainer it builds from a YAML config.

Importing this package is cheap: torch and transformers are imported when `train` is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from typing import TYPE_CHECKING

from gptresume.errors import EXIT_STOPPED, ResumeRefused, UsageError

if TYPE_CHECKING:
    from gptresume.training.outcome import Outcome

from gptresume.version import __version__
__all__ = ["train", "ResumeRefused", "UsageError", "EXIT_STOPPED", "__version__"]


def train(trainer, resume: str | PathLike = "auto", *, allow_change: Iterable[str] = (), allow_partial: bool = False,
          keep_last: int | None | str = "save_total_limit", keep_best: bool | None = None,
          every_minutes: float | None = None, async_save: bool = False, stop_at_step: int | None = None,
          exit_on_stop: bool = True, data_fingerprint: str | None = None, stop_exit_code: int | None = None,
          remote: str | None = None, remote_options: dict | None = None, remote_keep_last: int | None = None,
          remote_wait_seconds: float = 120.0) -> Outcome:
    """Train `trainer` (a `transformers.Trainer` or subclass, with its own model, data, collator and callbacks)
    with exact, crash-safe stop and resume. Use it instead of `trainer.train()`.

    What it adds:
      - Resumes from the newest *verified* checkpoint in `args.output_dir` (each skipped one is named with the
        faulty file), through `trainer.train(resume_from_checkpoint=...)`.
      - Commits every save: files hashed and fsynced, then `manifest.json` written last; retention deletes old
        checkpoints only after a newer one committed (`save_total_limit` is honoured that way).
      - SIGTERM, SIGINT, SIGUSR1: the current step finishes, a checkpoint is committed, then the process exits
        with code 75 (`exit_on_stop=False` returns instead). A second Ctrl-C aborts at once.
      - The `TrainingArguments` and model config recorded in the checkpoint are compared with the current ones:
        a change that would make the resumed run differ is refused (`ResumeRefused`, whose message is the table
        of differences) unless named in `allow_change`, and then applied correctly (a new learning rate is used
        by the very next step; a changed schedule is re-planned; a changed batch continues by samples).
      - The training data's content fingerprint is recorded and checked (`allow_change=["data"]` accepts new data).
      - `history.jsonl` and `metrics.jsonl` in `output_dir`, so `gptresume status|verify|plot|eval|export` work
        on the script's run directory.

    Args:
        trainer: the Trainer to run. Its `args.output_dir` is the run directory.
        resume: "auto" (newest valid checkpoint, else a fresh start), "never" (refuse if checkpoints exist),
            "must" (refuse if there is none), or a checkpoint directory. With "auto",
            `TrainingArguments.resume_from_checkpoint` is honoured until the run has committed checkpoints of its own.
        allow_change: fields (`"learning_rate"`, `"max_steps"`, `"train.per_device_train_batch_size"`, ...) or
            classes (`"optimizer"`, `"schedule"`, `"batch"`, `"data"`) whose change to accept and apply on resume.
        allow_partial: resume from a checkpoint that lacks optimizer, scheduler or RNG state.
        keep_last: committed checkpoints to keep; default `args.save_total_limit` (None keeps all).
        keep_best: also keep the checkpoint with the lowest eval loss; default `args.load_best_model_at_end`.
        every_minutes: also save when this many minutes passed since the last save.
        async_save: write checkpoints in a background thread (single process; training pauses only for a copy).
        stop_at_step: commit a checkpoint at this step and stop as if preempted (for chunked runs and tests).
        exit_on_stop: after a committed stop, raise `SystemExit(75)` (the default, for scripts and schedulers);
            False returns the outcome instead (notebooks).
        data_fingerprint: the identity of the training data, when you have a cheaper one you trust than the
            content hash computed by default (one pass over the dataset at start-up).
        stop_exit_code: the code of `SystemExit` after a committed stop (and `Outcome.exit_code`): default
            $GPTRESUME_STOP_EXIT_CODE, else 75; e.g. 143 where a scheduler restarts only codes >= 128 (Kubeflow).
        remote: an fsspec URL (`s3://bucket/runs/x`) every committed checkpoint is uploaded to in the background
            and resumed from when `output_dir` has no usable checkpoint (see the README, "Object storage").
        remote_options: fsspec options of its file system (e.g. `{"endpoint_url": ...}`); credentials come from
            the environment. remote_keep_last: remote checkpoints kept (None: all). remote_wait_seconds: how long
            the end of training or a stop waits for pending uploads.

    Returns:
        An `Outcome`: `status` ("complete", "stopped", "already complete"), `step`, `checkpoint` (the newest
        committed one), `resumed_from`, `reason`, `train_output` (what `trainer.train()` returned).

    Raises:
        ResumeRefused: the config or data differs from the checkpoint's (message: the table of differences and
            the `allow_change` names that would accept them).
        UsageError: anything else wrong with the input (no valid checkpoint with resume="must", a run directory in
            use by another process, an IterableDataset, ...). Both carry `exit_code` 2, as the CLI exits.

    Example:
        >>> trainer = Trainer(model=model, args=TrainingArguments("out", max_steps=300, save_steps=50), ...)
        >>> outcome = gptresume.train(trainer, allow_change=["learning_rate"])
        >>> outcome.status, outcome.step
        ('complete', 300)
    """
    from gptresume.training.api import train_protected

    return train_protected(trainer, resume=resume, allow_change=list(allow_change), allow_partial=allow_partial,
                           keep_last=keep_last, keep_best=keep_best, every_minutes=every_minutes,
                           async_save=async_save, stop_at_step=stop_at_step, exit_on_stop=exit_on_stop,
                           data_fingerprint=data_fingerprint, stop_exit_code=stop_exit_code, remote=remote,
                           remote_options=remote_options, remote_keep_last=remote_keep_last,
                           remote_wait_seconds=remote_wait_seconds)
