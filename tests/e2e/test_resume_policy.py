"""Resuming with a different config: changes that alter training are refused with a table (exit 2, nothing
changed); a changed logging cadence is applied and noted (save and eval cadence: test_resume_cadence.py); changed
data is detected; `gptresume resume RUN_DIR` continues a run started with `--set`s from its recorded config."""

import json

import pytest

from conftest import (
    assert_bitwise_equal,
    assert_refused,
    final_weights,
    read_metrics,
    run_cli,
    snapshot,
    train_losses,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    config = write_config(tmp, corpus_chars=3600, train={"max_steps": 8, "save_steps": 2})
    result = run_cli(tmp, "train", config, "--stop-at-step", "3")
    assert result.returncode == 75, result.stdout + result.stderr
    return tmp, config


@pytest.mark.parametrize("override, key, verdict", [
    ("train.learning_rate=1e-2", "train.learning_rate", "REFUSED (--allow-change learning_rate)"),
    ("train.max_steps=16", "train.max_steps", "REFUSED (--allow-change max_steps)"),
    ("train.per_device_train_batch_size=8", "train.per_device_train_batch_size", "global batch 4 -> 8"),
    ("train.optim=sgd", "train.optim", "REFUSED (--allow-change optim)"),
    ("model.from_scratch.n_layer=3", "model.from_scratch", "NEVER: the checkpoint's weights"),
    ("train.seed=8", "train.seed", "NEVER: the data order"),
    ("data.block_size=16", "data.block_size", "NEVER: the checkpoint's data position"),
])
def test_changes_that_alter_training_are_refused_with_a_table(stopped_run, override, key, verdict):
    tmp, config = stopped_run
    before = snapshot(tmp / "run")
    assert_refused(run_cli(tmp, "train", config, "--set", override), "differs from the one", key, verdict)
    assert snapshot(tmp / "run") == before


@pytest.mark.parametrize("flag, message", [
    ("learnin_rate", "no such config field"),
    ("seed", "train.seed can never change on resume"),
])
def test_allow_change_rejects_unknown_and_never_fields(stopped_run, flag, message):
    tmp, config = stopped_run
    before = snapshot(tmp / "run")
    assert_refused(run_cli(tmp, "train", config, "--allow-change", flag), message)
    assert snapshot(tmp / "run") == before


def test_changed_data_is_detected(stopped_run):
    tmp, config = stopped_run
    corpus = tmp / "corpus.txt"
    original = corpus.read_text()
    before = snapshot(tmp / "run")
    try:
        corpus.write_text(original.replace("the", "a"))
        result = run_cli(tmp, "train", config)
    finally:
        corpus.write_text(original)
    assert_refused(result, "training data differs")
    assert snapshot(tmp / "run") == before


def test_cadence_changes_are_applied_and_noted(stopped_run):  # last: it finishes the shared run
    tmp, config = stopped_run
    result = run_cli(tmp, "train", config, "--set", "train.logging_steps=2", "--set", "checkpoint.keep_last=5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train.logging_steps" in result.stderr and "does not change training" in result.stderr
    assert "do not match the ones in the `trainer_state.json`" not in result.stderr  # Trainer's contradiction
    # applied, not only noted: every step before the stop at 3, every second step after it (the checkpoint's
    # trainer_state.json says every step)
    assert [r["step"] for r in read_metrics(tmp / "run") if "loss" in r] == [1, 2, 3, 4, 6, 8]


def test_gptresume_resume_continues_a_run_started_with_sets_exactly(tmp_path):
    """The command that started the run had --set options; `train CONFIG` without them is refused and names
    `gptresume resume RUN_DIR`, which continues from the recorded config with no change, bitwise equal to an
    uninterrupted run."""
    config = write_config(tmp_path, corpus_chars=3600, train={"max_steps": 8, "save_steps": 2})
    sets = ("--set", "train.max_steps=6", "--set", "train.learning_rate=2e-3")
    reference = run_cli(tmp_path, "train", config, *sets, "--set", f"train.output_dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    run = tmp_path / "run"
    stopped = run_cli(tmp_path, "train", config, *sets, "--stop-at-step", "3")
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    before = snapshot(run)
    assert_refused(run_cli(tmp_path, "train", config), "train.learning_rate", f"gptresume resume {run}")
    assert snapshot(run) == before
    resumed = run_cli(tmp_path, "resume", run)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming from {run / 'checkpoint-3'}" in resumed.stdout and "Config changes" not in resumed.stderr
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("changes")) for e in history if e["event"] == "resume"] == [("resume", [])]
    assert train_losses(run) == train_losses(tmp_path / "reference")
    assert_bitwise_equal(final_weights(run), final_weights(tmp_path / "reference"))
