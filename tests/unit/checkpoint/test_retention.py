"""checkpoint/retention.py beyond tests/test_checkpoint.py: keep_best, keep_last=None, leftovers without a
manifest, set_aside and clear_the_way, set-aside directories leaving with the window, links never followed,
best_eval_step, a delete that fails."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from gptresume.checkpoint import (
    apply_retention,
    best_eval_step,
    clear_the_way,
    list_checkpoints,
    set_aside,
    write_manifest,
)
from gptresume.checkpoint.files import checkpoint_name


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


def make_checkpoint(run_dir: Path, step: int, commit: bool = True, evals: dict[int, float] | None = None) -> Path:
    ckpt = run_dir / checkpoint_name(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 100)
    history = [{"step": s, "eval_loss": loss} for s, loss in sorted((evals or {}).items())]
    history.insert(0, {"step": 1, "loss": 3.0})
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    if commit:
        write_manifest(ckpt, step=step, epoch=None, config={}, config_fingerprint="c", data_fingerprint=None,
                       world_size=1)
    return ckpt


def names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]


EVALS = {10: 2.0, 20: 1.0, 30: 1.5, 40: 1.8}  # step 20 is the best


def test_best_eval_step_is_the_lowest_eval_loss(tmp_path):
    assert best_eval_step(make_checkpoint(tmp_path, 40, evals=EVALS)) == 20


def test_best_eval_step_without_evaluations_is_none(tmp_path):
    assert best_eval_step(make_checkpoint(tmp_path, 40)) is None


@pytest.mark.parametrize("keep_last, kept", [(1, ["checkpoint-20", "checkpoint-40"]),
                                             (2, ["checkpoint-20", "checkpoint-30", "checkpoint-40"]),
                                             (3, ["checkpoint-20", "checkpoint-30", "checkpoint-40"])])
def test_keep_best_keeps_the_lowest_eval_loss_checkpoint_as_well(tmp_path, keep_last, kept):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    newest = make_checkpoint(tmp_path, 40, evals=EVALS)
    apply_retention(tmp_path, keep_last=keep_last, newest=newest, keep_best=True)
    assert names(tmp_path) == kept


def test_without_keep_best_the_best_goes_too(tmp_path):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    newest = make_checkpoint(tmp_path, 40, evals=EVALS)
    deleted = apply_retention(tmp_path, keep_last=1, newest=newest)
    assert sorted(p.name for p in deleted) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert names(tmp_path) == ["checkpoint-40"]


def test_keep_last_none_keeps_every_committed_checkpoint_but_not_leftovers(tmp_path):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 35, commit=False)  # crashed before 40 committed
    newest = make_checkpoint(tmp_path, 40)
    deleted = apply_retention(tmp_path, keep_last=None, newest=newest)
    assert [p.name for p in deleted] == ["checkpoint-35"]
    assert names(tmp_path) == ["checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-40"]


def test_a_leftover_without_manifest_does_not_count_towards_keep_last(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, commit=False)
    newest = make_checkpoint(tmp_path, 30)
    apply_retention(tmp_path, keep_last=2, newest=newest)
    assert names(tmp_path) == ["checkpoint-10", "checkpoint-30"]


def test_keep_last_one_keeps_only_the_newest(tmp_path):
    for step in (10, 20):
        make_checkpoint(tmp_path, step)
    newest = make_checkpoint(tmp_path, 30)
    apply_retention(tmp_path, keep_last=1, newest=newest)
    assert names(tmp_path) == ["checkpoint-30"]


def test_set_aside_keeps_the_directory_out_of_the_way(tmp_path):
    old = make_checkpoint(tmp_path, 10)
    moved = set_aside(old)
    assert not old.exists() and moved.parent == tmp_path
    assert moved.name.startswith("checkpoint-10.replaced-")
    assert (moved / "manifest.json").is_file() and (moved / "model.safetensors").read_bytes() == b"w" * 100
    assert names(tmp_path) == []  # no longer a checkpoint of the run
    newest = make_checkpoint(tmp_path, 10)
    apply_retention(tmp_path, keep_last=1, newest=newest)
    assert moved.is_dir()  # not while its step is within the keep_last newest


def test_a_failed_delete_is_logged_not_reported_as_deleted(tmp_path, monkeypatch, caplog):
    make_checkpoint(tmp_path, 10)
    newest = make_checkpoint(tmp_path, 20)

    def undeletable(path, ignore_errors=False, onerror=None, **kwargs):  # e.g. a read-only mount, a busy file
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", undeletable)
    with caplog.at_level(logging.WARNING):
        deleted = apply_retention(tmp_path, keep_last=1, newest=newest)
    assert (tmp_path / "checkpoint-10").is_dir()
    assert "checkpoint-10" in caplog.text
    assert deleted == []


def test_a_save_of_a_step_that_never_committed_is_deleted_before_the_step_is_saved_again(tmp_path):
    stale = make_checkpoint(tmp_path, 10, commit=False)  # a kill during the save of step 10
    assert "never committed" in clear_the_way(stale)
    assert list(tmp_path.iterdir()) == []  # nothing kept as .replaced-*


def test_a_committed_checkpoint_of_the_same_step_is_set_aside(tmp_path):
    committed = make_checkpoint(tmp_path, 10)  # another timeline (an explicit --resume of an older checkpoint)
    assert "aside" in clear_the_way(committed)
    (moved,) = tmp_path.iterdir()
    assert moved.name.startswith("checkpoint-10.replaced-") and (moved / "manifest.json").is_file()


def test_set_aside_directories_go_once_older_than_the_keep_last_newest(tmp_path):
    for step in (10, 20):
        set_aside(make_checkpoint(tmp_path, step))
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    apply_retention(tmp_path, keep_last=2, newest=tmp_path / "checkpoint-30")
    assert sorted(p.name.split(".")[0] for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-20",
                                                                        "checkpoint-30"]
    apply_retention(tmp_path, keep_last=None, newest=make_checkpoint(tmp_path, 40))
    assert len([p for p in tmp_path.iterdir() if ".replaced-" in p.name]) == 1  # keep_last None: kept


def test_a_checkpoint_that_is_a_link_is_unlinked_never_followed(tmp_path):
    run = tmp_path / "run"
    elsewhere = make_checkpoint(tmp_path / "elsewhere", 10)
    run.mkdir()
    (run / "checkpoint-10").symlink_to(elsewhere)  # invalid (a link), committed through it: older than the window
    newest = make_checkpoint(run, 20)
    deleted = apply_retention(run, keep_last=1, newest=newest)
    assert [p.name for p in deleted] == ["checkpoint-10"] and names(run) == ["checkpoint-20"]
    assert (elsewhere / "manifest.json").is_file() and (elsewhere / "model.safetensors").is_file()
