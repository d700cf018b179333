"""Graceful stops: SIGTERM / SIGINT / SIGUSR1 (or a step given with --stop-at-step) finish the current
optimizer step, save and commit a checkpoint, then training returns and the CLI exits 75.

A second SIGINT aborts at once (exit 130): the newest committed checkpoint is still there to resume from.
Time-based saves (`checkpoint.every_minutes`) live here too: both decide when to save off the step clock. With several
processes every rank must stop (or save) at the same step: each rank's view is agreed in the step's one cross-rank
reduction (training/agreement.py).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from transformers import TrainerCallback

from gptresume import stopping
from gptresume.training import distributed

log = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class StopRequest:
    """Holds why a stop was asked for; set from a signal handler, read at the next step boundary."""

    def __init__(self):
        self.reason: str | None = None
        self.signalled = False  # a signal (not --stop-at-step): only a signal cuts an evaluation short
        self._previous = {}

    def install(self) -> None:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        stopping.register(self)  # what a streamed source's start-up and an evaluation poll (stopping.py)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        stopping.register(None)

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            # Second Ctrl-C: the user wants out now. The last committed checkpoint stays valid.
            os.write(2, b"\nSecond SIGINT: aborting without saving; the newest committed checkpoint is kept.\n")
            os._exit(130)
        self.signalled = True
        if self.reason is None:
            self.reason = name
            if os.environ.get("RANK", "0") == "0":  # with several processes every rank gets it; one line is enough
                os.write(2, f"\n{name} received: finishing this step, then saving a checkpoint "
                            "(Ctrl-C again to abort without saving).\n".encode())

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


class StopCallback(TrainerCallback):
    """A pending stop request, turned into save + log + stop at the end of an optimizer step. The request is read
    (`wanted`) and agreed across ranks by training/agreement.py, which then calls `stop_here`."""

    def __init__(self, request: StopRequest, stop_at_step: int | None = None):
        self.request = request
        self.stop_at_step = stop_at_step
        self.stopped_at: int | None = None

    def wanted(self, step: int) -> bool:
        """This rank's view at the end of optimizer step `step`: a signal arrived, or --stop-at-step is reached."""
        if self.stop_at_step is not None and step >= self.stop_at_step:
            self.request.request(f"--stop-at-step {self.stop_at_step}")
        return self.request.reason is not None

    def stop_here(self, state, control) -> None:
        """Some rank wants to stop (agreed): every rank saves, logs and stops at this step (the last step saves
        anyway)."""
        if state.global_step < state.max_steps:
            control.should_save = True
            control.should_log = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_prediction_step(self, args, state, control, **kwargs):
        """A stop during an evaluation cuts it at this batch (every process at the same one): the step it belongs
        to is trained, so training/trainer.py commits it at once and training stops. Before the first step
        (`eval_on_start`) there is nothing to commit and the StopSignal ends the run (stopping.py). Only while
        gptresume's handlers are installed: an evaluation the script runs after `gptresume.train` is its own.
        `--stop-at-step N` is a stop after step N, its evaluation included: it cuts nothing."""
        if self.request.installed and _any_rank(self.request.signalled):  # one tiny reduction per batch
            self.stopped_at = state.global_step
            raise stopping.StopSignal(self.request.reason or "a stop on another process")
        return control


class TimedSaveCallback(TrainerCallback):
    """Save when `every_minutes` have passed since the last save, beside the step-based saves (`due` is read and
    agreed across ranks by training/agreement.py)."""

    def __init__(self, every_minutes: float):
        self.interval = every_minutes * 60.0
        self.last_save = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.interval

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()


def _any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (a stop must cut every rank's evaluation at the same batch)."""
    return bool(distributed.agree([int(flag)])[0])
