"""SIGTERM / SIGINT / SIGUSR1 stop every phase of a run, not only training steps.

Training steps have the graceful stop (training/preemption.py `StopRequest`): the step finishes, a checkpoint is
committed, exit 75. The phases around them have nothing to commit, and must not make a stop wait:

- **Before training** (config, tokenizer, reading and packing data, the streamed source's checks, the model, the
  resume plan): `prompt_stops()` makes the signal raise `StopSignal` at once in the main thread. It unwinds like an
  exception (every `finally` and `except BaseException` runs: a staged data cache is removed, the lock released),
  nothing new is committed, and the CLI exits with the stop code (75, or --stop-exit-code): the newest committed
  checkpoint, if any, is where a re-run resumes, and a new run starts cleanly.
- **Inside `trainer.train()` before the first step of this process** (a streamed source filling its shuffle
  buffer, an `eval_on_start` evaluation): `requested()` is polled there and they raise `StopSignal` themselves.
- **During an evaluation**: the evaluation is cut at the next batch and the step it belongs to is committed
  (training/preemption.py `StopCallback.on_prediction_step`, training/trainer.py).

`StopSignal` derives from BaseException, like KeyboardInterrupt, so `except Exception` in libraries does not
swallow it. A forked child (a tokenizing worker, a DataLoader worker) that inherits the handler gets the signal's
default action instead: only the process that installed it raises.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class StopSignal(BaseException):
    """A stop signal arrived where there is nothing to commit: unwind, and exit with the stop code."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_current = {"request": None, "early": None}


def requested() -> str | None:
    """Why a stop was asked for in this process (the signal's name), or None: from the graceful handler while
    training runs, or from a signal `prompt_stops` turned into StopSignal."""
    request = _current["request"]
    if request is not None and request.reason is not None:
        return request.reason
    return _current["early"]


def register(request) -> None:
    """The graceful `StopRequest` (training/preemption.py) in force while `trainer.train()` runs; None after."""
    _current["request"] = request


@contextmanager
def prompt_stops():
    """While inside: a stop signal raises StopSignal in the main thread at once (in this process only)."""
    owner = os.getpid()
    previous = {}

    def handle(signum, frame):
        name = signal.Signals(signum).name
        if os.getpid() != owner:  # a forked worker: the default action, as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _current["early"] = name
        raise StopSignal(name)

    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handle)
    _current["early"] = None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _current["early"] = None
