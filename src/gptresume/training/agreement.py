"""One cross-rank agreement per optimizer step, carrying every flag the ranks must agree on, and no host sync of
its own.

Every rank must save, stop and judge its health at the same steps, but each sees only its own signals, clocks and
losses: a stop request (StopCallback), a timed save due (TimedSaveCallback), the auto interval passed
(AutoInterval), a non-finite value, a confirmed spike or a suspect loss, non-finite weights (HealthCallback). Each
rank packs its view into `StepFlags`, and ONE element-wise maximum over the ranks (`distributed.agree`: one gloo
all_reduce of eight int64s in CPU memory, skipped with one process) gives every rank the same answer.

Health values stay on the device (training/health.py HealthMonitor) and are read only at a step that logs (where
Trainer reads the loss anyway), evaluates or may save. Whether a rank may save is known before the reduction for
step saves, the final save and a save that waited (the same on every rank) and for its own triggers; a rank that
had no reason to read when another rank's trigger asks for a save says so (`unjudged`), and the save waits one
step, at which every rank reads: one reduction per step, always.

The epoch end of a run that saves by epoch adds one reduction (its save is decided there, after the step's).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from transformers import TrainerCallback

from gptresume.training import distributed
from gptresume.training.health import AutoInterval, HealthCallback
from gptresume.training.preemption import StopCallback, TimedSaveCallback

NO_STEP = 2 ** 62  # bad_step's place holder: "no bad step" loses every maximum of -step


@dataclass(frozen=True)
class StepFlags:
    """One rank's view at the end of an optimizer step, or (after `agree`) every rank's: a flag is set if it is set
    on any rank; `bad_step` is the earliest bad step any rank found."""

    stop: bool = False
    """A stop was asked for (a signal, --stop-at-step)."""
    timed: bool = False
    """checkpoint.every_minutes have passed since the last save."""
    auto: bool = False
    """checkpoint.every: auto: the chosen interval has passed since the last save."""
    bad: bool = False
    """A non-finite loss or gradient norm, or a confirmed loss spike, among the steps judged."""
    suspect: bool = False
    """The newest step's loss is suspect (a possible spike): no save yet."""
    weights_bad: bool = False
    """Non-finite weights (checked at a step that may save)."""
    unjudged: bool = False
    """This rank has not judged its values and weights at this step: a save must wait for it."""
    bad_step: int | None = None

    def encode(self) -> list[int]:
        return [int(getattr(self, f.name)) for f in fields(self)[:-1]] + [
            -(NO_STEP if self.bad_step is None else self.bad_step)]

    @classmethod
    def decode(cls, values: list[int]) -> StepFlags:
        *flags, neg_step = values
        return cls(*(bool(v) for v in flags), bad_step=None if -neg_step == NO_STEP else -neg_step)


def agree(local: StepFlags) -> StepFlags:
    """Every rank's view: one reduction (none with one process)."""
    return StepFlags.decode(distributed.agree(local.encode()))


class StepAgreement(TrainerCallback):
    """First of gptresume's callbacks: at each step's end, gather this rank's flags from the callbacks it was given,
    agree them across ranks once, and set the save and stop decisions from the agreed view (the auto interval
    replacing Trainer's step saves, then a stop, then a timed save), leaving the health veto to HealthCallback (the
    last callback, which also sees the final save)."""

    def __init__(self, callbacks):
        def one(kind):
            found = [cb for cb in callbacks if isinstance(cb, kind)]
            return found[0] if found else None

        self.stop, self.timed, self.auto, self.health = (one(StopCallback), one(TimedSaveCallback),
                                                         one(AutoInterval), one(HealthCallback))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step, health = state.global_step, self.health
        stop = self.stop is not None and self.stop.wanted(step)
        timed = self.timed is not None and self.timed.due()
        auto = self.auto is not None and self.auto.due()
        may_save = ((auto if self.auto is not None else control.should_save) or timed or stop
                    or step >= state.max_steps or (health is not None and health.pending_save))
        view = {}
        if health is not None:
            health.monitor.end_step(step)
            view = health.local_flags(step, read=may_save or control.should_log or control.should_evaluate,
                                      model=model if may_save else None)
        agreed = agree(StepFlags(stop=stop, timed=timed, auto=auto, **view))
        if self.auto is not None:
            control.should_save = agreed.auto
            self.auto.step_ended()
        if agreed.stop and self.stop is not None:
            self.stop.stop_here(state, control)
        if agreed.timed:
            control.should_save = True
        if health is not None:
            health.agreed = agreed
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        health = self.health
        if health is not None and health.event is None and control.should_save:  # a save by epoch
            health.agreed = agree(StepFlags(**health.local_flags(state.global_step, read=True, model=model)))
        return control
