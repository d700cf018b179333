"""Run health with injected faults (GPTRESUME_TEST_FAULT, health/faults.py: the loss of a chosen step, and so its
gradients, poisoned inside the real Trainer) in real `gptresume train` processes:

- a NaN stops the run with exit 1, names the step and the newest good checkpoint, commits nothing of it, and the
  good checkpoint survives later retention;
- `health.on_nan: rollback` rolls back (moving the later checkpoint aside), skips data, finishes; two such runs
  give bitwise-equal weights, and one stopped and resumed after its rollback gives the same losses and weights;
  `status` reports the rollback and the goodput of the stopped-and-resumed run;
- a fault that recurs after every rollback ends at health.max_rollbacks with exit 1;
- a loss spike (health.spike) is confirmed and stops the run before any checkpoint of it is committed.
"""

import json
import math

import pytest

from conftest import assert_bitwise_equal, final_weights, run_cli, train_losses, write_config

pytestmark = pytest.mark.slow

FAULT = "GPTRESUME_TEST_FAULT"


def config(tmp_path, **sections):
    sections.setdefault("train", {})
    sections["train"] = {"max_steps": 12, "save_steps": 3, **sections["train"]}
    return write_config(tmp_path, **sections)


def committed(run_dir):
    return sorted(int(p.parent.name.split("-")[1]) for p in run_dir.glob("checkpoint-*/manifest.json"))


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def weights_finite(path):
    from safetensors.torch import load_file

    return all(bool(t.isfinite().all()) for t in load_file(str(path / "model.safetensors")).values())


def test_nan_stops_with_exit_1_and_the_good_checkpoint_is_kept(tmp_path):
    cfg = config(tmp_path, checkpoint={"keep_last": 1})
    run = tmp_path / "run"
    result = run_cli(tmp_path, "train", cfg, env={FAULT: "nan@9"})  # step 9 is a save step (save_steps 3)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "step 9" in result.stderr and "checkpoint-6" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert committed(run) == [6]  # nothing at or after the NaN step, not even uncommitted
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-6"]
    assert weights_finite(run / "checkpoint-6")
    assert json.loads((run / "protected.json").read_text()).keys() == {"checkpoint-6"}
    assert history(run)[-1]["event"] == "unhealthy"

    result = run_cli(tmp_path, "train", cfg)  # resumed without the fault: keep_last 1 would delete checkpoint-6
    assert result.returncode == 0, result.stdout + result.stderr
    assert committed(run) == [6, 12]
    status = json.loads(run_cli(tmp_path, "status", run, "--json").stdout)
    assert status["health"]["health_stops"][0]["step"] == 9


def rollback_config(tmp_path, **train):
    return config(tmp_path, health={"on_nan": "rollback", "rollback_steps": 4, "skip_batches": 2},
                  checkpoint={"keep_last": 2}, train=train)


def test_rollback_is_deterministic_and_a_stop_after_it_resumes_exactly(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    env = {FAULT: "nan@8"}
    result = run_cli(a, "train", rollback_config(a), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "Rollback 1 of at most 3" in out and "skipping 8 samples" in out, out
    [rb] = [e for e in history(a / "run") if e["event"] == "rollback"]
    assert (rb["step"], rb["to_step"], rb["skip_batches"], rb["skip_samples"]) == (8, 3, 2, 8)
    assert [n.split(".")[0] for n in rb["set_aside"]] == ["checkpoint-6"]
    assert (a / "run" / rb["set_aside"][0] / "manifest.json").is_file()  # kept aside, not deleted
    assert math.isfinite(sum(train_losses(a / "run").values()))

    # b logs every 5 steps: the NaN of step 8 is read at step 9 (a save step), not at once; the same rollback
    assert run_cli(b, "train", rollback_config(b, logging_steps=5), env=env).returncode == 0
    [rb_b] = [e for e in history(b / "run") if e["event"] == "rollback"]
    assert {k: v for k, v in rb_b.items() if k not in ("time", "t", "pid", "checkpoint", "set_aside")} == {
        k: v for k, v in rb.items() if k not in ("time", "t", "pid", "checkpoint", "set_aside")}
    assert_bitwise_equal(final_weights(a / "run"), final_weights(b / "run"))

    cfg = rollback_config(c)
    stopped = run_cli(c, "train", cfg, "--stop-at-step", "10", env=env)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    resumed = run_cli(c, "train", cfg, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert train_losses(c / "run") == train_losses(a / "run")
    assert_bitwise_equal(final_weights(a / "run"), final_weights(c / "run"))

    status = run_cli(c, "status", c / "run", "--json")
    health = json.loads(status.stdout)["health"]
    assert [r["to_step"] for r in health["rollbacks"]] == [3]
    assert (health["interruptions"], health["stops"]) == (0, 1)  # a graceful stop loses no work
    assert 0 < health["goodput"]["goodput"] < 1 and health["goodput"]["committed_step"] == 12
    text = run_cli(c, "status", c / "run").stdout
    assert "goodput:" in text and "rollback 1: step 8" in text, text

    from gptresume.tools.plot import plot_run, rollback_marks

    assert rollback_marks(history(a / "run")) == [(8, 3)]
    assert plot_run(a / "run", tmp_path / "a.png") == []  # the rollback's own resume is drawn as the rollback
    assert (tmp_path / "a.png").stat().st_size > 0


def test_a_recurring_fault_ends_at_max_rollbacks(tmp_path):
    cfg = config(tmp_path, health={"on_nan": "rollback", "max_rollbacks": 1})
    result = run_cli(tmp_path, "train", cfg, env={FAULT: "nan@8!"})  # the same bad step after the rollback
    assert result.returncode == 1, result.stdout + result.stderr
    assert "max_rollbacks (1)" in result.stderr
    events = [e["event"] for e in history(tmp_path / "run")]
    assert events.count("rollback") == 1 and events[-1] == "unhealthy"
    assert max(committed(tmp_path / "run")) == 6


def test_a_confirmed_spike_stops_before_it_is_committed(tmp_path):
    cfg = config(tmp_path, train={"max_steps": 14},
                 health={"on_spike": "stop", "spike": {"enabled": True, "window": 6, "std": 3.0, "confirm": 2}})
    result = run_cli(tmp_path, "train", cfg, env={FAULT: "spike@9-11x20"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "loss spike" in result.stderr and "from step 9" in result.stderr, result.stderr
    assert committed(tmp_path / "run") == [3, 6]  # step 9's save waited while the loss was suspect
    assert not (tmp_path / "run" / "checkpoint-9").exists()


def test_every_auto_measures_the_save_pause_and_status_reports_it(tmp_path):
    cfg = config(tmp_path, checkpoint={"every": "auto", "auto_min_seconds": 0.05,
                                       "expected_interruptions_per_hour": 50})
    run = tmp_path / "run"
    assert run_cli(tmp_path, "train", cfg, "--stop-at-step", "5").returncode == 75
    assert run_cli(tmp_path, "train", cfg).returncode == 0
    intervals = [e for e in history(run) if e["event"] == "interval"]
    assert intervals and all(e["delta_s"] > 0 and e["interval_s"] >= 0.05 for e in intervals)
    resumed = [e for e in intervals if e["pid"] == history(run)[-1]["pid"]]
    assert resumed and resumed[0]["interruptions"] == 0  # a graceful stop lost nothing: M keeps the prior
    assert resumed[0]["mtbi_h"] == pytest.approx(1 / 50, rel=0.05)
    text = run_cli(tmp_path, "status", run).stdout
    assert "checkpoint interval (every: auto)" in text and "goodput:" in text, text
