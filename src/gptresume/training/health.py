"""Run health on the Trainer: every optimizer step's loss and gradient norm judged (health/detect.py), a save vetoed
while anything is wrong (what happens after an event is decided by health/decide.py, done by training/session.py);
and `checkpoint.every: auto`, the save interval from Daly's formula (health/interval.py).

The losses come from `ResumableTrainerMixin.training_step` and the gradient norm from its `_get_grad_norm`
(trainer.py) through a `HealthMonitor`: Trainer's callbacks see the loss only at logging steps, and then averaged
with NaNs filtered out (`logging_nan_inf_filter`).

No host synchronisation of its own: the monitor keeps each step's values on the device and they are read in one
batch (one `.tolist()`) only where a decision needs them or Trainer synchronises anyway: at a step that logs (Trainer
reads the loss there), evaluates, may save (step, timed, auto, final or epoch save, a stop), and with the weights
check at a step that may save. The detector is fed every step in order, so its verdicts are those of a per-step
read: a NaN at step k is found at the next read point r >= k and reported as step k; since every step that may save
is a read point, no checkpoint at or after step k is ever committed. Training between k and r is discarded (the
run stops at r, nothing of it logged or saved).

`HealthCallback` is the last callback: it sees every save decision (step saves, timed saves, stops, the final
save, epoch saves) and cancels it on a bad or suspect step, or while a rank has not judged its own values yet (then
the save waits one step: every rank reads at the next). It also checks the weights themselves are finite before
each save (an update can overflow with a finite loss and gradient). The ranks' verdicts are agreed in the step's
one cross-rank reduction (training/agreement.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from gptresume.health.detect import NONFINITE, OK, SUSPECT, Detector, SpikeRule, Verdict
from gptresume.health.interval import IntervalChoice, choose_interval, interruption_rate
from gptresume.rundir import INTERVAL_EVENT
from gptresume.training import distributed

log = logging.getLogger(__name__)


class HealthMonitor:
    """Each optimizer step's summed micro-batch loss and gradient norm, kept as device tensors (filled by the
    Trainer, closed by `end_step`), until `take` reads every step since the last read with one host sync."""

    COMPACT_AT = 256
    """Pending scalars are concatenated into one tensor every this many (one device op), so a run that rarely
    reads holds a few contiguous tensors, not one allocation per step."""

    def __init__(self):
        self.loss = None
        self.grad_norm = None
        self._chunks: list = []  # concatenated device tensors, then
        self._values: list = []  # the 1-element ones pushed since, in push order
        self._count = 0  # scalars in both
        self._steps: list[tuple[int, int | None, int | None, float | None]] = []  # step, loss i, grad i, grad float

    def add_loss(self, loss) -> None:
        loss = loss.detach()
        self.loss = loss if self.loss is None else self.loss + loss

    def set_grad_norm(self, grad_norm) -> None:
        self.grad_norm = grad_norm

    def end_step(self, step: int) -> None:
        """Close optimizer step `step`: its loss and gradient norm join the unread ones (no host sync)."""
        import torch

        loss, grad, self.loss, self.grad_norm = self.loss, self.grad_norm, None, None
        loss_i = self._push(loss) if loss is not None else None
        grad_i = self._push(grad) if isinstance(grad, torch.Tensor) else None
        grad_value = float(grad) if grad is not None and grad_i is None else None  # already a float (DeepSpeed)
        self._steps.append((step, loss_i, grad_i, grad_value))

    @property
    def unread(self) -> int:
        return len(self._steps)

    def take(self, model=None) -> tuple[list[tuple[int, float | None, float | None]], bool | None]:
        """(step, loss, grad_norm) of every step since the last read, in order, and with `model` whether all its
        weights are finite (None: not checked): one host sync for all of them."""
        weights_i = self._push(_weights_finite_flag(model)) if model is not None else None
        values = _concat(self._chunks + self._values).tolist() if self._count else []  # the one host sync
        rows = [(step, values[li] if li is not None else None, values[gi] if gi is not None else gv)
                for step, li, gi, gv in self._steps]
        weights_ok = None if weights_i is None else values[weights_i] == 1.0
        self._chunks, self._values, self._count, self._steps = [], [], 0, []
        return rows, weights_ok

    def _push(self, value) -> int:
        self._values.append(value.detach().reshape(1))
        self._count += 1
        if len(self._values) >= self.COMPACT_AT:
            self._chunks.append(_concat(self._values))
            self._values = []
        return self._count - 1


def _concat(tensors):
    """One tensor of `tensors`' values, in order, on the first one's device (no host sync)."""
    import torch

    wide = any(v.dtype == torch.float64 for v in tensors)  # float32 holds bf16/fp16/fp32 values exactly
    dtype, device = (torch.float64 if wide else torch.float32), tensors[0].device
    return torch.cat([v.to(device=device, dtype=dtype) for v in tensors])


def _weights_finite_flag(model):
    """A 1-element device tensor: 1.0 if every parameter is finite (one reduction per tensor, no host sync)."""
    import torch

    params = [p for p in model.parameters()]
    if not params:
        return torch.ones(1)
    device = params[0].device
    return torch.stack([torch.isfinite(p.detach()).all().to(device) for p in params]).all().to(torch.float32)


def spike_rule(health) -> SpikeRule | None:
    spike = health.spike
    return SpikeRule(spike.window, spike.std, spike.factor, spike.confirm) if spike.enabled else None


class HealthCallback(TrainerCallback):
    """Judge each step; on a non-finite value or a confirmed spike, cancel any save and evaluation and end training
    (`event` says why; the session decides stop or rollback). While a step is suspect (a possible spike), saves
    wait, and so does a stop request (at most `confirm` steps), so a suspect state is never committed.

    `local_flags` is this rank's view (read by training/agreement.py before the step's reduction); `agreed` is the
    view of all ranks it sets; this callback, the last, applies it to the save decision."""

    def __init__(self, monitor: HealthMonitor, detector: Detector):
        self.monitor, self.detector = monitor, detector
        self.event: Verdict | None = None
        self.agreed = None
        """training/agreement.py StepFlags of this step (every rank's view), set before the other callbacks run."""
        self.pending_save = False
        """A save waited (suspect, or a rank had not judged its values): every rank reads at the next step."""
        self._newest: Verdict | None = None  # the verdict of the newest step judged (or the first bad one)
        self._own: Verdict | None = None  # this rank's verdict, when it judged at this step

    def judge(self, step: int, model=None) -> tuple[Verdict, bool | None]:
        """Read every unread step (one host sync; with `model`, the weights check too) and feed the detector in
        order, stopping at the first bad verdict. Returns that verdict, else the newest step's, and the weights
        check (None: not asked for)."""
        rows, weights_ok = self.monitor.take(model)
        for s, loss, grad in rows:
            if loss is None:  # nothing trained through training_step (no loss to judge)
                continue
            self._newest = self.detector.observe(s, loss, grad)
            if self._newest.bad:
                break
        self._own = self._newest or Verdict(OK, step)
        return self._own, weights_ok

    def local_flags(self, step: int, read: bool, model=None) -> dict:
        """This rank's health flags at the end of `step` (StepFlags fields). `read`: judge the unread steps here
        (a step that logs, evaluates or may save); `model`: also check the weights (a step that may save)."""
        self._own = None
        if not read:
            return {"unjudged": True}
        verdict, weights_ok = self.judge(step, model)
        return {"bad": verdict.bad, "suspect": verdict.kind == SUSPECT, "weights_bad": weights_ok is False,
                "unjudged": weights_ok is None, "bad_step": verdict.step if verdict.bad else None}

    def on_step_end(self, args, state, control, **kwargs):
        return self._apply(state, control, epoch_end=False)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.event is not None:  # training ended on a bad step: no epoch save or evaluation of it
            control.should_save = control.should_evaluate = False
            return control
        return self._apply(state, control, epoch_end=True)

    def _apply(self, state, control, epoch_end: bool):
        agreed, own, self.agreed, self._own = self.agreed, self._own, None, None
        if agreed is None:  # no read at this event (an epoch end without a save)
            return control
        step = state.global_step
        if agreed.bad or (control.should_save and not agreed.suspect and agreed.weights_bad):
            if not agreed.bad:
                verdict = Verdict(NONFINITE, step, f"non-finite weights after step {step}", step)
            else:
                if own is None:  # this rank had no reason to read here: it reads now (the run stops)
                    own = self.judge(step)[0]
                first = agreed.bad_step
                verdict = own if own.bad and own.step == first else Verdict(
                    NONFINITE, first, f"a non-finite value on another rank at step {first}", first)
            self.event = verdict
            log.error("Step %d: %s; no checkpoint of it is saved", verdict.step, verdict.detail)
            control.should_save = control.should_evaluate = False
            control.should_training_stop = True
            if verdict.step < step:  # found at a later read point: the steps since are discarded, not logged
                control.should_log = False
        elif control.should_save and step < state.max_steps and (agreed.suspect or agreed.unjudged):
            if agreed.suspect:
                detail = own.detail if own is not None and own.kind == SUSPECT else "a loss is suspect on another rank"
                log.warning("Step %d: %s; the save waits until the loss is judged", step, detail)
            control.should_save = False
            if not epoch_end:
                control.should_training_stop = False  # a pending stop request is taken again at the next step
            self.pending_save = True
            return control
        self.pending_save = False
        return control


# ---------------------------------------------------------------- checkpoint.every: auto


class AutoInterval(TrainerCallback):
    """Save when Daly's optimum interval has passed since the last save (replacing Trainer's step saves). delta is
    the measured pause of the last save (from its step's end to the end of its commit for a synchronous save; the
    copy for an asynchronous one); M comes from the run's history pooled with the configured prior, re-estimated
    at every save with this session's hours added. Before the first measurement of a run, it saves after the
    minimum interval to measure delta. Its `due` is agreed across ranks by training/agreement.py (the first of
    gptresume's callbacks), which sets should_save to it, replacing Trainer's step saves, before a stop or the final
    save set it; `probe` (placed after the commit) measures the pause."""

    def __init__(self, checkpoint_config, run_dir: Path):
        from gptresume.health.goodput import interruptions
        from gptresume.rundir import read_history

        self.cfg, self.run_dir = checkpoint_config, Path(run_dir)
        history = read_history(run_dir)
        self.past_interruptions, self.past_hours = interruptions(history)
        last = [e for e in history if e.get("event") == INTERVAL_EVENT]
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

                append_history(self.run_dir, INTERVAL_EVENT, step=step, **self.choice.to_dict(),
                               interruptions=self.past_interruptions, training_hours=round(hours, 4))

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def due(self) -> bool:
        """This rank's view at a step's end: the interval has passed since the last save (agreed across ranks by
        training/agreement.py, which then sets should_save to the agreed value and calls `step_ended`)."""
        return time.monotonic() - self.last_save >= self.choice.interval_s

    def step_ended(self) -> None:
        self._pause_start = time.perf_counter()  # a save at this step pauses from here to its commit

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
