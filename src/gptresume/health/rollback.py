"""Rollback after a non-finite loss or a confirmed spike: which checkpoint to continue from, which later ones to
move aside, how many samples of the data stream to skip, and the history.jsonl record that makes it repeatable.

The record is the mechanism: a resume from checkpoint C looks up the newest rollback to C in history.jsonl and
skips its samples (resume/plan.py `data_stream` shifts the stream by them, as it does for a changed batch). So the
rollback in the same process, a kill right after it, and a later plain `--resume auto` all continue the same way;
the checkpoints written after it carry the stream offset like any changed resume.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, list_checkpoints
from gptresume.checkpoint.manifest import CheckpointInfo, verify_checkpoint
from gptresume.rundir import ROLLBACK_EVENT, START_EVENT, UNHEALTHY_EVENT  # noqa: F401 (UNHEALTHY_EVENT: re-exported)


def since_last_start(history: list[dict]) -> list[dict]:
    """The history of the current run: what follows its newest fresh start."""
    starts = [i for i, e in enumerate(history) if e.get("event") == START_EVENT]
    return history[starts[-1]:] if starts else history


def rollbacks_so_far(history: list[dict]) -> int:
    return sum(1 for e in since_last_start(history) if e.get("event") == ROLLBACK_EVENT)


def pending_skip(history: list[dict], step: int) -> int:
    """Samples a resume from the checkpoint of `step` skips: those of the newest rollback to that step (0 if none).
    A rollback's `skip_samples` already includes what an earlier rollback to the same checkpoint skipped. A later
    rollback to an earlier step moved that checkpoint aside: a checkpoint of the same step written since is
    another one, and the older record does not apply to it."""
    for e in reversed(since_last_start(history)):
        if e.get("event") != ROLLBACK_EVENT or not isinstance(e.get("to_step"), int):
            continue
        if e["to_step"] == step:
            return int(e.get("skip_samples") or 0)
        if e["to_step"] < step:
            return 0
    return 0


def rollback_target(run_dir: Path, event_step: int, rollback_steps: int, check=None) -> CheckpointInfo | None:
    """The newest checkpoint at least `rollback_steps` before `event_step` that verifies (every file re-hashed) and
    passes `check` (its state loads); None when there is none."""
    for path in reversed(list_checkpoints(run_dir)):
        step = int(CHECKPOINT_RE.match(path.name).group(1))
        if step > event_step - rollback_steps:
            continue
        info = verify_checkpoint(path)
        if info.valid and check is not None:
            info.faults.extend(check(info))
        if info.valid:
            return info
    return None


def newest_good(run_dir: Path, before_step: int) -> Path | None:
    """The newest verified checkpoint before `before_step`: the one a NaN stop names and protects."""
    for path in reversed(list_checkpoints(run_dir)):
        if int(CHECKPOINT_RE.match(path.name).group(1)) < before_step and verify_checkpoint(path).valid:
            return path
    return None


def set_aside_after(run_dir: Path, step: int) -> list[Path]:
    """Move every checkpoint-N with N > step to `checkpoint-N.rolled-back-<time>-<pid>`: out of discovery's and
    retention's sight (never deleted), still there to inspect."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    moved = []
    for path in list_checkpoints(run_dir):
        if int(CHECKPOINT_RE.match(path.name).group(1)) > step:
            target = path.with_name(f"{path.name}.rolled-back-{stamp}")
            os.replace(path, target)
            moved.append(target)
    return moved


@dataclass(frozen=True)
class Rollback:
    """One rollback, as history.jsonl records it."""

    step: int
    """The step the problem was detected at."""
    reason: str
    checkpoint: Path
    to_step: int
    skip_batches: int
    skip_samples: int
    """Samples skipped after the checkpoint's own position, including an earlier rollback's to the same one."""
    set_aside: tuple[str, ...]
    number: int

    def record(self) -> dict:
        return {"step": self.step, "reason": self.reason, "checkpoint": str(self.checkpoint),
                "to_step": self.to_step, "skip_batches": self.skip_batches, "skip_samples": self.skip_samples,
                "set_aside": list(self.set_aside), "rollback": self.number}
