"""The first hour with gptresume's config: names brought from other trainers get the right suggestion, YAML's
`no` means Transformers' "no", settings gptresume would override are refused with the reason, and `bf16: auto`
picks what the hardware computes natively."""

import dataclasses

import pytest
import yaml

from gptresume.config import CheckpointConfig, DataConfig, ModelConfig, config_from_dict, load_config
from gptresume.config.aliases import BY_SECTION
from gptresume.config.device import cpu_has_native_bf16, resolve_precision
from gptresume.errors import ConfigError

from conftest import ROOT


def base(**train) -> dict:
    return {"model": {"from_scratch": {"n_layer": 2}, "tokenizer": {"train_vocab_size": 500}},
            "train": {"output_dir": "runs/x", "max_steps": 5, **train}}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    return e.value.problems


@pytest.mark.parametrize("key, fragment", [
    ("batch_size", "it is called 'per_device_train_batch_size' here"),
    ("max_epochs", "it is called 'num_train_epochs' here"),
    ("epochs", "it is called 'num_train_epochs' here"),
    ("lr", "it is called 'learning_rate' here"),
    ("evaluation_strategy", "it is called 'eval_strategy' here"),
    ("gradient_clip_val", "it is called 'max_grad_norm' here"),
    ("max_iters", "it is called 'max_steps' here"),
    ("micro_batch_size", "it is called 'per_device_train_batch_size' here"),
    ("overwrite_output_dir", "--resume never --overwrite"),
    ("logging_dir", "RUN_DIR/metrics.jsonl"),
    ("warmup_ratio", "a value below 1 is a fraction of the run"),
    ("block_size", "data.block_size"),
])
def test_names_from_other_trainers_get_the_right_name(key, fragment):
    (problem,) = problems_of(base(**{key: 1}))
    assert problem.startswith(f"train: unknown key {key!r}") and fragment in problem, problem
    assert "did you mean" not in problem  # not the nearest spelling (auto_find_batch_size, max_steps, ...)


def test_a_real_typo_still_gets_the_closest_name():
    (problem,) = problems_of(base(learnin_rate=1e-3))
    assert "did you mean 'learning_rate'?" in problem


def test_foreign_names_in_other_sections():
    raw = base()
    raw["data"] = {"seq_len": 64}
    raw["checkpoint"] = {"save_total_limit": 2}
    problems = problems_of(raw)
    assert any("data: unknown key 'seq_len'; it is called 'block_size' here" in p for p in problems), problems
    assert any("checkpoint: unknown key 'save_total_limit'; it is called 'keep_last' here" in p for p in problems)


def test_the_alias_table_names_only_foreign_keys_and_real_targets():
    from transformers import TrainingArguments

    fields = {"train": {f.name for f in dataclasses.fields(TrainingArguments)},
              "data": {f.name for f in dataclasses.fields(DataConfig)},
              "checkpoint": {f.name for f in dataclasses.fields(CheckpointConfig)},
              "model": {f.name for f in dataclasses.fields(ModelConfig)}}
    for section, table in BY_SECTION.items():
        for foreign, entry in table.items():
            assert foreign not in fields[section], f"{section}.{foreign} is a real field"
            if entry[:1].isalpha():
                assert entry.partition(":")[0] in fields[section], f"{section}.{foreign} -> {entry}"


def test_warmup_steps_below_one_is_a_fraction_of_the_run():
    config = config_from_dict(base(warmup_steps=0.1, max_steps=50))
    assert config.training_arguments().get_warmup_steps(50) == 5  # transformers 5: ceil(0.1 x 50)
    (problem,) = problems_of(base(warmup_steps=-1))
    assert "a fraction of the run below 1" in problem


def test_yaml_no_for_a_strategy_is_the_string_no(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()).replace("max_steps: 5", "max_steps: 5\n  eval_strategy: no"))
    assert yaml.safe_load(path.read_text())["train"]["eval_strategy"] is False  # what YAML 1.1 reads
    assert load_config(path).train["eval_strategy"] == "no"
    assert load_config(ROOT / "examples" / "demo.yaml", ["train.eval_strategy=no"]).train["eval_strategy"] == "no"
    assert load_config(path, ["train.logging_strategy=no"]).training_arguments().logging_strategy == "no"
    (problem,) = problems_of(base(save_strategy=False))  # save_strategy: no is refused for what it means
    assert problem.startswith('train.save_strategy: "no" never saves a checkpoint'), problem


def test_a_boolean_for_a_plain_bool_field_is_unchanged_and_a_true_strategy_is_still_wrong():
    assert config_from_dict(base(logging_first_step=False)).train["logging_first_step"] is False
    (problem,) = problems_of(base(eval_strategy=True))
    assert "train.eval_strategy: expected" in problem


def test_jit_checkpoint_is_refused_with_the_reason():
    (problem,) = problems_of(base(enable_jit_checkpoint=True))
    assert "enable_jit_checkpoint: not accepted" in problem and "exits 75" in problem
    assert config_from_dict(base(enable_jit_checkpoint=False)).train["enable_jit_checkpoint"] is False


def test_load_best_model_at_end_keeps_the_best_checkpoint():
    from gptresume.options import Options

    def keeps_best(config):
        return Options.of(config.checkpoint, config.health).keeps_best(config.train)

    best = dict(load_best_model_at_end=True, save_steps=2, eval_steps=2)
    assert keeps_best(config_from_dict(base(**best))) is True  # keep_last can no longer delete it
    assert keeps_best(config_from_dict(base())) is False
    (problem,) = problems_of(base(**best, metric_for_best_model="accuracy", greater_is_better=True))
    assert "could delete the checkpoint Trainer loads at the end" in problem
    raw = base(**best, metric_for_best_model="accuracy")
    raw["checkpoint"] = {"keep_last": None}  # every checkpoint kept: nothing to protect
    assert config_from_dict(raw).train["metric_for_best_model"] == "accuracy"


@pytest.mark.parametrize("device, cpu_bf16, expected", [
    (("cuda", True), False, {"bf16": True}),                    # a bf16 GPU: bf16, on the GPU (no use_cpu)
    (("cuda", False), False, {"bf16": False}),                  # an older GPU: fp32
    (("mps", False), False, {"bf16": False}),                   # Apple's GPU: fp32, not moved to the CPU
    ((None, False), True, {"bf16": True, "use_cpu": True}),     # a CPU with AVX512-BF16/AMX
    ((None, False), False, {"bf16": False, "use_cpu": True}),   # a CPU without: fp32 (bf16 would be slower)
])
def test_bf16_auto_follows_the_hardware(device, cpu_bf16, expected):
    resolved = resolve_precision({"output_dir": "x", "bf16": "auto"}, device=device, cpu_bf16=cpu_bf16)
    assert resolved == {"output_dir": "x", **expected}
    assert resolve_precision({"bf16": True}, device=device, cpu_bf16=cpu_bf16) == {"bf16": True}  # only `auto`
    on_cpu = resolve_precision({"bf16": "auto", "use_cpu": True}, device=device, cpu_bf16=cpu_bf16)
    assert on_cpu == {"bf16": cpu_bf16, "use_cpu": True}  # use_cpu given: the CPU decides, whatever the GPU


def test_the_demo_preset_resolves_on_this_machine():
    train = load_config(ROOT / "examples" / "demo.yaml").train
    native = cpu_has_native_bf16()
    import torch

    if not torch.cuda.is_available():
        assert train["bf16"] is native and train["use_cpu"] is True
    assert cpu_has_native_bf16("flags : fpu avx512f avx512_bf16") and not cpu_has_native_bf16("flags : fpu avx2")
