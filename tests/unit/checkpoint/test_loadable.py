"""Nothing read from a checkpoint runs code, and a checkpoint whose state would not load is found before a resume
takes it: checkpoint/loadable.py (state files loaded as Trainer loads them, weights' shapes), resume/adopt.py
(training_args.bin read without running anything), and the plan's fallback past such a checkpoint."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import byte_snapshot
from gptresume.checkpoint import write_manifest
from gptresume.checkpoint.files import checkpoint_name
from gptresume.checkpoint.loadable import load_faults, weight_faults
from gptresume.errors import UsageError
from gptresume.resume.adopt import adoptable_checkpoint, read_training_args, trained_with
from gptresume.resume.plan import RunSpec, loads, plan_resume

SHAPES = {"wte.weight": (10, 4), "lm_head.weight": (10, 4), "ln.bias": (4,)}


class Payload:
    """Unpickled with arbitrary code execution, this would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


def real_state(ckpt, step: int = 4):
    """The state files Trainer writes, in their real formats (tiny)."""
    ckpt.mkdir(parents=True)
    param = torch.nn.Parameter(torch.zeros(10, 4))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones_like(param)
    opt.step()
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0).state_dict(), ckpt / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               ckpt / "rng_state.pth")
    save_file({"wte.weight": torch.zeros(10, 4), "ln.bias": torch.zeros(4)}, ckpt / "model.safetensors")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    return ckpt


def test_real_state_loads(tmp_path):
    assert load_faults(real_state(tmp_path / "checkpoint-4"), SHAPES) == []


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth", "scaler.pt"])
def test_a_crafted_pickle_is_named_and_never_run(tmp_path, name):
    ckpt = real_state(tmp_path / "checkpoint-4")
    marker = tmp_path / "ran"
    torch.save({"state": {}, "payload": Payload(marker)}, ckpt / name)
    faults = load_faults(ckpt, SHAPES)
    assert len(faults) == 1 and faults[0].startswith(f"{name} does not load with torch.load(weights_only=True)")
    assert "posix.system" in faults[0]
    assert not marker.exists()


def test_a_torn_state_file_is_named(tmp_path):
    ckpt = real_state(tmp_path / "checkpoint-4")
    (ckpt / "optimizer.pt").write_bytes((ckpt / "optimizer.pt").read_bytes()[:200])
    assert [f.split(" ")[0] for f in load_faults(ckpt, SHAPES)] == ["optimizer.pt"]


def test_weights_whose_shapes_are_not_the_models(tmp_path):
    ckpt = real_state(tmp_path / "checkpoint-4")
    save_file({"wte.weight": torch.zeros(12, 4), "ln.bias": torch.zeros(4)}, ckpt / "model.safetensors")
    assert load_faults(ckpt, SHAPES) == ["model.safetensors: tensor shapes differ from the model's: wte.weight is "
                                         "[12, 4] in the file, [10, 4] in the model"]
    assert load_faults(ckpt) == []  # without a model to compare with, only the format is checked


def test_weights_of_another_model_altogether(tmp_path):
    ckpt = real_state(tmp_path / "checkpoint-4")
    save_file({"encoder.weight": torch.zeros(3)}, ckpt / "model.safetensors")
    assert "none of its 1 tensors is a weight of the model" in weight_faults(ckpt, SHAPES)[0]


def test_torn_or_crafted_weights(tmp_path):
    ckpt = real_state(tmp_path / "checkpoint-4")
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 16)
    assert weight_faults(ckpt, SHAPES)[0].startswith("model.safetensors does not load")
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"wte.weight": torch.zeros(10, 4), "x": Payload(marker)}, ckpt / "pytorch_model.bin")
    assert "posix.system" in weight_faults(ckpt, SHAPES)[0] and not marker.exists()


# ---------------------------------------------------------------- training_args.bin (adoption)


