"""resume/effective.py and training/script.py `training_args_record`: a checkpoint records the TrainingArguments its
run used (defaults included), and a resume compares real values on both sides: the change table never shows a
field's absence as `None`, an older record (only the non-default fields) resumes without a change, a field a newer
Transformers adds is no change at its default, and a default that changed between releases is a change."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gptresume.config import hf_fields
from gptresume.resume.changes import OPTIMIZER, config_changes, format_changes
from gptresume.resume.effective import effective_train, writer_version


def training_args(**kwargs):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir="out", use_cpu=True, report_to="none", **kwargs)


def record(args) -> dict:
    from gptresume.training.script import training_args_record

    return json.loads(json.dumps(training_args_record(args)))  # as a manifest holds it


def old_style_record(args) -> dict:
    """What gptresume recorded before: the fields that differ from their declared defaults (the previous
    `training_args_record`), through JSON as a manifest holds it."""
    from transformers import TrainingArguments

    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainingArguments)}
    kept = {k: v for k, v in args.to_dict().items()
            if k not in hf_fields.ENVIRONMENT_FIELDS and (k not in defaults or v != defaults[k])}
    return json.loads(json.dumps(kept))


def table_row(changes, key: str) -> str:
    return next(line for line in format_changes(changes).splitlines() if line.strip().startswith(key + " "))


def test_the_record_holds_every_field_the_run_trains_with_in_a_stable_json_form():
    args = training_args(max_steps=5, lr_scheduler_type="cosine")
    saved = record(args)
    assert saved["learning_rate"] == 5e-05 and saved["per_device_train_batch_size"] == 8  # defaults too
    assert saved["lr_scheduler_type"] == "cosine" and saved["save_strategy"] == "steps"  # enums as their values
    assert not hf_fields.ENVIRONMENT_FIELDS & set(saved)
    assert set(saved) == set(hf_fields.training_arguments_fields()) - hf_fields.ENVIRONMENT_FIELDS
    assert json.loads(json.dumps(saved)) == saved


def test_an_unchanged_script_resumes_without_a_change():
    old = {"train": record(training_args(max_steps=5, learning_rate=1e-3))}
    assert config_changes(old, {"train": record(training_args(max_steps=5, learning_rate=1e-3))}) == []


def test_the_table_shows_the_checkpoints_real_value_when_it_trained_at_the_default():
    old = {"train": record(training_args(max_steps=5))}  # trained at 5e-05, TrainingArguments' default
    (change,) = config_changes(old, {"train": record(training_args(max_steps=5, learning_rate=1e-4))})
    assert (change.key, change.old, change.new, change.kind) == ("train.learning_rate", 5e-05, 1e-4, OPTIMIZER)
    assert table_row([change], "train.learning_rate").split() == [
        "train.learning_rate", "5e-05", "0.0001", "optimizer", "REFUSED", "(--allow-change", "learning_rate)"]
    (back,) = config_changes({"train": record(training_args(max_steps=5, learning_rate=1e-4))}, old)
    assert (back.old, back.new) == (1e-4, 5e-05)  # going back to the default: its value, not None


def test_an_old_record_of_only_the_non_default_fields_resumes_without_a_change():
    """Checkpoints written before every field was recorded: a field absent is the declared default."""
    for kwargs in ({}, {"learning_rate": 1e-3, "warmup_steps": 3, "lr_scheduler_type": "cosine"},
                   {"gradient_accumulation_steps": 2, "weight_decay": 0.1}):
        args = training_args(max_steps=5, **kwargs)
        assert config_changes({"train": old_style_record(args)}, {"train": record(args)}) == [], kwargs
    old = {"train": old_style_record(training_args(max_steps=5))}
    (change,) = config_changes(old, {"train": record(training_args(max_steps=5, learning_rate=1e-4))})
    assert table_row([change], "train.learning_rate").split()[:4] == [
        "train.learning_rate", "5e-05", "(default)", "0.0001"]


def test_the_cli_config_shows_the_default_a_side_leaves_out():
    """The CLI records the keys given (or defaulted by gptresume), its recorded form unchanged: the table fills in
    Transformers' default for the side that leaves a field out."""
    old = {"train": {"output_dir": "runs/x", "max_steps": 10, "seed": 42}}
    new = {"train": {"output_dir": "runs/x", "max_steps": 10, "seed": 42, "learning_rate": 1e-4}}
    (change,) = config_changes(old, new)
    assert table_row([change], "train.learning_rate").split()[:4] == [
        "train.learning_rate", "5e-05", "(default)", "0.0001"]
    (back,) = config_changes(new, old)
    assert table_row([back], "train.learning_rate").split()[:4] == [
        "train.learning_rate", "0.0001", "5e-05", "(default)"]
    assert config_changes(old, {"train": {**old["train"], "learning_rate": 5e-05}}) == []  # the default, given


@pytest.fixture
def older_release(monkeypatch):
    """A fictitious Transformers 5.23 whose learning-rate default was 1e-3 and which had no
    average_tokens_across_devices field."""
    current = hf_fields.TRAINING_ARGUMENTS["5.24"]
    older = {k: v for k, v in current.items() if k != "average_tokens_across_devices"}
    older["learning_rate"] = 1e-3
    monkeypatch.setitem(hf_fields.TRAINING_ARGUMENTS, "5.23", older)
    return "5.23.1"


def test_a_field_absent_from_a_record_is_the_default_of_the_release_that_wrote_it(older_release):
    (change,) = config_changes({"train": {}}, {"train": {}}, old_version=older_release, new_version="5.24.0")
    assert (change.key, change.old, change.new) == ("train.learning_rate", 1e-3, 5e-05)
    assert change.old_default and change.new_default  # a default that changed between releases changes training
    assert config_changes({"train": {}}, {"train": {"learning_rate": 1e-3}}, old_version=older_release) == []


def test_a_field_a_newer_release_adds_is_no_change_at_its_default(older_release):
    old = {"train": {k: v for k, v in record(training_args()).items() if k != "average_tokens_across_devices"}}
    old["train"]["learning_rate"] = 5e-05
    assert config_changes(old, {"train": record(training_args())}, old_version=older_release) == []
    (change,) = config_changes(old, {"train": record(training_args(average_tokens_across_devices=False))},
                               old_version=older_release)
    assert (change.key, change.old, change.new) == ("train.average_tokens_across_devices", True, False)


def test_effective_train_says_which_side_took_a_default():
    a, b, old_defaulted, new_defaulted = effective_train({"learning_rate": 1e-3}, {"seed": 3})
    assert a["learning_rate"] == 1e-3 and b["learning_rate"] == 5e-05 and a["seed"] == 42 and b["seed"] == 3
    assert "learning_rate" in new_defaulted and "learning_rate" not in old_defaulted and "seed" in old_defaulted
    assert not hf_fields.ENVIRONMENT_FIELDS & set(a)


def test_the_writer_version_comes_from_the_manifest():
    assert writer_version({"versions": {"transformers": "5.24.0"}}) == "5.24.0"
    assert writer_version({"versions": {"gptresume": "test"}}) is None and writer_version(None) is None
