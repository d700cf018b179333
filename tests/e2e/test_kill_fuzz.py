"""Kill fuzzing: 30 SIGKILLs at random instants of one run (during start-up, training steps, synchronous and
background saves, manifest commits, retention deletes and the final save), re-running after each. The finished run
verifies (`gptresume verify` exits 0), holds no directory a kill left behind (no uncommitted `checkpoint-N`, no
`.replaced-*`, no temporaries), and its losses and final weights equal an uninterrupted run's bit for bit.

The children are forked from the test worker's fork server (tests/forking.py: real processes, the imports paid
once), so each of the 30 starts costs a fraction of a second."""

from __future__ import annotations

import random
import signal
import time

import pytest

from conftest import (
    assert_bitwise_equal,
    final_weights,
    read_metrics,
    run_cli,
    start_command,
    train_losses,
    write_config,
)

pytestmark = pytest.mark.slow

KILLS = 30
MAX_STEPS = 40
SEED = 20260


def committed_steps(run_dir) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / "manifest.json").is_file())


def wait_until(condition, proc, timeout: float = 120) -> bool:
    """True once `condition()` holds (checked every 2 ms), False if `proc` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _ in range(10):
            if condition():
                return True
            time.sleep(0.002)
        if proc.poll() is not None:
            return False
    raise TimeoutError("the run never got there")


def logged_step(run_dir) -> int:
    try:
        return max((r["step"] for r in read_metrics(run_dir) if "loss" in r), default=0)
    except (OSError, ValueError):  # a line being written
        return 0


def leftovers(run_dir) -> list[str]:
    """What a kill can leave that a finished run must not hold."""
    found = []
    for p in run_dir.iterdir():
        name = p.name
        if name.startswith("checkpoint-") and (not name.split("-")[1].isdigit() or not (p / "manifest.json").is_file()):
            found.append(name)  # .replaced-*, or never committed
        elif ".tmp" in name or name.startswith((".final", "config.yaml.")):
            found.append(name)
    found += [f"data-cache/{p.name}" for p in (run_dir / "data-cache").iterdir() if ".tmp" in p.name]
    return found


def test_thirty_kills_at_random_instants_leave_a_verified_exact_run(tmp_path):
    config = write_config(tmp_path, corpus_chars=3600, data={"validation_fraction": 0},
                          train={"max_steps": MAX_STEPS, "save_steps": 1}, checkpoint={"keep_last": 2})
    reference = start_command(tmp_path, ["train", config, "--set", f"train.output_dir={tmp_path / 'reference'}"])
    run = tmp_path / "run"
    history = run / "history.jsonl"
    rng = random.Random(SEED)
    kills, startup_kills, left_uncommitted, async_kills, finished = 0, 0, 0, 0, False
    t0 = time.monotonic()
    while kills < KILLS:
        background = kills % 2 == 1  # every other attempt saves in the background thread
        starts = len(history.read_text().splitlines()) if history.exists() else 0
        done = committed_steps(run)[-1:] or [0]
        proc = start_command(tmp_path, ["train", config, "--set",
                                        f"checkpoint.async_save={str(background).lower()}"])
        if rng.random() < 0.2:  # during start-up: config, tokenizer, data cache, model, resume plan, run directory
            time.sleep(rng.uniform(0.0, 1.0))
            startup_kills += 1
        else:  # in the save of the step just logged, its commit or retention, or a training step
            target = min(done[0] + rng.randint(1, 3), MAX_STEPS)
            wait_until(lambda starts=starts: history.exists() and len(history.read_text().splitlines()) > starts, proc)
            wait_until(lambda target=target: logged_step(run) >= target, proc)
            time.sleep(rng.uniform(0.0, 0.08))
        proc.kill()
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            finished = True
            break
        assert proc.returncode == -signal.SIGKILL, out + (err or "")
        kills += 1
        async_kills += background
        left_uncommitted += any(p.name.split("-")[1].isdigit() and not (p / "manifest.json").is_file()
                                for p in run.glob("checkpoint-*"))
    fuzz_seconds = time.monotonic() - t0
    final = run_cli(tmp_path, "train", config)
    assert final.returncode == 0, final.stdout + final.stderr
    again = run_cli(tmp_path, "train", config)  # complete: trains nothing, finishes what a kill left
    assert again.returncode == 0 and "Run complete" in again.stdout, again.stdout + again.stderr
    verify = run_cli(tmp_path, "verify", run)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\n  {kills} kills ({startup_kills} in start-up, {async_kills} with async_save, {left_uncommitted} left an "
          f"uncommitted checkpoint) in {fuzz_seconds:.0f} s; finished early: {finished}")
    assert kills >= 25 and left_uncommitted >= 3  # the kills really landed in saves
    assert leftovers(run) == []
    assert committed_steps(run) == [MAX_STEPS - 1, MAX_STEPS]  # keep_last 2
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, out + err
    assert train_losses(run) == train_losses(tmp_path / "reference")
    assert_bitwise_equal(final_weights(run), final_weights(tmp_path / "reference"))