def test_training_args_are_read_without_running_anything(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=3e-3, lr_scheduler_type="cosine",
                             warmup_steps=3, max_steps=6, seed=9, report_to="none", use_cpu=True)
    torch.save(args, tmp_path / "training_args.bin")
    fields, why = read_training_args(tmp_path / "training_args.bin")
    assert why is None
    assert (fields["learning_rate"], fields["lr_scheduler_type"], fields["warmup_steps"], fields["max_steps"],
            fields["seed"]) == (3e-3, "cosine", 3, 6, 9)
    old, new = trained_with(tmp_path, {"train": {"learning_rate": 1e-3}})
    assert old["train"]["learning_rate"] == 3e-3 and new["train"]["learning_rate"] == 1e-3


@pytest.mark.parametrize("nested", [False, True], ids=["the pickle itself", "inside TrainingArguments"])
def test_a_crafted_training_args_bin_is_refused_with_its_name(tmp_path, nested):
    from transformers import TrainingArguments

    marker = tmp_path / "ran"
    if nested:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
        args.hub_token = Payload(marker)
        torch.save(args, tmp_path / "training_args.bin")
    else:
        torch.save(Payload(marker), tmp_path / "training_args.bin")
    with pytest.raises(UsageError, match=r"training_args.bin refers to posix.system"):
        trained_with(tmp_path, {"train": {}})
    assert not marker.exists()


def test_adoption_names_every_file_that_does_not_load(tmp_path):
    ckpt = real_state(tmp_path / "plain" / "checkpoint-4")
    (ckpt / "config.json").write_text("{}")
    marker = tmp_path / "ran"
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin"):
        torch.save(Payload(marker), ckpt / name)
    with pytest.raises(UsageError) as refused:
        adoptable_checkpoint(ckpt, need_tokenizer=False)
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin"):
        assert f"  - {name} " in str(refused.value)
    assert not marker.exists()


# ---------------------------------------------------------------- the plan falls back


def test_the_plan_skips_a_checkpoint_whose_state_does_not_load_and_names_the_file(tmp_path):
    run = tmp_path / "run"
    config = {"train": {"max_steps": 10}}
    for step in (4, 8):
        real_state(run / checkpoint_name(step), step)
    torch.save(Payload(tmp_path / "ran"), run / "checkpoint-8" / "scheduler.pt")  # before the commit: it verifies
    for step in (4, 8):
        write_manifest(run / checkpoint_name(step), step=step, epoch=None, config=config, config_fingerprint="c",
                       data_fingerprint=None, world_size=1)
    spec = RunSpec(run, config, model_shapes=SHAPES)
    assert plan_resume(spec, "auto").step == 8  # the manifest alone: valid
    plan = plan_resume(spec, "auto", check=loads(spec))
    assert plan.step == 4 and [s.name for s in plan.skipped] == ["checkpoint-8"]
    assert plan.skipped[0].faults[0].startswith("scheduler.pt does not load")
    with pytest.raises(UsageError, match="checkpoint-8: not a valid checkpoint: scheduler.pt does not load"):
        plan_resume(spec, str(run / "checkpoint-8"), check=loads(spec))
    assert not (tmp_path / "ran").exists()


def test_a_malformed_resume_state_is_a_fault(tmp_path):
    run = tmp_path / "run"
    ckpt = real_state(run / "checkpoint-4")
    (ckpt / "gptresume_state.json").write_text(json.dumps({"stream": {"offset": "x"}}))
    write_manifest(ckpt, step=4, epoch=None, config={}, config_fingerprint="c", data_fingerprint=None, world_size=1)
    spec = RunSpec(run, {}, model_shapes=SHAPES)
    assert loads(spec)(plan_resume(spec, "auto").checkpoint) == [
        "gptresume_state.json: unreadable ('stream' must hold an integer 'offset' and a positive integer 'samples')"]
    (ckpt / "gptresume_state.json").write_text(json.dumps({"stream": {"offset": -20, "samples": 50}}))  # may be < 0
    write_manifest(ckpt, step=4, epoch=None, config={}, config_fingerprint="c", data_fingerprint=None, world_size=1)
    assert loads(spec)(plan_resume(spec, "auto").checkpoint) == []


