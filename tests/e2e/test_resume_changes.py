"""Resuming with allowed changes, checked with real processes: a new learning rate is what the very next step
uses; an extended schedule is continuous; the same global batch split differently feeds the same samples per
step; a different global batch continues by samples consumed; changed data continues with a warning; a plain
Trainer checkpoint is adopted; `gptresume diff` prints the table."""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import (
    assert_bitwise_equal,
    byte_snapshot,
    final_weights,
    read_metrics,
    run_cli,
    run_script,
    split_ids,
    train_losses,
    write_config,
)

pytestmark = pytest.mark.slow

LR = 3e-3
NO_DROPOUT = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def make_config(tmp, name="config.yaml", **train):
    return write_config(tmp, name, corpus_chars=3600, model={"from_scratch": NO_DROPOUT},
                        train={"max_steps": 12, "save_steps": 2, "eval_steps": 100, "learning_rate": LR, **train})


def run_ok(tmp, *args, code=0, env=None):
    result = run_cli(tmp, *args, env=env)
    assert result.returncode == code, result.stdout + result.stderr
    return result


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines() if line.strip()]


def learning_rates(run_dir) -> dict[int, float]:
    return {r["step"]: r["learning_rate"] for r in read_metrics(run_dir) if "loss" in r}


# ---------------------------------------------------------------- optimizer and schedule


