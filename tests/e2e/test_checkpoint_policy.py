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


def _start_and_wait_for_training(tmp_path, config):
    """The run, once it has logged its first step (training under way: the graceful handlers are installed)."""
    from conftest import logged_step, start_cli, wait_until

    proc = start_cli(tmp_path, "train", config)
    wait_until(lambda: logged_step(tmp_path / "run") >= 1, proc)
    return proc


def test_sigusr1_stops_gracefully_like_sigterm(tmp_path):
    import signal

    from gptresume.checkpoint import newest_valid

    config = write_config(tmp_path, corpus_chars=3600, train={"max_steps": 2000, "save_steps": 1000})
    proc = _start_and_wait_for_training(tmp_path, config)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert "SIGUSR1 received" in out
    info, _ = newest_valid(tmp_path / "run")
    assert info is not None and 0 < info.step < 1000  # saved at the interrupted step, not a save_steps one


def test_second_sigint_aborts_at_once_and_keeps_committed_checkpoints(tmp_path):
    import signal
    import threading
    import time

    from conftest import start_cli
    from gptresume.checkpoint import newest_valid

    config = write_config(tmp_path, corpus_chars=3600, train={"max_steps": 2000, "save_steps": 3})
    proc = start_cli(tmp_path, "train", config)
    lines, first_seen = [], threading.Event()

    def read_output():
        for line in proc.stdout:
            lines.append(line)
            if "SIGINT received" in line:
                first_seen.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120  # a committed checkpoint to keep, then Ctrl-C twice
        while time.time() < deadline and proc.poll() is None and newest_valid(tmp_path / "run")[0] is None:
            time.sleep(0.05)
        assert newest_valid(tmp_path / "run")[0] is not None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert first_seen.wait(60), "".join(lines)
        # the second while the first is still finishing its step and saving (both at once may merge into one)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 130, out
    assert "Second SIGINT: aborting without saving; the newest committed checkpoint is kept." in out
    # the abort, not the graceful stop the first SIGINT began (which commits, records "stopped" and exits 75); no
    # wall-clock bound: what ran is judged from what it left
    assert "Stopped (SIGINT)" not in out, out
    run = tmp_path / "run"
    assert "stopped" not in [json.loads(x)["event"] for x in (run / "history.jsonl").read_text().splitlines()]
    assert not (run / "final").exists()
    info, _ = newest_valid(run)
    assert info is not None and info.step % 3 == 0, info  # a save_steps checkpoint: the stop's save never committed
    verify = run_cli(tmp_path, "verify", info.path)
    assert verify.returncode == 0 and verify.stdout.startswith("ok "), verify.stdout + verify.stderr
