"""wandb and MLflow continuous across resumes, as TensorBoard is (training/tensorboard.py).

With `report_to: wandb` or `mlflow`, Trainer adds WandbCallback / MLflowCallback, and each process opens a new
tracker run: a resumed run became a second run, and the steps the interrupted process logged after its last
checkpoint stayed. Here they are replaced by subclasses that

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

Both subclasses rely on behaviour the callbacks document (WandbCallback uses a `wandb.run` created before its setup;
MLflowCallback re-attaches to MLFLOW_RUN_ID and logs at most MLFLOW_MAX_LOG_PARAMS parameters) and on private
details listed in compat.py under this module: setup runs from on_train_begin, and MLflow metric names are
sanitised with Trainer's regex before logging. wandb and mlflow themselves are imported only when a run uses them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from transformers.integrations import MLflowCallback, WandbCallback

from gptresume.resume.changes import FREE
from gptresume.rundir import read_trackers, write_tracker

log = logging.getLogger(__name__)

MLFLOW_UNSAFE = re.compile(r"[^0-9A-Za-z_\-\.\ :/]")
"""What MLflowCallback.on_log replaces with "_" in a metric name (transformers 5.24; compat.py checks its source)."""


class TrackerResume:
    """What a tracker callback needs to know about the resume: the step, whether it is exact (no change that alters
    training: then the steps the tracker already holds are the ones this process would log again), and the
    changes applied otherwise (marked on the tracker run)."""

    def __init__(self, step: int, exact: bool = True, changes: str = ""):
        self.step, self.exact, self.changes = step, exact, changes


class ContinuedWandbCallback(WandbCallback):
    """WandbCallback that opens (first start) or re-opens (resume) one wandb run per RUN_DIR, and skips the
    steps the run already holds past the resumed checkpoint (logged by the interrupted process)."""

    def __init__(self, run_dir: Path, resume: TrackerResume):
        super().__init__()
        self.run_dir, self.resume = Path(run_dir), resume
        self.skip_through = 0
        self.logged_through = 0
        self.opened = False  # this callback opened the wandb run (else the script did: it closes it)

    def setup(self, args, state, model, **kwargs):
        import wandb

        if state.is_world_process_zero and wandb.run is None:
            record = read_trackers(self.run_dir).get("wandb") if self.resume.step > 0 else None
            init = {"project": os.getenv("WANDB_PROJECT", "huggingface")}
            if args.run_name is not None and args.run_name != args.output_dir:
                init["name"] = args.run_name
            if isinstance(record, dict) and isinstance(record.get("run_id"), str):
                wandb.init(id=record["run_id"], resume="allow", **init)
                held = max(int(record.get("logged_through") or 0), int(getattr(wandb.run, "step", 0) or 0) - 1)
                self.logged_through = held
                if self.resume.exact:
                    self.skip_through = held
                else:
                    wandb.run.summary[f"gptresume/resumed_with_changes_at_step_{self.resume.step}"] = \
                        self.resume.changes
                log.info("wandb: continuing run %s from step %d%s", wandb.run.id, self.resume.step,
                         f" (steps up to {held} are already logged)" if held > self.resume.step else "")
            else:
                wandb.init(**init)
            self.opened = True
            self._record()
        return super().setup(args, state, model, **kwargs)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if state.global_step <= self.skip_through and state.global_step > self.resume.step:
            return  # the run holds this step already, with the same values (the resume is exact)
        super().on_log(args, state, control, model=model, logs=logs, **kwargs)
        if state.is_world_process_zero and state.global_step > self.logged_through:
            self.logged_through = state.global_step
            self._record()

    def on_train_end(self, args, state, control, **kwargs):
        import wandb

        super().on_train_end(args, state, control, **kwargs)
        if state.is_world_process_zero and wandb.run is not None and self.opened:
            wandb.finish()  # flushed and closed now, not at interpreter exit (which a forked or killed
            self.opened = False  # process may never reach)

    def _record(self) -> None:
        import wandb

        write_tracker(self.run_dir, "wandb", {"run_id": wandb.run.id, "project": wandb.run.project,
                                              "logged_through": self.logged_through})

class ContinuedMLflowCallback(MLflowCallback):
    """MLflowCallback that re-attaches a resumed process to the run it logged to (MLFLOW_RUN_ID), logs the
    parameters once (MLflow refuses a changed parameter value), and skips the metric steps the run already
    holds past the resumed checkpoint."""

    def __init__(self, run_dir: Path, resume: TrackerResume):
        super().__init__()
        self.run_dir, self.resume = Path(run_dir), resume
        self.held: dict[str, int] = {}

    def setup(self, args, state, model):
        import mlflow

        record = read_trackers(self.run_dir).get("mlflow") if self.resume.step > 0 else None
        env = {}
        if state.is_world_process_zero and isinstance(record, dict) and isinstance(record.get("run_id"), str):
            if record.get("tracking_uri") == mlflow.get_tracking_uri():
                env = {"MLFLOW_RUN_ID": record["run_id"], "MLFLOW_MAX_LOG_PARAMS": "0"}
            else:
                log.warning("MLflow: the tracking URI changed (%s -> %s): a new run is started",
                            record.get("tracking_uri"), mlflow.get_tracking_uri())
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            super().setup(args, state, model)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if not state.is_world_process_zero or mlflow.active_run() is None:
            return
        run_id = mlflow.active_run().info.run_id
        if env:
            client = mlflow.MlflowClient()
            for key in client.get_run(run_id).data.metrics:
                self.held[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=0)
            if not self.resume.exact:
                mlflow.set_tag(f"gptresume.resumed_with_changes_at_step_{self.resume.step}",
                               self.resume.changes[:5000])
            log.info("MLflow: continuing run %s from step %d", run_id, self.resume.step)
        write_tracker(self.run_dir, "mlflow", {"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri()})

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        if self.held and self.resume.exact and logs:
            step = state.global_step
            logs = {k: v for k, v in logs.items()
                    if not (self.resume.step < step <= self.held.get(MLFLOW_UNSAFE.sub("_", k), -1))}
            if not logs:
                return  # every value of this step is in the run already (the resume is exact)
        return super().on_log(args, state, control, logs=logs, model=model, **kwargs)


def tracker_resume(plan) -> TrackerResume:
    """From the resume plan: its step, and whether it applies changes that alter training (free ones do not)."""
    altering = [c for c in (plan.changes if plan else []) if c.kind != FREE]
    changes = "; ".join(f"{c.key}: {c.old!r} -> {c.new!r}" for c in altering)
    return TrackerResume(plan.step if plan else 0, exact=not altering and not getattr(plan, "adopt", False),
                         changes=changes)


def use_continued_trackers(trainer, run_dir: Path, resume: TrackerResume) -> list[str]:
    """Swap Trainer's WandbCallback / MLflowCallback (present when report_to names them) for the continued ones;
    returns the names swapped."""
    swapped = []
    for base, cls, name in ((WandbCallback, ContinuedWandbCallback, "wandb"),
                            (MLflowCallback, ContinuedMLflowCallback, "mlflow")):
        existing = [cb for cb in trainer.callback_handler.callbacks if type(cb) is base]
        if not existing:
            continue
        for cb in existing:
            trainer.remove_callback(cb)
        trainer.add_callback(cls(Path(run_dir), resume))
        swapped.append(name)
    return swapped
