"""NaN and infinity are refused wherever a number is asked for, in every section: each field of the config
dataclasses and every numeric TrainingArguments field (the tables are built from the classes, so a field added
later is covered without touching this file), numbers nested in mapping fields (from_scratch, peft, remote_options,
lr_scheduler_kwargs), and the script API's TrainingArguments. Each case: exit 2, one message naming the field,
the run directory unchanged."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from conftest import snapshot, write_config
from gptresume.cli import main
from gptresume.config.schema import SECTIONS, TokenizerConfig


def _numeric(hint) -> bool:
    args = typing.get_args(hint) or (hint,)
    return any(a in (int, float) for a in args)


def dataclass_numeric_fields(cls, prefix: str) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out += dataclass_numeric_fields(hint, f"{prefix}.{f.name}")
        elif _numeric(hint):
            out.append(f"{prefix}.{f.name}")
    return out


def training_arguments_numeric_fields() -> list[str]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return [f"train.{f.name}" for f in dataclasses.fields(TrainingArguments)
            if f.init and f.name in hints and _numeric(hints[f.name])]


SECTION_FIELDS = [k for name, cls in SECTIONS.items() for k in dataclass_numeric_fields(cls, name)]
NESTED_FIELDS = ["model.from_scratch.resid_pdrop", "model.from_scratch.layer_norm_epsilon",
                 "checkpoint.remote_options.config_kwargs.connect_timeout", "train.lr_scheduler_kwargs.min_lr"]


def test_the_tables_cover_the_fields_issue_28_named():
    assert {"health.spike.std", "health.spike.factor", "checkpoint.expected_interruptions_per_hour",
            "checkpoint.every_minutes", "checkpoint.remote_wait_seconds", "data.validation_fraction",
            "model.tokenizer.train_vocab_size"} <= set(SECTION_FIELDS)
    assert dataclasses.is_dataclass(TokenizerConfig)
    assert {"train.learning_rate", "train.weight_decay", "train.max_grad_norm", "train.warmup_steps",
            "train.adam_beta1", "train.num_train_epochs"} <= set(training_arguments_numeric_fields())


def _refused(tmp_path, capsys, field: str, text: str, extra=()) -> str:
    config = write_config(tmp_path, checkpoint={"keep_last": 2, "remote": "s3://bucket/run",
                                                "remote_options": {"endpoint_url": "http://127.0.0.1:9"}})
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True, exist_ok=True)
    before = snapshot(run)
    code = main(["train", str(config), *extra, "--set", f"{field}={text}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert snapshot(run) == before
    return err


@pytest.mark.parametrize("field", SECTION_FIELDS + NESTED_FIELDS)
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused_in_every_section(tmp_path, capsys, field, text):
    extra = ["--set", "health.spike.enabled=true"] if field.startswith("health.spike") else []
    err = _refused(tmp_path, capsys, field, text, extra)
    assert f"{field}: {text} is not a finite number" in err, err


@pytest.mark.parametrize("field", training_arguments_numeric_fields())
def test_nan_is_refused_in_every_numeric_training_argument(tmp_path, capsys, field):
    err = _refused(tmp_path, capsys, field, ".nan")
    assert f"{field}: .nan is not a finite number" in err, err


@pytest.mark.parametrize("field,text", [("train.learning_rate", "nan"), ("train.weight_decay", "inf"),
                                        ("checkpoint.every_minutes", "nan"), ("health.spike.std", "-Infinity")])
def test_a_nan_written_as_text_is_refused_where_a_number_is_asked(tmp_path, capsys, field, text):
    extra = ["--set", "health.spike.enabled=true"] if field.startswith("health.spike") else []
    err = _refused(tmp_path, capsys, field, text, extra)
    assert f"{field}: '{text}' is not a finite number" in err, err


def test_text_that_is_not_a_number_keeps_its_meaning(tmp_path):
    from gptresume.config import load_config

    config = load_config(write_config(tmp_path, data={"source": str(tmp_path / "nan.txt")},
                                      train={"run_name": "inf"}))
    assert config.train["run_name"] == "inf"


@pytest.mark.parametrize("kwargs,field", [
    ({"learning_rate": math.nan}, "learning_rate"), ({"weight_decay": math.inf}, "weight_decay"),
    ({"max_grad_norm": math.nan}, "max_grad_norm"), ({"adam_beta2": math.nan}, "adam_beta2"),
    ({"warmup_steps": math.inf}, "warmup_steps"), ({"lr_scheduler_kwargs": {"min_lr": math.nan}},
                                                   "lr_scheduler_kwargs.min_lr")])
def test_the_script_apis_training_arguments_are_checked_the_same_way(tmp_path, kwargs, field):
    from transformers import TrainingArguments

    from gptresume.config.values import train_value_problems

    args = TrainingArguments(str(tmp_path / "out"), **kwargs)
    problems = train_value_problems(args.to_dict(), prefix="TrainingArguments.")
    assert len(problems) == 1 and problems[0].startswith(f"TrainingArguments.{field}: ") \
        and "is not a finite number" in problems[0], problems


def test_finite_problems_is_reusable_for_api_arguments():
    from gptresume.config.types import finite_problems

    assert finite_problems(math.nan, "gptresume.train(every_minutes=)") == [
        "gptresume.train(every_minutes=): .nan is not a finite number; NaN and infinity are never a setting; give a "
        "finite number"]
    assert finite_problems({"a": [1.0, {"b": -math.inf}], "c": 2}, "x") == [
        "x.a[1].b: -.inf is not a finite number; NaN and infinity are never a setting; give a finite number"]
    assert finite_problems(3.5, "x") == finite_problems("nan", "x") == finite_problems(None, "x") == []
