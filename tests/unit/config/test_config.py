"""Config validation and overrides: every problem named with its field, all reported together."""

import pytest
import yaml

from gptresume.config import apply_override, config_from_dict, load_config
from gptresume.errors import ConfigError, UsageError

from conftest import ROOT


def base() -> dict:
    return {"model": {"from_scratch": {"n_layer": 2}, "tokenizer": {"train_vocab_size": 500}},
            "train": {"output_dir": "runs/x", "max_steps": 5}}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    return e.value.problems


def test_shipped_examples_validate():
    for name in ("demo.yaml", "gpt2-finetune.yaml"):
        config = load_config(ROOT / "examples" / name)
        assert config.run_dir.name
        config.training_arguments()  # HF accepts the values


def test_defaults_and_resolved_values():
    c = config_from_dict(base())
    assert c.data.source == "builtin:python-docs" and c.data.block_size == 128
    assert c.train["seed"] == 42 and c.train["max_steps"] == 5
    assert c.train["eval_strategy"] == "steps" and c.train["eval_steps"] == c.train["save_steps"]
    assert c.checkpoint.keep_last == 3


def test_no_validation_split_means_no_evaluation():
    raw = base()
    raw["data"] = {"validation_fraction": 0}
    assert config_from_dict(raw).train["eval_strategy"] == "no"


def test_set_overrides_reach_nested_values_and_parse_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    c = load_config(path, ["train.learning_rate=1e-4", "model.from_scratch.n_layer=3", "data.source=[a.txt, b.txt]",
                           "checkpoint.every_minutes=null"])
    assert c.train["learning_rate"] == pytest.approx(1e-4)  # YAML reads 1e-4 as a string; coerced to float
    assert c.model.from_scratch["n_layer"] == 3
    assert c.data.sources == ["a.txt", "b.txt"]
    assert c.checkpoint.every_minutes is None


def test_malformed_override():
    with pytest.raises(UsageError, match="expected section.key=value"):
        apply_override({}, "learning_rate")


def test_unknown_keys_suggest_the_closest_valid_one():
    raw = base()
    raw["train"]["learnig_rate"] = 1e-3
    raw["data"] = {"blok_size": 64}
    raw["model"]["from_scratch"]["n_layr"] = 2
    raw["checkpoints"] = {}
    problems = problems_of(raw)
    text = "\n".join(problems)
    assert "train: unknown key 'learnig_rate'; did you mean 'learning_rate'?" in text
    assert "data: unknown key 'blok_size'; did you mean 'block_size'?" in text
    assert "model.from_scratch: unknown key 'n_layr'; did you mean 'n_layer'?" in text
    assert "did you mean 'checkpoint'?" in text
    assert len(problems) == 4  # all reported together


def test_wrong_types_and_values_are_all_reported():
    raw = base()
    raw["data"] = {"block_size": "big", "validation_fraction": 1.5}
    raw["checkpoint"] = {"keep_last": 0}
    raw["train"]["max_steps"] = "ten"
    problems = problems_of(raw)
    assert any(p.startswith("data.block_size: expected int, got 'big'") for p in problems)
    assert any(p.startswith("checkpoint.keep_last") for p in problems)
    assert any(p.startswith("train.max_steps: expected int") for p in problems)


def test_model_needs_exactly_one_source():
    raw = base()
    raw["model"]["name_or_path"] = "gpt2"
    assert any("exactly one of name_or_path" in p for p in problems_of(raw))
    raw = {"train": {"output_dir": "x"}}
    assert any("exactly one of name_or_path" in p for p in problems_of(raw))


def test_from_scratch_needs_a_tokenizer():
    raw = base()
    raw["model"]["tokenizer"] = {}
    assert any("needs a tokenizer" in p for p in problems_of(raw))


def test_trainer_pitfalls_are_refused_with_the_fix():
    raw = base()
    raw["train"]["resume_from_checkpoint"] = "runs/x/checkpoint-10"
    raw["train"]["save_total_limit"] = 2
    text = "\n".join(problems_of(raw))
    assert "silently starts at step 0" in text and "--resume" in text
    assert "checkpoint.keep_last" in text


def test_training_arguments_validation_is_hf_own():
    raw = base()
    raw["train"]["eval_strategy"] = "sometimes"
    assert any("TrainingArguments rejected" in p and "sometimes" in p for p in problems_of(raw))


def test_output_dir_required():
    raw = base()
    del raw["train"]["output_dir"]
    assert any(p.startswith("train.output_dir: required") for p in problems_of(raw))


def test_fingerprint_changes_with_values_only():
    a, b = config_from_dict(base()), config_from_dict(base())
    assert a.fingerprint() == b.fingerprint()
    raw = base()
    raw["train"]["max_steps"] = 6
    assert config_from_dict(raw).fingerprint() != a.fingerprint()


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(UsageError, match="top level must be a mapping"):
        load_config(bad)
