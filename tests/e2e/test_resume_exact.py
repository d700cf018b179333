"""The product's core promise, checked with real processes: a run stopped part-way (mid-epoch, dropout on)
and resumed in a new process gives the same per-step losses and bitwise-identical final weights as an
uninterrupted run. Also: SIGTERM -> exit 75 with a committed checkpoint; kill -9 at random instants;
a corrupted newest checkpoint; a finished run re-run says it is complete."""

import json
import random
import signal
import time

import pytest

from conftest import (
    assert_bitwise_equal,
    final_weights,
    logged_step,
    read_metrics,
    run_cli,
    start_cli,
    train_losses,
    train_on_a_small_disk,
    uncommitted_checkpoints,
    wait_until,
    write_config,
)
from gptresume.checkpoint import newest_valid, verify_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 24
CORPUS_CHARS = 3600  # about 50 blocks of 32 tokens: an epoch is a dozen steps, so runs cross epoch boundaries


def config_for(tmp_path, ga: int):
    return write_config(tmp_path, f"ga{ga}.yaml", corpus_chars=CORPUS_CHARS,
                        train={"max_steps": MAX_STEPS, "gradient_accumulation_steps": ga,
                               "per_device_train_batch_size": 4 // ga * 2 if ga > 1 else 4, "save_steps": 5,
                               "eval_steps": 10})


_REFERENCES = {}


def uninterrupted_run(tmp_path_factory, ga: int):
    """An uninterrupted run to compare against (one per accumulation setting per test session)."""
    if ga not in _REFERENCES:
        tmp = tmp_path_factory.mktemp(f"ref-ga{ga}")
        config = config_for(tmp, ga)
        result = run_cli(tmp, "train", config)
        assert result.returncode == 0, result.stdout + result.stderr
        _REFERENCES[ga] = (tmp, config, tmp / "run")
    return _REFERENCES[ga]


@pytest.fixture(scope="module", params=[1, 2], ids=["ga1", "ga2"])
def reference(request, tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def reference1(tmp_path_factory):
    """Without gradient accumulation: enough for the signal, kill and storage paths."""
    return uninterrupted_run(tmp_path_factory, 1)


def run_elsewhere(tmp, config, name, *args):
    return run_cli(tmp, "train", config, "--set", f"train.output_dir={tmp / name}", *args)


def assert_same_as_reference(run_dir, ref_dir):
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) == list(range(1, MAX_STEPS + 1))  # continuous, no step twice
    assert train_losses(run_dir) == train_losses(ref_dir)  # exact float equality, every step
    assert_bitwise_equal(final_weights(run_dir), final_weights(ref_dir))


def test_stopped_and_resumed_run_is_exact(reference):
    tmp, config, ref = reference
    stopped = run_elsewhere(tmp, config, "stopped", "--stop-at-step", "15")
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert "Re-run the same command to resume" in stopped.stdout
    run = tmp / "stopped"
    assert verify_checkpoint(run / "checkpoint-15").valid
    epoch_at_stop = json.loads((run / "checkpoint-15" / "trainer_state.json").read_text())["epoch"]
    assert 1 < epoch_at_stop and epoch_at_stop % 1 > 0.05  # really mid-epoch, after an epoch boundary
    model_config = json.loads((run / "checkpoint-15" / "config.json").read_text())
    assert model_config["resid_pdrop"] > 0 and model_config["attn_pdrop"] > 0  # dropout on

    resumed = run_elsewhere(tmp, config, "stopped")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from" in resumed.stdout and "checkpoint-15" in resumed.stdout
    assert_same_as_reference(run, ref)
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "stopped", "resume", "complete"]


def test_sigterm_commits_a_checkpoint_at_the_interrupted_step(reference1):
    tmp, config, ref = reference1
    run = tmp / "sigterm"
    proc = start_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and any("loss" in r for r in read_metrics(run) if r["step"] >= 7):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    info, _ = newest_valid(run)
    stopped_step = max(r["step"] for r in read_metrics(run))
    assert info.step == stopped_step  # committed at the step the signal interrupted, not the last save_steps one
    assert f"checkpoint-{info.step} is committed" in out
    resumed = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_as_reference(run, ref)


