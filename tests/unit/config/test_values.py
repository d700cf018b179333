"""Values TrainingArguments and GPT2Config accept but that would fail, train nothing or never save once training
started are refused when the config is read, each naming its field and the fix (config/values.py); output paths
that cannot be a run directory too. The e2e side (exit 2, nothing written, also on a resume) is in
tests/e2e/test_hardening.py."""

from __future__ import annotations

import pytest

from gptresume.config import check_without_transformers, config_from_dict
from gptresume.config.values import output_dir_problem, train_value_problems
from gptresume.errors import ConfigError


def raw(train=None, model=None, data=None, checkpoint=None) -> dict:
    return {"model": {"from_scratch": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, **(model or {})},
                      "tokenizer": {"train_vocab_size": 500}},
            "data": {"block_size": 32, **(data or {})},
            "train": {"output_dir": "runs/x", "max_steps": 5, **(train or {})},
            "checkpoint": checkpoint or {}}


BAD = [
    ({"train": {"per_device_train_batch_size": 0}},
     "train.per_device_train_batch_size: 0 is not allowed: must be a positive integer"),
    ({"train": {"per_device_train_batch_size": -4}}, "train.per_device_train_batch_size: -4 is not allowed"),
    ({"train": {"per_device_eval_batch_size": 0}}, "train.per_device_eval_batch_size: 0 is not allowed"),
    ({"train": {"gradient_accumulation_steps": 0}}, "train.gradient_accumulation_steps: 0 is not allowed"),
    ({"train": {"learning_rate": -1e-3}}, "train.learning_rate: -0.001 is not allowed: must be zero or more"),
    ({"train": {"weight_decay": -0.1}}, "train.weight_decay: -0.1 is not allowed"),
    ({"train": {"adam_beta2": 1.0}}, "train.adam_beta2: 1.0 is not allowed: must be in [0, 1)"),
    ({"train": {"max_steps": 0}}, "train.max_steps: 0 is not allowed: must be a positive number of steps, or -1"),
    ({"train": {"max_steps": -5}}, "train.max_steps: -5 is not allowed"),
    ({"train": {"max_steps": -1, "num_train_epochs": 0}}, "train.num_train_epochs: 0 trains nothing"),
    ({"train": {"save_steps": 0}}, "train.save_steps: 0 is not allowed: must be positive: 0 never saves"),
    ({"train": {"save_strategy": "no"}}, "train.save_strategy: \"no\" never saves a checkpoint"),
    ({"train": {"logging_steps": -1}}, "train.logging_steps: -1 is not allowed"),
    ({"train": {"eval_steps": 0}}, "train.eval_steps: 0 is not allowed"),
    ({"train": {"seed": -1}}, "train.seed: -1 is not allowed"),
    ({"train": {"dataloader_num_workers": -1}}, "train.dataloader_num_workers: -1 is not allowed"),
    ({"model": {"n_head": 3}}, "model.from_scratch.n_embd: 32 is not a multiple of n_head (3)"),
    ({"model": {"n_layer": 0}}, "model.from_scratch.n_layer: 0 is not allowed: must be a positive integer"),
    ({"model": {"attn_pdrop": 1.5}}, "model.from_scratch.attn_pdrop: 1.5 is not allowed: must be a probability"),
    ({"data": {"block_size": 128}}, "data.block_size: 128 is longer than the model's context "
                                    "(model.from_scratch.n_positions = 64)"),
]


