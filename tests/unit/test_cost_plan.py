"""training/cost_plan.py: the plan's counts, the disk keep_last needs, the time split and its warnings (pure), and
the checkpoint size estimate against a checkpoint a real Trainer saved."""

from __future__ import annotations

import pytest

from gptresume.training.cost_plan import (
    CostInputs,
    checkpoint_bytes,
    cost_plan,
    every_n_steps,
    steps_for_epochs,
)


def inputs(**kw) -> CostInputs:
    base = dict(params=124_000_000, trainable=124_000_000, weight_tensors=148, trainable_tensors=148,
                max_steps=1000, tokens_per_step=32 * 512, eval_every=200, eval_blocks=160, block_size=512,
                save_every=200, keep_last=3, settings={"eval_steps": 200, "eval_batches": 20, "save_steps": 200})
    return CostInputs(**{**base, **kw})


def test_counts_of_a_new_run():
    plan = cost_plan(inputs())
    assert (plan.steps, plan.tokens) == (1000, 1000 * 32 * 512)
    assert (plan.evaluations, plan.eval_tokens_each) == (5, 160 * 512)
    assert plan.saves == 5  # steps 200, ..., 1000 (the last step is one of them)
    gpt2 = checkpoint_bytes(inputs())
    assert 1.48e9 < gpt2 < 1.50e9  # 124M x (4 bytes of weights + 8 of AdamW's moments): GPT-2's 1.5 GB
    assert plan.disk_bytes == 4 * gpt2  # keep_last 3 + the one being written
    assert plan.train_s is None and any("--calibrate" in n for n in plan.notes)
    text = "\n".join(plan.lines())
    assert "1,000 steps" in text and "5 evaluations of 81,920 tokens" in text and "5 saves of 1.5 GB" in text


def test_a_resume_plans_the_rest_and_the_last_step_is_saved():
    plan = cost_plan(inputs(start_step=450, max_steps=1010, eval_on_start=True))
    assert plan.steps == 560 and plan.evaluations == 3  # 600, 800, 1000; no eval on start when resuming
    assert plan.saves == 4  # 600, 800, 1000 and the last step, 1010
    everything = cost_plan(inputs(keep_last=None, keep_best=True))
    assert everything.disk_bytes == 5 * everything.checkpoint_bytes
    best = cost_plan(inputs(keep_last=1, keep_best=True))
    assert best.disk_bytes == 3 * best.checkpoint_bytes
    measured = cost_plan(inputs(measured_checkpoint_bytes=123))
    assert measured.checkpoint_bytes == 123 and "as committed before" in "\n".join(measured.lines())


def test_the_time_split_and_its_warnings():
    ok = cost_plan(inputs(train_tokens_per_s=50_000, eval_tokens_per_s=150_000, save_s=2.0, rates_from="test"))
    assert ok.train_s == pytest.approx(1000 * 16384 / 50_000)
    assert ok.eval_s == pytest.approx(5 * 81920 / 150_000) and ok.save_total_s == pytest.approx(10.0)
    assert ok.warnings == []
    assert "wall time:  about" in "\n".join(ok.lines())
    slow_eval = cost_plan(inputs(eval_blocks=20_000, train_tokens_per_s=50_000, save_s=2.0, rates_from="test"))
    (w,) = slow_eval.warnings
    assert w.startswith("evaluation takes") and "train.eval_steps, now 200" in w and "data.eval_batches, now 20" in w
    slow_save = cost_plan(inputs(train_tokens_per_s=50_000, eval_tokens_per_s=1e9, save_s=60.0, every_minutes=30,
                                 rates_from="test"))
    (w,) = slow_save.warnings
    assert "train.save_steps, now 200" in w and "checkpoint.every_minutes, now 30" in w and "async_save" in w
    timed = cost_plan(inputs(save_every=None, every_minutes=1, train_tokens_per_s=16384, rates_from="test"))
    assert timed.saves == 1 + 1000 // 60  # by the clock (a save a minute over 1000 s) and the last step
    unknown = cost_plan(inputs(optim="my_optimizer"))
    assert any("my_optimizer" in n for n in unknown.notes)


def test_epochs_and_fractions_as_trainer_counts_them():
    assert steps_for_epochs(100, 32, 3) == 12  # 4 steps per epoch (the last one partial)
    assert every_n_steps(0.25, 1000) == 250 and every_n_steps(200, 1000) == 200 and every_n_steps(None, 10) is None


def test_the_estimate_against_a_checkpoint_trainer_saved(tmp_path):
    """A real save (weights, AdamW state, scheduler, RNG, trainer state, tokenizer) and gptresume's manifest."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from conftest import corpus_texts
    from gptresume.checkpoint import write_manifest
    from gptresume.modeling import train_tokenizer
    from gptresume.training.cost_estimate import tokenizer_bytes

    tokenizer = train_tokenizer(corpus_texts(), 1000)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=128, n_positions=64, vocab_size=len(tokenizer)))
    rows = [{"input_ids": torch.randint(0, 1000, (16,)), "labels": torch.randint(0, 1000, (16,))} for _ in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, save_steps=1, report_to="none", use_cpu=True,
                             disable_tqdm=True, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    ckpt = tmp_path / "checkpoint-1"
    write_manifest(ckpt, step=1, epoch=1.0, config={"data": {"source": "x"}}, config_fingerprint="c",
                   data_fingerprint="d", world_size=1)
    actual = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    params = list(model.parameters())
    estimate = checkpoint_bytes(CostInputs(
        params=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params), param_bytes=4,
        weight_tensors=len(params), trainable_tensors=len(params), optim=str(args.optim.value),
        tokenizer_bytes=tokenizer_bytes(tokenizer)))
    assert abs(estimate - actual) / actual < 0.02, (estimate, actual)
