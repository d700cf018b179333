"""Learning-rate schedule re-planning for a resume with a changed schedule (max_steps, warmup, type).

Plain Trainer rebuilds the schedule from the new arguments but restores the old learning rate, so the first
resumed step runs at the old value (0.0 after a finished linear schedule) and the next jumps to the new curve.

The rule (README, "Resuming with changes"): let s be the resumed step and f the schedule factor the next step
would have used under the old schedule (lr = learning_rate x f).
  - if s is before the end of the new warmup, warm up linearly from f at s to 1 at the new warmup end, then
    decay with the new scheduler type's shape to 0 at the new max_steps;
  - if the old schedule had decayed to 0 (a finished run being extended), warm up again from 0 to 1 over
    train.warmup_steps (or 5% of the added steps when it is 0), then decay to 0 at the new max_steps;
  - otherwise decay from f at s to 0 at the new max_steps with the new type's shape.
So the factor is continuous at s, never drops to 0 before the end, and never jumps. Shapes: linear (1 - x),
cosine ((1 + cos(pi x)) / 2), constant (1). The plan is saved in every later checkpoint, so later resumes
continue the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SHAPES = {
    "linear": lambda x: 1.0 - x,
    "cosine": lambda x: 0.5 * (1.0 + math.cos(math.pi * x)),
    "constant": lambda x: 1.0,
    "constant_with_warmup": lambda x: 1.0,
}
REWARM_FRACTION = 0.05


@dataclass
class SchedulePlan:
    """Factor (multiplier of learning_rate) for steps >= from_step: a linear ramp from start_factor at
    from_step to 1 at peak_step (none when peak_step == from_step), then `shape` down to 0 at end_step."""

    from_step: int
    start_factor: float
    peak_step: int
    end_step: int
    shape: str

    def factor(self, step: int) -> float:
        if step < self.peak_step:
            return self.start_factor + (1.0 - self.start_factor) * (step - self.from_step) / (
                self.peak_step - self.from_step)
        top = 1.0 if self.peak_step > self.from_step else self.start_factor
        span = self.end_step - self.peak_step
        x = 1.0 if span <= 0 else min(max((step - self.peak_step) / span, 0.0), 1.0)
        return top * max(0.0, SHAPES[self.shape](x))

    def __call__(self, step: int) -> float:  # LambdaLR calls its lambdas with the step count
        return self.factor(step)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SchedulePlan:
        return cls(**d)


def replan(step: int, factor: float, scheduler_type: str, warmup_steps: int, max_steps: int) -> SchedulePlan:
    """The continuous schedule from `step` (where the old schedule's factor is `factor`) to `max_steps`."""
    if scheduler_type not in SHAPES:
        raise ValueError(f"re-planning supports lr_scheduler_type {', '.join(SHAPES)}, not {scheduler_type!r}")
    if factor <= 1e-12:
        ramp = warmup_steps if warmup_steps > 0 else max(1, math.ceil(REWARM_FRACTION * (max_steps - step)))
        # from step - 1 at 0, so the first resumed step already trains at 1/ramp of the peak
        return SchedulePlan(step - 1, 0.0, min(step - 1 + ramp, max_steps), max_steps, scheduler_type)
    if step < warmup_steps:
        return SchedulePlan(step, factor, warmup_steps, max_steps, scheduler_type)
    return SchedulePlan(step, factor, step, max_steps, scheduler_type)