def test_new_learning_rate_is_used_by_the_very_next_step(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "changed"
    ref_dir.mkdir(), run_dir.mkdir()
    run_ok(ref_dir, "train", make_config(ref_dir, learning_rate=1e-3))
    config = make_config(run_dir)
    run_ok(run_dir, "train", config, "--stop-at-step", 6, code=75)
    result = run_ok(run_dir, "train", config, "--set", "train.learning_rate=1e-3", "--allow-change",
                    "learning_rate")
    assert "train.learning_rate" in result.stderr and "applied to the restored optimizer" in result.stderr
    assert "Learning rate of the next step (7): 0.0018 before the change, 0.0006 now" in result.stderr
    changed, ref = learning_rates(run_dir / "run"), learning_rates(ref_dir / "run")
    assert changed[6] == pytest.approx(LR * 0.7)  # linear, warmup 2, max 12: factor (12 - 5) / 10 at step 6
    for step in range(7, 13):  # exactly the schedule of a run started with the new rate
        assert changed[step] == pytest.approx(ref[step], rel=1e-12), step
    history = [json.loads(line) for line in (run_dir / "run" / "history.jsonl").read_text().splitlines()]
    resume = [h for h in history if h["event"] == "resume"][-1]
    assert resume["changes"][0]["key"] == "train.learning_rate" and resume["changes"][0]["class"] == "optimizer"


def test_extended_schedule_is_continuous_and_survives_a_later_resume(tmp_path):
    config = make_config(tmp_path)
    run_ok(tmp_path, "train", config, "--stop-at-step", 6, code=75)
    run_ok(tmp_path, "train", config, "--set", "train.max_steps=20", "--allow-change", "max_steps",
           "--stop-at-step", 9, code=75)
    # the checkpoint of step 9 holds max_steps 20 and the re-planned schedule: a plain re-run continues it
    run_ok(tmp_path, "train", config, "--set", "train.max_steps=20")
    lrs = learning_rates(tmp_path / "run")
    assert sorted(lrs) == list(range(1, 21))
    # the old schedule's factor at step 6 is 0.6; from there linear to 0 at step 20 (rule in schedule.py)
    for step in range(7, 21):
        assert lrs[step] == pytest.approx(LR * 0.6 * (1 - (step - 7) / 14), rel=1e-9), step
    assert lrs[7] < lrs[6] and all(lrs[s + 1] < lrs[s] for s in range(6, 20)) and lrs[20] > 0
    state = json.loads((tmp_path / "run" / "checkpoint-20" / "gptresume_state.json").read_text())
    assert state["schedule_plan"]["from_step"] == 6


def test_extending_a_finished_run_warms_up_again_instead_of_training_at_zero(tmp_path):
    config = make_config(tmp_path)
    run_ok(tmp_path, "train", config)
    result = run_ok(tmp_path, "train", config, "--set", "train.max_steps=20", "--allow-change", "schedule")
    lrs = learning_rates(tmp_path / "run")
    assert lrs[12] == pytest.approx(LR * 0.1)
    # warmup_steps=2: half the peak at step 13, the peak at 14, then linear decay; never 0, no jump past the peak
    assert [lrs[13], lrs[14]] == pytest.approx([LR / 2, LR])
    assert all(0 < lrs[s] <= LR for s in range(13, 21))
    assert all(lrs[s + 1] < lrs[s] for s in range(14, 20))
    assert "Schedule re-planned at step 12" in result.stderr


# ---------------------------------------------------------------- batch geometry and data position


def trained_samples(log_path: Path, batches: int, validation_ids: set) -> list[str]:
    """Sample ids of the first `batches` training batches a process collated (GPTRESUME_SAMPLE_LOG), in
    order; evaluation batches and batches prefetched after the last step are dropped."""
    rows = [json.loads(line) for line in Path(f"{log_path}.rank0").read_text().splitlines()]
    rows = [b for b in rows if not set(b) <= validation_ids]
    assert len(rows) >= batches
    return sum(rows[:batches], [])


def test_same_global_batch_split_differently_feeds_the_same_samples(tmp_path):
    """4 per device x accumulation 2 -> 8 per device x accumulation 1, mid-epoch, no flag needed."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "split"
    ref_dir.mkdir(), run_dir.mkdir()
    geometry = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": 8}
    run_ok(ref_dir, "train", make_config(ref_dir, **geometry), env={"GPTRESUME_SAMPLE_LOG": str(ref_dir / "s")})
    config = make_config(run_dir, **geometry)
    run_ok(run_dir, "train", config, "--stop-at-step", 3, code=75, env={"GPTRESUME_SAMPLE_LOG": str(run_dir / "a")})
    result = run_ok(run_dir, "train", config, "--set", "train.per_device_train_batch_size=8", "--set",
                    "train.gradient_accumulation_steps=1", env={"GPTRESUME_SAMPLE_LOG": str(run_dir / "b")})
    assert "same global batch (8): same samples per step" in result.stderr
    train, val = split_ids(run_dir / "run")
    # 3 steps of 2 batches of 4, then 5 steps of one batch of 8: the epoch ends at step 6 with a short batch
    got = trained_samples(run_dir / "a", 6, val) + trained_samples(run_dir / "b", 5, val)
    assert len(got) == 7 * 8 + len(train) % 8
    assert got == trained_samples(ref_dir / "s", 15, val)  # same samples, same order, same step boundaries
    ref_losses, losses = train_losses(ref_dir / "run"), train_losses(run_dir / "run")
    assert sorted(losses) == sorted(ref_losses) == list(range(1, 9))
    for step in ref_losses:
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5), step


def test_changed_global_batch_continues_by_samples_consumed(tmp_path):
    """Batch 4 -> 6 at step 5 (20 samples into the first epoch): the resumed run trains the stream of samples
    from sample 20 on, the same order as an uninterrupted run: nothing skipped, nothing repeated."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "bigger"
    ref_dir.mkdir(), run_dir.mkdir()
    run_ok(ref_dir, "train", make_config(ref_dir, max_steps=20), env={"GPTRESUME_SAMPLE_LOG": str(ref_dir / "s")})
    config = make_config(run_dir)
    run_ok(run_dir, "train", config, "--stop-at-step", 5, code=75, env={"GPTRESUME_SAMPLE_LOG": str(run_dir / "a")})
    refused = run_ok(run_dir, "train", config, "--set", "train.per_device_train_batch_size=6", code=2)
    assert "global batch 4 -> 6" in refused.stderr and "--allow-change per_device_train_batch_size" in refused.stderr
    run_ok(run_dir, "train", config, "--set", "train.per_device_train_batch_size=6", "--allow-change", "batch",
           "--stop-at-step", 8, code=75, env={"GPTRESUME_SAMPLE_LOG": str(run_dir / "b")})
    run_ok(run_dir, "train", config, "--set", "train.per_device_train_batch_size=6",
           env={"GPTRESUME_SAMPLE_LOG": str(run_dir / "c")})  # a plain re-run keeps the shifted stream
    train, val = split_ids(run_dir / "run")
    stream = trained_samples(ref_dir / "s", 20, val)
    got = (trained_samples(run_dir / "a", 5, val) + trained_samples(run_dir / "b", 3, val)
           + trained_samples(run_dir / "c", 4, val))
    assert got == stream[:len(got)]
    first_epoch = got[:len(train)]
    assert sorted(first_epoch) == sorted(train)  # every sample of the epoch exactly once
    assert len(got) >= len(train)


def test_changed_data_needs_the_flag_and_continues_with_a_warning(tmp_path):
    config = make_config(tmp_path)
    run_ok(tmp_path, "train", config, "--stop-at-step", 6, code=75)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus.read_text().replace("the", "a"))
    refused = run_ok(tmp_path, "train", config, code=2)
    assert "training data differs" in refused.stderr and "--allow-change data" in refused.stderr
    result = run_ok(tmp_path, "train", config, "--allow-change", "data")
    assert "changed data at the same sample offset" in result.stderr
    assert sorted(train_losses(tmp_path / "run")) == list(range(1, 13))
    state = json.loads((tmp_path / "run" / "checkpoint-12" / "gptresume_state.json").read_text())
    assert state["stream"]["samples"] > 0


# ---------------------------------------------------------------- adopt and diff

