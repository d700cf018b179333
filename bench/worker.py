"""One measurement in a fresh process; bench/run.py starts one of these per figure and reads the JSON it writes.

  worker.py matmul --dtype fp32|bf16 --n N --out F                 peak torch.matmul throughput (GPU when present)
  worker.py setup-tokenizers --work DIR                             the tokenizers the workloads load
  worker.py train --peer gptresume|trainer|minimal --config Y [--set k=v ...] --out F [options]
  worker.py verify-speed --size-mb N --work DIR --out F             `verify` of one checkpoint: sha256 vs xxh3-128
  worker.py step-cost --work DIR --out F [--order plain gptresume]  the same Trainer without and with gptresume's
                                                                    callbacks, in this process (step_cost.py)

`train` also runs under torchrun (bench/run.py's checkpoint_ddp section): every rank trains, rank 0 writes F.

`train` records a timestamp at the end of every optimizer step, the same way for all three peers:
  gptresume  `gptresume train` itself (gptresume.cli.main, in this process), with the bench's callbacks added to the
             Trainer it builds (see run_gptresume: no gptresume function is replaced)
  trainer    plain `transformers.Trainer` with TrainingArguments(**config.train): no gptresume code in the loop
  minimal    a nanoGPT-style loop: AdamW (fused when the config's optim is), the same LR schedule, weight decay
             groups, gradient clipping, autocast and batches as Trainer
The model (same init), tokenizer and packed blocks come from the same config for all three (set-up only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

T_PROCESS = time.time()  # close to the process start: only the standard library is imported so far
RANK = int(os.environ.get("RANK", "0"))

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

    def __init__(self, out: str, exit_after_steps: int | None = None, exit_at_step: int | None = None,
                 sigterm_at_step: int | None = None):
        self.out = out
        self.sigterm_at_step = sigterm_at_step  # send this process SIGTERM once this step ends (a preemption)
        self.step_ends: list[tuple[int, float]] = []
        self.events: dict[str, float] = {"process": T_PROCESS}
        self.exit_after_steps = exit_after_steps
        self.exit_at_step = exit_at_step
        self.extra: dict = {}
        self.trainer = None  # the gptresume peer's Trainer, once train() is called

    def mark(self, name: str) -> None:
        self.events.setdefault(name, time.time())

    def step_end(self, step: int) -> None:
        self.step_ends.append((step, time.time()))
        if self.sigterm_at_step is not None and step == self.sigterm_at_step:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)  # gptresume's handler: the step's save commits, then exit 75
        if (self.exit_after_steps and len(self.step_ends) >= self.exit_after_steps) or \
                (self.exit_at_step and step >= self.exit_at_step):
            self.finish(exit_code=0)

    def finish(self, exit_code: int | None = None, **extra) -> None:
        from gptresume import allocator

        self.extra.update(extra, allocator="kept memory" if allocator.applied() else "glibc defaults")
        if RANK == 0:  # under torchrun: rank 0 reports (its pause is the one with the model's copy or write)
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
    gpu = torch.cuda.is_available()  # the device the training peers use: the GPU when there is one
    device = "cuda" if gpu else "cpu"
    x = torch.randn(a.n, a.n, device=device).to(dtype)
    y = torch.randn(a.n, a.n, device=device).to(dtype)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    reps = 20 if gpu else 1  # a GPU matmul of this size takes milliseconds: time a batch of them
    for _ in range(2):
        torch.matmul(x, y)
    sync()
    rates = []
    for _ in range(a.iters):
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(x, y)
        sync()
        rates.append(2 * a.n ** 3 * reps / (time.perf_counter() - t) / 1e9)
    rates.sort()
    write_json(a.out, {"gflops_median": rates[len(rates) // 2], "gflops_max": rates[-1], "n": a.n,
                       "threads": torch.get_num_threads(), "device": device})


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
    device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"  # where Trainer would train
    model.to(device)  # before the optimizer is built (fused AdamW takes the device's parameters)
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
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
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


# ---------------------------------------------------------------- the gptresume peer


PER_STEP_EVENTS = ("on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end",
                   "on_log")
COMMITTED = re.compile(r"Committed checkpoint-(\d+) in ([0-9.]+)s")  # gptresume's DEBUG line of each commit


class SaveBook:
    """One row per save (by step), filled from the training thread (the callback) and from whichever thread commits
    (the log handler: the training thread for a synchronous save, the writer thread for an asynchronous one)."""

    def __init__(self):
        self.rows: dict[int, dict] = {}
        self.lock = threading.Lock()

    def record(self, step: int, **values) -> None:
        with self.lock:
            self.rows.setdefault(step, {"step": step}).update(values)

    def sorted(self) -> list[dict]:
        with self.lock:
            return [dict(self.rows[k]) for k in sorted(self.rows)]


class CommitLog(logging.Handler):
    """On the "gptresume" logger: the commit time of every save from gptresume's own DEBUG line
    "Committed checkpoint-N in X s" (training/callbacks.py, written by the commit itself in both modes)."""

    def __init__(self, book: SaveBook):
        super().__init__(logging.DEBUG)
        self.book = book

    def emit(self, record: logging.LogRecord) -> None:
        m = COMMITTED.match(record.getMessage())
        if m:
            self.book.record(int(m[1]), commit_s=float(m[2]))


def measure_hashing(run_dir: Path, book: SaveBook) -> None:
    """Hashing and fsync of each committed checkpoint still in RUN_DIR (retention deleted the older ones; every save
    writes the same files of the same size), after training, so neither is added to the run being timed:

    - hash_s: `gptresume.durable.hash_file` (the function the commit streams every file through) re-run on each
      file the manifest lists, with the digest the manifest records, checked against it. The files were just written
      and read by the commit, so, as during the commit, they come from the page cache.
    - fsync_s: each file copied to a scratch file (dirty pages, as a file torch.save has just written) and
      `os.fsync` of the copy timed: what the commit's fsync of a freshly written file costs on this disk.
    """
    from gptresume.checkpoint.manifest import file_digest
    from gptresume.durable import hash_file

    scratch = run_dir / ".bench-fsync-copy"
    for manifest in run_dir.glob("checkpoint-*/manifest.json"):
        ckpt = manifest.parent
        hash_s = fsync_s = 0.0
        size = 0
        for name, meta in json.loads(manifest.read_text())["files"].items():
            algorithm, expected = file_digest(meta)  # the digest the commit used (xxh3_128 in format 2)
            t = time.perf_counter()
            n, digest = hash_file(ckpt / name, digest=algorithm)
            hash_s += time.perf_counter() - t
            if digest != expected:
                raise RuntimeError(f"{ckpt / name}: {algorithm} differs from its manifest")
            size += n
            shutil.copyfile(ckpt / name, scratch)
            fd = os.open(scratch, os.O_RDONLY)
            try:
                t = time.perf_counter()
                os.fsync(fd)
                fsync_s += time.perf_counter() - t
            finally:
                os.close(fd)
                scratch.unlink()
        book.record(int(ckpt.name.rsplit("-", 1)[1]), hash_s=hash_s, fsync_s=fsync_s, bytes=size)


def gptresume_callbacks(clock: Clock, book: SaveBook, a):
    """Two TrainerCallbacks that bracket the Trainer's callback list (`Opening` first, `Closing` last):

    - the clock: `Closing.on_step_end` marks every optimizer step's end, after every other callback's on_step_end
      (gptresume's per-step work included), as `clock_callback` does for the other peers;
    - callback_s: each per-step event's time from `Opening` (first to be called) to `Closing` (last), i.e. all
      callbacks of the event, gptresume's and Trainer's own, summed over the steps after the first;
    - blocked_s (training paused by a save): Trainer runs `_maybe_log_save_evaluate` after on_step_end: log
      (on_log), evaluate (on_evaluate), then `_save_checkpoint` and on_save. From the last of these events
      `Closing` saw at the save's step to its on_save, which comes after gptresume's CommitCallback.on_save has
      committed a synchronous save (or returned, for an asynchronous one): the save alone, whether or not that
      step also logged or evaluated;
    - on_train_end (with --save-timing or --exit-when-saved): waits for an asynchronous save still in flight
      (`trainer.async_saver.wait()`, as gptresume itself does when train() returns), marks saves_done, adds the
      saver's per-save history and the hashing figures, and with --exit-when-saved writes the result and exits
      (the final model and the samples are not what is measured).
    """
    from transformers import TrainerCallback

    clock.extra["callback_s"] = 0.0
    opened: list[float] = []

    def open_event(self, args, state, control, **kwargs):
        opened[:] = [time.perf_counter()]

    Opening = type("Opening", (TrainerCallback,), {ev: open_event for ev in PER_STEP_EVENTS})

    class Closing(TrainerCallback):
        def __init__(self):
            self.before_save = None  # perf_counter at the end of the last event before a save could start

        def close(self) -> None:
            if opened and clock.step_ends:
                clock.extra["callback_s"] += time.perf_counter() - opened[0]
            opened.clear()

        def on_train_begin(self, args, state, control, **kwargs):
            clock.mark("train_begin")

        def on_step_begin(self, args, state, control, **kwargs):
            self.close()
            clock.mark("first_step_begin")

        def on_substep_end(self, args, state, control, **kwargs):
            self.close()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.close()

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.close()

        def on_step_end(self, args, state, control, **kwargs):
            self.close()
            clock.step_end(state.global_step)
            self.before_save = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.close()
            now = time.perf_counter()
            if logs and "eval_loss" in logs and self.before_save is not None:
                # the evaluation (it logs its metrics before on_evaluate): from the step's last event before it
                clock.extra.setdefault("evals", []).append([state.global_step, now - self.before_save])
            self.before_save = now

        def on_evaluate(self, args, state, control, **kwargs):
            self.before_save = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            if self.before_save is not None:
                blocked = time.perf_counter() - self.before_save
                book.record(state.global_step, blocked_s=blocked)
                clock.extra.setdefault("saves", []).append([state.global_step, blocked])
            self.before_save = None

        def on_train_end(self, args, state, control, **kwargs):
            if not (a.save_timing or a.exit_when_saved):
                return
            saver = getattr(clock.trainer, "async_saver", None)
            if saver is not None:
                saver.wait()
            clock.mark("saves_done")
            if a.save_timing and RANK == 0:  # rank 0 commits: the commit lines and the manifests are its
                finish_save_timing(clock, book, Path(args.output_dir))
            if a.exit_when_saved:
                clock.finish(exit_code=0, returncode=0)

    return Opening(), Closing()


def finish_save_timing(clock: Clock, book: SaveBook, run_dir: Path) -> None:
    """Every save's row: blocked_s (callback), commit_s (log), the async saver's history, hashing and fsync."""
    saver = getattr(clock.trainer, "async_saver", None)
    for h in (saver.history if saver is not None else []):
        book.record(h["step"], waited_s=h["waited_s"], write_s=h["write_s"], total_s=h["total_s"],
                    saver_blocked_s=h["blocked_s"], saver_commit_s=h["commit_s"])
    measure_hashing(run_dir, book)
    saves = book.sorted()
    for row in saves:
        row.setdefault("total_s", row.get("blocked_s"))  # a synchronous save is over when training goes on
    missing = [r["step"] for r in saves if "blocked_s" not in r or "commit_s" not in r]
    if missing:  # a renamed log line or a save outside the callback's view: fail rather than report zeros
        raise RuntimeError(f"saves at steps {missing} lack the pause or the commit time: {saves}")
    clock.extra.update(saves=saves)


def run_gptresume(a, clock: Clock) -> None:
    """`gptresume train` itself: `gptresume.cli.main(argv)` in this process, exactly as a user runs it, with the
    bench's two callbacks (gptresume_callbacks) added to its Trainer and, with --save-timing, a log handler for
    the commit times. No function of gptresume is replaced.

    The one patch is of transformers: `Trainer.train` is wrapped, once, to add the callbacks (Trainer's public
    `remove_callback`/`add_callback`, so that `Opening` is first and `Closing` last) and to keep the Trainer (its
    `async_saver.history`, its model's facts). The CLI builds its Trainer inside `gptresume train` and no public
    hook of Transformers or gptresume adds a callback to a Trainer one does not construct; building the Trainer
    in the bench (and calling `gptresume.train(trainer)`) would time something other than the command users run.
    """
    import transformers

    from gptresume import cli

    book = SaveBook()
    original_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        transformers.Trainer.train = original_train  # this process trains one Trainer
        clock.trainer = self
        opening, closing = gptresume_callbacks(clock, book, a)
        existing = list(self.callback_handler.callbacks)
        for cb in existing:
            self.remove_callback(cb)
        for cb in (opening, *existing, closing):
            self.add_callback(cb)
        stream = getattr(self.train_dataset, "inner", None)  # a streamed source (data/streaming.py) has no [0]
        block = stream.block_size if stream is not None else len(self.train_dataset[0]["input_ids"])
        clock.extra.update(model_facts(self.model, block), tokens_per_step=block * self.args.per_device_train_batch_size
                           * self.args.gradient_accumulation_steps,
                           settings={"bf16": self.args.bf16, "torch_compile": self.args.torch_compile,
                                     "optim": str(self.args.optim.value),
                                     "attn": self.model.config._attn_implementation,
                                     "async_save": getattr(self, "async_saver", None) is not None})
        clock.mark("train_call")
        return original_train(self, *args, **kwargs)

    transformers.Trainer.train = train
    if a.save_timing:
        logging.getLogger("gptresume").setLevel(logging.DEBUG)  # the commit lines are DEBUG records
        logging.getLogger("gptresume").addHandler(CommitLog(book))
    argv = ["train", a.config, *[x for kv in a.set for x in ("--set", kv)],
            "--set", f"train.output_dir={a.output_dir}", *a.cli_args]
    code = cli.main(argv)
    clock.finish(exit_code=None, returncode=code)


def cmd_verify_speed(a) -> None:
    """`verify_checkpoint` of one checkpoint of --size-mb (a model file and an optimizer file twice its size, as
    Adam's two moments make it), committed with a format 1 manifest (sha256) and with a format 2 one (xxh3-128),
    alternating, from the page cache (the files were just written), as `gptresume verify` and start-up
    verification read a recently written checkpoint. The sha256 figure is what every verify cost before format 2
    (hash_file's chunking changed with it; sha256 itself bounds the speed, measured unchanged)."""
    from gptresume.checkpoint import verify_checkpoint, write_manifest

    ckpt = Path(a.work) / "verify-speed" / "checkpoint-1"
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    ckpt.mkdir(parents=True)
    total = a.size_mb << 20
    block = os.urandom(1 << 20)
    for name, share in (("model.safetensors", 1), ("optimizer.pt", 2)):
        with open(ckpt / name, "wb") as f:
            for _ in range(total * share // 3 >> 20):
                f.write(block)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    runs = {"sha256": [], "xxh3_128": []}
    for rep in range(a.reps):
        for digest in (["sha256", "xxh3_128"] if rep % 2 == 0 else ["xxh3_128", "sha256"]):
            write_manifest(ckpt, step=1, epoch=None, config={}, config_fingerprint="bench", data_fingerprint=None,
                           world_size=1, digest=digest)
            t = time.perf_counter()
            info = verify_checkpoint(ckpt)
            runs[digest].append(time.perf_counter() - t)
            if not info.valid:
                raise RuntimeError(f"verify failed: {info.faults}")
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    write_json(a.out, {"bytes": size, "runs_s": runs})


def cmd_train(a) -> None:
    clock = Clock(a.out, exit_after_steps=a.exit_after_steps, exit_at_step=a.exit_at_step,
                  sigterm_at_step=a.sigterm_at_step)
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
    t.add_argument("--sigterm-at-step", type=int, help="gptresume: SIGTERM this process when this step ends")
    t.add_argument("--save-timing", action="store_true", help="gptresume: time every part of every save")
    t.add_argument("--exit-when-saved", action="store_true",
                   help="gptresume: write the result and exit once training ended and its saves are committed")
    t.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[], help="more `gptresume train` arguments")
    k = sub.add_parser("pack")
    k.add_argument("--peer", choices=("gptresume", "run_clm", "nanogpt"), required=True)
    k.add_argument("--corpus", required=True, help="directory of generated .txt files")
    k.add_argument("--tokenizer", required=True)
    k.add_argument("--work", required=True)
    k.add_argument("--out", required=True)
    v = sub.add_parser("verify-speed")
    v.add_argument("--size-mb", type=int, required=True)
    v.add_argument("--reps", type=int, default=3)
    v.add_argument("--work", required=True)
    v.add_argument("--out", required=True)
    c = sub.add_parser("step-cost")
    c.add_argument("--work", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--steps", type=int, default=40)
    c.add_argument("--warmup", type=int, default=5)
    c.add_argument("--logging-steps", type=int, default=10)
    c.add_argument("--order", nargs=2, default=["plain", "gptresume"])
    a = p.parse_args()
    {"matmul": cmd_matmul, "setup-tokenizers": cmd_setup_tokenizers, "train": cmd_train, "pack": cmd_pack,
     "verify-speed": cmd_verify_speed, "step-cost": cmd_step_cost}[a.cmd](a)


def cmd_step_cost(a) -> None:
    """Step time and syncs per step of one Trainer without and with gptresume's callbacks (step_cost.py)."""
    from common import DEMO_YAML
    from step_cost import measure

    result = measure(str(DEMO_YAML), a.work, a.steps, a.warmup, a.logging_steps, a.order)
    if RANK == 0:
        write_json(a.out, result)


def cmd_pack(a) -> None:
    """Pack generated text one way (packing_peers.py) and report tokens/s and peak memory."""
    from packing_peers import run

    files = sorted(str(p) for p in Path(a.corpus).glob("*.txt"))
    write_json(a.out, run(a.peer, files, a.tokenizer, Path(a.work)))


if __name__ == "__main__":
    main()
