"""gptresume: train and fine-tune GPT-2 (and other causal LMs) with Hugging Face Transformers, stop at any instant,
resume exactly.

For a script that already builds its own `transformers.Trainer`, one line changes::

    import gptresume

    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    gptresume.train(trainer)            # instead of trainer.train()

Run the script again after any stop (Ctrl-C, SIGTERM, a crash, kill -9) and it continues from the newest verified
checkpoint in `args.output_dir`, bit for bit. `gptresume train CONFIG` (the CLI) runs the same start pipeline
(gptresume/training/start.py) and protected session on a Trainer it builds from a YAML config.

Importing this package is cheap: torch and transformers are imported when `train` is called.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

from gptresume.errors import EXIT_STOPPED, ResumeRefused, UsageError
from gptresume.version import __version__

if TYPE_CHECKING:
    from gptresume.training.outcome import Outcome

__all__ = ["train", "Options", "Outcome", "ResumeRefused", "UsageError", "EXIT_STOPPED", "__version__"]


def __getattr__(name: str):
    """`gptresume.Options` and `gptresume.Outcome`, imported when first used (importing gptresume stays cheap)."""
    if name == "Options":
        from gptresume.options import Options

        return Options
    if name == "Outcome":
        from gptresume.training.outcome import Outcome

        return Outcome
    raise AttributeError(f"module 'gptresume' has no attribute {name!r}")


def train(trainer, resume: str | PathLike = "auto", *, exit_on_stop: bool = True, raise_errors: bool = False,
          data_fingerprint: str | None = None, **options) -> Outcome:
    """Train `trainer` (a `transformers.Trainer` or subclass, with its own model, data, collator and callbacks)
    with exact, crash-safe stop and resume. Use it instead of `trainer.train()`.

    What it adds:
      - Resumes from the newest *verified* checkpoint in `args.output_dir` (each skipped one is named with the
        faulty file), through `trainer.train(resume_from_checkpoint=...)`.
      - Commits every save: files hashed and fsynced, then `manifest.json` written last; retention deletes old
        checkpoints only after a newer one committed (`save_total_limit` is honoured that way; 0 or None keeps
        every checkpoint, as in Transformers).
      - SIGTERM, SIGINT, SIGUSR1: the current step finishes, a checkpoint is committed, then the process exits
        with code 75 (`exit_on_stop=False` returns instead). A second Ctrl-C aborts at once.
      - The `TrainingArguments` and model config recorded in the checkpoint are compared with the current ones:
        a change that would make the resumed run differ is refused (the table of differences on stderr, exit 2)
        unless named in `allow_change`, and then applied correctly (a new learning rate is used by the very next
        step; a changed schedule is re-planned; a changed batch continues by samples).
      - The training data's content fingerprint is recorded and checked (`allow_change=["data"]` accepts new data).
      - `history.jsonl` and `metrics.jsonl` in `output_dir`, so `gptresume status|verify|plot|eval|export` work
        on the script's run directory; the lines the CLI prints (resume, changes, each committed checkpoint, the
        stop) go to the "gptresume" logger (shown on stderr when the script configured no logging).
      - A re-run of a finished run trains nothing: `trainer` gets the final checkpoint's model and state, and
        `train_output` holds the result the finished run recorded (global_step, training_loss, metrics).

    Args:
        trainer: the Trainer to run. Its `args.output_dir` is the run directory.
        resume: "auto" (newest valid checkpoint, else a fresh start), "never" (refuse if checkpoints exist),
            "must" (refuse if there is none), or a checkpoint directory. With "auto",
            `TrainingArguments.resume_from_checkpoint` is honoured until the run has committed checkpoints of its own.
        exit_on_stop: after a committed stop (or a health stop), raise `SystemExit` with the CLI's exit code (75,
            or `stop_exit_code`; 1 for a health stop), the default for scripts and schedulers; False returns the
            outcome instead (notebooks).
        raise_errors: raise `gptresume.ResumeRefused` / `gptresume.UsageError` for a refused resume or bad input
            (notebooks, libraries); by default the message goes to stderr and the script exits 2, as the CLI does.
        data_fingerprint: the identity of the training data, when you have a cheaper one you trust than the
            content hash computed by default (one pass over the dataset at start-up).
        **options: any field of `gptresume.Options` (the README's table lists them; every name and value is checked,
            an unknown one gets the closest): `allow_change` (a list of fields such as "learning_rate",
            "max_steps", or classes "optimizer", "schedule", "batch", "data"), `allow_partial`, `keep_last`
            (default: `args.save_total_limit`), `keep_best` (implied by `args.load_best_model_at_end`),
            `every_minutes`, `every="auto"`, `async_save`, `stop_at_step`, `stop_exit_code`, `remote`,
            `remote_options`, `remote_keep_last`, `remote_wait_seconds`, `health`, `overwrite`, `ledger` (record
            which samples each step trained; `gptresume ledger OUTPUT_DIR` checks each was trained exactly once;
            needs Trainer's default random sampler).

    Returns:
        An `Outcome`: `status` ("complete", "stopped", "already complete", "rollback", "unhealthy"), `step`,
        `checkpoint` (the newest committed one), `resumed_from`, `reason`, `train_output` (a
        `transformers.trainer_utils.TrainOutput`: what `trainer.train()` returned, or for "already complete" the
        result the finished run recorded).

    Raises:
        SystemExit: 2 after a refused resume or bad input (unless `raise_errors`), 75 after a committed stop (unless
            `exit_on_stop=False`).
        ResumeRefused, UsageError: with `raise_errors=True`; both carry `exit_code` 2. ResumeRefused's message is
            the table of differences and the `allow_change` names that would accept them.

    Example:
        >>> trainer = Trainer(model=model, args=TrainingArguments("out", max_steps=300, save_steps=50), ...)
        >>> train_result = gptresume.train(trainer, allow_change=["learning_rate"]).train_output
        >>> train_result.global_step
        300
    """
    from gptresume.training.api import train_protected

    return train_protected(trainer, resume, exit_on_stop=exit_on_stop, raise_errors=raise_errors,
                           data_fingerprint=data_fingerprint, **options)
