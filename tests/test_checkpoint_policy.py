"""Checkpoint policy in real runs: partial state is refused without --allow-partial; time-based saves;
keeping the best checkpoint by eval loss."""

import json

import pytest

from conftest import run_cli, write_config

pytestmark = pytest.mark.slow


def test_checkpoint_without_optimizer_state_needs_allow_partial(tmp_path):
    config = write_config(tmp_path, corpus_chars=3600, train={"max_steps": 6, "save_only_model": True})
    assert run_cli(tmp_path, "train", config, "--stop-at-step", "3").returncode == 75
    refused = run_cli(tmp_path, "train", config)
    assert refused.returncode == 2
    assert "no optimizer: Adam moments start from zero" in refused.stderr and "--allow-partial" in refused.stderr
    allowed = run_cli(tmp_path, "train", config, "--allow-partial")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "without part of its training state" in allowed.stderr


def test_every_minutes_saves_between_step_saves(tmp_path):
    config = write_config(tmp_path, corpus_chars=3600, train={"max_steps": 10, "save_steps": 1000},
                          checkpoint={"every_minutes": 0.0001, "keep_last": None})
    result = run_cli(tmp_path, "train", config)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert len(steps) >= 5 and steps[-1] == 10  # saved by the clock, not by save_steps


def test_keep_best_keeps_the_lowest_eval_loss_checkpoint(tmp_path):
    # A learning rate high enough that eval loss rises again after its minimum.
    config = write_config(tmp_path, corpus_chars=3600,
                          train={"max_steps": 16, "save_steps": 2, "eval_steps": 2, "learning_rate": 0.05,
                                 "warmup_steps": 0, "lr_scheduler_type": "constant"},
                          checkpoint={"keep_last": 1, "keep_best": True})
    result = run_cli(tmp_path, "train", config)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    best = min(evals, key=lambda r: r["eval_loss"])["step"]
    assert best != 16, "this setting must put the best eval loss before the end, or the test proves nothing"
    kept = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert kept == sorted({best, 16})
