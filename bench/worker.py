"""One measurement in a fresh process; bench/run.py starts one of these per figure and reads the JSON it writes.

  worker.py matmul --dtype fp32|bf16 --n N --out F                 peak torch.matmul throughput
  worker.py setup-tokenizers --work DIR                             the tokenizers the workloads load
  worker.py train --peer gptresume|trainer|minimal --config Y [--set k=v ...] --out F [options]

`train` records a timestamp at the end of every optimizer step, the same way for all three peers:
  gptresume  `gptresume train` itself (cli.main, in this process), with a clock callback added to its Trainer
  trainer    plain `transformers.Trainer` with TrainingArguments(**config.train): no gptresume code in the loop
  minimal    a nanoGPT-style loop: AdamW (fused when the config's optim is), the same LR schedule, weight decay
             groups, gradient clipping, autocast and batches as Trainer
The model (same init), tokenizer and packed blocks come from the same config for all three (set-up only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T_PROCESS = time.time()  # close to the process start: only the standard library is imported so far

PERF_KEYS = ("bf16", "fp16", "tf32", "torch_compile", "torch_compile_backend", "torch_compile_mode", "optim",
             "optim_args", "bf16_full_eval", "fp16_full_eval", "half_precision_backend", "use_cpu")


# ---------------------------------------------------------------- small helpers


def write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class Clock:
    """Wall-clock marks: one per optimizer step end, plus named events; optionally ends the process early."""

    def __init__(self, out: str, exit_after_steps: int | None = None, exit_at_step: int | None = None):
        self.out = out
        self.step_ends: list[tuple[int, float]] = []
        self.events: dict[str, float] = {"process": T_PROCESS}
        self.exit_after_steps = exit_after_steps
        self.exit_at_step = exit_at_step
        self.extra: dict = {}

    def mark(self, name: str) -> None:
        self.events.setdefault(name, time.time())

    def step_end(self, step: int) -> None:
        self.step_ends.append((step, time.time()))
        if (self.exit_after_steps and len(self.step_ends) >= self.exit_after_steps) or \
                (self.exit_at_step and step >= self.exit_at_step):
            self.finish(exit_code=0)

    def finish(self, exit_code: int | None = None, **extra) -> None:
        from gptresume import allocator

        self.extra.update(extra, allocator="kept memory" if allocator.applied() else "glibc defaults")
        write_json(self.out, {"step_ends": self.step_ends, "events": self.events, **self.extra})
        if exit_code is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)  # measured what we came for; skip the final save, samples and teardown


def clock_callback(clock: Clock):
    from transformers import TrainerCallback

    class ClockCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.mark("train_begin")

        def on_step_begin(self, args, state, control, **kwargs):
            clock.mark("first_step_begin")

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end(state.global_step)

    return ClockCallback()


def model_facts(model, block_size: int) -> dict:
    """Parameter counts and the nanoGPT/PaLM estimate of training FLOPs per token: 6 N + 12 L d T, where N
    counts every parameter but the position embedding (the tied token embedding is the LM head's matmul)."""
    cfg = model.config
    params = {id(p): p.numel() for p in model.parameters()}
    n_total = sum(params.values())
    n_wpe = model.transformer.wpe.weight.numel()
    n = n_total - n_wpe
    return {"params": n_total, "params_no_wpe": n,
            "flops_per_token": 6 * n + 12 * cfg.n_layer * cfg.n_embd * block_size}


# ---------------------------------------------------------------- matmul peak


def cmd_matmul(a) -> None:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    x = torch.randn(a.n, a.n).to(dtype)
    y = torch.randn(a.n, a.n).to(dtype)
    for _ in range(2):
        torch.matmul(x, y)
    rates = []
    for _ in range(a.iters):
        t = time.perf_counter()
        torch.matmul(x, y)
        rates.append(2 * a.n ** 3 / (time.perf_counter() - t) / 1e9)
    rates.sort()
    write_json(a.out, {"gflops_median": rates[len(rates) // 2], "gflops_max": rates[-1], "n": a.n,
                       "threads": torch.get_num_threads()})


# ---------------------------------------------------------------- set-up


def cmd_setup_tokenizers(a) -> None:
    """tok-demo: what examples/demo.yaml trains (byte-level BPE, 8000, on python-docs). tok-gpt2: the same
    corpus trained as far as it goes, padded with unused tokens to GPT-2's 50257 (the 124M model's shape)."""
    from gptresume.data import load_texts
    from gptresume.config import DataConfig
    from gptresume.modeling import train_tokenizer

    texts = [r["text"] for r in load_texts(DataConfig())]
    work = Path(a.work)
    train_tokenizer(texts, 8000).save_pretrained(work / "tok-demo")
    tok = train_tokenizer(texts, 50257)
    tok.add_tokens([f"<|unused{i}|>" for i in range(50257 - len(tok))])
    assert len(tok) == 50257, len(tok)
    tok.save_pretrained(work / "tok-gpt2")
    write_json(a.out, {"vocab": len(tok)})


# ---------------------------------------------------------------- peers


def load_workload(a):
    """Config, tokenizer, packed data and model for the trainer and minimal peers (gptresume's own loaders,
    reading the data cache of a template run directory so no peer pays for tokenization)."""
    import torch

    from gptresume.config import load_config
    from gptresume.data import prepare_data
    from gptresume.modeling import build_model, load_tokenizer

    config = load_config(a.config, a.set)
    torch.set_num_threads(torch.get_num_threads())
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config.data, tokenizer, Path(a.data_from))
    model = build_model(config.model, tokenizer, config.train.get("seed", 42))
    return config, tokenizer, data, model


def train_settings(a, config) -> dict:
    """config.train; with --out-of-the-box every performance knob at its TrainingArguments default (but those
    given with --set)."""
    train = dict(config.train)
    if a.out_of_the_box:
        given = {kv.split("=", 1)[0].removeprefix("train.") for kv in a.set}
        for k in PERF_KEYS:
            if k not in given:
                train.pop(k, None)
    return train


def collate(examples):
    import torch

    ids = torch.tensor([ex["input_ids"] for ex in examples], dtype=torch.long)
    labels = ids.clone()
    labels[:, 0] = -100  # as gptresume's PackedBlockCollator: never predicted, so the loss is the per-token mean
    return {"input_ids": ids, "labels": labels}


def run_trainer(a, clock: Clock) -> None:
    from transformers import Trainer, TrainingArguments

    config, tokenizer, data, model = load_workload(a)
    train = train_settings(a, config)
    attn = a.attn
    model.set_attn_implementation(attn)
    train["output_dir"] = a.output_dir
    args = TrainingArguments(**train, disable_tqdm=True)
    clock.extra.update(model_facts(model, data.block_size), tokens_per_step=args.per_device_train_batch_size
                       * args.gradient_accumulation_steps * data.block_size,
                       settings={k: getattr(args, k) for k in ("bf16", "torch_compile")} | {
                           "optim": str(args.optim.value), "attn": attn})
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                      data_collator=collate, callbacks=[clock_callback(clock)])
    clock.mark("train_call")
    trainer.train()
    clock.finish()


