"""How a run resumes, commits and stops."""

from __future__ import annotations

from dataclasses import dataclass, field

from gptresume.errors import EXIT_STOPPED


@dataclass
class Options:
    """How a run resumes, commits and stops; the CLI fills it from its flags and `checkpoint:` section, the Python
    API from its keyword arguments."""

    resume: str = "auto"
    """auto (newest valid checkpoint, else start), never, must, or a checkpoint directory."""
    allow_change: list[str] = field(default_factory=list)
    """Changed fields (or classes: optimizer, schedule, batch, data) to apply instead of refusing."""
    allow_partial: bool = False
    """Resume from a checkpoint that lacks optimizer, scheduler or RNG state."""
    overwrite: bool = False
    """With resume='never': delete the run's checkpoints and books first."""
    adopt: bool = False
    """With resume=PATH: take over a checkpoint without a manifest (written by a plain Trainer script)."""
    keep_last: int | None = 3
    """Committed checkpoints to keep (deleted only after a newer one commits); None keeps all."""
    keep_best: bool = False
    """Also keep the checkpoint with the lowest eval loss."""
    every_minutes: float | None = None
    """Also save when this many minutes passed since the last save."""
    async_save: bool = False
    """Write checkpoints in a background thread (single process)."""
    stop_at_step: int | None = None
    """Commit a checkpoint at this step and stop as if preempted."""
    health: object = None
    """config.schema.HealthConfig: what a NaN or a loss spike does (None: the defaults, stop on NaN)."""
    auto_interval: object = None
    """config.schema.CheckpointConfig when `checkpoint.every: auto` (the save interval from Daly's formula)."""
    stop_exit_code: int = EXIT_STOPPED
    """The exit code that reports a committed stop (75; e.g. 143 where a scheduler restarts only codes >= 128)."""
    remote: str | None = None
    """checkpoint.remote: an fsspec URL every committed checkpoint is uploaded to (gptresume/remote/)."""
    remote_options: dict = field(default_factory=dict)
    """fsspec options of the remote's file system (endpoint_url, ...)."""
    remote_keep_last: int | None = None
    """Remote checkpoints to keep; None keeps all."""
    remote_wait_seconds: float = 120.0
    """How long the end of training (or a stop) waits for pending uploads."""
