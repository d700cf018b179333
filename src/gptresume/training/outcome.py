"""What a protected run ended with: its status, step, newest checkpoint and exit code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptresume.errors import EXIT_OK, EXIT_STOPPED, EXIT_UNHEALTHY


@dataclass
class Outcome:
    """What a protected run ended with."""

    status: str
    """"complete" (trained to the end), "stopped" (a signal or stop_at_step: a checkpoint was committed),
    "already complete" (the newest checkpoint had reached max_steps; nothing was trained), "rollback" (a NaN or a
    spike: `checkpoint` is the one to resume from, recorded in history.jsonl) or "unhealthy" (a NaN or a spike
    stopped the run; `checkpoint` is the newest good one, `reason` the message)."""
    step: int
    """The global step training ended at."""
    checkpoint: Path | None
    """The newest committed checkpoint: the one a re-run resumes from."""
    resumed_from: Path | None = None
    """The checkpoint this run resumed from (None for a fresh start)."""
    reason: str | None = None
    """Why it stopped (SIGTERM, SIGINT, SIGUSR1, stop_at_step N)."""
    train_output: object = None
    """What `trainer.train()` returned (a `transformers.trainer_utils.TrainOutput`), when it ran."""
    stop_code: int = EXIT_STOPPED
    """The exit code of a committed stop (Options.stop_exit_code)."""

    @property
    def stopped(self) -> bool:
        return self.status == "stopped"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this outcome: 75 (or Options.stop_exit_code) after a committed stop (or a
        rollback a re-run continues), 1 after a health stop, else 0."""
        if self.status == "unhealthy":
            return EXIT_UNHEALTHY
        return self.stop_code if self.stopped or self.status == "rollback" else EXIT_OK


# ---------------------------------------------------------------- the result of a finished run, on every re-run


def train_output_record(output) -> dict | None:
    """What history.jsonl's "complete" line records of `trainer.train()`'s TrainOutput (JSON-safe)."""
    if output is None:
        return None
    metrics = {k: v for k, v in (output.metrics or {}).items() if isinstance(v, (int, float, str, type(None)))}
    return {"global_step": int(output.global_step), "training_loss": float(output.training_loss), "metrics": metrics}


def recorded_train_output(run_dir: Path, checkpoint: Path, config: dict):
    """A `transformers.trainer_utils.TrainOutput` for a run that already reached max_steps, from its books: so a
    script's `gptresume.train(trainer).train_output.metrics` works on every re-run (issue 25).

    The "complete" line of history.jsonl for that step holds what `trainer.train()` returned when the run
    finished: returned as it was (`train_loss` and the speeds of that last session, as Trainer counts them). When
    there is none (killed between the last commit and that line, or a run of an older gptresume) the metrics are
    rebuilt over the whole run: `train_loss` the mean per-step loss of metrics.jsonl, `train_runtime` the training
    time it records (saves and evaluations excluded), the speeds from those, `total_flos` and `epoch` from the
    checkpoint's trainer_state.json."""
    from transformers.trainer_utils import TrainOutput

    from gptresume.checkpoint.manifest import read_manifest, read_trainer_state
    from gptresume.rundir import read_history, read_metrics

    state = read_trainer_state(checkpoint)
    step = int(state.get("global_step") or 0)
    for e in reversed(read_history(run_dir)):
        if e.get("event") == "complete" and e.get("step") == step and isinstance(e.get("train_output"), dict):
            rec = e["train_output"]
            return TrainOutput(int(rec.get("global_step", step)), float(rec.get("training_loss", 0.0)),
                               dict(rec.get("metrics") or {}))
    rows = [r for r in read_metrics(run_dir) if "loss" in r and isinstance(r.get("step"), int) and r["step"] <= step]
    if not rows:  # no metrics.jsonl (a foreign run): the checkpoint's own log
        rows = [r for r in state.get("log_history", []) if "loss" in r and "step" in r]
    weighted, counted, previous = 0.0, 0, 0
    for r in sorted(rows, key=lambda r: r["step"]):  # a logged loss is the mean over the steps since the last one
        n = r["step"] - previous
        if n > 0 and isinstance(r["loss"], (int, float)):
            weighted, counted, previous = weighted + r["loss"] * n, counted + n, r["step"]
    loss = weighted / counted if counted else 0.0
    runtime = sum(float(r.get("train_s") or 0.0) for r in rows)
    manifest, _ = read_manifest(checkpoint)
    world_size = int((manifest or {}).get("world_size") or 1)
    from gptresume.resume.changes import global_batch

    metrics = {"train_runtime": round(runtime, 4)}
    if runtime > 0:
        metrics["train_samples_per_second"] = round(step * global_batch(config, world_size) / runtime, 3)
        metrics["train_steps_per_second"] = round(step / runtime, 3)
    metrics.update(total_flos=state.get("total_flos", 0), train_loss=loss)
    if state.get("epoch") is not None:
        metrics["epoch"] = state["epoch"]
    return TrainOutput(step, loss, metrics)
