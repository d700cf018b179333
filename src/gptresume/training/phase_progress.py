"""Progress of the phases inside `trainer.train()` that are not training steps: an evaluation (its batches), the
first load of a large checkpoint, a slow save. For output that is not a terminal (on a terminal Trainer's own
evaluation bar shows the batches); each uses gptresume/progress.py's rules, so a long phase prints a few timed
lines and a short one only its summary. They observe only: nothing here changes what is trained."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from gptresume.progress import Progress, clock, duration, size

log = logging.getLogger(__name__)

LARGE_CHECKPOINT_BYTES = 256 << 20  # a resume from a checkpoint this large says so before it loads
SLOW_SAVE_S = 5.0  # a save after one that took this long says so when it starts
SLOW_SAVE_BYTES = 1 << 30  # the first save of a model whose weights and optimizer state exceed this says so


class EvalProgress(TrainerCallback):
    """Lines for an evaluation's batches (`on_prediction_step`), then one summary line:
    `evaluation: 20 batches (160 blocks) in 2.1 s`."""

    def __init__(self, interactive: bool = False, clock_s=time.monotonic, emit=None):
        self.interactive, self.clock_s, self.emit = interactive, clock_s, emit
        self.progress: Progress | None = None
        self.blocks: int | None = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.progress is None:
            total = _length(eval_dataloader)
            self.blocks = _length(getattr(eval_dataloader, "dataset", None))
            self.progress = Progress("evaluation", total, rate_unit=" batches/s", interactive=self.interactive,
                                     clock_s=self.clock_s, emit=self.emit)
        self.progress.update(self.progress.done + 1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        p, self.progress = self.progress, None
        blocks = f" ({self.blocks:,} blocks)" if self.blocks is not None else ""
        p.finish(f"evaluation: {p.done:,.0f} batches{blocks} in {duration(p.elapsed)}")


def _length(obj) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


class CheckpointLoadProgress(TrainerCallback):
    """A resume from a large checkpoint: one line before `trainer.train()` loads it (`announce`) and one when
    training begins, with the time its state took to load."""

    def __init__(self, checkpoint: Path | None, threshold: int = LARGE_CHECKPOINT_BYTES):
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.bytes = _dir_bytes(self.checkpoint) if self.checkpoint is not None else 0
        self.large = self.bytes >= threshold
        self.started: float | None = None

    def announce(self) -> None:
        """Call just before trainer.train(): the load happens inside it, before any callback runs."""
        self.started = time.perf_counter()
        if self.large:
            log.info("%s loading %s (%s of weights and training state)", clock(), self.checkpoint.name,
                     size(self.bytes))

    def on_train_begin(self, args, state, control, **kwargs):
        if self.large and self.started is not None and state.is_world_process_zero:
            log.info("%s %s loaded in %s", clock(), self.checkpoint.name, duration(time.perf_counter() - self.started))
        self.started = None


def _dir_bytes(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


class SaveProgress(TrainerCallback):
    """A line when a save that will take a while starts (the previous one took SLOW_SAVE_S or more, or the first
    one writes more than SLOW_SAVE_BYTES of weights and optimizer state); the committed line ends it. Placed after
    every callback that decides on saving, so it sees their decision."""

    def __init__(self, state_bytes: int = 0):
        self.state_bytes = state_bytes  # estimated bytes of a save (weights + optimizer state)
        self.last_s: float | None = None
        self._started: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if not control.should_save:
            return
        self._started = time.perf_counter()
        slow = self.last_s >= SLOW_SAVE_S if self.last_s is not None else self.state_bytes >= SLOW_SAVE_BYTES
        if slow and state.is_world_process_zero:
            took = (f"the last took {duration(self.last_s)}" if self.last_s is not None
                    else f"about {size(self.state_bytes)}")
            log.info("%s saving checkpoint-%d (%s)", clock(), state.global_step, took)

    def on_save(self, args, state, control, **kwargs):
        if self._started is not None:
            self.last_s = time.perf_counter() - self._started
            self._started = None


def add_phase_progress(trainer, checkpoint: Path | None, interactive: bool) -> CheckpointLoadProgress:
    """The CLI's progress for evaluations (in a log; a terminal has Trainer's bar), slow saves and the load of a
    large checkpoint; added after gptresume's other callbacks. Call `announce()` on the result just before
    `trainer.train()`."""
    if not interactive:
        trainer.add_callback(EvalProgress())
    params = list(trainer.model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    moments = 8 * sum(p.numel() for p in params if p.requires_grad)  # AdamW's two fp32 moments
    trainer.add_callback(SaveProgress(weights + moments))
    loading = CheckpointLoadProgress(checkpoint)
    trainer.add_callback(loading)
    return loading
