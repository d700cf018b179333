"""checkpoint/manifest.py and files.py beyond tests/test_checkpoint.py: which training state a checkpoint lacks,
what the manifest lists (nested files, never itself or its temp file), discovery order and names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptresume.checkpoint import (
    MANIFEST_NAME,
    RESUME_STATE_NAME,
    describe_skip,
    list_checkpoints,
    missing_state,
    newest_valid,
    read_manifest,
    read_resume_state,
    verify_checkpoint,
    write_manifest,
)
from gptresume.durable import atomic_write_text

COMPLETE = ("model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


def checkpoint(path: Path, names=COMPLETE, commit: bool = False) -> Path:
    path.mkdir(parents=True)
    for name in names:
        (path / name).write_text(json.dumps({"global_step": 1}) if name.endswith(".json") else name)
    if commit:
        write_manifest(path, step=1, epoch=None, config={}, config_fingerprint="c", data_fingerprint=None,
                       world_size=1)
    return path


def test_a_complete_checkpoint_lacks_nothing(tmp_path):
    assert missing_state(checkpoint(tmp_path / "checkpoint-1")) == {}


@pytest.mark.parametrize("absent, piece, effect", [
    ("optimizer.pt", "optimizer", "Adam moments start from zero"),
    ("scheduler.pt", "scheduler", "schedule restarts"),
    ("rng_state.pth", "RNG state", "dropout masks"),
    ("trainer_state.json", "trainer state", "step counter"),
])
def test_each_missing_piece_is_named_with_its_effect(tmp_path, absent, piece, effect):
    ckpt = checkpoint(tmp_path / "checkpoint-1", [n for n in COMPLETE if n != absent])
    missing = missing_state(ckpt)
    assert list(missing) == [piece] and effect in missing[piece]


def test_save_only_model_lacks_all_training_state(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1", ["model.safetensors", "config.json"])
    assert list(missing_state(ckpt)) == ["optimizer", "scheduler", "RNG state", "trainer state"]


def test_per_rank_rng_files_count_as_rng_state(tmp_path):
    names = [n for n in COMPLETE if n != "rng_state.pth"] + ["rng_state_0.pth"]
    assert missing_state(checkpoint(tmp_path / "checkpoint-1", names)) == {}


def test_the_manifest_lists_nested_files_but_not_itself_or_its_temp_file(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1")
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "shard.bin").write_bytes(b"s" * 7)
    (ckpt / f".{MANIFEST_NAME}.tmp-123").write_text("{")  # a commit that died before its rename
    manifest = write_manifest(ckpt, step=1, epoch=0.5, config={"train": {}}, config_fingerprint="c",
                              data_fingerprint="d", world_size=1, train_samples=9)
    assert set(manifest["files"]) == set(COMPLETE) | {"sub/shard.bin"}
    assert manifest["files"]["sub/shard.bin"]["bytes"] == 7
    assert read_manifest(ckpt) == (manifest, None)
    assert manifest["train_samples"] == 9 and manifest["epoch"] == 0.5 and manifest["adopted"] is False
    assert not [p for p in ckpt.iterdir() if ".tmp-" in p.name and p.name != f".{MANIFEST_NAME}.tmp-123"]


def test_a_missing_nested_file_is_a_fault(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1")
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "shard.bin").write_bytes(b"s")
    write_manifest(ckpt, step=1, epoch=None, config={}, config_fingerprint="c", data_fingerprint=None,
                   world_size=1)
    (ckpt / "sub" / "shard.bin").unlink()
    assert verify_checkpoint(ckpt).faults == ["sub/shard.bin: missing"]


def test_a_manifest_without_a_file_list_is_malformed(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1")
    (ckpt / MANIFEST_NAME).write_text(json.dumps({"step": 1}))
    manifest, fault = read_manifest(ckpt)
    assert manifest is None and "manifest.json is malformed" in fault and "no 'files'" in fault


def test_verify_takes_the_step_from_the_manifest_outside_a_checkpoint_dir(tmp_path):
    ckpt = checkpoint(tmp_path / "exported", commit=True)
    info = verify_checkpoint(ckpt)
    assert info.valid and info.step == 1 and info.name == "exported"


def test_verify_without_hashing_checks_sizes_only(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1", commit=True)
    (ckpt / "optimizer.pt").write_text("optimizer.PT")  # same size, other bytes
    assert verify_checkpoint(ckpt, hash_files=False).valid
    assert "optimizer.pt: wrong xxh3_128" in verify_checkpoint(ckpt).faults[0]


def test_describe_skip_names_the_checkpoint_and_every_fault(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1", commit=True)
    (ckpt / "optimizer.pt").unlink()
    (ckpt / "scheduler.pt").write_text("x")
    text = describe_skip(verify_checkpoint(ckpt))
    assert text.startswith(f"skipping {ckpt}: ")
    assert "optimizer.pt: missing" in text and "scheduler.pt: wrong size" in text


def test_list_checkpoints_orders_by_step_number_and_ignores_other_names(tmp_path):
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-100", "checkpoint-10.replaced-x", "checkpoint-x",
                 "final", "checkpoint-"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-5").write_text("a file")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]
    assert list_checkpoints(tmp_path / "absent") == []


def test_newest_valid_of_an_empty_or_absent_run(tmp_path):
    assert newest_valid(tmp_path) == (None, [])
    assert newest_valid(tmp_path / "absent") == (None, [])


def test_read_resume_state(tmp_path):
    ckpt = checkpoint(tmp_path / "checkpoint-1")
    assert read_resume_state(ckpt) == {}
    (ckpt / RESUME_STATE_NAME).write_text(json.dumps({"stream": {"offset": 3, "samples": 9}}))
    assert read_resume_state(ckpt) == {"stream": {"offset": 3, "samples": 9}}


def test_atomic_write_text_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
