"""Manifest commit, verification of every fault kind, discovery fallback, retention (unit level, no training)."""

import json

import pytest

from conftest import fake_checkpoint
from gptresume.checkpoint import (
    MANIFEST_NAME,
    apply_retention,
    list_checkpoints,
    newest_valid,
    verify_checkpoint,
)


def state_files(step):
    """A small checkpoint's files (the manifest tests use the same)."""
    return {"model.safetensors": bytes(range(256)) * 40, "optimizer.pt": b"o" * 5000,
            "trainer_state.json": json.dumps({"global_step": step, "max_steps": 100})}


def make_checkpoint(run_dir, step, commit=True):
    return fake_checkpoint(run_dir, step, state_files(step), commit, epoch=step / 10, config={"train": {}},
                           data_fingerprint="d")


def flip_byte(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated": (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:100]),
                  "model.safetensors: wrong size"),
    "zero length": (lambda c: (c / "optimizer.pt").write_bytes(b""), "optimizer.pt: wrong size (0 bytes"),
    "flipped byte": (lambda c: flip_byte(c / "model.safetensors"), "model.safetensors: wrong xxh3_128"),
    "deleted file": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt: missing"),
    "no manifest": (lambda c: (c / MANIFEST_NAME).unlink(), "no manifest.json"),
    "torn manifest": (lambda c: (c / MANIFEST_NAME).write_text('{"files": {'), "manifest.json is unreadable"),
}


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    ckpt = make_checkpoint(tmp_path, 10)
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "trainer_state.json"}
    assert manifest["files"]["optimizer.pt"]["bytes"] == 5000
    assert manifest["format"] == 2 and manifest["digest"] == "xxh3_128"
    assert len(manifest["files"]["optimizer.pt"]["xxh3_128"]) == 32
    assert manifest["step"] == 10 and manifest["world_size"] == 1 and "torch" in manifest["versions"]
    assert verify_checkpoint(ckpt).valid


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_is_detected_and_the_previous_checkpoint_used(tmp_path, kind):
    corrupt, message = CORRUPTIONS[kind]
    make_checkpoint(tmp_path, 10)
    newest = make_checkpoint(tmp_path, 20)
    corrupt(newest)
    info, skipped = newest_valid(tmp_path)
    assert info.step == 10
    assert [s.step for s in skipped] == [20]
    assert any(message in f for f in skipped[0].faults), skipped[0].faults
    assert newest.exists()  # discovery never deletes


def test_retention_keeps_the_newest_and_removes_stale_leftovers(tmp_path):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 25, commit=False)  # a save that crashed before step 30 committed
    for step in (5, 35):  # committed, then damaged
        (make_checkpoint(tmp_path, step) / "optimizer.pt").write_bytes(b"")
    newest = make_checkpoint(tmp_path, 40)
    deleted = apply_retention(tmp_path, keep_last=2, newest=newest)
    # the damaged checkpoint-35 is kept for inspection while it is within the keep_last newest valid ones (40, 30);
    # checkpoint-5, older than them, goes like any old checkpoint (README, Limits)
    assert sorted(p.name for p in deleted) == ["checkpoint-10", "checkpoint-20", "checkpoint-25", "checkpoint-5"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-30", "checkpoint-35", "checkpoint-40"]


def test_retention_never_touches_newer_checkpoints(tmp_path):
    old = make_checkpoint(tmp_path, 10)
    later_uncommitted = make_checkpoint(tmp_path, 50, commit=False)
    apply_retention(tmp_path, keep_last=1, newest=old)
    assert old.exists() and later_uncommitted.exists()
