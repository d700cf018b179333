"""The worker side of the step_cost section (`worker.py step-cost`): in ONE process, the same Trainer (the demo
preset's model shape, batch and precision, random tokens) trained without gptresume (`trainer.train()`) and with it
(`gptresume.train(trainer)`, every gptresume callback attached), the two in the order given, each on a fresh model
with the same seed. Per optimizer step it records the time and three counters:

  syncs         tensor-to-Python conversions (`.item()`, `.tolist()`, `float()`, `bool()`, ...): a host sync when
                the tensor is on a GPU; on a CPU-only machine every tensor is a CPU tensor, so all are counted
  device_syncs  the same, of tensors not in CPU memory (0 on a CPU-only machine)
  collectives   Python-level torch.distributed calls (all_reduce, barrier, broadcast, ...): gptresume's per-step
                agreement; DDP's gradient all-reduce runs in C++ and is not among them
  callbacks_s   time inside Trainer's callback handler (every event, every callback: Trainer's own and, for the
                second peer, gptresume's), which a busy machine disturbs far less than the step time; on a GPU a
                sync inside a callback shows here as its wait

Under torchrun every rank trains and rank 0 reports. Steps after the warm-up and before the last (which saves) are
the measured ones; the figures are per step.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
COLLECTIVES = ("all_reduce", "barrier", "all_gather", "all_gather_into_tensor", "broadcast", "broadcast_object_list",
               "all_gather_object", "gather", "reduce", "reduce_scatter")


class Counters:
    def __init__(self):
        self.syncs = self.device_syncs = self.collectives = 0
        self.callbacks_s = 0.0

    def install(self) -> None:
        import torch
        import torch.distributed as dist
        from transformers.trainer_callback import CallbackHandler

        call_event = CallbackHandler.call_event

        def timed(handler, *a, **k):
            t0 = time.perf_counter()
            try:
                return call_event(handler, *a, **k)
            finally:
                self.callbacks_s += time.perf_counter() - t0

        CallbackHandler.call_event = timed

        for name in CONVERSIONS:
            original = getattr(torch.Tensor, name)

            def conversion(tensor, *a, _original=original, **k):
                self.syncs += 1
                self.device_syncs += tensor.device.type != "cpu"
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, name, conversion)
        for name in COLLECTIVES:
            if hasattr(dist, name):
                original = getattr(dist, name)

                def collective(*a, _original=original, **k):
                    self.collectives += 1
                    return _original(*a, **k)

                setattr(dist, name, collective)

    def read(self) -> tuple[int, int, int, float]:
        return self.syncs, self.device_syncs, self.collectives, self.callbacks_s


def _trainer(preset: dict, out: Path, steps: int, logging_steps: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from gptresume.config.device import resolve_precision

    shape, block = preset["model"]["from_scratch"], preset["data"]["block_size"]
    vocab = preset["model"]["tokenizer"]["train_vocab_size"]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, **shape))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": (ids := torch.randint(0, vocab, (block,), generator=g)), "labels": ids.clone()}
            for _ in range(preset["train"]["per_device_train_batch_size"] * (steps + 2))]
    train = resolve_precision(dict(preset["train"]))
    keep = {k: v for k, v in train.items() if k in ("bf16", "fp16", "tf32", "use_cpu", "optim",
                                                     "per_device_train_batch_size", "learning_rate", "seed")}
    args = TrainingArguments(str(out), max_steps=steps, logging_steps=logging_steps, save_steps=10**6,
                             eval_strategy="no", report_to="none", disable_tqdm=True, **keep)
    return Trainer(model=model, args=args, train_dataset=data)


def _run(peer: str, preset: dict, work: Path, steps: int, warmup: int, logging_steps: int, counters) -> dict:
    import torch
    from transformers import TrainerCallback

    rows: list[tuple[int, float, int, int, int, float]] = []
    cuda = torch.cuda.is_available()

    class Clock(TrainerCallback):  # added last: it reads the counters after every other callback's on_step_end
        def on_step_end(self, args, state, control, **kwargs):
            if cuda and state.global_step in (warmup, steps - 1):
                torch.cuda.synchronize()  # the window's two ends: the device's work up to here is done
            rows.append((state.global_step, time.perf_counter(), *counters.read()))

    trainer = _trainer(preset, work / peer, steps, logging_steps)
    if peer == "plain":
        trainer.add_callback(Clock())
        trainer.train()
    else:
        import gptresume
        from transformers import Trainer

        original = Trainer.train

        def train(self, *a, **k):
            Trainer.train = original
            self.add_callback(Clock())
            return original(self, *a, **k)

        Trainer.train = train
        gptresume.train(trainer, data_fingerprint="bench", exit_on_stop=False, keep_last=1)
    by_step = {r[0]: r[1:] for r in rows}
    (t0, s0, d0, c0, k0), (t1, s1, d1, c1, k1) = by_step[warmup], by_step[steps - 1]
    n = steps - 1 - warmup
    return {"step_s": (t1 - t0) / n, "syncs_per_step": (s1 - s0) / n, "device_syncs_per_step": (d1 - d0) / n,
            "collectives_per_step": (c1 - c0) / n, "callbacks_s_per_step": (k1 - k0) / n}


def measure(preset_path: str, work: str, steps: int, warmup: int, logging_steps: int, order: list[str]) -> dict:
    from gptresume.training import distributed

    distributed.setup()  # under torchrun: the process group first (CPU: gloo), as `gptresume train` does
    import torch

    preset = yaml.safe_load(Path(preset_path).read_text())
    counters = Counters()
    counters.install()
    out = {"order": order, "steps": steps, "warmup": warmup, "logging_steps": logging_steps,
           "world_size": distributed.world_size(),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for peer in order:
        out[peer] = _run(peer, preset, Path(work), steps, warmup, logging_steps, counters)
    return out