@pytest.mark.parametrize("sections, fragment", BAD, ids=[f for _, f in BAD])
def test_a_value_that_would_fail_after_the_start_is_refused_with_its_field(sections, fragment):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw(**sections))
    assert any(fragment in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("sections, fragment", BAD, ids=[f for _, f in BAD])
def test_the_values_are_refused_before_transformers_is_imported(sections, fragment):
    with pytest.raises(ConfigError) as e:
        check_without_transformers(raw(**sections))
    assert any(fragment in p for p in e.value.problems), e.value.problems


def test_the_gpt2_size_defaults_are_transformers_own():
    from transformers import GPT2Config

    from gptresume.config.values import GPT2_SIZE_DEFAULTS

    assert GPT2_SIZE_DEFAULTS == {k: GPT2Config().to_dict()[k] for k in GPT2_SIZE_DEFAULTS}


def test_a_from_scratch_model_uses_gpt2_defaults_for_unset_sizes():
    with pytest.raises(ConfigError, match=r"block_size: 2048 is longer .*n_positions = 1024"):
        config_from_dict({**raw(data={"block_size": 2048}), "model": {"from_scratch": {"n_layer": 1},
                                                                       "tokenizer": {"train_vocab_size": 500}}})
    with pytest.raises(ConfigError, match=r"n_embd: 768 is not a multiple of n_head \(5\)"):
        config_from_dict({**raw(), "model": {"from_scratch": {"n_head": 5}, "tokenizer": {"train_vocab_size": 500}}})


@pytest.mark.parametrize("sections", [
    {"train": {"save_steps": 0}, "checkpoint": {"every_minutes": 5}},  # saved by the clock only
    {"train": {"save_strategy": "no"}, "checkpoint": {"every_minutes": 5}},
    {"train": {"max_steps": -1, "num_train_epochs": 2}},
    {"train": {"learning_rate": 0.0, "warmup_steps": 0.1, "save_steps": 0.25, "logging_steps": 0.5}},  # ratios
    {"train": {"save_strategy": "epoch", "save_steps": 0}},  # save_steps is not used
    {"data": {"block_size": 64}},
])
def test_values_that_train_and_save_are_accepted(sections):
    config_from_dict(raw(**sections))


def test_no_eval_steps_of_zero_is_derived_from_save_steps_zero():
    config = config_from_dict(raw(train={"save_steps": 0}, data={"validation_fraction": 0.1},
                                  checkpoint={"every_minutes": 5}))
    assert config.train.get("eval_steps") is None


def test_a_scripts_training_arguments_are_checked_by_the_same_rules(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=0, max_steps=0,
                             save_strategy="no", report_to="none", use_cpu=True)
    problems = train_value_problems(args.to_dict(), None, prefix="TrainingArguments.")
    assert [p.split(":")[0] for p in problems] == ["TrainingArguments.per_device_train_batch_size",
                                                   "TrainingArguments.max_steps", "TrainingArguments.save_strategy"]
    assert train_value_problems(TrainingArguments(output_dir=str(tmp_path), report_to="none").to_dict()) == []


# ---------------------------------------------------------------- output paths


def test_output_dir_that_is_a_file_or_under_one(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert output_dir_problem(str(f)) == (f"train.output_dir: {f} is a file, not a directory; give the path of a run "
                                          "directory")
    assert output_dir_problem(str(f / "run" / "deeper")).startswith(f"train.output_dir: {f} is a file, so ")


def test_output_dir_with_a_name_longer_than_the_file_system_allows(tmp_path):
    why = output_dir_problem(str(tmp_path / ("é" * 150) / "run"))
    assert why and "is 300 bytes; the file system allows 255" in why


@pytest.mark.parametrize("value", ["runs/new/run", ".", "/tmp"])
def test_output_dirs_that_exist_or_can_be_created(value):
    assert output_dir_problem(value) is None


def test_output_dir_problems_are_config_problems(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_without_transformers(raw(train={"output_dir": str(f)}))
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        config_from_dict(raw(train={"output_dir": str(f)}))


def test_a_models_context_against_the_block_size():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptresume.modeling import context_problem

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20))
    assert context_problem(model, 16) is None
    assert context_problem(model, 17) == ("data.block_size: 17 is longer than the model's context (n_positions = 16); "
                                          "set data.block_size to 16 or less")


def test_gptresume_train_refuses_such_values_before_writing_anything(tmp_path):
    import datasets
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    import gptresume
    from gptresume.errors import UsageError

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20,
                                       bos_token_id=0, eos_token_id=0))
    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4, "labels": [[1, 2, 3, 4]] * 4})
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=0, max_steps=0,
                             report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    with pytest.raises(SystemExit) as ended:  # a script ends like the CLI: the message on stderr, exit 2
        gptresume.train(trainer)
    assert ended.value.code == 2
    with pytest.raises(UsageError) as refused:
        gptresume.train(trainer, raise_errors=True)
    assert str(refused.value).splitlines() == [
        "TrainingArguments.per_device_train_batch_size: 0 is not allowed: must be a positive integer",
        "TrainingArguments.max_steps: 0 is not allowed: must be a positive number of steps, or -1 to train "
        "num_train_epochs epochs (0 trains nothing)"]
    assert list((tmp_path / "run").iterdir()) == []  # (Trainer itself creates output_dir) nothing written in it
