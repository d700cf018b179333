"""resume/plan.py on fake run directories: committed checkpoints made of small fake files (the plan reads names,
manifests and trainer_state.json only). Modes auto/never/must/PATH, refused and allowed changes, completeness,
the data and eval-cadence checks, and the stream offset after a changed batch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gptresume.checkpoint import RESUME_STATE_NAME, write_manifest
from gptresume.checkpoint.files import checkpoint_name
from gptresume.config import fingerprint_of
from gptresume.errors import ResumeRefused, UsageError
from gptresume.resume.changes import BATCH, DATA, OPTIMIZER, SCHEDULE
from gptresume.resume.plan import RunSpec, check_inputs, data_stream, plan_resume
from gptresume.resume.position import Geometry

STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
N = 100  # training samples


def make_config(run_dir: Path, **train) -> dict:
    base = {"output_dir": str(run_dir), "max_steps": 100, "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "lr_scheduler_type": "linear",
            "seed": 7, "logging_steps": 5, "eval_steps": 10, "save_steps": 10}
    return {"data": {"source": "corpus.txt", "block_size": 32}, "train": {**base, **train},
            "checkpoint": {"keep_last": 3}}


def make_checkpoint(run_dir: Path, step: int, config: dict, *, state_files=STATE_FILES, world_size: int = 1,
                    data_fingerprint: str = "data-1", resume_state: dict | None = None, commit: bool = True,
                    max_steps: int | None = None) -> Path:
    ckpt = run_dir / checkpoint_name(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 64)
    state = {"global_step": step, "max_steps": max_steps or config["train"].get("max_steps", 100),
             "log_history": [{"step": step, "loss": 1.0}]}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    for name in state_files:
        (ckpt / name).write_bytes(name.encode())
    if resume_state:
        (ckpt / RESUME_STATE_NAME).write_text(json.dumps(resume_state))
    if commit:
        write_manifest(ckpt, step=step, epoch=step / 25, config=config, config_fingerprint=fingerprint_of(config),
                       data_fingerprint=data_fingerprint, world_size=world_size, train_samples=N)
    return ckpt


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def run(run_dir):
    """A run with committed checkpoints at steps 10 and 20 under the base config."""
    config = make_config(run_dir)
    for step in (10, 20):
        make_checkpoint(run_dir, step, config)
    return run_dir


def spec(run_dir: Path, data_fingerprint: str | None = "data-1", **train) -> RunSpec:
    return RunSpec(run_dir, make_config(run_dir, **train), data_fingerprint, N)


# ---------------------------------------------------------------- modes


def test_auto_on_an_empty_run_starts_fresh(run_dir):
    plan = plan_resume(spec(run_dir), "auto")
    assert plan.checkpoint is None and plan.step == 0 and plan.changes == [] and not plan.overwrite


def test_auto_takes_the_newest_valid_checkpoint_and_names_the_skipped(run, caplog):
    broken = make_checkpoint(run, 30, make_config(run))
    (broken / "optimizer.pt").write_bytes(b"")
    make_checkpoint(run, 40, make_config(run), commit=False)
    plan = plan_resume(spec(run), "auto")
    assert plan.checkpoint.name == "checkpoint-20" and plan.step == 20 and plan.changes == []
    assert [s.name for s in plan.skipped] == ["checkpoint-40", "checkpoint-30"]
    assert "checkpoint-30: optimizer.pt: wrong size" in caplog.text


def test_must_without_a_checkpoint_is_refused(run_dir):
    with pytest.raises(UsageError, match="--resume must: no valid checkpoint .*no checkpoint-N directory"):
        plan_resume(spec(run_dir), "must")


def test_must_names_why_each_checkpoint_was_skipped(run_dir):
    make_checkpoint(run_dir, 10, make_config(run_dir), commit=False)
    with pytest.raises(UsageError, match="checkpoint-10: no manifest.json"):
        plan_resume(spec(run_dir), "must")


def test_must_resumes_like_auto(run):
    assert plan_resume(spec(run), "must").step == 20


def test_never_refuses_to_overwrite_checkpoints(run):
    with pytest.raises(UsageError, match="already has 2 checkpoint.*checkpoint-20.*--overwrite"):
        plan_resume(spec(run), "never")


def test_never_with_overwrite_starts_over(run):
    plan = plan_resume(spec(run), "never", overwrite=True)
    assert plan.checkpoint is None and plan.overwrite
    assert (run / "checkpoint-20").is_dir()  # planning changes nothing on disk


def test_never_on_an_empty_run(run_dir):
    plan = plan_resume(spec(run_dir), "never")
    assert plan.checkpoint is None and not plan.overwrite


def test_an_explicit_path_resumes_that_checkpoint(run):
    plan = plan_resume(spec(run), str(run / "checkpoint-10"))
    assert plan.checkpoint.name == "checkpoint-10" and plan.step == 10


def damaged(ckpt: Path) -> Path:
    (ckpt / "scheduler.pt").write_bytes(b"longer than it was")
    return ckpt


@pytest.mark.parametrize("make, message", [
    (lambda run: run / "checkpoint-99", "no such directory"),
    (lambda run: (run / "elsewhere").mkdir() or run / "elsewhere", "not a checkpoint-N directory"),
    (lambda run: make_checkpoint(run, 30, make_config(run), commit=False), "no manifest.json: .*--adopt"),
    (lambda run: damaged(make_checkpoint(run, 30, make_config(run))),
     "not a valid checkpoint: scheduler.pt: wrong size"),
], ids=["absent", "not-a-checkpoint-dir", "uncommitted", "damaged"])
def test_an_explicit_path_that_cannot_be_resumed(run, make, message):
    with pytest.raises(UsageError, match=message):
        plan_resume(spec(run), str(make(run)))


def test_adopt_needs_a_path(run):
    with pytest.raises(UsageError, match="--adopt needs --resume PATH"):
        plan_resume(spec(run), "auto", adopt=True)


@pytest.mark.parametrize("absent, piece", [("optimizer.pt", "no optimizer"), ("scheduler.pt", "no scheduler"),
                                           ("rng_state.pth", "no RNG state")])
def test_a_checkpoint_without_training_state_needs_allow_partial(run_dir, absent, piece):
    make_checkpoint(run_dir, 10, make_config(run_dir), state_files=[f for f in STATE_FILES if f != absent])
    with pytest.raises(UsageError, match=f"(?s)lacks training state.*\n  - {piece}: .*--allow-partial"):
        plan_resume(spec(run_dir), "auto")
    assert plan_resume(spec(run_dir), "auto", allow_partial=True).step == 10


# ---------------------------------------------------------------- config changes


def test_a_training_change_is_refused_with_the_changes(run):
    with pytest.raises(ResumeRefused) as e:
        plan_resume(spec(run, learning_rate=2e-3), "auto")
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2
    (change,) = e.value.changes
    assert (change.key, change.old, change.new, change.kind, change.refused) == (
        "train.learning_rate", 1e-3, 2e-3, OPTIMIZER, True)
    message = str(e.value)
    assert "checkpoint-20 was trained with" in message and "REFUSED (--allow-change learning_rate)" in message
    assert "allow_change=['learning_rate']" in message


def test_an_allowed_change_is_planned(run):
    plan = plan_resume(spec(run, learning_rate=2e-3), "auto", allow_change=["learning_rate"])
    assert plan.optimizer_values() == {"learning_rate": (1e-3, 2e-3)}
    assert not plan.schedule_replanned()


def test_a_free_change_needs_no_flag(run):
    plan = plan_resume(spec(run, logging_steps=1, save_steps=5), "auto")
    assert [c.key for c in plan.changes] == ["train.logging_steps", "train.save_steps"]
    assert not any(c.refused for c in plan.changes)


def test_an_unknown_allow_change_name_is_refused(run):
    with pytest.raises(UsageError, match="--allow-change learnin_rate: no such config field"):
        plan_resume(spec(run, learning_rate=2e-3), "auto", allow_change=["learnin_rate"])


def test_a_never_field_is_refused_and_cannot_be_allowed(run):
    with pytest.raises(ResumeRefused, match="NEVER"):
        plan_resume(spec(run, seed=8), "auto")
    with pytest.raises(UsageError, match="can never change"):
        plan_resume(spec(run, seed=8), "auto", allow_change=["seed"])


def test_a_longer_schedule_is_replanned(run):
    plan = plan_resume(spec(run, max_steps=200), "auto", allow_change=["schedule"])
    assert plan.schedule_replanned() and [c.kind for c in plan.changes] == [SCHEDULE]


def test_a_schedule_ending_before_the_checkpoint_is_refused(run):
    with pytest.raises(UsageError, match="max_steps=15 ends before .*checkpoint-20 \\(step 20\\)"):
        plan_resume(spec(run, max_steps=15), "auto", allow_change=["max_steps"])


def test_a_replanned_schedule_needs_a_supported_shape(run):
    with pytest.raises(UsageError, match="lr_scheduler_type='polynomial'.*linear, cosine"):
        plan_resume(spec(run, lr_scheduler_type="polynomial"), "auto", allow_change=["schedule"])


def test_same_global_batch_resumes_without_a_flag(run):
    plan = plan_resume(spec(run, per_device_train_batch_size=2, gradient_accumulation_steps=2), "auto")
    assert [c.kind for c in plan.changes] == [BATCH, BATCH] and all(c.allowed for c in plan.changes)


def test_more_processes_with_the_same_global_batch_resume_without_a_flag(run):
    plan = plan_resume(spec(run, per_device_train_batch_size=2), "auto", world_size=2)
    assert {c.key for c in plan.changes} == {"train.per_device_train_batch_size", "world_size"}
    assert not any(c.refused for c in plan.changes)


def test_more_processes_alone_change_the_global_batch(run):
    with pytest.raises(ResumeRefused, match="global batch 4 -> 8") as e:
        plan_resume(spec(run), "auto", world_size=2)
    assert [c.key for c in e.value.changes] == ["world_size"]


def test_a_saved_schedule_plan_is_continued(run_dir):
    saved = {"from_step": 10, "start_factor": 0.5, "peak_step": 10, "end_step": 200, "shape": "cosine"}
    make_checkpoint(run_dir, 20, make_config(run_dir), resume_state={"schedule_plan": saved})
    plan = plan_resume(spec(run_dir), "auto")
    assert plan.schedule_plan().to_dict() == saved and not plan.schedule_replanned()
    assert plan_resume(spec(run_dir), "auto").resume_state["schedule_plan"] == saved


# ---------------------------------------------------------------- completeness


def test_is_complete_at_max_steps(run_dir):
    make_checkpoint(run_dir, 100, make_config(run_dir))
    assert plan_resume(spec(run_dir), "auto").is_complete(spec(run_dir))


def test_is_not_complete_before_max_steps(run):
    assert not plan_resume(spec(run), "auto").is_complete(spec(run))


def test_a_fresh_start_is_not_complete(run_dir):
    assert not plan_resume(spec(run_dir), "auto").is_complete(spec(run_dir))


def test_an_allowed_longer_max_steps_is_not_complete(run_dir):
    make_checkpoint(run_dir, 100, make_config(run_dir))
    longer = spec(run_dir, max_steps=200)
    assert not plan_resume(longer, "auto", allow_change=["max_steps"]).is_complete(longer)


def test_without_max_steps_the_checkpoints_own_is_used(run_dir):
    config = make_config(run_dir, num_train_epochs=1)
    del config["train"]["max_steps"]
    make_checkpoint(run_dir, 25, config, max_steps=25)  # Trainer's computed total for one epoch
    same = RunSpec(run_dir, copy.deepcopy(config), "data-1", N)
    assert plan_resume(same, "auto").is_complete(same)


def test_an_allowed_longer_epoch_count_is_not_complete(run_dir):
    config = make_config(run_dir, num_train_epochs=1)
    del config["train"]["max_steps"]
    make_checkpoint(run_dir, 25, config, max_steps=25)  # one epoch of 25 steps, finished
    longer = copy.deepcopy(config)
    longer["train"]["num_train_epochs"] = 2
    longer_spec = RunSpec(run_dir, longer, "data-1", N)
    plan = plan_resume(longer_spec, "auto", allow_change=["num_train_epochs"])
    assert plan.schedule_replanned()
    assert not plan.is_complete(longer_spec)


# ---------------------------------------------------------------- check_inputs


def test_changed_training_data_is_refused(run):
    plan = plan_resume(spec(run, data_fingerprint="data-2"), "auto")
    with pytest.raises(ResumeRefused) as e:
        check_inputs(plan, "data-2", dropout=False)
    assert "data fingerprint data-1 then, data-2 now" in str(e.value)
    assert "--allow-change data" in str(e.value) and "allow_change=['data']" in str(e.value)
    assert [(c.key, c.kind, c.refused) for c in e.value.changes] == [("data", DATA, True)]


def test_changed_training_data_can_be_allowed(run):
    plan = plan_resume(spec(run, data_fingerprint="data-2"), "auto", allow_change=["data"])
    check_inputs(plan, "data-2", dropout=False)
    (change,) = plan.changes
    assert change.key == "data" and change.allowed and change.note == "the packed training tokens differ"


def test_a_moved_file_with_the_same_tokens_is_harmless(run_dir):
    make_checkpoint(run_dir, 10, make_config(run_dir))
    moved = spec(run_dir)
    moved.config["data"]["source"] = "moved/corpus.txt"
    plan = plan_resume(moved, "auto")
    check_inputs(plan, "data-1", dropout=False)
    (change,) = plan.changes
    assert change.key == "data.source" and change.allowed and change.note == "same packed tokens"


def test_a_changed_data_field_with_other_tokens_is_refused(run_dir):
    make_checkpoint(run_dir, 10, make_config(run_dir))
    moved = spec(run_dir, data_fingerprint="data-2")
    moved.config["data"]["source"] = "other.txt"
    plan = plan_resume(moved, "auto")
    with pytest.raises(ResumeRefused):
        check_inputs(plan, "data-2", dropout=False)


def test_eval_cadence_with_dropout_is_refused(run):
    plan = plan_resume(spec(run, eval_steps=5), "auto")  # free as far as the config can tell
    with pytest.raises(ResumeRefused, match="--allow-change eval_steps") as e:
        check_inputs(plan, "data-1", dropout=True)
    assert [c.key for c in e.value.changes if c.refused] == ["train.eval_steps"]


def test_eval_cadence_with_dropout_can_be_allowed(run):
    plan = plan_resume(spec(run, eval_steps=5), "auto", allow_change=["eval_steps"])
    check_inputs(plan, "data-1", dropout=True)
    assert plan.changes[0].allowed


def test_eval_cadence_without_dropout_is_free(run):
    plan = plan_resume(spec(run, eval_steps=5), "auto")
    check_inputs(plan, "data-1", dropout=False)
    assert not plan.changes[0].refused


def test_check_inputs_without_a_checkpoint_checks_nothing(run_dir):
    check_inputs(plan_resume(spec(run_dir), "auto"), "anything", dropout=True)


# ---------------------------------------------------------------- data stream


def test_an_unchanged_resume_needs_no_stream(run):
    assert data_stream(plan_resume(spec(run), "auto"), spec(run), N, 1) is None


def test_the_same_global_batch_needs_no_stream(run):
    same = spec(run, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert data_stream(plan_resume(same, "auto"), same, N, 1) is None


@pytest.mark.parametrize("per_device, world_size", [(8, 1), (2, 1), (3, 1), (4, 2)])
def test_a_changed_batch_continues_at_the_samples_consumed(run, per_device, world_size):
    new = spec(run, per_device_train_batch_size=per_device)
    plan = plan_resume(new, "auto", allow_change=["batch"], world_size=world_size)
    stream = data_stream(plan, new, N, world_size)
    consumed = Geometry(4, 1, 1).position(20, N)  # 80 samples in 20 steps of 4
    assert stream["samples"] == N
    assert Geometry(per_device, 1, world_size).position(20, N, stream["offset"]) == consumed


def test_changed_data_continues_at_the_same_offset_of_the_epoch(run_dir):
    make_checkpoint(run_dir, 30, make_config(run_dir))  # 25 steps per epoch: epoch 1, sample 20
    plan = plan_resume(spec(run_dir, data_fingerprint="data-2"), "auto", allow_change=["data"])
    check_inputs(plan, "data-2", dropout=False)
    stream = data_stream(plan, spec(run_dir), 60, 1)  # the new data has 60 samples: 15 steps per epoch
    assert Geometry(4, 1, 1).position(30, 60, stream["offset"]) == 60 + 20
    assert stream == {"offset": 80 - (60 + 15 * 4), "samples": 60}


def test_a_saved_stream_is_continued(run_dir):
    saved = {"offset": -40, "samples": N}
    make_checkpoint(run_dir, 20, make_config(run_dir), resume_state={"stream": saved})
    plan = plan_resume(spec(run_dir), "auto")
    assert data_stream(plan, spec(run_dir), N, 1) == saved


# ---------------------------------------------------------------- decisions read flags, never the notes' wording


def _decisions(plan, new, world_size) -> tuple:
    from gptresume.data.streaming import streaming_refusal
    from gptresume.resume.changes import format_changes

    from gptresume.errors import UsageError

    actions = [line.split("  ")[-1].split(";")[0] for line in format_changes(plan.changes).splitlines()[1:]]
    try:  # another process count reads the stream's parts from the checkpoint: these checkpoints hold none
        streams = streaming_refusal(plan) is None
    except UsageError:
        streams = "no stream state"
    return (data_stream(plan, new, N, world_size), streams, actions,
            [(c.kind, c.allowed, c.refused, c.equivalent) for c in plan.changes])


@pytest.mark.parametrize("train, world_size, allow, fingerprint, source", [
    ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, 1, [], "data-1", None),  # same batch
    ({"per_device_train_batch_size": 2}, 2, [], "data-1", None),  # more processes, same global batch
    ({"per_device_train_batch_size": 8}, 1, ["batch"], "data-1", None),  # another global batch
    ({}, 1, [], "data-1", "moved/corpus.txt"),  # a moved file with the same tokens
    ({}, 1, ["data"], "data-2", "other.txt"),  # other tokens, allowed
    ({"learning_rate": 5e-4, "logging_steps": 2}, 1, ["learning_rate"], "data-1", None),
])
def test_rewording_every_note_changes_no_decision(run, train, world_size, allow, fingerprint, source):
    """The data position, the streaming refusal and each change's action come from the change's class and flags:
    the same plan with every note rewritten (and one that starts with "same" on every change) decides the same."""
    def planned(note=None):
        new = spec(run, data_fingerprint=fingerprint, **train)
        if source:
            new.config["data"]["source"] = source
        plan = plan_resume(new, "auto", allow_change=allow, world_size=world_size)
        check_inputs(plan, fingerprint, dropout=False)
        for c in plan.changes if note is not None else []:
            c.note = note(c.note)
        return _decisions(plan, new, world_size)

    expected = planned()
    assert planned(lambda note: "") == expected
    assert planned(lambda note: "reworded: " + note[::-1]) == expected
    assert planned(lambda note: "same as before") == expected  # the old prefix test would flip these
