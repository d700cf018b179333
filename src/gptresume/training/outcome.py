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
