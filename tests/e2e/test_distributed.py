"""Several processes: 2 ranks over gloo on CPU, started by real `torchrun` (torch.distributed.run),
`python -m gptresume.launch` and `accelerate launch` subprocesses, compared with one uninterrupted 2-process run.

Measured with torch 2.13: torchrun exits 1 whenever a worker exits non-zero (75 included), and on SIGTERM it
forwards the signal, waits for the workers, then exits 1; `gptresume.launch` exits with the workers' code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

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
from gptresume.checkpoint import list_checkpoints, newest_valid, verify_checkpoint
from gptresume.launch import exit_code

MAX_STEPS = 12
CORPUS_CHARS = 3600  # about 45 training blocks: with 2 ranks x 4 blocks an epoch is 6 steps, so runs cross one
TIMEOUT = 180


def train_cmd(kind, config, run_dir, *args):
    return [*launcher(kind), "-m", "gptresume", "train", str(config), "--set", f"train.output_dir={run_dir}", *args]


def run_ddp(kind, tmp, config, run_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(kind, config, run_dir, *args), cwd=tmp, env=ddp_env(tmp), capture_output=True,
                          text=True, timeout=TIMEOUT)


def start_ddp(kind, tmp, config, run_dir, *args) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(kind, config, run_dir, *args), cwd=tmp, env=ddp_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc, run_dir, step: int) -> None:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] >= step for r in read_metrics(run_dir)):
            return
        time.sleep(0.05)
    out = proc.stdout.read() if proc.poll() is not None else "(still running)"
    raise AssertionError(f"training never reached step {step} (exit code {proc.poll()}):\n{out}")


def assert_same_as_reference(run_dir, ref_dir):
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == list(range(1, MAX_STEPS + 1))  # every step logged once, across the stop
    assert train_losses(run_dir) == train_losses(ref_dir)  # exact float equality, every step
    assert_bitwise_equal(final_weights(run_dir), final_weights(ref_dir))


def assert_committed_by_two_ranks(ckpt):
    assert verify_checkpoint(ckpt).valid
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 2-process run under torchrun, shared by every test here."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tmp, "ddp.yaml", corpus_chars=CORPUS_CHARS,
                          train={"max_steps": MAX_STEPS, "save_steps": 4, "eval_steps": 6})
    result = run_ddp("torchrun", tmp, config, tmp / "reference")
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp, config, tmp / "reference", result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_train_once_and_rank_zero_keeps_the_books(reference):
    tmp, config, ref, out = reference
    assert out.count("Starting a new run") == 1 and out.count("Training complete at step 12") == 1
    assert out.count("Samples:") == 1 and "error" not in out.lower()
    assert "find_unused_parameters" not in out  # gptresume turns it off for DDP unless the config asks
    events = [json.loads(line)["event"] for line in (ref / "history.jsonl").read_text().splitlines()]
    assert events == ["start", "complete"]
    assert [r["step"] for r in read_metrics(ref) if "loss" in r] == list(range(1, MAX_STEPS + 1))
    state = json.loads((ref / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["epoch"] > 1  # the run crossed an epoch boundary (the sampler reshuffles per epoch)
    for ckpt in list_checkpoints(ref):
        assert_committed_by_two_ranks(ckpt)
    assert (ref / "final" / "model.safetensors").is_file()
    assert not [p.name for p in ref.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_stop_at_step_then_sigterm_then_finish_under_torchrun(reference):
    """One run in three commands, the same torchrun command each time: --stop-at-step 3, a resume stopped by
    SIGTERM to torchrun (which forwards it to the workers), a resume to the end. Every stop: all ranks at the
    same step, one checkpoint committed at it, workers exit 75, torchrun itself exits 1. The result equals
    the uninterrupted run bit for bit."""
    tmp, config, ref, _ = reference
    run = tmp / "stopped"
    stopped = run_ddp("torchrun", tmp, config, run, "--stop-at-step", "3")
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 1, out
    assert "exitcode  : 75" in out and out.count("Re-run the same command to resume") == 1
    info, _ = newest_valid(run)
    assert info.step == 3
    assert_committed_by_two_ranks(info.path)

    proc = start_ddp("torchrun", tmp, config, run)
    wait_for_step(proc, run, 4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, out
    assert "checkpoint-3" in out and out.count("SIGTERM received") == 1, out
    assert out.count("Stopped (SIGTERM) at step") == 1
    stopped_step = max(r["step"] for r in read_metrics(run))
    info, skipped = newest_valid(run)
    assert 4 <= info.step == stopped_step < MAX_STEPS and not skipped, out  # at the interrupted step
    assert_committed_by_two_ranks(info.path)
    assert [p.name for p in run.iterdir() if p.name.startswith(f"checkpoint-{stopped_step}")] == [info.name]

    resumed = run_ddp("torchrun", tmp, config, run)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("Resuming from") == 1 and f"checkpoint-{stopped_step}" in resumed.stdout
    assert_same_as_reference(run, ref)
    events = [json.loads(line)["event"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert events == ["start", "stopped", "resume", "stopped", "resume", "complete"]


@pytest.mark.slow
def test_gptresume_launch_passes_the_workers_exit_code(reference):
    """SIGTERM to `python -m gptresume.launch` (torchrun's options): forwarded, committed, exit 75; a re-run that
    is refused exits 2 with one message, and no rank is left waiting for another."""
    tmp, config, ref, _ = reference
    run = tmp / "launch"
    proc = start_ddp("gptresume.launch", tmp, config, run)
    wait_for_step(proc, run, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 75, out
    assert out.count("Stopped (SIGTERM) at step") == 1
    info, _ = newest_valid(run)
    assert info.step == max(r["step"] for r in read_metrics(run))
    assert_committed_by_two_ranks(info.path)

    t0 = time.time()
    refused = run_ddp("gptresume.launch", tmp, config, run, "--set", "train.learning_rate=1.0")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("error: ") == 1 and "learning_rate" in refused.stderr
    assert "Traceback" not in refused.stderr and time.time() - t0 < 60


@pytest.mark.slow
def test_sigkill_of_one_rank_ends_the_job_and_a_rerun_resumes_exactly(reference):
    import psutil

    tmp, config, ref, _ = reference
    run = tmp / "killed"
    proc = start_ddp("torchrun", tmp, config, run, "--set", "train.save_steps=2")
    wait_for_step(proc, run, 5)
    workers = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(proc.pid).children()}
    assert set(workers) == {0, 1}
    workers[1].kill()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, out  # torchrun saw a failed worker and ended the other one
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in workers.values())
    info, _ = newest_valid(run)
    assert info is not None and info.step >= 2
    assert_committed_by_two_ranks(info.path)
    resumed = run_ddp("torchrun", tmp, config, run, "--set", "train.save_steps=2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming from {info.path}" in resumed.stdout
    assert_same_as_reference(run, ref)


@pytest.mark.slow
def test_the_ledger_on_two_processes_resumes_inside_a_later_epoch_exactly(reference):
    """With checkpoint.ledger the training sampler is gptresume's StreamSampler. A stop inside the second epoch and
    a resume, 2 processes each time, equal the uninterrupted run (ledger off) bit for bit, and `gptresume ledger`
    proves every completed epoch trained each block; the repeats it reports are accelerate's even_batches padding
    of each epoch's last global batch, named as such (the reference keeps dataloader_drop_last off). Trainer's
    set_epoch did not reach the sampler in a resumed epoch with several processes, so the resume replayed epoch
    0's order (fixed in training/trainer.py `_run_epoch`)."""
    tmp, config, ref, _ = reference
    run = tmp / "ledger"
    ledger_on = ("--set", "checkpoint.ledger=true")
    stopped = run_ddp("gptresume.launch", tmp, config, run, "--stop-at-step", "8", *ledger_on)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert 1 < json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())["epoch"] < 2  # inside epoch 2
    resumed = run_ddp("gptresume.launch", tmp, config, run, *ledger_on)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_as_reference(run, ref)
    checked = run_cli(tmp, "ledger", run)
    out = checked.stdout + checked.stderr
    assert re.search(r"epochs 0-1: each of the \d+ blocks trained once", out), out
    violations = [line for line in out.splitlines() if line.startswith("VIOLATION")]
    assert checked.returncode == 2 and len(violations) == 1 and "(padding)" in violations[0], out
    assert "even_batches" in violations[0] and "trained at step 9" not in out, out  # no repeat from the resume