def test_every_torch_load_of_a_cli_process_is_weights_only(tmp_path, monkeypatch, capsys):
    import pickle

    from gptresume.cli import main

    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0")  # restored after the test
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert main(["verify", str(tmp_path / "none")]) == 2  # any command
    marker = tmp_path / "ran"
    torch.save(Payload(marker), tmp_path / "crafted.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "crafted.pt", weights_only=False)  # as a library asking for a full unpickle would
    assert not marker.exists()


# ---------------------------------------------------------------- adoption writes only inside the adopting run


def foreign_checkpoint(tmp_path):
    ckpt = real_state(tmp_path / "theirs" / "checkpoint-4")
    (ckpt / "config.json").write_text("{}")
    return ckpt


def read_only(path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)


def writable(path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)


def test_adopting_a_foreign_checkpoint_copies_it_into_the_run_and_never_writes_it(tmp_path):
    from gptresume.checkpoint import verify_checkpoint
    from gptresume.resume.adopt import adopt
    from gptresume.rundir import run_lock

    source = foreign_checkpoint(tmp_path)
    read_only(source.parent)
    before = byte_snapshot(source.parent)
    run = tmp_path / "run"
    spec = RunSpec(run, {"train": {"max_steps": 10}}, data_fingerprint="d")
    try:
        plan = plan_resume(spec, str(source), adopt=True)
        assert plan.adopt and plan.checkpoint.path == source and not run.exists()  # the plan writes nothing
        with run_lock(run):
            adopt(plan.checkpoint, spec, world_size=1)
        copy = run / "checkpoint-4"
        assert plan.checkpoint.path == copy and plan.checkpoint.manifest["adopted"] is True
        assert verify_checkpoint(copy).valid and not (source / "manifest.json").exists()
        assert byte_snapshot(source.parent) == before  # byte for byte, names, sizes, mtimes and modes
        assert all(p.stat().st_mode & 0o200 for p in copy.rglob("*"))  # the run's own: retention can delete it
        assert not list(run.glob(".*tmp*"))
        again = plan_resume(spec, str(source), adopt=True)  # the same command again: the committed copy
        assert (again.adopt, again.checkpoint.path) == (False, copy)
    finally:
        writable(source.parent)


def test_adoption_never_replaces_a_directory_of_the_run(tmp_path):
    source = foreign_checkpoint(tmp_path)
    other = real_state(tmp_path / "run" / "checkpoint-4")  # something else at the place the copy would take
    before = byte_snapshot(other)
    with pytest.raises(UsageError, match=r"checkpoint-4 already exists and is not a committed copy of .*theirs"):
        plan_resume(RunSpec(tmp_path / "run", {"train": {}}), str(source), adopt=True)
    assert byte_snapshot(other) == before


def test_a_checkpoint_in_the_runs_own_directory_is_committed_where_it_is(tmp_path):
    from gptresume.checkpoint import verify_checkpoint
    from gptresume.resume.adopt import adopt

    run = tmp_path / "run"
    run.mkdir()
    ckpt = foreign_checkpoint(tmp_path).rename(run / "checkpoint-4")  # a plain Trainer wrote into this output_dir
    spec = RunSpec(run, {"train": {}})
    plan = plan_resume(spec, str(ckpt), adopt=True)
    adopt(plan.checkpoint, spec, world_size=1)
    assert plan.checkpoint.path == ckpt and verify_checkpoint(ckpt).valid
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-4"]


def test_a_copy_cut_short_is_a_temporary_the_next_start_removes(tmp_path):
    from gptresume.checkpoint import list_checkpoints
    from gptresume.rundir import remove_leftovers

    half = tmp_path / "run" / ".checkpoint-4.tmp-adopt"  # what a kill during the copy leaves
    half.mkdir(parents=True)
    (half / "optimizer.pt").write_bytes(b"x")
    assert list_checkpoints(tmp_path / "run") == []
    assert remove_leftovers(tmp_path / "run") == [half] and not half.exists()
