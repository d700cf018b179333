"""Run health on the Trainer: every optimizer step's loss and gradient norm judged (health/detect.py), a save vetoed
while anything is wrong (what happens after an event is decided by health/decide.py, done by training/session.py);
and `checkpoint.every: auto`, the save interval from Daly's formula (health/interval.py).

The losses come from `ResumableTrainerMixin.training_step` and the gradient norm from its `_get_grad_norm`
(trainer.py) through a `HealthMonitor`: Trainer's callbacks see the loss only at logging steps, and then averaged
with NaNs filtered out (`logging_nan_inf_filter`).

`HealthCallback` is the last callback: it sees every save decision (step saves, timed saves, stops, the final
save) and cancels it on a bad step, so a NaN never reaches a committed checkpoint. It also checks the weights
themselves are finite before each save (an update can overflow with a finite loss and gradient).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from gptresume.health.detect import NONFINITE, SUSPECT, Detector, SpikeRule, Verdict
from gptresume.health.interval import IntervalChoice, choose_interval, interruption_rate
from gptresume.training import distributed
from gptresume.training.preemption import _any_rank

log = logging.getLogger(__name__)


class HealthMonitor:
    """Filled by the Trainer (each micro-batch's loss, the step's gradient norm), emptied by HealthCallback."""

    def __init__(self):
        self.loss = None
        self.grad_norm = None

    def add_loss(self, loss) -> None:
        loss = loss.detach()
        self.loss = loss if self.loss is None else self.loss + loss

    def set_grad_norm(self, grad_norm) -> None:
        self.grad_norm = grad_norm

    def take(self) -> tuple[float | None, float | None]:
        loss, grad = self.loss, self.grad_norm
        self.loss = self.grad_norm = None
        loss = float(loss) if loss is not None else None  # one device sync per step
        grad = float(grad) if grad is not None else None
        return loss, grad


def spike_rule(health) -> SpikeRule | None:
    spike = health.spike
    return SpikeRule(spike.window, spike.std, spike.factor, spike.confirm) if spike.enabled else None


class HealthCallback(TrainerCallback):
    """Judge each step; on a non-finite value or a confirmed spike, cancel any save and evaluation and end training
    (`event` says why; the session decides stop or rollback). While a step is suspect (a possible spike), saves
    wait, and so does a stop request (at most `confirm` steps), so a suspect state is never committed."""

    def __init__(self, monitor: HealthMonitor, detector: Detector):
        self.monitor, self.detector = monitor, detector
        self.event: Verdict | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        loss, grad = self.monitor.take()
        step = state.global_step
        verdict = self.detector.observe(step, loss, grad) if loss is not None else Verdict("ok", step)
        bad, suspect = _any_rank(verdict.bad), _any_rank(verdict.kind == SUSPECT)
        if control.should_save and not bad and not suspect and _any_rank(not weights_finite(model)):
            verdict, bad = Verdict(NONFINITE, step, f"non-finite weights after step {step}", step), True
        if bad:
            if not verdict.bad:  # another rank saw it
                verdict = Verdict(NONFINITE, step, f"a non-finite value on another rank at step {step}", step)
            self.event = verdict
            log.error("Step %d: %s; no checkpoint of it is saved", step, verdict.detail)
            control.should_save = control.should_evaluate = False
            control.should_training_stop = True
        elif suspect and control.should_save and step < state.max_steps:
            log.warning("Step %d: %s; the save waits until the loss is judged", step, verdict.detail)
            control.should_save = False
            control.should_training_stop = False  # a pending stop request is taken again at the next step
        return control


def weights_finite(model) -> bool:
    """Every parameter finite (one reduction per tensor, one sync): checked before each save."""
    if model is None:
        return True
    import torch

    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


# ---------------------------------------------------------------- checkpoint.every: auto


class AutoInterval(TrainerCallback):
    """Save when Daly's optimum interval has passed since the last save (replacing Trainer's step saves). delta is
    the measured pause of the last save (from its step's end to the end of its commit for a synchronous save; the
    copy for an asynchronous one); M comes from the run's history pooled with the configured prior, re-estimated
    at every save with this session's hours added. Before the first measurement of a run, it saves after the
    minimum interval to measure delta. Placed first among gptresume's callbacks so stops and the final save still
    save; `probe` (placed after the commit) measures the pause."""

    def __init__(self, checkpoint_config, run_dir: Path):
        from gptresume.health.goodput import interruptions
        from gptresume.rundir import read_history

        self.cfg, self.run_dir = checkpoint_config, Path(run_dir)
        history = read_history(run_dir)
        self.past_interruptions, self.past_hours = interruptions(history)
        last = [e for e in history if e.get("event") == "interval"]
        self.delta = float(last[-1]["delta_s"]) if last and last[-1].get("delta_s") else None
        self.session_start = time.monotonic()
        self.last_save = time.monotonic()
        self.choice: IntervalChoice | None = None
        self._pause_start = None
        self.probe = _PauseProbe(self)
        self._recompute()

    def _recompute(self, step: int | None = None) -> None:
        hours = self.past_hours + (time.monotonic() - self.session_start) / 3600.0
        rate = interruption_rate(self.past_interruptions, hours, self.cfg.expected_interruptions_per_hour)
        if self.delta is None:
            self.choice = IntervalChoice(self.cfg.auto_min_seconds, 0.0, 3600.0 / rate if rate else float("inf"),
                                         "min")
            return
        before = self.choice
        self.choice = choose_interval(self.delta, rate, self.cfg.auto_min_seconds, self.cfg.auto_max_seconds)
        changed = before is None or before.delta_s == 0.0 or abs(self.choice.interval_s - before.interval_s) > (
            0.25 * before.interval_s)
        if changed:
            log.info("checkpoint.every auto: a save every %.1fs (delta %.3fs, M %.2fh%s)", self.choice.interval_s,
                     self.choice.delta_s, self.choice.mtbi_s / 3600.0,
                     f", held at the {self.choice.bounded} bound" if self.choice.bounded else "")
            if distributed.is_main():
                from gptresume.rundir import append_history

                append_history(self.run_dir, "interval", step=step, **self.choice.to_dict(),
                               interruptions=self.past_interruptions, training_hours=round(hours, 4))

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = _any_rank(time.monotonic() - self.last_save >= self.choice.interval_s)
        self._pause_start = time.perf_counter()
        return control

    def saved(self, step: int) -> None:
        if self._pause_start is not None:
            self.delta = time.perf_counter() - self._pause_start
        self.last_save = time.monotonic()
        self._recompute(step)


class _PauseProbe(TrainerCallback):
    def __init__(self, auto: AutoInterval):
        self.auto = auto

    def on_save(self, args, state, control, **kwargs):
        self.auto.saved(state.global_step)


def make_detector(health, saved: dict | None) -> Detector:
    """The detector for `health` (HealthConfig or None: defaults), with the window a checkpoint carried."""
    from gptresume.config.schema import HealthConfig

    detector = Detector(spike_rule(health or HealthConfig()))
    if detector.spike is not None:
        detector.restore(saved)
    return detector
