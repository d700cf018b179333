"""Per-step judgement of the training loss and gradient norm: a non-finite value at once, a loss spike once it is
confirmed. Pure (floats in, verdicts out), so the rules are unit-tested on crafted series.

A spike is a loss above the mean of the recent window by `std` standard deviations (or above `factor` x the mean).
A single high step is an outlier, not a spike: it is *suspect* until `confirm` consecutive steps are high. Suspect
steps never enter the window (they would lift the mean the next steps are judged by), and while any step is
suspect no checkpoint is committed (training/health.py): a confirmed spike never reaches a checkpoint either.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

OK, SUSPECT, NONFINITE, SPIKE = "ok", "suspect", "non-finite", "spike"
MIN_WINDOW = 8
"""Losses needed in the window before a spike can be judged at all (the start of a run has no baseline)."""


@dataclass(frozen=True)
class SpikeRule:
    """health.spike: when a loss counts as a spike."""

    window: int = 100
    std: float | None = 6.0
    factor: float | None = None
    confirm: int = 3

    def threshold(self, losses) -> float | None:
        """The loss above which a step is suspect, from the window's losses (None: too few to judge)."""
        if len(losses) < min(MIN_WINDOW, self.window):
            return None
        mean = sum(losses) / len(losses)
        limits = []
        if self.std is not None:
            var = sum((x - mean) ** 2 for x in losses) / len(losses)
            limits.append(mean + self.std * math.sqrt(var))
        if self.factor is not None:
            limits.append(mean * self.factor)
        return max(limits) if limits else None


@dataclass
class Verdict:
    kind: str
    step: int
    detail: str = ""
    first_step: int | None = None
    """For a spike: the first suspect step (the event a rollback counts back from)."""

    @property
    def bad(self) -> bool:
        return self.kind in (NONFINITE, SPIKE)


@dataclass
class Detector:
    """Feed it every optimizer step's loss and gradient norm, in order."""

    spike: SpikeRule | None = None
    window: deque = field(default_factory=deque)
    suspects: list = field(default_factory=list)  # [(step, loss)] of the current run of high steps

    def observe(self, step: int, loss: float, grad_norm: float | None = None) -> Verdict:
        if not math.isfinite(loss):
            return Verdict(NONFINITE, step, f"training loss {loss} at step {step}", step)
        if grad_norm is not None and not math.isfinite(grad_norm):
            return Verdict(NONFINITE, step, f"gradient norm {grad_norm} at step {step}", step)
        if self.spike is None:
            return Verdict(OK, step)
        limit = self.spike.threshold(self.window)
        if limit is not None and loss > limit:
            self.suspects.append((step, loss))
            if len(self.suspects) >= self.spike.confirm:
                first = self.suspects[0][0]
                return Verdict(SPIKE, step, f"loss spike: {len(self.suspects)} steps from step {first} above "
                               f"{limit:.4g} (window mean {sum(self.window) / len(self.window):.4g}), now {loss:.4g}",
                               first)
            return Verdict(SUSPECT, step, f"loss {loss:.4g} above {limit:.4g}", self.suspects[0][0])
        self.suspects.clear()  # an isolated outlier: forgotten, and kept out of the window
        self.window.append(loss)
        while len(self.window) > self.spike.window:
            self.window.popleft()
        return Verdict(OK, step)

    def state(self) -> dict:
        """What a checkpoint carries so a resumed run judges the next steps exactly as an uninterrupted one."""
        return {"window": list(self.window), "suspects": [list(s) for s in self.suspects]}

    def restore(self, saved: dict | None) -> None:
        if not saved:
            return
        self.window = deque(float(x) for x in saved.get("window", []))
        self.suspects = [(int(s), float(v)) for s, v in saved.get("suspects", [])]
