"""A changed logging / eval / save cadence on resume is applied for real (into the restored trainer state, which
Trainer would otherwise take from the checkpoint's trainer_state.json), not only noted.

Eval cadence is training-neutral only without dropout: with dropout on, each evaluation's DataLoader draws a seed
from the global torch RNG, which moves every later dropout mask, so a changed eval cadence is refused unless
allowed (`--allow-change eval_steps`). With dropout off it is free, and a run stopped and resumed with another
eval cadence ends with the same weights, bit for bit, as an uninterrupted run.

(The logging cadence is checked in test_resume_policy.py, on the run its other tests share.)"""

import shutil

import pytest

from conftest import (
    TINY_MODEL,
    assert_bitwise_equal,
    assert_refused,
    final_weights,
    read_metrics,
    run_cli,
    snapshot,
    write_config,
)

pytestmark = pytest.mark.slow

MAX_STEPS, STOP = 8, 3
# GPT-2's three dropout probabilities (default 0.1 each), off.
NO_DROPOUT = {**TINY_MODEL, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
DROPOUT_NOTE = "with dropout on, each evaluation draws from the global RNG"


def cadence_config(tmp, dropout: bool):
    # eval_steps given: left out, it follows save_steps (config/load.py), and a changed save_steps would change
    # the eval cadence too
    model = {} if dropout else {"model": {"from_scratch": NO_DROPOUT}}
    return write_config(tmp, corpus_chars=3600, train={"max_steps": MAX_STEPS, "save_steps": 2, "eval_steps": 2},
                        checkpoint={"keep_last": 10}, **model)


def stopped_at(tmp, dropout: bool):
    config = cadence_config(tmp, dropout)
    result = run_cli(tmp, "train", config, "--stop-at-step", STOP)
    assert result.returncode == 75, result.stdout + result.stderr
    return tmp, config


def copy_stopped(stopped, dest) -> list:
    """Copy the stopped run into DEST (the original stays stopped for the other tests, also when a test fails);
    returns the arguments that resume the copy with the stopped run's config."""
    tmp, config = stopped
    shutil.copytree(tmp / "run", dest / "run")
    return ["train", config, "--set", f"train.output_dir={dest / 'run'}"]


def steps_with(run_dir, key: str) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if key in r]


def committed(run_dir) -> list[int]:
    from gptresume.checkpoint import list_checkpoints, verify_checkpoint

    return [int(p.name.split("-")[1]) for p in list_checkpoints(run_dir) if verify_checkpoint(p).valid]


def table_row(stderr: str, key: str) -> str:
    rows = [line for line in stderr.splitlines() if line.split()[:1] == [key]]
    assert len(rows) == 1, stderr
    return rows[0]


@pytest.fixture(scope="module")
def with_dropout(tmp_path_factory):
    """Stopped at step 3 of 8 (logging 1, eval and save 2), dropout 0.1 (GPT-2's default)."""
    return stopped_at(tmp_path_factory.mktemp("dropout"), dropout=True)


@pytest.fixture(scope="module")
def without_dropout(tmp_path_factory):
    """An uninterrupted run (eval every 2 steps) and a run stopped at step 3, both with dropout off."""
    ref = tmp_path_factory.mktemp("reference")
    result = run_cli(ref, "train", cadence_config(ref, dropout=False))
    assert result.returncode == 0, result.stdout + result.stderr
    return ref, stopped_at(tmp_path_factory.mktemp("no-dropout"), dropout=False)


def test_changed_save_cadence_is_applied(with_dropout, tmp_path):
    result = run_cli(tmp_path, *copy_stopped(with_dropout, tmp_path), "--set", "train.save_steps=5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "free   applied (does not change training)" in table_row(result.stderr, "train.save_steps")
    # 2: before the stop; 3: the stop; 5: the new cadence; 8: the end. The checkpoint's cadence would save 4 and 6.
    assert committed(tmp_path / "run") == [2, 3, 5, 8]


def test_changed_eval_cadence_with_dropout_is_refused(with_dropout, tmp_path):
    resume = copy_stopped(with_dropout, tmp_path)
    before = snapshot(tmp_path / "run")
    result = run_cli(tmp_path, *resume, "--set", "train.eval_steps=5")
    assert_refused(result, "differs from the one", "REFUSED (--allow-change eval_steps)", DROPOUT_NOTE)
    assert DROPOUT_NOTE in table_row(result.stderr, "train.eval_steps")
    assert snapshot(tmp_path / "run") == before


def test_changed_eval_cadence_with_dropout_is_applied_when_allowed(with_dropout, tmp_path):
    resume = copy_stopped(with_dropout, tmp_path)
    result = run_cli(tmp_path, *resume, "--set", "train.eval_steps=5", "--allow-change", "eval_steps")
    assert result.returncode == 0, result.stdout + result.stderr
    assert DROPOUT_NOTE in table_row(result.stderr, "train.eval_steps")
    # 5: the new cadence; 8: Trainer's evaluation at the end. The checkpoint's cadence would evaluate at 4, 6, 8.
    assert steps_with(tmp_path / "run", "eval_loss") == [2, 5, 8]


def test_changed_eval_cadence_without_dropout_is_free_applied_and_training_neutral(without_dropout):
    ref, (tmp, config) = without_dropout
    result = run_cli(tmp, "train", config, "--set", "train.eval_steps=5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "free   applied (does not change training)" in table_row(result.stderr, "train.eval_steps")
    assert steps_with(tmp / "run", "eval_loss") == [2, 5, 8]
    assert steps_with(ref / "run", "eval_loss") == [2, 4, 6, 8]
    assert_bitwise_equal(final_weights(tmp / "run"), final_weights(ref / "run"))