def run_minimal(a, clock: Clock) -> None:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import TrainingArguments, get_scheduler

    config, tokenizer, data, model = load_workload(a)
    args = TrainingArguments(**{**train_settings(a, config), "output_dir": a.output_dir})
    torch.manual_seed(args.seed)
    model.set_attn_implementation(a.attn)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # Trainer's groups: no decay on bias/LayerNorm
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    fused = "fused" in str(args.optim.value)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate,
                            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, fused=fused)
    sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(args.max_steps),
                          num_training_steps=args.max_steps)
    gen = torch.Generator()
    gen.manual_seed(args.seed)
    loader = DataLoader(data.train, batch_size=args.per_device_train_batch_size, collate_fn=collate,
                        sampler=RandomSampler(data.train, generator=gen))
    fwd = torch.compile(model) if args.torch_compile else model
    clock.extra.update(model_facts(model, data.block_size), tokens_per_step=args.per_device_train_batch_size
                       * data.block_size, settings={"bf16": args.bf16, "torch_compile": args.torch_compile,
                                                    "optim": "adamw_torch_fused" if fused else "adamw_torch",
                                                    "attn": a.attn})
    clock.mark("train_call")
    step = 0
    while step < args.max_steps:
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = fwd(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss.item()  # Trainer reads the loss every logging step; so does every real loop
            step += 1
            clock.step_end(step)
            if step >= args.max_steps:
                break
    clock.finish()


def run_gptresume(a, clock: Clock) -> None:
    """`gptresume train` in this process, with the clock added to its Trainer and, with --save-timing, every
    part of each checkpoint save timed: training paused, written, hashed, fsynced, committed."""
    import threading

    import transformers

    from gptresume import async_save, callbacks, checkpoint, cli, training

    original_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        self.add_callback(clock_callback(clock))
        clock.trainer = self
        block = len(self.train_dataset[0]["input_ids"])
        clock.extra.update(model_facts(self.model, block), tokens_per_step=block * self.args.per_device_train_batch_size
                           * self.args.gradient_accumulation_steps,
                           settings={"bf16": self.args.bf16, "torch_compile": self.args.torch_compile,
                                     "optim": str(self.args.optim.value), "attn": self.model.config._attn_implementation,
                                     "async_save": bool(getattr(self, "async_saver", None))})
        clock.mark("train_call")
        return original_train(self, *args, **kwargs)

    transformers.Trainer.train = train

    # gptresume's per-step cost on top of Trainer's loop is its callbacks: time every per-step event (Trainer's
    # own callbacks included) after the first step.
    from transformers.trainer_callback import CallbackHandler

    original_event = CallbackHandler.call_event
    per_step = ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_log",
                "on_substep_end")
    clock.extra["callback_s"] = 0.0

    def call_event(self, event, *args, **kwargs):
        t = time.perf_counter()
        try:
            return original_event(self, event, *args, **kwargs)
        finally:
            if event in per_step and len(clock.step_ends) >= 1:
                clock.extra["callback_s"] += time.perf_counter() - t

    CallbackHandler.call_event = call_event

    saves: dict[int, dict] = {}
    lock = threading.Lock()

    def record(step, **values):
        with lock:
            row = saves.setdefault(step, {"step": step})
            for k, v in values.items():
                row[k] = row.get(k, 0) + v

    if a.save_timing:
        original_save = async_save.AsyncSaveMixin._save_checkpoint
        original_on_save = callbacks.CommitCallback.on_save
        original_hash = checkpoint.hash_file

        def save_checkpoint(self, model, trial):
            t = time.perf_counter()
            original_save(self, model, trial)
            record(self.state.global_step, blocked_s=time.perf_counter() - t)

        def on_save(self, args, state, control, **kwargs):
            t = time.perf_counter()
            out = original_on_save(self, args, state, control, **kwargs)
            record(state.global_step, blocked_s=time.perf_counter() - t)
            return out

        def hash_file(path, fsync=False):
            if not fsync:  # verification, not a commit
                return original_hash(path, fsync=False)
            step = next(int(q.name.rsplit("-", 1)[1]) for q in Path(path).parents if q.name.startswith("checkpoint-"))
            if fsync:
                t = time.perf_counter()
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                record(step, fsync_s=time.perf_counter() - t)
            t = time.perf_counter()
            size, digest = original_hash(path, fsync=False)
            record(step, hash_s=time.perf_counter() - t, bytes=size)
            return size, digest

        async_save.AsyncSaveMixin._save_checkpoint = save_checkpoint
        callbacks.CommitCallback.on_save = on_save
        checkpoint.hash_file = hash_file

    original_finishing = training.finishing_saves

    from contextlib import contextmanager

    def collect():
        trainer = getattr(clock, "trainer", None)
        saver = getattr(trainer, "async_saver", None)
        for h in (saver.history if saver else []):
            record(h["step"], total_s=h["total_s"], waited_s=h["waited_s"], write_s=h["write_s"],
                   commit_s=h["commit_s"])
        for row in saves.values():  # a synchronous save is over when training resumes
            row.setdefault("total_s", row.get("blocked_s", 0.0))
        return sorted(saves.values(), key=lambda r: r["step"])

    @contextmanager
    def finishing(trainer):
        with original_finishing(trainer):
            yield
        clock.mark("saves_done")
        if a.exit_when_saved:  # the final model and samples are not what we measure
            clock.finish(exit_code=0, returncode=0, saves=collect())

    training.finishing_saves = finishing
    argv = ["train", a.config, *[x for kv in a.set for x in ("--set", kv)],
            "--set", f"train.output_dir={a.output_dir}", *a.cli_args]
    code = cli.main(argv)
    clock.finish(exit_code=None, returncode=code, saves=collect())


