"""TEST-ONLY fault injection: `GPTRESUME_TEST_FAULT` poisons the training loss of chosen optimizer steps, so the
health checks are tested on the real Trainer and real processes (a NaN from a real overflow cannot be ordered up).
Never set it for real training.

    GPTRESUME_TEST_FAULT="nan@7"          step 7's loss is NaN (so are its gradients, and the weights it updates)
    GPTRESUME_TEST_FAULT="inf@7"          +inf instead
    GPTRESUME_TEST_FAULT="spike@20-24x8"  steps 20..24: the loss (and its gradients) multiplied by 8
    GPTRESUME_TEST_FAULT="nan@7!"         every time step 7 is trained (a bad batch that a plain rollback meets
                                          again), not only the first time in this process (a transient fault)

Items are comma-separated. The poison multiplies the loss inside `compute_loss`, before the backward pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

ENV = "GPTRESUME_TEST_FAULT"
_ITEM = re.compile(r"^(nan|inf|spike)@(\d+)(?:-(\d+))?(?:x([0-9.eE+-]+))?(!?)$")
_fired: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class Fault:
    kind: str
    first: int
    last: int
    factor: float
    every_time: bool

    def multiplier(self) -> float:
        return {"nan": float("nan"), "inf": float("inf")}.get(self.kind, self.factor)


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"{ENV}: cannot read {item!r}; expected e.g. nan@7, inf@7, spike@20-24x8, nan@7!")
        kind, first, last, factor, bang = m.groups()
        faults.append(Fault(kind, int(first), int(last or first), float(factor or 10.0), bool(bang)))
    return faults


def multiplier_for(step: int) -> float | None:
    """The factor the loss of optimizer step `step` (1-based: the step being computed) is multiplied by, or None.
    A fault without `!` fires once per process and step."""
    text = os.environ.get(ENV)
    if not text:
        return None
    for fault in parse(text):
        if fault.first <= step <= fault.last:
            key = (fault.kind, step)
            if not fault.every_time and key in _fired:
                continue
            _fired.add(key)
            return fault.multiplier()
    return None
