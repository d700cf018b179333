"""wandb and MLflow continuous across resumes, as TensorBoard is (training/tensorboard.py).

With `report_to: wandb` or `mlflow`, Trainer adds WandbCallback / MLflowCallback, and each process opens a new
tracker run: a resumed run became a second run, and the steps the interrupted process logged after its last
checkpoint stayed. Here they are replaced by subclasses (training/trainer.py) that

- keep the tracker's run id in RUN_DIR/trackers.json and re-open that run on resume (wandb `init(id=...,
  resume="allow")`; MLflow `MLFLOW_RUN_ID`), so one run holds the whole training;
- on an exact resume, skip the steps past the checkpoint that the run already holds (an interrupted process
  logged them; the resumed process computes the same values, bit for bit), so each step is logged once. MLflow's
  store is asked which steps it holds; wandb offline cannot be asked, so trackers.json records the last step
  handed to wandb;
- on a resume with changes (--allow-change), log the new values and mark the run with the resume step and the
  changes (wandb summary / MLflow tag `gptresume.resumed_with_changes_at_step_N`); neither tracker can delete
  the interrupted process's values for those steps.

A fresh start (no checkpoint) opens a new tracker run. `--overwrite` removes trackers.json with the run's books.
"""

from __future__ import annotations

from pathlib import Path

from gptresume.training.trainer import TrackerResume, continued_tracker_classes


def tracker_resume(plan) -> TrackerResume:
    """From the resume plan: its step, and whether it applies changes that alter training (free ones do not)."""
    altering = [c for c in (plan.changes if plan else []) if c.kind != "free"]
    changes = "; ".join(f"{c.key}: {c.old!r} -> {c.new!r}" for c in altering)
    return TrackerResume(plan.step if plan else 0, exact=not altering and not getattr(plan, "adopt", False),
                         changes=changes)


def use_continued_trackers(trainer, run_dir: Path, resume: TrackerResume) -> list[str]:
    """Swap Trainer's WandbCallback / MLflowCallback (present when report_to names them) for the continued ones;
    returns the names swapped."""
    from transformers.integrations import MLflowCallback, WandbCallback

    wandb_cls, mlflow_cls = continued_tracker_classes()
    swapped = []
    for base, cls, name in ((WandbCallback, wandb_cls, "wandb"), (MLflowCallback, mlflow_cls, "mlflow")):
        existing = [cb for cb in trainer.callback_handler.callbacks if type(cb) is base]
        if not existing:
            continue
        for cb in existing:
            trainer.remove_callback(cb)
        trainer.add_callback(cls(Path(run_dir), resume))
        swapped.append(name)
    return swapped
