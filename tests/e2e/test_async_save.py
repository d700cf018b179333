"""checkpoint.async_save: the background writer produces the same Trainer files as Trainer's own save, a run saved
asynchronously and stopped resumes exactly, and kill -9 during a background write leaves the previous checkpoint
as the newest valid one (a re-run resumes from it and finishes exactly)."""

import os
import time

import pytest

from conftest import (
    assert_bitwise_equal,
    final_weights,
    run_cli,
    start_cli,
    train_losses,
    train_on_a_small_disk,
    write_config,
)
from gptresume.checkpoint.async_save import TEST_WRITE_DELAY_ENV, BackgroundSaver, cpu_copy
from gptresume.training.trainer import ResumableTrainerMixin
from gptresume.checkpoint import MANIFEST_NAME, newest_valid, verify_checkpoint


def test_cpu_copy_keeps_shared_tensors_shared_and_detaches_from_the_original():
    import torch

    w = torch.randn(4, 3)
    state = {"a": w, "b": w.detach(), "view": w[1:], "n": 3, "nested": [{"t": torch.arange(3)}, (1.5, None)]}
    out = cpu_copy(state)
    assert out["a"].untyped_storage().data_ptr() == out["b"].untyped_storage().data_ptr() \
        == out["view"].untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    assert torch.equal(out["view"], w[1:]) and out["n"] == 3 and out["nested"][1] == (1.5, None)
    w.add_(1)  # training goes on: the copy keeps the values of the save instant
    assert torch.equal(out["a"] + 1, w) and torch.equal(out["nested"][0]["t"], torch.arange(3))
    last = {}
    first = cpu_copy(state, last)
    again = cpu_copy(state, {}, pool=last)  # the next save copies into the last save's buffers
    assert again["a"].untyped_storage().data_ptr() == first["a"].untyped_storage().data_ptr()
    assert torch.equal(again["a"], w) and torch.equal(again["view"], w[1:])


def _tiny_trainer(out_dir, saver):
    import datasets
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from conftest import corpus_texts
    from gptresume.data import PackedBlockCollator
    from gptresume.modeling import train_tokenizer

    class T(ResumableTrainerMixin, Trainer):
        pass

    tok = train_tokenizer(corpus_texts(3), 300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=len(tok)))
    blocks = torch.randint(0, len(tok), (40, 16), generator=torch.Generator().manual_seed(1))
    ds = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
    args = TrainingArguments(output_dir=str(out_dir), max_steps=4, per_device_train_batch_size=4, save_steps=2,
                             logging_steps=1, report_to="none", seed=7, disable_tqdm=True)
    trainer = T(model=model, args=args, train_dataset=ds, data_collator=PackedBlockCollator(), processing_class=tok)
    trainer.async_saver = saver
    return trainer


def test_background_save_writes_the_same_files_as_trainer(tmp_path):
    """The override of the private Trainer._save_checkpoint (transformers 5.24) stays equivalent to it."""
    import torch

    sync = _tiny_trainer(tmp_path / "sync", None)
    sync.train()
    saver = BackgroundSaver()
    background = _tiny_trainer(tmp_path / "async", saver)
    background.train()
    saver.wait()
    assert [h["step"] for h in saver.history] == [2, 4]
    for step in (2, 4):
        a, b = tmp_path / "sync" / f"checkpoint-{step}", tmp_path / "async" / f"checkpoint-{step}"
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                "training_args.bin", "tokenizer.json", "config.json"} <= set(names)
        for name in names:  # byte for byte, but for the output_dir inside the training arguments
            if name == "training_args.bin":
                x, y = (torch.load(d / name, weights_only=False).to_dict() for d in (a, b))
                x.pop("output_dir"), y.pop("output_dir")
                assert x == y
            else:
                assert (a / name).read_bytes() == (b / name).read_bytes(), name


MAX_STEPS = 16


def _config(tmp_path, name, **checkpoint):
    return write_config(tmp_path, name, corpus_chars=3600,
                        train={"max_steps": MAX_STEPS, "save_steps": 5, "eval_steps": 10},
                        checkpoint={"keep_last": 2, **checkpoint})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with synchronous saves."""
    tmp = tmp_path_factory.mktemp("async-ref")
    config = _config(tmp, "sync.yaml")
    result = run_cli(tmp, "train", config)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp, tmp / "run"


def _assert_same(run, ref):
    assert train_losses(run) == train_losses(ref)
    assert sorted(train_losses(run)) == list(range(1, MAX_STEPS + 1))
    assert_bitwise_equal(final_weights(run), final_weights(ref))


@pytest.mark.slow
def test_async_run_stopped_and_resumed_is_exact(reference):
    tmp, ref = reference
    config = _config(tmp, "async.yaml", async_save=True)
    run = tmp / "async-stopped"
    stopped = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--stop-at-step", "7")
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert verify_checkpoint(run / "checkpoint-7").valid  # the stop waited for the background commit
    assert verify_checkpoint(run / "checkpoint-5").valid
    resumed = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "checkpoint-7" in resumed.stdout
    assert verify_checkpoint(run / f"checkpoint-{MAX_STEPS}").valid  # the end of training waited too
    _assert_same(run, ref)


@pytest.mark.slow
def test_kill_9_during_a_background_write_keeps_the_previous_checkpoint(reference):
    tmp, ref = reference
    config = _config(tmp, "async.yaml", async_save=True)
    run = tmp / "async-killed"
    first = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--stop-at-step", "5")
    assert first.returncode == 75, first.stdout + first.stderr
    # The writer of checkpoint-10 stalls after model.safetensors; training goes on meanwhile. Kill it then.
    os.environ[TEST_WRITE_DELAY_ENV] = "10:60"
    try:
        proc = start_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    finally:
        del os.environ[TEST_WRITE_DELAY_ENV]
    pending = run / "checkpoint-10"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (pending / "model.safetensors").is_file() and (pending / "trainer_state.json").is_file():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.kill()
    proc.communicate(timeout=60)
    assert not (pending / MANIFEST_NAME).exists() and not (pending / "optimizer.pt").exists()
    info, skipped = newest_valid(run)
    assert info.step == 5 and [s.step for s in skipped] == [10]
    rerun = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "checkpoint-5" in rerun.stdout
    _assert_same(run, ref)


@pytest.mark.slow
def test_a_failed_background_write_exits_with_the_disk_message_and_keeps_the_last_checkpoint(reference):
    """A write error in the writer thread (RLIMIT_FSIZE standing in for a full disk) reaches the training thread:
    exit 1 with the storage message, no traceback, and the last committed checkpoint stays the newest valid."""
    tmp, ref = reference
    config = _config(tmp, "async.yaml", async_save=True)
    run = tmp / "async-full-disk"
    first = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--stop-at-step", "5")
    assert first.returncode == 75, first.stdout + first.stderr
    failed = train_on_a_small_disk(tmp, config, run, run / "checkpoint-5")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "error: could not write to disk" in failed.stderr and "Traceback" not in failed.stderr
    info, skipped = newest_valid(run)
    assert info.step == 5 and [s.step for s in skipped] == [10]