@pytest.mark.slow
def test_accelerate_launch_trains_the_same_two_process_run(reference):
    tmp, config, ref, _ = reference
    run = tmp / "accelerate"
    result = run_ddp("accelerate", tmp, config, run, "--stop-at-step", "3")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and out.count("Stopped (--stop-at-step 3)") == 1, out  # accelerate: 75 -> 1
    assert_committed_by_two_ranks(run / "checkpoint-3")
    ref_losses = train_losses(ref)
    assert train_losses(run) == {s: ref_losses[s] for s in (1, 2, 3)}  # same ranks, same batches, same losses


@pytest.mark.parametrize("codes, expected", [
    ([75, 75], 75), ([75, -15], 75), ([2, -15], 2), ([2, 2], 2), ([130, -15], 130),
    ([75, 1], 1), ([1, -15], 1), ([-9, -15], 137),
])
def test_launch_exit_code_is_the_workers(codes, expected):
    assert exit_code(codes) == expected



def _fake_checkpoint(path, names, world_size=1):
    from gptresume.checkpoint import write_manifest

    path.mkdir(parents=True)
    for name in names:
        if name.endswith("/"):
            (path / name).mkdir()
            (path / name / "shard.distcp").write_bytes(b"x")
        else:
            (path / name).write_bytes(b"x")
    write_manifest(path, step=1, epoch=0.1, config={}, config_fingerprint="f", data_fingerprint=None,
                   world_size=world_size)
    return path


