"""What a run as configured will cost, before it is started (`train --dry-run`): tokens and steps, evaluations and the
tokens they read, checkpoint size and saves, the disk keep_last needs, and (once a rate is known: a measured step
of the run, or `--dry-run --calibrate`) the wall time split between training, evaluation and saving, with a warning
naming the setting to change when evaluation or saving takes more than WARN_SHARE of the training time.

Pure: numbers in (`CostInputs`), a `CostPlan` out; nothing is read or written here (training/calibrate.py measures
the rates, training/dry_run.py gathers the inputs). Why: on a real corpus the shipped defaults once cost 20 minutes
of evaluation per save unseen (issue 26); a plan read before the run shows such a cost in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gptresume.progress import duration, size

WARN_SHARE = 0.10  # evaluation, or saving, above this share of the training time gets a warning
FORWARD_SPEEDUP = 3.0  # an evaluation step (forward only) against a training step (forward + backward): ~2N vs 6N
ASSUMED_WRITE_BYTES_PER_S = 200e6  # a save's write, hash and fsync when no save was measured (labelled "assumed")

# Optimizer state per trainable parameter, in units of the parameter's own size (`moments`) or in bytes (`bytes`),
# for TrainingArguments.optim; an optimizer not listed is assumed to keep AdamW's two moments (and says so).
OPTIMIZER_STATE = {
    **{name: ("moments", 2) for name in ("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused",
                                        "adamw_anyprecision", "paged_adamw_32bit", "galore_adamw", "stable_adamw",
                                        "schedule_free_adamw", "schedule_free_radam", "grokadamw", "apollo_adamw")},
    **{name: ("bytes", 2) for name in ("adamw_torch_8bit", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit",
                                      "galore_adamw_8bit")},
    "adamw_torch_4bit": ("bytes", 1),
    **{name: ("moments", 3) for name in ("ademamix", "paged_ademamix_32bit")},
    **{name: ("bytes", 3) for name in ("ademamix_8bit", "paged_ademamix_8bit")},
    **{name: ("moments", 1) for name in ("lion_32bit", "paged_lion_32bit", "adagrad", "rmsprop", "rmsprop_bnb",
                                        "rmsprop_bnb_32bit")},
    **{name: ("bytes", 1) for name in ("lion_8bit", "paged_lion_8bit", "rmsprop_bnb_8bit")},
    **{name: ("moments", 0) for name in ("sgd", "adafactor", "galore_adafactor", "lomo", "adalomo",
                                        "schedule_free_sgd")},
}
# Measured with transformers 5.24 / torch 2.13 (tests/unit/test_cost_plan.py compares a real save): bytes beside
# the tensors' own: safetensors' header per weight tensor, torch.save's record per optimizer state tensor, and the
# small files every checkpoint holds (training_args.bin, scheduler.pt, trainer_state.json, config.json,
# generation_config.json, manifest.json) plus rng_state.pth per process.
WEIGHT_TENSOR_OVERHEAD = 100
OPTIMIZER_TENSOR_OVERHEAD = 850
FIXED_FILES_BYTES = 16_000
RNG_STATE_BYTES = 14_500


@dataclass
class CostInputs:
    """Everything the plan is computed from; the dry run fills it from the config, the data and the model."""

    params: int
    """Parameters saved with the model (shared ones once)."""
    trainable: int
    """Parameters the optimizer updates (all of them, or LoRA's adapters)."""
    param_bytes: int = 4
    """Bytes per saved parameter (4 for float32, 2 for bfloat16 weights)."""
    weight_tensors: int = 0
    trainable_tensors: int = 0
    optim: str = "adamw_torch_fused"
    adapters_only: bool = False
    """LoRA: a checkpoint holds the adapters (the trainable parameters), not the base weights."""
    tokenizer_bytes: int = 0
    extra_state_bytes: int = 0
    """Per-checkpoint data state (a streaming run's shuffle buffer)."""
    world_size: int = 1
    start_step: int = 0
    max_steps: int = 0
    """The step training ends at (from max_steps, or epochs x steps per epoch)."""
    tokens_per_step: int = 0
    eval_every: int | None = None
    """Steps between evaluations; None: no evaluation during training."""
    eval_on_start: bool = False
    eval_blocks: int = 0
    """Blocks one evaluation reads (data.eval_batches global batches, or the whole split)."""
    block_size: int = 0
    save_every: int | None = None
    """Steps between step saves (None: none; the last step is always saved)."""
    every_minutes: float | None = None
    keep_last: int | None = 3
    keep_best: bool = False
    measured_checkpoint_bytes: int | None = None
    """The size of a checkpoint this run already committed (then used instead of the estimate)."""
    train_tokens_per_s: float | None = None
    eval_tokens_per_s: float | None = None
    save_s: float | None = None
    rates_from: str = ""
    """Where the rates come from: "calibration (--calibrate)", "the run's metrics.jsonl", ..."""
    settings: dict = field(default_factory=dict)
    """The current values of the settings a warning names (train.eval_steps, data.eval_batches, ...)."""


@dataclass
class CostPlan:
    steps: int
    tokens: int
    evaluations: int
    eval_tokens_each: int
    checkpoint_bytes: int
    checkpoint_measured: bool
    saves: int
    kept: int | None
    disk_bytes: int
    train_s: float | None = None
    eval_s: float | None = None
    save_total_s: float | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float | None:
        if self.train_s is None:
            return None
        return self.train_s + (self.eval_s or 0.0) + (self.save_total_s or 0.0)

    def share(self, part: float | None) -> float | None:
        return None if part is None or not self.train_s else part / self.train_s

    def lines(self) -> list[str]:
        """The plan as the dry run prints it."""
        out = ["  cost plan:",
               f"    training:   {self.steps:,} steps, {self.tokens:,} tokens"]
        if self.evaluations:
            out.append(f"    evaluation: {self.evaluations:,} evaluations of {self.eval_tokens_each:,} tokens "
                       f"({self.evaluations * self.eval_tokens_each:,} tokens in all)")
        else:
            out.append("    evaluation: none during training")
        how = "as committed before" if self.checkpoint_measured else "estimated"
        out.append(f"    saving:     {self.saves:,} saves of {size(self.checkpoint_bytes)} ({how}); disk needed "
                   f"{size(self.disk_bytes)} " + (f"(keep_last {self.kept} + the one being written)"
                                                  if self.kept is not None else "(every checkpoint kept)"))
        if self.train_s is not None:
            parts = [f"training {duration(self.train_s)}"]
            if self.eval_s is not None:
                parts.append(f"evaluation {duration(self.eval_s)} ({self.share(self.eval_s):.0%} of training)")
            if self.save_total_s is not None:
                parts.append(f"saving {duration(self.save_total_s)} ({self.share(self.save_total_s):.0%} of "
                             "training)")
            out.append(f"    wall time:  about {duration(self.total_s)}: " + ", ".join(parts))
        out += [f"    ({note})" for note in self.notes]
        out += [f"  warning: {w}" for w in self.warnings]
        return out


def checkpoint_bytes(i: CostInputs) -> int:
    """A checkpoint's size: the weights (or LoRA's adapters), the optimizer state, the tokenizer, the small files."""
    kind, amount = OPTIMIZER_STATE.get(i.optim, ("moments", 2))
    per_param = amount * i.param_bytes if kind == "moments" else amount
    saved = i.trainable if i.adapters_only else i.params
    saved_tensors = i.trainable_tensors if i.adapters_only else i.weight_tensors
    weights = saved * i.param_bytes + saved_tensors * WEIGHT_TENSOR_OVERHEAD
    optimizer = i.trainable * per_param + i.trainable_tensors * OPTIMIZER_TENSOR_OVERHEAD
    return (weights + optimizer + i.tokenizer_bytes + i.extra_state_bytes + FIXED_FILES_BYTES
            + RNG_STATE_BYTES * max(1, i.world_size))


def _count(every: int | None, start: int, end: int) -> int:
    """Multiples of `every` in (start, end]."""
    if not every or every <= 0 or end <= start:
        return 0
    return end // every - start // every


def cost_plan(i: CostInputs) -> CostPlan:
    steps = max(0, i.max_steps - i.start_step)
    evaluations = _count(i.eval_every, i.start_step, i.max_steps) + (1 if i.eval_on_start and i.start_step == 0
                                                                     else 0)
    eval_tokens = i.eval_blocks * i.block_size
    measured = i.measured_checkpoint_bytes is not None
    ckpt = i.measured_checkpoint_bytes if measured else checkpoint_bytes(i)
    saves = _count(i.save_every, i.start_step, i.max_steps)
    if steps and not (i.save_every and i.max_steps % i.save_every == 0):
        saves += 1  # the last step is always saved (so the run can be extended)
    plan = CostPlan(steps=steps, tokens=steps * i.tokens_per_step, evaluations=evaluations,
                    eval_tokens_each=eval_tokens, checkpoint_bytes=ckpt, checkpoint_measured=measured, saves=saves,
                    kept=i.keep_last, disk_bytes=0)
    if i.optim not in OPTIMIZER_STATE:
        plan.notes.append(f"optimizer {i.optim!r}: its state assumed to be AdamW's two moments")
    if i.train_tokens_per_s:
        plan.train_s = plan.tokens / i.train_tokens_per_s
        eval_rate = i.eval_tokens_per_s or i.train_tokens_per_s * FORWARD_SPEEDUP
        plan.eval_s = evaluations * eval_tokens / eval_rate
        if i.every_minutes:
            saves += int(plan.train_s // (i.every_minutes * 60))
            plan.saves = saves
        per_save = i.save_s if i.save_s is not None else ckpt / ASSUMED_WRITE_BYTES_PER_S
        plan.save_total_s = saves * per_save
        plan.notes.append(f"rates from {i.rates_from}: training {i.train_tokens_per_s:,.0f} tokens/s, evaluation "
                          + (f"{i.eval_tokens_per_s:,.0f} tokens/s" if i.eval_tokens_per_s else
                             f"~{eval_rate:,.0f} tokens/s (estimated: forward only, ~{FORWARD_SPEEDUP:g}x training)")
                          + ", a save " + (f"{i.save_s:.2f} s" if i.save_s is not None else
                                           f"~{per_save:.2f} s (assumed {size(ASSUMED_WRITE_BYTES_PER_S)}/s)"))
        plan.warnings += _warnings(plan, i)
    else:
        plan.notes.append("wall time: no step measured yet; `train --dry-run --calibrate` times a few steps, one "
                          "evaluation batch and one save in a temporary directory")
    kept = saves if i.keep_last is None else min(saves, i.keep_last + 1) + (1 if i.keep_best else 0)
    plan.disk_bytes = max(1, kept) * ckpt if saves else 0
    return plan


def _warnings(plan: CostPlan, i: CostInputs) -> list[str]:
    out = []
    s = i.settings
    eval_share = plan.share(plan.eval_s)
    if eval_share is not None and eval_share > WARN_SHARE:
        out.append(f"evaluation takes {eval_share:.0%} of the training time (over {WARN_SHARE:.0%}): evaluate less "
                   f"often (train.eval_steps, now {s.get('eval_steps', i.eval_every)}) or fewer batches "
                   f"(data.eval_batches, now {s.get('eval_batches')})")
    save_share = plan.share(plan.save_total_s)
    if save_share is not None and save_share > WARN_SHARE:
        out.append(f"saving takes {save_share:.0%} of the training time (over {WARN_SHARE:.0%}): save less often "
                   f"(train.save_steps, now {s.get('save_steps', i.save_every)}"
                   + (f"; checkpoint.every_minutes, now {i.every_minutes:g}" if i.every_minutes else "")
                   + "), or write in the background (checkpoint.async_save: true)")
    return out


def steps_for_epochs(train_blocks: int, global_batch: int, epochs: float) -> int:
    """Trainer's max_steps for an epoch-based run (drop_last off: a partial batch is a step)."""
    per_epoch = math.ceil(train_blocks / max(1, global_batch))
    return int(math.ceil(per_epoch * epochs))


def every_n_steps(value, max_steps: int) -> int | None:
    """train.eval_steps / save_steps as a step count: a value below 1 is a fraction of the run (Transformers)."""
    if value is None or value <= 0:
        return None
    return max(1, int(math.ceil(value * max_steps))) if value < 1 else int(value)
