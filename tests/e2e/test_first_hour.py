"""The first hour, end to end: a real run's output (a time on every progress line, one committed line per save, no
allocator line, no shard bars), `train --dry-run` writing nothing to a new or an existing run, and `eval --data`
naming its own option."""

import re

import pytest

from conftest import run_cli, snapshot, write_config

from gptresume.cli import main

pytestmark = pytest.mark.slow
CLOCK = r"\d\d:\d\d:\d\d"


@pytest.fixture
def cli_env(monkeypatch):
    """`main` sets TORCH_FORCE_WEIGHTS_ONLY_LOAD for its process: undone after the test."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)


def test_dry_run_of_a_new_run_creates_nothing(tmp_path, capsys, cli_env):
    config = write_config(tmp_path)
    assert main(["train", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing was written" in out and "start a new run, to step 12" in out, out
    assert "GPT2LMHeadModel" in out and "validation blocks of 32 tokens" in out
    assert not (tmp_path / "run").exists()


def test_a_run_says_what_it_did_and_dry_run_leaves_it_byte_identical(tmp_path, capsys, cli_env):
    config = write_config(tmp_path, train={"max_steps": 8})
    run = tmp_path / "run"
    first = run_cli(tmp_path, "train", config, "--stop-at-step", "4")
    assert first.returncode == 75, first.stderr
    output = first.stdout + first.stderr
    assert len(re.findall(r"checkpoint-4 committed \(\d+\.\d [KM]B, \d+\.\d\d s\)", output)) == 1, output
    progress = [line for line in first.stdout.splitlines() if " step " in line and "|" in line]
    assert progress and all(re.match(CLOCK + " step ", line) for line in progress), first.stdout
    assert "CPU allocator" not in output and "Writing model shards" not in output
    assert not output.lstrip().startswith("error")

    before = snapshot(run)
    assert main(["train", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"resume from {run / 'checkpoint-4'} (step 4)" in out, out
    assert main(["train", str(config), "--dry-run", "--set", "train.learning_rate=1e-2"]) == 2  # refused as train
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-change learning_rate" in err, err
    assert main(["train", str(config), "--dry-run", "--set", "train.learning_rate=1e-2",
                 "--allow-change", "learning_rate"]) == 0
    assert "train.learning_rate" in capsys.readouterr().out
    assert snapshot(run) == before  # the lock file, the books, every checkpoint: untouched

    # eval --data with a glob that matches nothing names --data, not data.source or --set
    assert main(["eval", str(run / "checkpoint-4"), "--data", str(tmp_path / "nope" / "*.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: eval --data: no file matches"), err
    assert "data.source" not in err and "--set" not in err
    assert snapshot(run) == before


def test_load_best_model_at_end_with_keep_last_keeps_and_loads_the_best(tmp_path):
    """Without gptresume's protection keep_last: 1 would delete the best checkpoint before Trainer loads it at the
    end (Trainer then only warns and keeps the last weights)."""
    import json

    from safetensors.torch import load_file

    from conftest import assert_bitwise_equal

    # A learning rate high enough that eval loss rises again after its minimum (as in test_checkpoint_policy.py).
    config = write_config(tmp_path, corpus_chars=3600,
                          train={"max_steps": 16, "save_steps": 2, "eval_steps": 2, "learning_rate": 0.05,
                                 "warmup_steps": 0, "lr_scheduler_type": "constant", "load_best_model_at_end": True},
                          checkpoint={"keep_last": 1})
    result = run_cli(tmp_path, "train", config)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    best = min(evals, key=lambda r: r["eval_loss"])["step"]
    assert best != 16, "this setting must put the best eval loss before the end, or the test proves nothing"
    assert sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")) == [best, 16]
    assert_bitwise_equal(load_file(str(run / "final" / "model.safetensors")),
                         load_file(str(run / f"checkpoint-{best}" / "model.safetensors")))
