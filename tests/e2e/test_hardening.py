"""Hostile and broken run directories, and values that would fail only after training started, with real processes
(forked from the test worker's fork server, tests/forking.py, so each command costs a fraction of a second):

- crafted pickles (a `__reduce__` that would create a marker file) in every pickle of a checkpoint, behind a
  re-written manifest, for every command that reads checkpoints: nothing runs; `train` falls back past the
  checkpoint naming each file, `--adopt` refuses it naming each file;
- a manifest whose step disagrees with trainer_state.json, weights whose shapes are not the model's: invalid or
  skipped with the reason, never a traceback;
- bad values and output paths: exit 2 with one message naming the field, before anything is written, also on a
  resume; `--overwrite` with a checkpoint that is a symbolic link removes the link, never what it points to."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from conftest import assert_refused, run_cli, snapshot, write_config

pytestmark = pytest.mark.slow

PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


class Payload:
    """Unpickled with arbitrary code execution, this would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poison(path, marker) -> None:
    import torch

    torch.save({"state": {}, "param_groups": [], "payload": Payload(marker)}, path)


def rehash(ckpt) -> None:
    """What anyone who can write the run directory can do: re-write the manifest to match the files."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for rel in manifest["files"]:
        data = (ckpt / rel).read_bytes()
        manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_crafted_pickles_never_run_and_broken_checkpoints_fall_back(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 20, "save_steps": 4}, checkpoint={"keep_last": 4})
    run = tmp_path / "run"
    stopped = run_cli(tmp_path, "train", config, "--stop-at-step", 16)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    markers = {name: tmp_path / f"ran-{name}" for name in PICKLES}
    # checkpoint-8: every pickle crafted; checkpoint-12: weights of another shape; checkpoint-16: a trainer_state.json
    # claiming step 10**30 (it would look complete). Each behind a re-written manifest.
    for name, marker in markers.items():
        poison(run / "checkpoint-8" / name, marker)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(run / "checkpoint-12" / "model.safetensors"))
    weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"][:16].clone()
    save_file(weights, str(run / "checkpoint-12" / "model.safetensors"), metadata={"format": "pt"})
    state = json.loads((run / "checkpoint-16" / "trainer_state.json").read_text())
    (run / "checkpoint-16" / "trainer_state.json").write_text(json.dumps({**state, "global_step": 10**30}))
    for step in (8, 12, 16):
        rehash(run / f"checkpoint-{step}")
    plain = tmp_path / "plain" / "checkpoint-8"  # the crafted checkpoint as a plain Trainer script's, for --adopt
    shutil.copytree(run / "checkpoint-8", plain)
    (plain / "manifest.json").unlink()

    def ran():
        return sorted(name for name, marker in markers.items() if marker.exists())

    # the tools: every command that reads checkpoints, on the crafted one
    ckpt8 = run / "checkpoint-8"
    for argv, code in ((("verify", ckpt8), 0), (("status", run), 0), (("diff", ckpt8, run / "checkpoint-4"), 0),
                       (("export", ckpt8, tmp_path / "exported"), 0), (("eval", ckpt8), 0),
                       (("generate", ckpt8, "--prompt", "The", "--max-new-tokens", 3), 0)):
        result = run_cli(tmp_path, *argv)
        assert result.returncode == code and "Traceback" not in result.stderr, (argv, result.stdout + result.stderr)
        assert ran() == [], argv
    for argv in (("eval", run / "checkpoint-12"), ("generate", run / "checkpoint-12", "--prompt", "The")):
        assert_refused(run_cli(tmp_path, *argv), "could not load a causal LM from", "checkpoint-12")  # not a traceback
    status = run_cli(tmp_path, "status", run).stdout
    assert "global_step 1000000000000000000000000000000 disagrees with manifest.json step 16" in status
    assert "complete: no" in status
    verify = run_cli(tmp_path, "verify", run)
    assert verify.returncode == 2 and "INVALID" in verify.stdout and "checkpoint-16" in verify.stdout

    adopt = run_cli(tmp_path, "train", config, "--set", f"train.output_dir={tmp_path / 'adopted'}", "--resume", plain,
                    "--adopt")
    assert_refused(adopt, "cannot be adopted", *PICKLES)
    assert "posix.system" in adopt.stderr and not (plain / "manifest.json").exists() and ran() == []

    resumed = run_cli(tmp_path, "train", config)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert ran() == []
    skipped = {line.split(":")[0].split("/")[-1]: line for line in resumed.stderr.splitlines()
               if line.startswith("skipping ")}
    assert "global_step" in skipped["checkpoint-16"]
    assert ("model.safetensors: tensor shapes differ from the model's: transformer.wpe.weight"
            in skipped["checkpoint-12"])
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        assert f"{name} does not load with torch.load(weights_only=True)" in skipped["checkpoint-8"]
    assert f"Resuming from {run / 'checkpoint-4'}" in resumed.stdout
    assert (run / "final" / "model.safetensors").is_file()
    assert run_cli(tmp_path, "verify", run).returncode == 0


@pytest.fixture
def stopped_run(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 12, "save_steps": 2})
    result = run_cli(tmp_path, "train", config, "--stop-at-step", 2)
    assert result.returncode == 75, result.stdout + result.stderr
    return config, tmp_path / "run"


BAD_VALUES = [
    ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size: 0 is not allowed"),
    ("train.per_device_train_batch_size=-2", "train.per_device_train_batch_size: -2 is not allowed"),
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps: 0 is not allowed"),
    ("train.learning_rate=-0.001", "train.learning_rate: -0.001 is not allowed"),
    ("train.max_steps=0", "train.max_steps: 0 is not allowed"),
    ("train.max_steps=-5", "train.max_steps: -5 is not allowed"),
    ("train.save_steps=0", "train.save_steps: 0 is not allowed"),
    ('train.save_strategy="no"', "train.save_strategy: \"no\" never saves a checkpoint"),
    ("data.block_size=64", "data.block_size: 64 is longer than the model's context"),
    ("model.from_scratch.n_head=3", "model.from_scratch.n_embd: 32 is not a multiple of n_head (3)"),
]


def test_bad_values_exit_2_before_anything_is_written_also_on_a_resume(stopped_run, tmp_path):
    config, run = stopped_run
    fresh = tmp_path / "fresh"
    (fresh / "checkpoint-3").mkdir(parents=True)  # something there already: it must stay exactly as it is
    for override, fragment in BAD_VALUES:
        for where in (fresh, run):  # a new run, and a resume of a run stopped at step 2
            before = snapshot(where)
            result = run_cli(tmp_path, "train", config, "--set", f"train.output_dir={where}", "--set", override)
            assert_refused(result, fragment)
            assert snapshot(where) == before, override


def test_a_pretrained_models_context_is_checked_when_it_is_loaded(stopped_run, tmp_path):
    config, run = stopped_run
    model_dir = run / "checkpoint-2"  # config.json (n_positions 32), weights and tokenizer: a pretrained model
    new = tmp_path / "pretrained-run"
    result = run_cli(tmp_path, "train", config, "--set", f"train.output_dir={new}", "--set", "model.from_scratch=null",
                     "--set", "model.tokenizer.train_vocab_size=null", "--set", f"model.name_or_path={model_dir}",
                     "--set", "data.block_size=64")
    assert_refused(result, "data.block_size: 64 is longer than the model's context (n_positions = 32)")
    assert not new.exists()


def test_output_paths_that_cannot_be_a_run_directory(tmp_path):
    config = write_config(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for output_dir, fragment in ((a_file, "is a file, not a directory"),
                                 (a_file / "run", "is a file, so"),
                                 (tmp_path / ("x" * 300) / "run", "is 300 bytes; the file system allows 255")):
        result = run_cli(tmp_path, "train", config, "--set", f"train.output_dir={output_dir}")
        assert_refused(result, "train.output_dir", fragment)
    assert a_file.read_text() == "x"


def test_overwrite_removes_a_checkpoint_link_never_what_it_points_to(stopped_run, tmp_path):
    config, run = stopped_run
    outside = tmp_path / "outside"
    (outside / "checkpoint-6").mkdir(parents=True)
    (outside / "checkpoint-6" / "keep.txt").write_text("mine")
    (run / "checkpoint-6").symlink_to(outside / "checkpoint-6")
    (run / "checkpoint-9").symlink_to(tmp_path / "nowhere")  # a dangling one too
    verify = run_cli(tmp_path, "verify", run)
    assert verify.returncode == 2 and "checkpoint-6 is a symbolic link" in verify.stdout
    result = run_cli(tmp_path, "train", config, "--resume", "never", "--overwrite", "--stop-at-step", 2)
    assert result.returncode == 75, result.stdout + result.stderr
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (outside / "checkpoint-6" / "keep.txt").read_text() == "mine"


def test_a_complete_run_finishes_what_a_kill_left(stopped_run, tmp_path):
    config, run = stopped_run
    assert run_cli(tmp_path, "train", config).returncode == 0
    # what a kill during the last commit's retention (a checkpoint whose manifest was already deleted) and during
    # the writing of final/ would leave
    shutil.copytree(run / "checkpoint-10", run / "checkpoint-8")
    (run / "checkpoint-8" / "manifest.json").unlink()
    (run / ".final.tmp-999").mkdir()
    (run / ".metrics.jsonl.tmp-999").write_text("{")
    shutil.rmtree(run / "final")
    again = run_cli(tmp_path, "train", config)
    assert again.returncode == 0 and "Run complete" in again.stdout, again.stdout + again.stderr
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".final", ".metrics", "checkpoint-"))) == [
        "checkpoint-10", "checkpoint-12"]
    assert (run / "final" / "model.safetensors").is_file()
    assert run_cli(tmp_path, "verify", run).returncode == 0
