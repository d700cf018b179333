"""checkpoint/storage.py: one contract for the local directory and an fsspec URL (file:// and memory:// here; s3://
against a real server in tests/unit/remote/test_remote_retention.py), and `manifest.quick_faults` (retention's
cheap check through the interface) judging a damaged checkpoint as `verify_checkpoint(hash_files=False)` does."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from conftest import fake_checkpoint
from gptresume.checkpoint.manifest import checkpoint_names, quick_faults, verify_checkpoint
from gptresume.checkpoint.storage import CheckpointStorage, FsspecStorage, LocalStorage

pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


@pytest.fixture(params=["local", "file", "memory"])
def storage(request, tmp_path) -> CheckpointStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "run")
    from fsspec.core import url_to_fs

    url = f"file://{tmp_path}/bucket/run" if request.param == "file" else f"memory://t-{uuid.uuid4().hex}/run"
    fs, root = url_to_fs(url, skip_instance_cache=True, **({"auto_mkdir": True} if request.param == "file" else {}))
    return FsspecStorage(fs, root, url)


def test_the_contract(storage, tmp_path):
    assert isinstance(storage, CheckpointStorage)
    assert storage.listdir() == [] and storage.sizes("checkpoint-1") == {}
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("protected.json")
    storage.write_bytes("protected.json", b'{"checkpoint-1": "why"}')
    local = tmp_path / "w.bin"
    local.write_bytes(b"w" * 10)
    storage.put_file(local, "checkpoint-1/model.safetensors")
    storage.put_file(local, "checkpoint-1/sub/shard_1.bin")  # a file of another rank, in a subdirectory
    assert storage.listdir() == ["checkpoint-1", "protected.json"]
    assert storage.listdir("checkpoint-1") == ["model.safetensors", "sub"]
    assert storage.isdir("checkpoint-1") and not storage.isfile("checkpoint-1")
    assert storage.isfile("protected.json") and not storage.isdir("protected.json") and not storage.islink("x")
    assert storage.sizes("checkpoint-1") == {"model.safetensors": 10, "sub/shard_1.bin": 10}
    assert json.loads(storage.read_text("protected.json")) == {"checkpoint-1": "why"}
    storage.get_file("checkpoint-1/sub/shard_1.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"w" * 10
    assert storage.label("checkpoint-1").endswith("run/checkpoint-1") and storage.label() == storage.url
    assert checkpoint_names(storage) == ["checkpoint-1"]
    storage.remove("checkpoint-1/model.safetensors")
    assert storage.sizes("checkpoint-1") == {"sub/shard_1.bin": 10}
    storage.remove("checkpoint-1")
    assert storage.listdir() == ["protected.json"]
    with pytest.raises(OSError):
        storage.remove("checkpoint-9")


def test_checkpoint_names_order_by_step_and_skip_files(storage, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    for name in ("checkpoint-10/a", "checkpoint-9/a", "checkpoint-100/a", "checkpoint-5.replaced-x/a"):
        storage.put_file(local, name)
    storage.write_bytes("checkpoint-7", b"a file, not a checkpoint")
    assert checkpoint_names(storage) == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]


def test_local_links_are_listed_never_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "f").write_bytes(b"x" * 3)
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-1" / "linked").symlink_to(target)
    (run / "checkpoint-1" / "file-link").symlink_to(target / "f")
    (run / "checkpoint-2").symlink_to(target)
    storage = LocalStorage(run)
    assert storage.sizes("checkpoint-1") == {} and storage.sizes("checkpoint-2") == {}
    assert storage.islink("checkpoint-2") and storage.isdir("checkpoint-2")
    storage.remove("checkpoint-2")
    storage.remove("checkpoint-1")
    assert storage.listdir() == [] and (target / "f").read_bytes() == b"x" * 3


def damaged(run: Path, how: str) -> Path:
    files = {"model.safetensors": b"m" * 50, "sub/rng_state_1.pth": b"r" * 5,
             "trainer_state.json": json.dumps({"global_step": 3, "log_history": []})}
    ckpt = fake_checkpoint(run, 3, files)
    if how == "sound":
        pass
    elif how == "no manifest":
        (ckpt / "manifest.json").unlink()
    elif how == "manifest garbage":
        (ckpt / "manifest.json").write_text("{not json")
    elif how == "manifest malformed":
        (ckpt / "manifest.json").write_text(json.dumps({"format": 2, "step": 3}))
    elif how == "a file missing":
        (ckpt / "sub" / "rng_state_1.pth").unlink()
    elif how == "a file truncated":
        (ckpt / "model.safetensors").write_bytes(b"m" * 49)
    elif how == "same size other bytes":  # only a hash finds it: the cheap check passes, as verify's size check
        (ckpt / "model.safetensors").write_bytes(b"x" * 50)
    elif how == "a file replaced by a link":
        outside = run.parent / "outside.bin"
        outside.write_bytes(b"m" * 50)
        (ckpt / "model.safetensors").unlink()
        (ckpt / "model.safetensors").symlink_to(outside)
    elif how == "step apart":
        ckpt.rename(run / "checkpoint-4")
        return run / "checkpoint-4"
    elif how == "trainer state disagrees":
        state = '{"global_step":30, "log_history": []}'  # the same length, another step
        assert len(state) == len((ckpt / "trainer_state.json").read_text())
        (ckpt / "trainer_state.json").write_text(state)
    elif how == "trainer state added after the commit":
        (ckpt / "trainer_state.json").rename(ckpt / "moved.json")
        manifest = json.loads((ckpt / "manifest.json").read_text())
        del manifest["files"]["trainer_state.json"]
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
        (ckpt / "moved.json").rename(ckpt / "trainer_state.json")
    elif how == "checkpoint is a link":
        real = run.parent / "real-checkpoint-3"
        shutil.move(str(ckpt), real)
        ckpt.symlink_to(real)
    else:
        raise AssertionError(how)
    return ckpt


DAMAGE = ["sound", "no manifest", "manifest garbage", "manifest malformed", "a file missing", "a file truncated",
          "same size other bytes", "a file replaced by a link", "step apart", "trainer state disagrees",
          "trainer state added after the commit", "checkpoint is a link"]


@pytest.mark.parametrize("how", DAMAGE)
def test_quick_faults_judge_as_verify_without_hashing(tmp_path, how):
    ckpt = damaged(tmp_path / "run", how)
    expected = verify_checkpoint(ckpt, hash_files=False)
    faults = quick_faults(LocalStorage(ckpt.parent), ckpt.name)
    assert bool(faults) == (not expected.valid), (faults, expected.faults)
    assert bool(faults) == (how not in ("sound", "same size other bytes"))
