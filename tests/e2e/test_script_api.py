"""`gptresume.train(trainer)` in a plain Trainer script (its own model, byte-level "tokenizer", datasets.Dataset and
collator; nothing of gptresume's but the one call), run in real child processes: kill -9 at random steps, SIGTERM,
a corrupted checkpoint, a changed learning rate and changed data, and 2 processes under torchrun. Every resumed run
ends with per-step losses and final weights bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import (
    assert_bitwise_equal,
    ddp_env,
    launcher,
    read_metrics,
    run_cli,
    run_script,
    start_command,
    logged_step,
    train_losses,
    uncommitted_checkpoints,
    wait_for_step,
    wait_until,
)

pytestmark = pytest.mark.slow

# The script a user would have: Trainer built by hand, `gptresume.train(trainer)` instead of `trainer.train()`.
# argv: OUTPUT_DIR [JSON options]: lr, text (a corpus variant), allow_change, stop_at_step, max_steps, async_save.
SCRIPT = r'''
import json, os, sys

import datasets
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import gptresume

out = sys.argv[1]
opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
from pydoc_data.topics import topics

text = "\n\n".join(topics[k] for k in sorted(topics)[:8])
if opts.get("text") == "changed":
    text = text.replace("the", "a")
data = list(text.encode()[:24 * 32 * 6])
blocks = [data[i:i + 32] for i in range(0, len(data) - 31, 32)]
train = datasets.Dataset.from_dict({"input_ids": blocks})


def collate(rows):
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=256))
args = TrainingArguments(output_dir=out, max_steps=opts.get("max_steps", 30), per_device_train_batch_size=4,
                         learning_rate=opts.get("lr", 3e-3), warmup_steps=3, logging_steps=1,
                         save_steps=opts.get("save_steps", 4), save_total_limit=3, seed=11, report_to="none",
                         use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False)
trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate)
try:
    outcome = gptresume.train(trainer, allow_change=opts.get("allow_change", []),
                              stop_at_step=opts.get("stop_at_step"), async_save=opts.get("async_save", False))
except gptresume.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
print("OUTCOME", outcome.status, outcome.step, flush=True)
'''


def script_path(tmp: Path) -> Path:
    path = tmp / "train_script.py"
    path.write_text(SCRIPT)
    return path


def start_script(tmp: Path, out: Path, stream: bool = False, **opts):
    """The script in a child process (forked from the test's fork server, see tests/forking.py)."""
    return start_command(tmp, [out, json.dumps(opts)], script=script_path(tmp), stream=stream)


def run(tmp: Path, out: Path, **opts) -> subprocess.CompletedProcess:
    return run_script(tmp, script_path(tmp), out, json.dumps(opts))


def last_checkpoint_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    from gptresume.checkpoint import newest_valid

    info, _ = newest_valid(out)
    return load_file(str(info.path / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    assert train_losses(a) == train_losses(b)
    assert_bitwise_equal(last_checkpoint_weights(a), last_checkpoint_weights(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the script, shared by every single-process test here."""
    tmp = tmp_path_factory.mktemp("script")
    result = run(tmp, tmp / "reference")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OUTCOME complete 30" in result.stdout
    return tmp, tmp / "reference"


def test_sigterm_commits_exits_75_and_a_rerun_is_exact(reference):
    tmp, ref = reference
    out = tmp / "sigterm"
    proc = start_script(tmp, out, stream=True, save_steps=100)
    wait_for_step(out, 5, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output
    assert "SIGTERM received" in output and "is committed" in output
    stopped = [e for e in _history(out) if e["event"] == "stopped"]
    assert stopped and stopped[0]["reason"] == "SIGTERM"
    resumed = run(tmp, out, save_steps=100)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_run(ref, out)
    assert [e["event"] for e in _history(out)] == ["start", "stopped", "resume", "complete"]


def test_random_kill9_then_rerun_is_bitwise_exact(reference):
    """SIGKILL at random steps (three times), re-running the same command after each: the finished run equals the
    uninterrupted one, and `gptresume verify` accepts every checkpoint left. Each kill is keyed to progress (the
    target step logged, or the save after it in progress), never to the clock, and well before the last step, so
    every kill hits a live process on any machine."""
    tmp, ref = reference
    out = tmp / "killed"
    rng = random.Random(20261130)
    for i, target in enumerate(sorted(rng.sample(range(3, 22), 3))):
        proc = start_script(tmp, out)
        if i % 2:  # a save of a step at or after the target in progress (save_steps 4)
            point = lambda t=target: any(int(n.split("-")[1]) >= t for n in uncommitted_checkpoints(out))  # noqa: E731
        else:  # the target step logged: the kill lands in the next step's forward, backward or save
            point = lambda t=target: logged_step(out) >= t  # noqa: E731
        wait_until(point, proc)
        proc.kill()
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (target, proc.communicate()[0])  # the kill hit a live process
    final = run(tmp, out)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_same_run(ref, out)
    verify = run_cli(tmp, "verify", out)
    assert verify.returncode == 0 and "ok" in verify.stdout, verify.stdout + verify.stderr


def test_corrupted_newest_checkpoint_falls_back_and_names_the_file(reference):
    tmp, ref = reference
    out = tmp / "corrupt"
    stopped = run(tmp, out, stop_at_step=12)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    weights = out / "checkpoint-12" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    resumed = run(tmp, out)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "skipping" in resumed.stderr and "checkpoint-12" in resumed.stderr and "model.safetensors" in resumed.stderr
    resume = next(e for e in _history(out) if e["event"] == "resume")
    assert resume["checkpoint"].endswith("checkpoint-8")
    assert_same_run(ref, out)


def test_changed_learning_rate_is_refused_then_applied_with_allow_change(reference):
    tmp, ref = reference
    out = tmp / "lr"
    assert run(tmp, out, stop_at_step=10).returncode == 75
    refused = run(tmp, out, lr=1e-3)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "train.learning_rate" in refused.stderr and "allow_change=['learning_rate']" in refused.stderr
    assert "Traceback" not in refused.stderr
    applied = run(tmp, out, lr=1e-3, allow_change=["learning_rate"])
    assert applied.returncode == 0, applied.stdout + applied.stderr
    keys = ("loss", "learning_rate", "grad_norm")
    ref_rows = {r["step"]: [r[k] for k in keys] for r in read_metrics(ref) if "loss" in r}
    rows = {r["step"]: [r[k] for k in keys] for r in read_metrics(out) if "loss" in r}
    assert all(rows[s] == ref_rows[s] for s in range(1, 11))  # the first 10 steps are the reference's
    # the very next step uses the new rate: the reference's rate at step 11 scaled by 1e-3 / 3e-3
    assert rows[11][1] == pytest.approx(ref_rows[11][1] / 3, rel=1e-6)
    assert rows[11][0] == ref_rows[11][0]  # step 11's loss is computed before its update
    assert rows[12][0] != ref_rows[12][0]


def test_changed_data_is_refused_unless_allowed(reference):
    tmp, _ = reference
    out = tmp / "data"
    assert run(tmp, out, stop_at_step=6).returncode == 75
    before = sorted(p.name for p in out.iterdir())
    refused = run(tmp, out, text="changed")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "training data differs" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    allowed = run(tmp, out, text="changed", allow_change=["data"])
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_two_processes_under_torchrun_stop_and_resume_bitwise(tmp_path):
    tmp = tmp_path

    def torchrun(out, **opts):
        return subprocess.run([*launcher("torchrun"), str(script_path(tmp)), str(out), json.dumps(opts)], cwd=tmp,
                              env=ddp_env(tmp), capture_output=True, text=True, timeout=600)

    ref = torchrun(tmp / "ref", max_steps=12)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    stopped = torchrun(tmp / "run", max_steps=12, stop_at_step=5)
    assert "is committed" in stopped.stdout + stopped.stderr, stopped.stdout + stopped.stderr
    assert stopped.returncode != 0  # torchrun reports a worker's 75 as its own 1
    resumed = torchrun(tmp / "run", max_steps=12)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp / "run" / "checkpoint-5" / "manifest.json").is_file() or any(
        e["event"] == "resume" and e["step"] == 5 for e in _history(tmp / "run"))
    assert json.loads((tmp / "run" / "checkpoint-12" / "manifest.json").read_text())["world_size"] == 2
    assert_same_run(tmp / "ref", tmp / "run")


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]


def test_two_calls_in_one_process_resume_exactly_and_leave_nothing_behind(tmp_path):
    """A notebook's pattern, in this process: train until a stop (exit_on_stop=False returns), build a new Trainer,
    call again. The second call resumes exactly; no signal handler, lock or callback outlives a call."""
    import os

    import datasets
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    import gptresume
    from gptresume import rundir

    blocks = torch.randint(0, 64, (48, 16), generator=torch.Generator().manual_seed(3)).tolist()

    def make_trainer(out):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=64))
        args = TrainingArguments(output_dir=str(out), max_steps=10, per_device_train_batch_size=4, save_steps=3,
                                 logging_steps=1, seed=5, report_to="none", use_cpu=True, disable_tqdm=True,
                                 dataloader_pin_memory=False)
        return Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": blocks}),
                       data_collator=lambda rows: {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
                                                   "labels": torch.tensor([r["input_ids"] for r in rows])})

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    reference = gptresume.train(make_trainer(tmp_path / "ref"))
    assert (reference.status, reference.step) == ("complete", 10)
    first = make_trainer(tmp_path / "run")
    stopped = gptresume.train(first, stop_at_step=4, exit_on_stop=False)
    assert (stopped.status, stopped.step, stopped.reason) == ("stopped", 4, "--stop-at-step 4")
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert rundir._held == {} and not os.path.exists(tmp_path / "run" / "checkpoint-5")
    second = make_trainer(tmp_path / "run")
    resumed = gptresume.train(second)
    assert (resumed.status, resumed.step, resumed.resumed_from.name) == ("complete", 10, "checkpoint-4")
    assert type(first) is not Trainer and type(make_trainer(tmp_path / "x")) is Trainer  # only instances changed
    assert_same_run(tmp_path / "ref", tmp_path / "run")
    third = make_trainer(tmp_path / "run")
    again = gptresume.train(third)  # complete: trains nothing, but the trainer holds the trained weights
    assert again.status == "already complete"
    trained = last_checkpoint_weights(tmp_path / "run")
    assert_bitwise_equal({k: v for k, v in third.model.state_dict().items() if k in trained}, trained)
