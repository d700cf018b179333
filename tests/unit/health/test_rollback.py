"""health/rollback.py: the checkpoint a rollback takes, what it moves aside (kept, never deleted by retention),
the skip a later resume from the same checkpoint applies, the count against max_rollbacks; and the retention
protection (checkpoint/retention.py `protect`)."""

from pathlib import Path

import pytest

from conftest import fake_checkpoint
from gptresume.checkpoint import apply_retention, list_checkpoints, protect, protected
from gptresume.health.rollback import (
    newest_good,
    pending_skip,
    rollback_target,
    rollbacks_so_far,
    set_aside_after,
)


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


def make(run_dir: Path, step: int) -> Path:
    return fake_checkpoint(run_dir, step, {"model.safetensors": b"w" * 10})


def test_target_is_the_newest_verified_checkpoint_rollback_steps_before_the_event(tmp_path):
    for s in (10, 20, 30):
        make(tmp_path, s)
    assert rollback_target(tmp_path, 35, 0).step == 30
    assert rollback_target(tmp_path, 35, 10).step == 20
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"x" * 10)  # same size, other bytes
    assert rollback_target(tmp_path, 35, 10).step == 10  # hashes are checked: the damaged one is passed over
    assert rollback_target(tmp_path, 35, 30) is None
    assert rollback_target(tmp_path, 35, 0, check=lambda info: ["no"] if info.step == 30 else []).step == 10
    assert newest_good(tmp_path, 35).name == "checkpoint-30"
    assert newest_good(tmp_path, 30).name == "checkpoint-10"  # re-hashed: the damaged 20 is not named


def test_later_checkpoints_move_aside_and_retention_never_deletes_them(tmp_path):
    for s in (10, 20, 30):
        make(tmp_path, s)
    moved = set_aside_after(tmp_path, 10)
    assert sorted(p.name.split(".")[0] for p in moved) == ["checkpoint-20", "checkpoint-30"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10"]
    for s in (40, 50, 60):
        apply_retention(tmp_path, 1, make(tmp_path, s))
    assert all(p.is_dir() for p in moved)


def test_protected_checkpoints_survive_retention(tmp_path):
    good = make(tmp_path, 10)
    protect(tmp_path, good, "newest good before a NaN")
    assert protected(tmp_path) == {"checkpoint-10": "newest good before a NaN"}
    for s in (20, 30, 40):
        apply_retention(tmp_path, 1, make(tmp_path, s))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-40"]
    (tmp_path / "protected.json").write_text("{not json")
    assert protected(tmp_path) == {}  # unreadable: protects nothing, says so in the log


def test_pending_skip_and_count_follow_the_history():
    history = [{"event": "start"}, {"event": "rollback", "to_step": 20, "skip_samples": 8},
               {"event": "resume", "step": 20}, {"event": "rollback", "to_step": 30, "skip_samples": 8}]
    assert rollbacks_so_far(history) == 2
    assert pending_skip(history, 20) == 8 and pending_skip(history, 30) == 8 and pending_skip(history, 10) == 0
    later = history + [{"event": "rollback", "to_step": 10, "skip_samples": 4}]
    assert pending_skip(later, 20) == 0  # checkpoint-20 was moved aside by the rollback to 10: a new one is not it
    assert rollbacks_so_far(later + [{"event": "start"}]) == 0  # a fresh start counts anew
