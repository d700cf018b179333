"""The manifest is checked by a schema before anything uses it, its step against trainer_state.json and the
directory name, and its paths against the checkpoint: every malformed or hostile manifest makes the checkpoint
invalid with the reason (verify, discovery, status), never a traceback, and nothing outside the checkpoint is read
as if it were part of it."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from gptresume.checkpoint import MANIFEST_NAME, newest_valid, verify_checkpoint, write_manifest
from gptresume.checkpoint.files import checkpoint_name
from gptresume.checkpoint.manifest import manifest_problems, path_problem
from gptresume.tools.status import collect_status, format_status


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


def make_checkpoint(run_dir, step):
    ckpt = run_dir / checkpoint_name(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 100)
    (ckpt / "optimizer.pt").write_bytes(b"o" * 50)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 20, "log_history": []}))
    write_manifest(ckpt, step=step, epoch=0.5, config={"train": {"max_steps": 20}}, config_fingerprint="c",
                   data_fingerprint="d", world_size=1)
    return ckpt


def edit_manifest(ckpt, change) -> None:
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    manifest = change(manifest)
    (ckpt / MANIFEST_NAME).write_text(json.dumps(manifest))


def entry(path):
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def rehash(ckpt) -> None:
    edit_manifest(ckpt, lambda m: {**m, "files": {rel: entry(ckpt / rel) for rel in m["files"]}})


def with_files(**extra):
    return lambda m: {**m, "files": {**m["files"], **extra}}


def outside_file(ckpt):
    secret = ckpt.parent.parent / "secret.txt"
    secret.write_text("not part of any checkpoint")
    return secret


# name -> (make the checkpoint hostile, a fragment of the fault)
HOSTILE = {
    "a JSON list": (lambda c: (c / MANIFEST_NAME).write_text("[1, 2]"), "expected a JSON object, got list"),
    "a JSON string": (lambda c: (c / MANIFEST_NAME).write_text('"x"'), "expected a JSON object, got str"),
    "files values are strings": (lambda c: edit_manifest(c, lambda m: {**m, "files": {k: "x" for k in m["files"]}}),
                                 "files: model.safetensors: must be"),
    "files is a list": (lambda c: edit_manifest(c, lambda m: {**m, "files": list(m["files"])}), "'files' must be"),
    "bytes is a string": (
        lambda c: edit_manifest(c, with_files(**{"optimizer.pt": {"bytes": "50", "sha256": "0" * 64}})),
        "files: optimizer.pt: must be"),
    "bytes is true": (lambda c: edit_manifest(c, with_files(**{"optimizer.pt": {"bytes": True, "sha256": "0" * 64}})),
                      "files: optimizer.pt: must be"),
    "sha256 is not hex": (lambda c: edit_manifest(c, with_files(**{"optimizer.pt": {"bytes": 50, "sha256": "zz"}})),
                          "64 lowercase hex digits"),
    "a path leaving the checkpoint": (
        lambda c: edit_manifest(c, with_files(**{"../../secret.txt": entry(outside_file(c))})),
        "'../../secret.txt' leaves the checkpoint"),
    "an absolute path": (lambda c: edit_manifest(c, with_files(**{str(outside_file(c)): entry(outside_file(c))})),
                         "is an absolute path"),
    "a symlink to a file outside": (lambda c: (os.symlink(outside_file(c), c / "extra.bin"),
                                               edit_manifest(c, with_files(**{"extra.bin": entry(outside_file(c))}))),
                                    "extra.bin: extra.bin is a symbolic link"),
    "a symlinked directory": (lambda c: (os.symlink(outside_file(c).parent, c / "sub"),
                                         edit_manifest(c, with_files(**{"sub/secret.txt": entry(outside_file(c))}))),
                              "sub/secret.txt: sub is a symbolic link"),
    "step of another type": (lambda c: edit_manifest(c, lambda m: {**m, "step": "10"}), "'step' must be"),
    "no config": (lambda c: edit_manifest(c, lambda m: {k: v for k, v in m.items() if k != "config"}), "no 'config'"),
    "a newer format": (lambda c: edit_manifest(c, lambda m: {**m, "format": 99}), "written by a newer gptresume"),
    "world_size zero": (lambda c: edit_manifest(c, lambda m: {**m, "world_size": 0}), "'world_size' must be"),
    "manifest step differs from the directory": (lambda c: edit_manifest(c, lambda m: {**m, "step": 7}),
                                                  "manifest.json says step 7, the directory name step 10"),
    "trainer_state global_step 10**30": (
        lambda c: ((c / "trainer_state.json").write_text(json.dumps({"global_step": 10**30, "max_steps": 20})),
                   rehash(c)), "global_step 1000000000000000000000000000000 disagrees with manifest.json step 10"),
    "trainer_state is a list": (lambda c: ((c / "trainer_state.json").write_text("[]"), rehash(c)),
                                "trainer_state.json: not a JSON object"),
    "trainer_state log_history of strings": (
        lambda c: ((c / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": ["x"]})),
                   rehash(c)), "log_history has the wrong type"),
    "trainer_state not listed": (lambda c: edit_manifest(c, lambda m: {**m, "files": {
        k: v for k, v in m["files"].items() if k != "trainer_state.json"}}), "not listed in manifest.json"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_manifest_makes_the_checkpoint_invalid_with_the_reason(tmp_path, kind):
    make, fragment = HOSTILE[kind]
    run = tmp_path / "run"
    older = make_checkpoint(run, 5)
    ckpt = make_checkpoint(run, 10)
    make(ckpt)
    for hash_files in (True, False):  # verify, and retention's size-only check
        info = verify_checkpoint(ckpt, hash_files=hash_files)
        assert not info.valid and any(fragment in f for f in info.faults), info.faults
    chosen, skipped = newest_valid(run)
    assert chosen.path == older and [s.path for s in skipped] == [ckpt]
    status = collect_status(run)
    assert status.resume_from == "checkpoint-5" and not status.complete
    assert fragment in format_status(status)


def test_a_checkpoint_that_is_a_symbolic_link_is_invalid(tmp_path):
    elsewhere = make_checkpoint(tmp_path / "elsewhere", 10)
    (tmp_path / "run").mkdir()
    os.symlink(elsewhere, tmp_path / "run" / "checkpoint-10")
    info = verify_checkpoint(tmp_path / "run" / "checkpoint-10")
    assert info.faults == [f"checkpoint-10 is a symbolic link (to {elsewhere}); a checkpoint must be a directory "
                           "inside the run"]


def test_a_valid_manifest_has_no_problems(tmp_path):
    ckpt = make_checkpoint(tmp_path, 10)
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    assert manifest_problems(manifest) == []
    assert verify_checkpoint(ckpt).valid
    manifest["a_key_from_a_newer_gptresume"] = 1  # tolerated: the schema checks the keys it knows
    assert manifest_problems(manifest) == []


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "../x", "a/../../x", "./model.safetensors", "a//b", "a/", ".",
                                 "manifest.json", 5, None, "a\x00b"])
def test_paths_that_are_not_files_inside_the_checkpoint(rel):
    assert path_problem(rel)


@pytest.mark.parametrize("rel", ["model.safetensors", "sub/shard.bin", "global_step10/mp_rank_00_model_states.pt",
                                 "..hidden", "a..b"])
def test_relative_paths_inside_the_checkpoint(rel):
    assert path_problem(rel) is None


def test_verify_and_status_commands_report_hostile_manifests_without_a_traceback(tmp_path, capsys, monkeypatch):
    from gptresume.cli import main

    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")  # main sets it; monkeypatch restores it afterwards
    run = tmp_path / "run"
    make_checkpoint(run, 5)
    for step, kind in ((10, "a JSON list"), (15, "files values are strings"), (20, "a path leaving the checkpoint")):
        HOSTILE[kind][0](make_checkpoint(run, step))
    assert main(["verify", str(run)]) == 2
    out = capsys.readouterr().out
    assert out.count("INVALID") == 3 and out.count("ok ") == 1
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-5: newest valid checkpoint" in out and out.count("INVALID") == 3
    assert main(["status", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resume_from"] == "checkpoint-5"
