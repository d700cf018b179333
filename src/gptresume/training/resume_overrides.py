"""Allowed changes written into the restored training state: `ResumeOverrides`, a callback run at the resumed
step's `on_train_begin`, after Trainer restored the optimizer, the scheduler and `TrainerState` from the
checkpoint (`Trainer._prepare_for_training`, transformers 5.24) and before the first resumed step.

It writes new optimizer hyperparameters into the param groups, a re-planned (or inherited) schedule into the
scheduler's private state (`LambdaLR.lr_lambdas`, `base_lrs`, `_last_lr`, under accelerate's wrapper), and a changed
logging/eval/save cadence into the restored `TrainerState`. Each private behaviour is listed in compat.py under this
module. (DESIGN: a callback that writes into the optimizer or scheduler lives beside the Trainer subclass.)
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from gptresume.resume.schedule import SchedulePlan, replan

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- writes into restored optimizer, scheduler, state


class ResumeOverrides(TrainerCallback):
    """On the first resumed step's `on_train_begin`: new optimizer hyperparameters and a re-planned (or
    inherited) schedule. `plan` is what later checkpoints record, so the next resume follows the same curve."""

    def __init__(self, resume_step: int, optimizer_values: dict[str, tuple], replan_schedule: bool,
                 plan: SchedulePlan | None, decay_names: set[str]):
        self.resume_step = resume_step
        self.optimizer_values = optimizer_values  # TrainingArguments field -> (old, new)
        self.replan_schedule = replan_schedule
        self.plan = plan
        self.decay_names = decay_names

    @property
    def active(self) -> bool:
        return self.resume_step > 0 and bool(self.optimizer_values or self.replan_schedule or self.plan)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.resume_step <= 0 or state.global_step != self.resume_step:
            return
        self._apply_cadence(args, state)
        if not self.active:
            return
        sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        step = state.global_step
        lr_before = optimizer.param_groups[0]["lr"]
        factor = sched.get_last_lr()[0] / sched.base_lrs[0] if sched.base_lrs[0] else 0.0
        if self.replan_schedule:
            kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
            self.plan = replan(step, factor, kind, args.get_warmup_steps(state.max_steps), state.max_steps)
            log.info("Schedule re-planned at step %d: factor %.4g -> peak at step %d, %s decay to 0 at step %d",
                     step, factor, self.plan.peak_step, self.plan.shape, self.plan.end_step)
        if self.plan is not None:
            sched.lr_lambdas = [self.plan] * len(optimizer.param_groups)
        for i, group in enumerate(optimizer.param_groups):
            sched.base_lrs[i] = args.learning_rate
            group["initial_lr"] = args.learning_rate
        lrs = [base * fn(step) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs
        self._apply_hyperparameters(args, model, optimizer)
        if self.optimizer_values or self.replan_schedule:
            log.info("Learning rate of the next step (%d): %.6g before the change, %.6g now", step + 1,
                     lr_before, lrs[0])

    @staticmethod
    def _apply_cadence(args, state) -> None:
        """Trainer restores logging/eval/save steps from the checkpoint's trainer_state.json (transformers 5.24
        `_init_training_state`), so a changed cadence would be ignored: recompute them from the current args."""
        before = (state.logging_steps, state.eval_steps, state.save_steps)
        state.compute_steps(args, state.max_steps)
        after = (state.logging_steps, state.eval_steps, state.save_steps)
        if before != after:
            log.info("Logging / eval / save every %s / %s / %s steps (the checkpoint had %s / %s / %s)", *after,
                     *before)

    def _apply_hyperparameters(self, args, model, optimizer) -> None:
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        for key, (old, new) in self.optimizer_values.items():
            for group in optimizer.param_groups:
                if key == "weight_decay" and any(names.get(id(p)) in self.decay_names for p in group["params"]):
                    group["weight_decay"] = args.weight_decay
                elif key in ("adam_beta1", "adam_beta2") and "betas" in group:
                    group["betas"] = (args.adam_beta1, args.adam_beta2)
                elif key == "adam_epsilon" and "eps" in group:
                    group["eps"] = args.adam_epsilon
            if key != "learning_rate":
                log.info("%s: %r -> %r (applied to the restored optimizer)", key, old, new)
