"""The tracker bookkeeping: which resumes may skip the steps a tracker run already holds, and trackers.json."""

from types import SimpleNamespace

from gptresume.resume.changes import Change
from gptresume.rundir import read_trackers, write_tracker
from gptresume.training.trackers import tracker_resume


def plan(step, *changes, adopt=False):
    return SimpleNamespace(step=step, changes=list(changes), adopt=adopt)


def test_only_an_exact_resume_skips_the_steps_the_tracker_holds():
    assert tracker_resume(None).step == 0
    free = tracker_resume(plan(8, Change("train.logging_steps", 1, 2, "free")))
    assert (free.step, free.exact) == (8, True)  # cadence does not change the values logged
    changed = tracker_resume(plan(8, Change("train.learning_rate", 1e-3, 5e-4, "optimizer")))
    assert not changed.exact and changed.changes == "train.learning_rate: 0.001 -> 0.0005"
    assert not tracker_resume(plan(8, adopt=True)).exact  # an adopted checkpoint's earlier steps are unknown


def test_trackers_json_keeps_each_trackers_record(tmp_path):
    assert read_trackers(tmp_path) == {}
    write_tracker(tmp_path, "wandb", {"run_id": "abc", "logged_through": 3})
    write_tracker(tmp_path, "mlflow", {"run_id": "def"})
    write_tracker(tmp_path, "wandb", {"run_id": "abc", "logged_through": 4})
    assert read_trackers(tmp_path) == {"wandb": {"run_id": "abc", "logged_through": 4}, "mlflow": {"run_id": "def"}}
    (tmp_path / "trackers.json").write_text("{torn")
    assert read_trackers(tmp_path) == {}  # a torn file means a new tracker run, never a crash
