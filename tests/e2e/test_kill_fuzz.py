"""Kill fuzzing: 30 SIGKILLs at random points of one run (during start-up, training steps, synchronous and
background saves, manifest commits, retention deletes and the final save), re-running after each. The finished run
verifies (`gptresume verify` exits 0), holds no directory a kill left behind (no uncommitted `checkpoint-N`, no
`.replaced-*`, no temporaries), and its losses and final weights equal an uninterrupted run's bit for bit.

Every kill is keyed to observed progress, never to the clock, so the schedule is the same on a machine five times
faster or slower: the child just started; its start line in history.jsonl; a step logged in metrics.jsonl; a
`checkpoint-N` directory present without its manifest (a save in progress); a new manifest (the commit, then
retention). Kill points that let the run advance are used only while enough steps remain, so all 30 kills land on
a live process on any machine, and the assertions count what landed: kills that hit a live process (every one),
saves they cut short (an uncommitted checkpoint left behind).

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
    logged_step,
    run_cli,
    start_command,
    train_losses,
    uncommitted_checkpoints,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

KILLS = 30
MAX_STEPS = 40
SEED = 20260
# The kill points, with the steps a run may advance before the kill lands (0: none can be trained yet).
KILL_POINTS = ("at once", "start line", "step", "save", "commit")
ADVANCING = ("step", "save", "commit")
ROOM = 6  # steps that must remain for a kill point that lets the run advance


def committed_steps(run_dir) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / "manifest.json").is_file())


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


def kill_point_reached(point: str, run, starts: int, done: int, target: int):
    """The condition that puts the kill at `point` of this attempt."""
    history = run / "history.jsonl"

    def started() -> bool:
        return history.exists() and len(history.read_text().splitlines()) > starts

    return {
        "at once": lambda: True,
        "start line": started,
        "step": lambda: started() and logged_step(run) >= target,
        "save": lambda: started() and any(int(n.split("-")[1]) > done for n in uncommitted_checkpoints(run)),
        "commit": lambda: started() and (committed_steps(run)[-1:] or [0])[0] > done,
    }[point]


def test_thirty_kills_at_random_instants_leave_a_verified_exact_run(tmp_path):
    config = write_config(tmp_path, corpus_chars=3600, data={"validation_fraction": 0},
                          train={"max_steps": MAX_STEPS, "save_steps": 1}, checkpoint={"keep_last": 2})
    reference = start_command(tmp_path, ["train", config, "--set", f"train.output_dir={tmp_path / 'reference'}"])
    run = tmp_path / "run"
    history = run / "history.jsonl"
    rng = random.Random(SEED)
    kills, left_uncommitted, async_kills, points = 0, 0, 0, {p: 0 for p in KILL_POINTS}
    t0 = time.monotonic()
    while kills < KILLS:
        background = kills % 2 == 1  # every other attempt saves in the background thread
        starts = len(history.read_text().splitlines()) if history.exists() else 0
        done = (committed_steps(run)[-1:] or [0])[0]
        room = MAX_STEPS - done >= ROOM
        point = rng.choice(KILL_POINTS if room else ("at once", "start line"))
        target = done + rng.randint(1, 2)
        started = time.time()
        proc = start_command(tmp_path, ["train", config, "--set",
                                        f"checkpoint.async_save={str(background).lower()}"])
        wait_until(kill_point_reached(point, run, starts, done, target), proc)
        proc.kill()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (point, out + (err or ""))  # every kill hit a live process
        kills += 1
        points[point] += 1
        async_kills += background
        left_uncommitted += any(int(n.split("-")[1]) > done and (run / n).stat().st_mtime >= started
                                for n in uncommitted_checkpoints(run))  # a save of this attempt, cut short
    fuzz_seconds = time.monotonic() - t0
    final = run_cli(tmp_path, "train", config)
    assert final.returncode == 0, final.stdout + final.stderr
    again = run_cli(tmp_path, "train", config)  # complete: trains nothing, finishes what a kill left
    assert again.returncode == 0 and "Run complete" in again.stdout, again.stdout + again.stderr
    verify = run_cli(tmp_path, "verify", run)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\n  {kills} kills, each on a live process ({points}; {async_kills} with async_save; {left_uncommitted} "
          f"cut a save short) in {fuzz_seconds:.0f} s")
    assert left_uncommitted >= 3  # the kills really landed in saves
    assert leftovers(run) == []
    assert committed_steps(run) == [MAX_STEPS - 1, MAX_STEPS]  # keep_last 2
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, out + err
    assert train_losses(run) == train_losses(tmp_path / "reference")
    assert_bitwise_equal(final_weights(run), final_weights(tmp_path / "reference"))