PLAIN_TRAINER_SCRIPT = """
import sys
from pathlib import Path
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Trainer, TrainingArguments

text = Path("corpus.txt").read_text()
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
ids = tok(text)["input_ids"]
blocks = [ids[i:i + 32] for i in range(0, len(ids) - 32, 32)]
ds = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=len(tok)))
args = TrainingArguments(output_dir="plain", max_steps=6, save_steps=3, per_device_train_batch_size=4,
                         learning_rate=3e-3, report_to="none", logging_steps=1, seed=7)
Trainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()
"""


def test_plain_trainer_checkpoint_is_adopted_and_training_continues(tmp_path):
    """Adoption of another run's checkpoint, read-only here, leaves it byte-identical: the adopting run commits a
    copy in its own directory, and resumes from there exactly."""
    (tmp_path / "plain_script.py").write_text(PLAIN_TRAINER_SCRIPT)
    config = make_config(tmp_path)  # writes corpus.txt too
    done = run_script(tmp_path, tmp_path / "plain_script.py")
    assert done.returncode == 0, done.stderr
    plain = tmp_path / "plain"
    ckpt = plain / "checkpoint-6"
    subprocess.run(["chmod", "-R", "a-w", str(plain)], check=True)  # another user's run, a read-only share
    before = byte_snapshot(plain)
    refused = run_ok(tmp_path, "train", config, "--resume", ckpt, code=2)
    assert "--adopt" in refused.stderr
    # the script trained 6 steps (no warmup) to lr 0; the config asks for 12 with warmup: a schedule change
    refused = run_ok(tmp_path, "train", config, "--resume", ckpt, "--adopt", code=2)
    assert "train.max_steps" in refused.stderr and "--allow-change max_steps" in refused.stderr
    result = run_ok(tmp_path, "train", config, "--resume", ckpt, "--adopt", "--allow-change", "schedule")
    assert "exactness cannot be promised for the steps before the adoption" in result.stderr
    assert f"as {tmp_path / 'run' / 'checkpoint-6'} (a copy: {ckpt} is left as it is)" in result.stderr
    lrs = learning_rates(tmp_path / "run")
    assert lrs[7] > 0 and lrs[8] == pytest.approx(3e-3)  # warmed up again (2 steps), not trained at lr 0
    [resume] = [e for e in history(tmp_path / "run") if e["event"] == "resume"]
    assert resume["adopted"] is True and resume["checkpoint"] == str(tmp_path / "run" / "checkpoint-6")
    assert sorted(train_losses(tmp_path / "run")) == list(range(7, 13))
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    run_ok(tmp_path, "verify", tmp_path / "run")
    # the same adoption stopped at step 9, then continued by a plain `train`: the same run, bit for bit
    again = ("--set", f"train.output_dir={tmp_path / 'again'}")
    run_ok(tmp_path, "train", config, *again, "--resume", ckpt, "--adopt", "--allow-change", "schedule",
           "--stop-at-step", 9, code=75)
    run_ok(tmp_path, "train", config, *again)
    assert train_losses(tmp_path / "again") == train_losses(tmp_path / "run")
    assert_bitwise_equal(final_weights(tmp_path / "again"), final_weights(tmp_path / "run"))
    assert byte_snapshot(plain) == before  # names, sizes, mtimes, modes and sha256: never written
    assert not (ckpt / "manifest.json").exists()


def test_adopt_refuses_a_checkpoint_whose_files_do_not_load(tmp_path):
    config = make_config(tmp_path)
    run_ok(tmp_path, "train", config, "--stop-at-step", 2, code=75)
    ckpt = tmp_path / "run" / "checkpoint-2"
    (ckpt / "manifest.json").unlink()
    with open(ckpt / "optimizer.pt", "r+b") as f:
        f.truncate(100)
    result = run_ok(tmp_path, "train", config, "--resume", ckpt, "--adopt", code=2)
    assert "optimizer.pt does not load" in result.stderr and "Traceback" not in result.stderr
    assert not (ckpt / "manifest.json").exists()


def test_diff_prints_the_resume_table(tmp_path):
    config = make_config(tmp_path)
    run_ok(tmp_path, "train", config, "--stop-at-step", 4, code=75)
    changed = make_config(tmp_path, "changed.yaml", learning_rate=1e-3, max_steps=30)
    result = run_ok(tmp_path, "diff", tmp_path / "run" / "checkpoint-4", changed)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("A: checkpoint") and lines[1].startswith("B: config file")
    assert any("train.learning_rate" in ln and "optimizer" in ln and "--allow-change learning_rate" in ln
               for ln in lines)
    assert any("train.max_steps" in ln and "schedule" in ln for ln in lines)
    same = run_ok(tmp_path, "diff", tmp_path / "run", config)
    assert "no differences" in same.stdout
    missing = run_ok(tmp_path, "diff", tmp_path / "nope", config, code=2)
    assert "does not exist" in missing.stderr