@pytest.mark.parametrize("layout", [
    ["optimizer.bin", "pytorch_model_fsdp.bin", "scheduler.pt"],  # FSDP, full state dict
    ["optimizer_0/", "pytorch_model_fsdp_0/", "scheduler.pt"],  # FSDP, sharded state dict
    ["global_step4/", "latest", "scheduler.pt"],  # DeepSpeed ZeRO with Trainer's scheduler
    ["global_step4/", "latest"],  # DeepSpeed ZeRO with its own scheduler
], ids=["fsdp-full", "fsdp-sharded", "deepspeed", "deepspeed-own-scheduler"])
def test_sharded_checkpoints_hold_complete_training_state(tmp_path, layout):
    from gptresume.checkpoint import missing_state

    names = ["model.safetensors", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth", *layout]
    assert missing_state(_fake_checkpoint(tmp_path / "checkpoint-4", names, world_size=2)) == {}


def test_a_missing_rank_rng_file_is_missing_state(tmp_path):
    from gptresume.checkpoint import missing_state

    names = ["model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state_0.pth"]
    missing = missing_state(_fake_checkpoint(tmp_path / "checkpoint-4", names, world_size=2))
    assert list(missing) == ["RNG state"] and "rng_state_1.pth" in missing["RNG state"]
    assert missing_state(_fake_checkpoint(tmp_path / "checkpoint-5", names, world_size=1)) == {}


def test_sharded_example_configs():
    """examples/fsdp.yaml is what Trainer needs for FSDP2; examples/deepspeed-zero2.yaml points at the ZeRO-2 JSON
    (loading it needs DeepSpeed, which is not installed here: the refusal names it)."""
    import importlib.util

    from conftest import ROOT
    from gptresume.config import load_config
    from gptresume.errors import ConfigError

    args = load_config(ROOT / "examples" / "fsdp.yaml").training_arguments()
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "GPT2Block"
    zero = json.loads((ROOT / "examples" / "deepspeed-zero2.json").read_text())
    assert zero["zero_optimization"]["stage"] == 2
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="deepspeed"):
            load_config(ROOT / "examples" / "deepspeed-zero2.yaml")