def cmd_train(a) -> None:
    clock = Clock(a.out, exit_after_steps=a.exit_after_steps, exit_at_step=a.exit_at_step)
    # The CPU allocator setting `gptresume train` applies itself (allocator.py): "default" turns it off for the
    # gptresume peer, "kept" applies it to the other two; without --allocator each peer runs as it ships.
    if a.allocator == "default":
        os.environ["GPTRESUME_MALLOC"] = "system"
    elif a.allocator == "kept" and a.peer != "gptresume":
        from gptresume.allocator import keep_freed_memory

        keep_freed_memory()
    {"gptresume": run_gptresume, "trainer": run_trainer, "minimal": run_minimal}[a.peer](a, clock)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("matmul")
    m.add_argument("--dtype", choices=("fp32", "bf16"), required=True)
    m.add_argument("--n", type=int, default=4096)
    m.add_argument("--iters", type=int, default=3)
    m.add_argument("--out", required=True)
    s = sub.add_parser("setup-tokenizers")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--peer", choices=("gptresume", "trainer", "minimal"), required=True)
    t.add_argument("--config", required=True)
    t.add_argument("--set", action="append", default=[])
    t.add_argument("--out", required=True)
    t.add_argument("--output-dir", required=True, help="run directory (gptresume) / Trainer output_dir")
    t.add_argument("--data-from", help="a run directory whose data-cache holds the packed blocks (trainer, minimal)")
    t.add_argument("--attn", default="sdpa", help="attention implementation (trainer, minimal)")
    t.add_argument("--allocator", choices=("default", "kept"),
                   help="glibc's default malloc settings, or gptresume's (freed memory kept); default: as shipped")
    t.add_argument("--out-of-the-box", action="store_true",
                   help="trainer, minimal: performance fields at their TrainingArguments defaults")
    t.add_argument("--exit-after-steps", type=int, help="write the result and exit after this many steps")
    t.add_argument("--exit-at-step", type=int, help="write the result and exit at this global step")
    t.add_argument("--save-timing", action="store_true", help="gptresume: time every part of every save")
    t.add_argument("--exit-when-saved", action="store_true",
                   help="gptresume: write the result and exit once training ended and its saves are committed")
    t.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[], help="more `gptresume train` arguments")
    a = p.parse_args()
    {"matmul": cmd_matmul, "setup-tokenizers": cmd_setup_tokenizers, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    main()
