"""What a run does after a health event (a non-finite loss or gradient, a confirmed loss spike): roll back to a good
checkpoint, or stop naming the newest good one. A pure decision over what the caller read (the event, the health
config, the run's history, the candidate checkpoints); the caller performs it (training/session.py: set aside,
protect, history.jsonl, the remote copy), so every branch here is a unit test without a Trainer or a disk.

The decision is taken in two steps because finding a candidate is I/O (each one is verified and test-loaded):
`rollback_wanted` says whether to look for a rollback target at all (`target_search` says below which step), then
`decide` takes what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptresume.health.detect import NONFINITE, Verdict
from gptresume.health.rollback import Rollback, pending_skip, rollbacks_so_far

ROLLBACK, STOPPED, UNHEALTHY = "rollback", "stopped", "unhealthy"


def first_step(event: Verdict) -> int:
    """The step the problem began at (a spike is confirmed some steps after its first suspect step)."""
    return event.first_step or event.step


def action_of(event: Verdict, health) -> str:
    """`health.on_nan` for a non-finite value, `health.on_spike` for a spike: "stop" or "rollback"."""
    return health.on_nan if event.kind == NONFINITE else health.on_spike


def rollback_wanted(event: Verdict, health, history: list[dict]) -> bool:
    """A rollback is asked for and the run has rollbacks left (health.max_rollbacks since its last fresh start)."""
    return action_of(event, health) == "rollback" and rollbacks_so_far(history) < health.max_rollbacks


def target_search(event: Verdict, health) -> int:
    """A rollback target is a verified checkpoint at or before this step."""
    return first_step(event) - health.rollback_steps


@dataclass(frozen=True)
class Candidate:
    """A checkpoint the caller found (verified; for a rollback target, its state test-loaded too)."""

    path: Path
    step: int


@dataclass(frozen=True)
class HealthDecision:
    """What to do, and what to record. `status`: "rollback" (resume from `checkpoint` now), "stopped" (the rollback
    is recorded but a stop was asked for as well: a re-run continues it) or "unhealthy" (stop, exit 1).

    For a rollback the caller sets aside every checkpoint after `checkpoint`, protects `checkpoint`, appends
    `rollback_record(set_aside)` and, with a stop, `stopped_record`; for a stop it protects `checkpoint` (when
    there is one) and appends `unhealthy_record`. `message(set_aside)` is what the run prints."""

    status: str
    step: int
    """The step the outcome reports: the event's, or the rollback target's when a stop follows the rollback."""
    event: Verdict
    checkpoint: Path | None
    """The rollback target, or the newest good checkpoint a stop names (None: there is none)."""
    protect_reason: str | None = None
    target_step: int | None = None
    skip_batches: int = 0
    skip_samples: int = 0
    number: int = 0
    """This rollback's number (1 for the first since the run's last fresh start)."""
    max_rollbacks: int = 0
    stop_reason: str | None = None
    why: str = ""
    """Why a stop did not roll back."""

    def rollback_record(self, set_aside: list[str]) -> dict:
        return Rollback(self.event.step, self.event.detail, self.checkpoint, self.target_step, self.skip_batches,
                        self.skip_samples, tuple(set_aside), self.number).record()

    @property
    def stopped_record(self) -> dict:
        return {"step": self.target_step, "reason": self.stop_reason}

    @property
    def unhealthy_record(self) -> dict:
        return {"step": self.event.step, "kind": self.event.kind, "reason": self.event.detail,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None}

    def message(self, set_aside: list[str] = ()) -> str:
        e = self.event
        if self.status in (ROLLBACK, STOPPED):
            return (f"Rollback {self.number} of at most {self.max_rollbacks}: {e.detail}; resuming from "
                    f"{self.checkpoint} (step {self.target_step}), skipping {self.skip_batches} batch(es) of data"
                    + (f"; set aside: {', '.join(set_aside)}" if set_aside else ""))
        return (f"Training stopped at step {e.step}: {e.detail} ({self.why}). No checkpoint of it was committed. "
                + (f"The newest checkpoint with a finite loss is {self.checkpoint} (protected from retention); "
                   "resume from it with changed settings (e.g. --set train.learning_rate=... --allow-change "
                   "learning_rate), or set health.on_nan: rollback." if self.checkpoint
                   else "No earlier checkpoint exists."))


def decide(event: Verdict, health, history: list[dict], *, target: Candidate | None, good: Path | None,
           global_batch: int, stop_reason: str | None = None) -> HealthDecision:
    """The decision after `event`, from `health` (config.schema.HealthConfig), the run's `history` (history.jsonl
    rows), the rollback `target` found at or before `target_search(event, health)` (looked for only when
    `rollback_wanted`), the newest `good` checkpoint before the event (looked for otherwise), the samples one
    optimizer step takes (`global_batch`, for the data skip), and a pending stop request."""
    action = action_of(event, health)
    done = rollbacks_so_far(history)
    first = first_step(event)
    if rollback_wanted(event, health, history) and target is not None:
        skip = pending_skip(history, target.step) + health.skip_batches * global_batch
        stopped = bool(stop_reason)
        return HealthDecision(
            STOPPED if stopped else ROLLBACK, target.step if stopped else event.step, event, target.path,
            protect_reason=f"rollback {done + 1} at step {event.step} resumed from it", target_step=target.step,
            skip_batches=health.skip_batches, skip_samples=skip, number=done + 1, max_rollbacks=health.max_rollbacks,
            stop_reason=stop_reason)
    if action == "rollback" and done < health.max_rollbacks:
        why = (f"no verified checkpoint at least {health.rollback_steps} step(s) before step {first} to roll back "
               "to (raise checkpoint.keep_last, or lower health.rollback_steps)")
    elif action == "rollback":
        why = f"health.max_rollbacks ({health.max_rollbacks}) rollbacks already done"
    else:
        why = f"health.{'on_nan' if event.kind == NONFINITE else 'on_spike'} is stop"
    return HealthDecision(UNHEALTHY, event.step, event, good,
                          protect_reason=f"newest checkpoint before the {event.kind} at step {event.step}"
                          if good else None, why=why)