FAKE_RUN = """#!/bin/sh
n=$(cat count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > count
code=$(echo $CODES | cut -d' ' -f$n)
if [ "$code" = kill ]; then kill -9 $$; fi
exit $code
"""


@pytest.mark.parametrize("codes, exit_status, runs", [
    ("75 75 0", 0, 3), ("75 kill 0", 0, 3), ("75 2 0", 2, 2), ("1 0", 1, 1), ("130 0", 130, 1),
])
def test_retry_script_reruns_after_a_stop_or_a_kill_only(tmp_path, codes, exit_status, runs):
    from conftest import ROOT

    (tmp_path / "run.sh").write_text(FAKE_RUN)
    (tmp_path / "run.sh").chmod(0o755)
    result = subprocess.run([str(ROOT / "examples" / "retry.sh"), "./run.sh"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "CODES": codes, "RETRY_DELAY": "0"})
    assert result.returncode == exit_status, result.stderr
    assert int((tmp_path / "count").read_text()) == runs


def test_retry_script_passes_sigterm_on_and_stops(tmp_path):
    from conftest import ROOT

    (tmp_path / "run.sh").write_text("#!/bin/bash\ntrap 'kill $s; sleep 0.5; echo saved; exit 75' TERM\n"
                                     "sleep 30 & s=$!\necho started > started\nwait $s\n")
    (tmp_path / "run.sh").chmod(0o755)
    proc = subprocess.Popen([str(ROOT / "examples" / "retry.sh"), "./run.sh"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "RETRY_DELAY": "0"})
    deadline = time.time() + 30
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 75 and "saved" in out and "not running again" in out, out


def test_slurm_script_requeues_on_75_and_passes_usr1_on():
    from conftest import ROOT

    script = (ROOT / "examples" / "slurm.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "examples" / "slurm.sbatch")]).returncode == 0
    assert "#SBATCH --signal=B:USR1@120" in script and "#SBATCH --requeue" in script
    assert 'if [ "$code" -eq 75 ]; then\n    scontrol requeue "$SLURM_JOB_ID"' in script
    assert "python -m gptresume.launch" in script and 'kill -USR1 "$srun_pid"' in script


@pytest.mark.slow
def test_async_saves_with_two_processes_stop_resume_and_survive_a_killed_rank(reference):
    """checkpoint.async_save under torchrun (2 ranks): a stop waits for the background commit on every rank; a
    resume continues; SIGKILL of rank 1 while rank 0's writer is part-way through checkpoint-8 (held there by the
    test hook) leaves checkpoint-6 the newest valid one (rank 0 must not commit without rank 1); a re-run
    finishes bitwise equal to the uninterrupted synchronous run."""
    import psutil

    from gptresume.checkpoint import MANIFEST_NAME
    from gptresume.checkpoint.async_save import TEST_WRITE_DELAY_ENV

    tmp, config, ref, _ = reference
    run = tmp / "async"
    on = ("--set", "checkpoint.async_save=true")
    stopped = run_ddp("torchrun", tmp, config, run, *on, "--stop-at-step", "6")
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 1 and "exitcode  : 75" in out, out
    assert "saving synchronously" not in out  # async with 2 processes, not the fallback
    for step in (4, 6):  # the stop waited for checkpoint-6's background commit
        assert_committed_by_two_ranks(run / f"checkpoint-{step}")

    env = {**ddp_env(tmp), TEST_WRITE_DELAY_ENV: "8:6"}  # rank 0's writer of checkpoint-8 holds 6 s
    proc = subprocess.Popen(train_cmd("torchrun", config, run, *on), cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pending = run / "checkpoint-8"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None and not (pending / "model.safetensors").is_file():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    workers = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(proc.pid).children()}
    workers[1].kill()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, out
    assert not (pending / MANIFEST_NAME).exists(), out
    info, skipped = newest_valid(run)
    assert info.step == 6 and [s.step for s in skipped] == [8], out

    rerun = run_ddp("torchrun", tmp, config, run, *on)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"Resuming from {info.path}" in rerun.stdout
    assert_committed_by_two_ranks(run / f"checkpoint-{MAX_STEPS}")
    assert_same_as_reference(run, ref)
