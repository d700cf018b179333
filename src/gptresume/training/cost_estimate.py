"""The dry run's cost plan (training/cost_plan.py) for a config: its inputs gathered from the config, the data, the
model and the run directory (read, never written), and its rates from the run's own metrics.jsonl or from a short
calibration in a temporary directory (`--dry-run --calibrate`: a few training steps, one evaluation batch and one
save, timed; the run directory stays byte-identical).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gptresume.training.cost_plan import CostInputs, CostPlan, cost_plan, every_n_steps, steps_for_epochs

log = logging.getLogger(__name__)

CALIBRATION_WARMUP = 1  # steps not timed (the first step pays for allocation and kernel selection)
CALIBRATION_STEPS = 3  # steps timed
RECENT_ROWS = 20  # metrics.jsonl rows a resumed run's rate is the median of


@dataclass
class Rates:
    train_tokens_per_s: float | None = None
    eval_tokens_per_s: float | None = None
    save_s: float | None = None
    source: str = ""


def plan_for(config, resume_plan, data, model, tokenizer, rates: Rates | None = None) -> CostPlan:
    """The cost plan of `config` as `train` would run it (from the resume plan's step)."""
    return cost_plan(cost_inputs(config, resume_plan, data, model, tokenizer, rates or run_rates(config.run_dir)))


def cost_inputs(config, resume_plan, data, model, tokenizer, rates: Rates) -> CostInputs:
    from gptresume.data.evaluation import evaluation_set
    from gptresume.data.streaming import DEFAULT_SHUFFLE_BUFFER

    args = config.training_arguments()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    block = data.block_size
    train_blocks = len(data.train) if hasattr(data.train, "__len__") else None
    max_steps = args.max_steps if args.max_steps > 0 else steps_for_epochs(train_blocks or 0, global_batch,
                                                                           args.num_train_epochs)
    per_epoch = max_steps if train_blocks is None else steps_for_epochs(train_blocks, global_batch, 1)
    evaluated = evaluation_set(data.validation, config.data.eval_batches, args.eval_batch_size * args.world_size)
    eval_every = _cadence(args.eval_strategy, args.eval_steps, max_steps, per_epoch) if evaluated is not None else None
    save_every = _cadence(args.save_strategy, args.save_steps, max_steps, per_epoch)
    if config.checkpoint.every == "auto":
        save_every = None  # by Daly's interval, from measured pauses: not known ahead
    measured = None
    if resume_plan is not None and resume_plan.checkpoint is not None and resume_plan.checkpoint.manifest:
        files = resume_plan.checkpoint.manifest.get("files") or {}
        measured = sum(int(f.get("bytes", 0)) for f in files.values()) or None
    stream_state = 0
    if config.data.streaming:
        stream_state = (config.data.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER) * block * 8
    return CostInputs(
        params=sum(p.numel() for p in params), trainable=sum(p.numel() for p in trainable),
        param_bytes=params[0].element_size() if params else 4, weight_tensors=len(params),
        trainable_tensors=len(trainable), optim=str(getattr(args.optim, "value", args.optim)),
        adapters_only=config.model.peft is not None, tokenizer_bytes=tokenizer_bytes(tokenizer),
        extra_state_bytes=stream_state, world_size=args.world_size,
        start_step=resume_plan.step if resume_plan is not None else 0, max_steps=max_steps,
        tokens_per_step=global_batch * block, eval_every=eval_every, eval_on_start=bool(args.eval_on_start),
        eval_blocks=len(evaluated) if evaluated is not None else 0, block_size=block, save_every=save_every,
        every_minutes=config.checkpoint.every_minutes, keep_last=config.checkpoint.keep_last,
        keep_best=config.checkpoint.keep_best or bool(args.load_best_model_at_end),
        measured_checkpoint_bytes=measured, train_tokens_per_s=rates.train_tokens_per_s,
        eval_tokens_per_s=rates.eval_tokens_per_s, save_s=rates.save_s, rates_from=rates.source,
        settings={"eval_steps": config.train.get("eval_steps"), "eval_batches": config.data.eval_batches,
                  "save_steps": config.train.get("save_steps")})


def _cadence(strategy, steps, max_steps: int, per_epoch: int) -> int | None:
    kind = str(getattr(strategy, "value", strategy))
    if kind in ("steps", "best"):
        return every_n_steps(steps, max_steps)
    if kind == "epoch":
        return max(1, per_epoch)
    return None


def tokenizer_bytes(tokenizer) -> int:
    """The bytes `save_pretrained` writes for the tokenizer (saved once into a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="gptresume-tokenizer-") as tmp:
        try:
            tokenizer.save_pretrained(tmp)
        except Exception:  # a tokenizer that cannot be saved here: the estimate leaves it out
            return 0
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())


def run_rates(run_dir: Path) -> Rates:
    """The training rate a run measured (median tokens/s of its latest metrics.jsonl rows); none for a new run."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    except (OSError, ValueError):
        return Rates()
    rates = [r["tokens_per_s"] for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
    if not rates:
        return Rates()
    return Rates(train_tokens_per_s=statistics.median(rates[-RECENT_ROWS:]),
                 source=f"the run's metrics.jsonl (median of its last {min(len(rates), RECENT_ROWS)} logged steps)")


def calibrate(config, model, tokenizer, data) -> Rates:
    """Time CALIBRATION_STEPS training steps (after CALIBRATION_WARMUP), one evaluation batch and one save (written
    by Trainer, then hashed and fsynced as a commit does) with this config, model and data, in a temporary directory
    outside the run directory, removed afterwards. The model's weights change: the caller discards it."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from gptresume.checkpoint import write_manifest
    from gptresume.data import PackedBlockCollator
    from gptresume.data.evaluation import evaluation_set

    tmp = Path(tempfile.mkdtemp(prefix="gptresume-calibrate-"))
    n = CALIBRATION_WARMUP + CALIBRATION_STEPS
    marks: dict = {"step_end": {}}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks["step_end"][state.global_step] = time.perf_counter()
            if control.should_save:
                marks["save_start"] = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            marks["save_end"] = time.perf_counter()

    try:
        extra = {"ignore_data_skip": True} if config.data.streaming else {}
        args = config.training_arguments(output_dir=str(tmp), max_steps=n, save_strategy="steps", save_steps=n,
                                         eval_strategy="no", logging_strategy="no", report_to="none",
                                         disable_tqdm=True, load_best_model_at_end=False, push_to_hub=False, **extra)
        trainer = Trainer(model=model, args=args, train_dataset=data.train, data_collator=PackedBlockCollator(),
                          processing_class=tokenizer, callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        log.info("Calibrating: %d training steps, one evaluation batch and one save in %s", n, tmp)
        trainer.train()
        ends = marks["step_end"]
        train_s = ends[n] - ends[CALIBRATION_WARMUP]  # step n's end mark is taken before its save
        tokens = (CALIBRATION_STEPS * args.per_device_train_batch_size * args.gradient_accumulation_steps
                  * data.block_size)
        save_s = None
        ckpt = tmp / f"checkpoint-{n}"
        if "save_start" in marks and ckpt.is_dir():
            t0 = time.perf_counter()
            write_manifest(ckpt, step=n, epoch=None, config={}, config_fingerprint="calibration",
                           data_fingerprint=None, world_size=1)
            save_s = marks["save_end"] - marks["save_start"] + time.perf_counter() - t0
        eval_rate = None
        batch = evaluation_set(data.validation, 1, args.eval_batch_size)
        if batch is not None and len(batch):
            trainer.evaluate(eval_dataset=batch)  # the first one pays for the DataLoader's start
            t0 = time.perf_counter()
            trainer.evaluate(eval_dataset=batch)
            eval_rate = len(batch) * data.block_size / max(time.perf_counter() - t0, 1e-9)
        return Rates(train_tokens_per_s=tokens / max(train_s, 1e-9), eval_tokens_per_s=eval_rate, save_s=save_s,
                     source=f"calibration (--calibrate: {CALIBRATION_STEPS} steps, "
                            f"{'one evaluation batch, ' if eval_rate else ''}one save)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
