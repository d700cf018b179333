"""The sample ledger (checkpoint.ledger: true) on packed data, in real `gptresume train` processes:

- it changes nothing: a run with it has the same losses and bitwise-equal weights as one without, and each step's
  recorded block indices are the blocks the collator really batched (GPTRESUME_SAMPLE_LOG, by content);
- SIGKILLs at observed points (a step logged, a manifest just written, a segment just booked, an asynchronous save
  under way), with a batch re-split (same global batch) in between: the finished run's ledger equals the
  uninterrupted run's step for step, and `gptresume ledger` proves every completed epoch trained exactly once;
- a rollback (GPTRESUME_TEST_FAULT): its skipped samples are listed as skipped, and they are exactly the samples the
  uninterrupted run trained in the skipped steps; the rolled-back steps' segments are set aside;
- two processes without dataloader_drop_last: accelerate pads the epoch's last global batch with samples from the
  epoch's start; the ledger records the repeats where the collator saw them, and `gptresume ledger` exits 2 naming
  them and the fix.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import (
    assert_bitwise_equal,
    ddp_env,
    final_weights,
    launcher,
    run_cli,
    split_ids,
    start_command,
    train_losses,
    wait_for_step,
    write_config,
)
from gptresume.ledger.books import booked, lineage

pytestmark = pytest.mark.slow

MAX_STEPS = 18  # 36 training blocks at 4 per step: epochs 0 and 1 complete


def config(tmp_path, name="config.yaml", **sections):
    sections["train"] = {"max_steps": MAX_STEPS, "save_steps": 3, **sections.get("train", {})}
    sections["checkpoint"] = {"keep_last": 2, "ledger": True, **sections.get("checkpoint", {})}
    sections.setdefault("data", {"validation_fraction": 0.1})
    return write_config(tmp_path, name, corpus_chars=3000, **sections)


def per_step(run_dir: Path) -> dict[int, list[int]]:
    segments, _ = lineage(run_dir)
    return {int(s.steps[i]): s.step_ids(i).tolist() for s in segments for i in range(len(s.steps))}


def logged_batches(log: Path, ranks: int = 1) -> list[list[str]]:
    """Sample content ids of each optimizer step (accumulation 1): rank 0's batch k + rank 1's batch k."""
    rows = [[json.loads(line) for line in Path(f"{log}.rank{r}").read_text().splitlines()] for r in range(ranks)]
    return [sum((rows[r][k] for r in range(ranks)), []) for k in range(len(rows[0]))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger")
    cfg = config(tmp)
    result = run_cli(tmp, "train", cfg, env={"GPTRESUME_SAMPLE_LOG": str(tmp / "samples")})
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp, cfg


def test_the_ledger_changes_nothing_and_records_the_blocks_trained(reference, tmp_path):
    tmp, _ = reference
    off = run_cli(tmp_path, "train", config(tmp_path, checkpoint={"ledger": False}))
    assert off.returncode == 0, off.stdout + off.stderr
    assert train_losses(tmp_path / "run") == train_losses(tmp / "run")
    assert_bitwise_equal(final_weights(tmp_path / "run"), final_weights(tmp / "run"))
    assert not (tmp_path / "run" / "ledger").exists()

    train_ids, validation = split_ids(tmp / "run")
    steps = per_step(tmp / "run")
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))
    batches = [b for b in logged_batches(tmp / "samples") if not set(b) <= validation]
    assert [sorted(train_ids[i] for i in steps[s]) for s in sorted(steps)] == [sorted(b) for b in batches]
    ledger = run_cli(tmp, "ledger", tmp / "run")
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert f"epochs 0-1: each of the {len(train_ids)} blocks trained once" in ledger.stdout, ledger.stdout


def test_kills_and_a_batch_resplit_leave_the_uninterrupted_ledger(reference, tmp_path):
    tmp, _ = reference
    cfg = config(tmp_path)
    run = tmp_path / "run"
    resplit = ["--set", "train.per_device_train_batch_size=2", "--set", "train.gradient_accumulation_steps=2"]
    ledger_dir = run / "ledger"
    kills = [  # (what to wait for, extra arguments): each observed, then SIGKILL at once
        (lambda proc: wait_for_step(run, 2, proc), []),
        (lambda proc: _wait(lambda: (run / "checkpoint-6" / "manifest.json").is_file(), proc), []),
        (lambda proc: _wait(lambda: any(last == 9 for _, last, _ in booked(run)), proc), resplit),
        (lambda proc: _wait(lambda: (run / "checkpoint-12").is_dir(), proc),
         [*resplit, "--set", "checkpoint.async_save=true"]),
    ]
    for wait, args in kills:
        proc = start_command(tmp_path, ["train", cfg, *args])
        assert wait(proc), "the run ended before the kill point"
        proc.kill()
        proc.communicate(timeout=120)
        assert proc.returncode == -9
        if ledger_dir.is_dir():  # the books never run ahead of the newest committed checkpoint
            newest = max(int(p.parent.name.split("-")[1]) for p in run.glob("checkpoint-*/manifest.json"))
            assert all(last <= newest for _, last, _ in booked(run))
    final = run_cli(tmp_path, "train", cfg, *resplit)
    assert final.returncode == 0, final.stdout + final.stderr
    assert per_step(run) == per_step(tmp / "run")  # the same samples at every step as the uninterrupted run
    ledger = run_cli(tmp_path, "ledger", run)
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert "exactly once" in ledger.stdout and f"steps 1-{MAX_STEPS}" in ledger.stdout


def _wait(condition, proc, timeout: float = 180) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("kill point not reached")


def test_a_rollback_lists_its_skipped_samples(reference, tmp_path):
    tmp, _ = reference
    cfg = config(tmp_path, health={"on_nan": "rollback", "rollback_steps": 4, "skip_batches": 2})
    result = run_cli(tmp_path, "train", cfg, env={"GPTRESUME_TEST_FAULT": "nan@8"})
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    ledger = run_cli(tmp_path, "ledger", run)
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert "8 skipped: listed, never trained" in ledger.stdout and "1 rollback(s) (8 samples skipped)" in ledger.stdout
    segments, _ = lineage(run)
    skipped = [i for s in segments if s.skipped_ids is not None for i in s.skipped_ids.tolist()]
    ref = per_step(tmp / "run")
    assert skipped == ref[4] + ref[5]  # the two batches after checkpoint-3, as the uninterrupted run drew them
    assert per_step(run)[4] == ref[6]  # and training goes on with the next ones
    assert list((run / "ledger" / "abandoned").glob("steps-000000004-000000006.*.npz"))  # the rolled-back steps


def test_padding_of_an_epochs_last_batch_is_found(tmp_path):
    """2 processes x 2 per device, 38 training blocks: the epoch's 10th step holds its last 2 blocks and 2 of its
    first again."""
    cfg = config(tmp_path, data={"validation_fraction": 0.05}, train={"per_device_train_batch_size": 2,
                                                                      "max_steps": 10})
    result = subprocess.run([*launcher("gptresume.launch"), "-m", "gptresume", "train", str(cfg)], cwd=tmp_path,
                            env={**ddp_env(tmp_path), "GPTRESUME_SAMPLE_LOG": str(tmp_path / "samples")},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    train_ids, validation = split_ids(run)
    assert len(train_ids) % 4 == 2, len(train_ids)  # the test needs a padded last batch
    steps = per_step(run)
    batches = [b for b in logged_batches(tmp_path / "samples", 2) if not set(b) <= validation]
    assert [sorted(train_ids[i] for i in steps[s]) for s in sorted(steps)] == [sorted(b) for b in batches]
    ledger = run_cli(tmp_path, "ledger", run)
    assert ledger.returncode == 2, ledger.stdout + ledger.stderr
    assert "2 sample(s) of an epoch recorded more than once" in ledger.stdout
    assert "(padding)" in ledger.stdout and "dataloader_drop_last: true" in ledger.stdout


SCRIPT = r'''
import json, sys

import datasets
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import gptresume

out, opts = sys.argv[1], json.loads(sys.argv[2])
from pydoc_data.topics import topics

data = list("\n\n".join(topics[k] for k in sorted(topics)[:8]).encode()[:32 * 30])
train = datasets.Dataset.from_dict({"input_ids": [data[i:i + 32] for i in range(0, len(data) - 31, 32)]})


def collate(rows):
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


class OwnSampler(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(self.train_dataset)


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=256))
args = TrainingArguments(output_dir=out, max_steps=12, per_device_train_batch_size=3, logging_steps=1, save_steps=4,
                         seed=11, report_to="none", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False)
trainer = (OwnSampler if opts.get("own_sampler") else Trainer)(model=model, args=args, train_dataset=train,
                                                              data_collator=collate)
try:
    gptresume.train(trainer, ledger=True, stop_at_step=opts.get("stop_at_step"))
except gptresume.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
'''


def test_a_scripts_trainer_keeps_a_ledger_or_is_refused_before_anything_is_written(tmp_path):
    """gptresume.train(trainer, ledger=True): 30 blocks of 3 per step, stopped at step 6 and resumed; a Trainer
    subclass with its own sampler is refused, its output directory untouched."""
    from conftest import run_script

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    stopped = run_script(tmp_path, script, out, json.dumps({"stop_at_step": 6}))
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    done = run_script(tmp_path, script, out, "{}")
    assert done.returncode == 0, done.stdout + done.stderr
    ledger = run_cli(tmp_path, "ledger", out)
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert "epoch 0: each of the 30 blocks trained once" in ledger.stdout, ledger.stdout

    refused = run_script(tmp_path, script, tmp_path / "own", json.dumps({"own_sampler": True}))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "OwnSampler._get_train_sampler is overridden" in refused.stderr
    assert not (tmp_path / "own").exists() or not list((tmp_path / "own").iterdir())  # (Trainer may create it)
