"""A streaming run (data.streaming: true) stopped and resumed in a new process is exact: the same per-step losses
and bitwise-identical weights as an uninterrupted one, with the position restored from the checkpoint (no batch
replayed), across the source's end; a resume on another global batch is refused with the reason. Two processes
(torchrun, gloo on CPU): each rank streams its own part and resumes its own position, exactly; a resume with one
process and another global batch is refused with the reason. Elastic: a run stopped on 2 processes, continued on 1
(the same global batch), stopped, and finished on 2 trains every block of the stream exactly once (its sample
ledger, checked by `gptresume ledger`)."""

import json

import pytest

import subprocess

from conftest import (
    assert_bitwise_equal,
    ddp_env,
    final_weights,
    launcher,
    read_metrics,
    run_cli,
    train_losses,
    write_config,
)
from gptresume.checkpoint import verify_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 14


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streaming")
    config = write_config(tmp, corpus_chars=2500, data={"streaming": True, "validation_fraction": 0,
                                                        "shuffle_buffer": 8},
                          train={"max_steps": MAX_STEPS, "save_steps": 4, "gradient_accumulation_steps": 2,
                                 "per_device_train_batch_size": 2})
    ref = run_cli(tmp, "train", config, "--set", f"train.output_dir={tmp / 'ref'}")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    return tmp, config


def test_a_stopped_streaming_run_resumes_exactly(streaming):
    tmp, config = streaming
    run = tmp / "stopped"
    stopped = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--stop-at-step", "9")
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert verify_checkpoint(run / "checkpoint-9").valid
    manifest = json.loads((run / "checkpoint-9" / "manifest.json").read_text())
    assert "data_state.json" in json.dumps(manifest["files"])  # the position is committed with the checkpoint
    state = json.loads((run / "checkpoint-9" / "data_state.json").read_text())
    assert state["yielded"] == 9 * 4 and state["parts"][0]["passes"] >= 1  # 36 blocks trained, past the end
    assert not (run / "data-cache").exists() or not list((run / "data-cache").glob("*/meta.json"))

    resumed = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "checkpoint-9" in resumed.stdout
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert train_losses(run) == train_losses(tmp / "ref")
    assert_bitwise_equal(final_weights(run), final_weights(tmp / "ref"))


def test_a_streaming_resume_on_another_global_batch_is_refused(streaming):
    tmp, config = streaming
    before = sorted(p.name for p in (tmp / "ref").iterdir())
    refused = run_cli(tmp, "train", config, "--set", f"train.output_dir={tmp / 'ref'}", "--set",
                      f"train.max_steps={MAX_STEPS + 4}", "--allow-change", "max_steps", "--set",
                      "train.per_device_train_batch_size=1", "--allow-change", "batch")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "streaming run" in refused.stderr and "not a sample count" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in (tmp / "ref").iterdir()) == before


DDP_STEPS = 8


def run_torchrun(tmp, config, run_dir, *args) -> subprocess.CompletedProcess:
    command = [*launcher("torchrun"), "-m", "gptresume", "train", str(config), "--set", f"train.output_dir={run_dir}",
               *args]
    return subprocess.run(command, cwd=tmp, env=ddp_env(tmp), capture_output=True, text=True, timeout=300)


def test_two_processes_stream_their_own_parts_and_resume_exactly(tmp_path):
    config = write_config(tmp_path, corpus_chars=2500, data={"streaming": True, "validation_fraction": 0,
                                                             "shuffle_buffer": 4},
                          train={"max_steps": DDP_STEPS, "save_steps": 3, "per_device_train_batch_size": 2})
    ref = run_torchrun(tmp_path, config, tmp_path / "ref")
    assert ref.returncode == 0, ref.stdout + ref.stderr

    run = tmp_path / "stopped"
    stopped = run_torchrun(tmp_path, config, run, "--stop-at-step", "5")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr  # torchrun: a worker's 75 becomes 1
    ckpt = run / "checkpoint-5"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert verify_checkpoint(ckpt).valid and manifest["world_size"] == 2
    per_rank = {f"data_state_{r}.json" for r in (0, 1)} | {f"data_buffer_{r}.npy" for r in (0, 1)}
    assert per_rank <= set(manifest["files"])  # each rank's position, committed and hashed with the checkpoint
    states = [json.loads((ckpt / f"data_state_{r}.json").read_text()) for r in (0, 1)]
    assert [s["yielded"] for s in states] == [5 * 2, 5 * 2]  # each rank trained its own 10 blocks
    assert [[p["part"] for p in s["parts"]] for s in states] == [[0], [1]]  # its own part of the source
    assert states[0]["parts"][0]["reader"] != states[1]["parts"][0]["reader"]

    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    elastic = run_cli(tmp_path, "train", config, "--set", f"train.output_dir={run}", "--allow-change", "world_size")
    assert elastic.returncode == 2, elastic.stdout + elastic.stderr
    assert "world_size changed (2 -> 1)" in elastic.stderr and "same global batch" in elastic.stderr
    assert "Traceback" not in elastic.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before

    resumed = run_torchrun(tmp_path, config, run)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from" in resumed.stdout and "checkpoint-5" in resumed.stdout
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, DDP_STEPS + 1))
    assert train_losses(run) == train_losses(tmp_path / "ref")
    assert_bitwise_equal(final_weights(run), final_weights(tmp_path / "ref"))


def test_a_streaming_run_resumes_on_one_process_then_two_training_each_block_once(tmp_path):
    """2 processes (2 per device) -> 1 (4 per device) -> 2: the global batch is 4 blocks throughout."""
    import sys

    config = write_config(tmp_path, corpus_chars=2500, data={"streaming": True, "validation_fraction": 0,
                                                             "shuffle_buffer": 4},
                          train={"max_steps": 12, "save_steps": 3, "per_device_train_batch_size": 2},
                          checkpoint={"keep_last": 2, "ledger": True})
    run = tmp_path / "run"

    def two(*args):
        return subprocess.run([*launcher("gptresume.launch"), "-m", "gptresume", "train", str(config), *args],
                              cwd=tmp_path, env=ddp_env(tmp_path), capture_output=True, text=True, timeout=300)

    first = two("--stop-at-step", "4")
    assert first.returncode == 75, first.stdout + first.stderr
    one = run_cli(tmp_path, "train", config, "--set", "train.per_device_train_batch_size=4", "--stop-at-step", "8")
    assert one.returncode == 75, one.stdout + one.stderr
    assert "same global batch (4)" in one.stderr and "Stream re-split: 2 process(es) wrote it, 1 read it" in (
        one.stdout + one.stderr)
    assert json.loads((run / "checkpoint-8" / "manifest.json").read_text())["world_size"] == 1
    last = two()
    assert last.returncode == 0, last.stdout + last.stderr
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, 13))

    ledger = run_cli(tmp_path, "ledger", run)
    print(ledger.stdout, file=sys.stderr)
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert "steps 1-12" in ledger.stdout and "48 trained" in ledger.stdout
    assert "process count 2 -> 1, 1 -> 2" in ledger.stdout and "exactly once" in ledger.stdout
    from gptresume.ledger.books import booked

    assert [(a, b) for a, b, _ in booked(run)] == [(1, 3), (4, 4), (5, 6), (7, 8), (9, 9), (10, 12)]