def test_kill_9_at_random_instants_then_rerun(reference1):
    """SIGKILL three times in a row, in a training step or during a checkpoint write; each re-run resumes from the
    newest valid checkpoint; the final weights equal the uninterrupted run's. The kills are keyed to progress (a
    step logged, a save in progress) a few steps after the resumed one, so each hits a live process on any
    machine."""
    tmp, config, ref = reference1
    run = tmp / "killed"
    rng = random.Random(1234)
    for i in range(3):
        done = max([int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")
                    if p.name.split("-")[1].isdigit() and (p / "manifest.json").is_file()], default=0)
        target = min(done + rng.randint(1, 3), MAX_STEPS - 4)
        proc = start_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--set", "train.save_steps=1")
        if i == 1:  # the save of a step after the target, cut short
            point = lambda t=target: any(int(n.split("-")[1]) > t for n in uncommitted_checkpoints(run))  # noqa: E731
        else:
            point = lambda t=target: logged_step(run) >= t  # noqa: E731
        wait_until(point, proc)
        proc.kill()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, out  # the kill hit a live process
    final = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--set", "train.save_steps=1")
    assert final.returncode == 0, final.stdout + final.stderr
    assert_bitwise_equal(final_weights(run), final_weights(ref))
    assert train_losses(run) == train_losses(ref)


def test_corrupted_newest_checkpoint_falls_back_and_names_the_file(reference1):
    tmp, config, ref = reference1
    run = tmp / "corrupt"
    assert run_elsewhere(tmp, config, "corrupt", "--stop-at-step", "12").returncode == 75
    model_file = run / "checkpoint-12" / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 3] ^= 0xFF
    model_file.write_bytes(bytes(data))
    verify = run_cli(tmp, "verify", run)
    assert verify.returncode == 2 and "checkpoint-12: model.safetensors: wrong xxh3_128" in verify.stdout
    resumed = run_elsewhere(tmp, config, "corrupt")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "skipping" in resumed.stderr and "checkpoint-12" in resumed.stderr and "model.safetensors" in resumed.stderr
    assert "Resuming from" in resumed.stdout and "checkpoint-10" in resumed.stdout
    assert_same_as_reference(run, ref)
    assert run_cli(tmp, "verify", run).returncode == 0  # retention later removed the damaged, superseded one


def test_finished_run_says_complete_and_final_model_loads(reference1):
    tmp, config, ref = reference1
    before = (ref / "history.jsonl").read_text()
    again = run_cli(tmp, "train", config)
    assert again.returncode == 0 and "Run complete" in again.stdout
    assert (ref / "history.jsonl").read_text() == before  # nothing trained, nothing recorded
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(ref / "final")
    tok = AutoTokenizer.from_pretrained(ref / "final")
    out = pipeline("text-generation", model=model, tokenizer=tok)("The", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The")


def test_resume_never_refuses_then_overwrite_starts_over(reference1):
    tmp, config, ref = reference1
    run = tmp / "never"
    assert run_elsewhere(tmp, config, "never", "--stop-at-step", "3").returncode == 75
    refused = run_elsewhere(tmp, config, "never", "--resume", "never")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    over = run_elsewhere(tmp, config, "never", "--resume", "never", "--overwrite", "--stop-at-step", "2")
    assert over.returncode == 75, over.stdout + over.stderr
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-2"]
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]


def test_write_failure_during_a_save_keeps_earlier_checkpoints(reference1):
    """A save that fails part-way (RLIMIT_FSIZE gives EFBIG, standing in for a full disk) exits with a clear
    message and no traceback; the committed checkpoints stay valid, and a re-run finishes exactly."""
    tmp, config, ref = reference1
    run = tmp / "full-disk"
    assert run_elsewhere(tmp, config, "full-disk", "--stop-at-step", "7").returncode == 75
    failed = train_on_a_small_disk(tmp, config, run, run / "checkpoint-7")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "error: could not write to disk" in failed.stderr and "re-run the same command" in failed.stderr
    assert "Traceback" not in failed.stderr
    info, skipped = newest_valid(run)
    assert info.step == 7 and [s.step for s in skipped] == [10]  # the cut-short save is not committed
    resumed = run_elsewhere(tmp, config, "full-disk")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_as_reference(run, ref)
