"""The per-step cost of gptresume's callbacks on a real Trainer (a tiny GPT-2, in this process): no host sync of their
own (every tensor-to-Python conversion counted, against the same Trainer without them), exactly one call of the
cross-rank reduction per optimizer step; and run health read at Trainer's sync points, not every step, still
stopping on a NaN with the verdict and checkpoints of a per-step read."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import gptresume
from gptresume.checkpoint import list_checkpoints
from gptresume.checkpoint.files import MANIFEST_NAME
from gptresume.training import distributed

pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py

CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


def tiny_trainer(out, **args) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=64))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": (ids := torch.randint(0, 64, (16,), generator=g)), "labels": ids.clone()}
            for _ in range(256)]
    defaults = dict(max_steps=12, save_steps=10**6, logging_steps=10**6, per_device_train_batch_size=2,
                    report_to="none", use_cpu=True, disable_tqdm=True, seed=1, dataloader_num_workers=0)
    return Trainer(model=model, args=TrainingArguments(str(out), **{**defaults, **args}), train_dataset=data)


class Counted:
    """Tensor-to-Python conversions (a host sync on a GPU) and calls of the one reduction, by step: the counters
    read at each step's end by a callback placed after every other one."""

    def __init__(self, monkeypatch):
        self.syncs = self.reductions = 0
        self.at_step_end: dict[int, tuple[int, int]] = {}
        for name in CONVERSIONS:
            original = getattr(torch.Tensor, name)

            def counted(*a, _original=original, **k):
                self.syncs += 1
                return _original(*a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)
        agree = distributed.agree

        def counted_agree(values):
            self.reductions += 1
            return agree(values)

        monkeypatch.setattr(distributed, "agree", counted_agree)
        counter = self

        class Last(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                counter.at_step_end[state.global_step] = (counter.syncs, counter.reductions)

        self.callback = Last()

    def per_step(self, steps) -> list[tuple[int, int]]:
        return [tuple(b - a for a, b in zip(self.at_step_end[s - 1], self.at_step_end[s])) for s in steps]


def add_last(monkeypatch, callback):
    """Add `callback` at train() time, after every callback gptresume.train attaches."""
    original = Trainer.train

    def train(self, *a, **k):
        self.add_callback(callback)
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "train", train)


def test_the_callbacks_add_no_host_sync_and_one_reduction_per_step(tmp_path, monkeypatch):
    plain = Counted(monkeypatch)
    trainer = tiny_trainer(tmp_path / "plain", logging_steps=5)
    trainer.add_callback(plain.callback)
    trainer.train()
    monkeypatch.undo()

    ours = Counted(monkeypatch)
    add_last(monkeypatch, ours.callback)
    gptresume.train(tiny_trainer(tmp_path / "ours", logging_steps=5), data_fingerprint="tiny", exit_on_stop=False)
    ordinary = [2, 3, 4, 6, 7, 8, 9]  # neither logging nor saving
    assert [r for _, r in ours.per_step(range(2, 12))] == [1] * 10  # one reduction per optimizer step
    assert ours.per_step(ordinary) == [(s, 1) for s, _ in plain.per_step(ordinary)]  # Trainer's syncs, no more
    (ours_log,), (plain_log,) = ours.per_step([10]), plain.per_step([10])
    # a logging step: one read of the health values, where Trainer reads the loss right after (its on_step_end
    # comes before Trainer's own .item() calls of that step, which the counters see at step 11)
    assert ours_log[0] == plain_log[0] + 1


def test_a_nan_read_at_the_next_logging_step_stops_as_a_read_at_every_step(tmp_path, monkeypatch):
    """nan@6 with saves every 4: read at every step, the run stops at 6; logged every 5, the NaN is read at step
    8 (a save step): the same verdict, the same checkpoints, nothing of steps 6-8 committed or logged."""
    monkeypatch.setenv("GPTRESUME_TEST_FAULT", "nan@6!")
    results = {}
    for logging_steps in (1, 5):
        out = tmp_path / f"log{logging_steps}"
        trainer = tiny_trainer(out, save_steps=4, logging_steps=logging_steps)
        outcome = gptresume.train(trainer, data_fingerprint="tiny", exit_on_stop=False)
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        unhealthy = {k: history[-1][k] for k in ("event", "step", "kind", "reason")}
        metrics = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        committed = [p.name for p in list_checkpoints(out) if (p / MANIFEST_NAME).is_file()]
        results[logging_steps] = (outcome.status, outcome.step, outcome.checkpoint.name, committed, unhealthy)
        assert trainer.state.global_step == {1: 6, 5: 8}[logging_steps]
        assert metrics == {1: [1, 2, 3, 4, 5, 6], 5: [5]}[logging_steps]  # step 8's row is not written
    assert results[1] == results[5] == ("unhealthy", 6, "checkpoint-4", ["checkpoint-4"], {
        "event": "unhealthy", "step": 6, "kind": "non-finite", "reason": "training loss nan at step 6"})
