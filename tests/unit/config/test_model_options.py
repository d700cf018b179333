"""`model:` options beyond GPT-2 (dtype, revision, trust_remote_code, attn_implementation, from_scratch model_type,
peft) and the integrations a config names, checked before anything is written (issue 18)."""

import sys

import pytest

from gptresume.config import config_from_dict
from gptresume.config.integrations import integration_problems
from gptresume.config.load import check_without_transformers
from gptresume.errors import ConfigError


def base(**model) -> dict:
    return {"model": model or {"name_or_path": "gpt2"}, "train": {"output_dir": "runs/x", "max_steps": 5}}


def problems_of(raw: dict, transformers: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw) if transformers else check_without_transformers(raw)
    return e.value.problems


def test_model_options_are_read_and_recorded():
    c = config_from_dict(base(name_or_path="gpt2", dtype="bfloat16", revision="abc123", trust_remote_code=True,
                              attn_implementation="eager", peft={"r": 4, "target_modules": ["c_attn"]}))
    assert (c.model.dtype, c.model.revision, c.model.trust_remote_code) == ("bfloat16", "abc123", True)
    assert c.model.peft == {"r": 4, "target_modules": ["c_attn"]}
    assert c.to_dict()["model"]["peft"]["r"] == 4  # part of the fingerprint: a change is a model change
    assert problems_of(base(name_or_path="gpt2", dtype="fp8")) == [
        "model.dtype: 'fp8' is not one of auto, float32, bfloat16, float16"]


def test_peft_takes_lora_config_names_and_suggests_the_closest():
    found = problems_of(base(name_or_path="gpt2", peft={"r": 4, "lora_alpa": 8, "base_model_name_or_path": "x"}))
    assert "model.peft: unknown key 'lora_alpa'; did you mean 'lora_alpha'?" in found
    assert any(p.startswith("model.peft.base_model_name_or_path: set by gptresume") for p in found)
    (bad,) = problems_of(base(name_or_path="gpt2", peft={"r": 4, "use_dora": True, "lora_bias": True}))
    assert bad.startswith("model.peft: peft.LoraConfig rejected the values") and "lora_bias" in bad


def test_peft_on_a_model_from_scratch_is_refused_with_the_reason():
    raw = base(from_scratch={"n_layer": 2}, tokenizer={"train_vocab_size": 500}, peft={"r": 4})
    (found,) = problems_of(raw, transformers=False)
    assert found.startswith("model.peft: LoRA adapts a pretrained model")


def test_from_scratch_takes_a_model_type_and_its_config_names():
    llama = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 64}
    c = config_from_dict(base(from_scratch=llama, tokenizer={"train_vocab_size": 500}))
    assert c.model.from_scratch["model_type"] == "llama"
    found = problems_of(base(from_scratch={**llama, "n_layer": 2, "hidden_size": 30},
                             tokenizer={"train_vocab_size": 500}))
    assert any(p.startswith("model.from_scratch: unknown key 'n_layer'") for p in found), found
    found = problems_of(base(from_scratch={**llama, "hidden_size": 30}, tokenizer={"train_vocab_size": 500}))
    assert any("30" in p and "attention heads" in p for p in found), found  # the config class says why
    (found,) = problems_of(base(from_scratch={"model_type": "lama"}, tokenizer={"train_vocab_size": 500}))
    assert "unknown model type 'lama'" in found and "'llama'" in found


def test_report_to_names_are_checked():
    (found,) = problems_of({**base(), "train": {"output_dir": "runs/x", "report_to": ["wandb", "mlfow"]}})
    assert "train.report_to: unknown integration 'mlfow'; did you mean 'mlflow'?" in found


def test_push_to_hub_is_refused_with_the_export_command():
    raw = {**base(), "train": {"output_dir": "runs/x", "push_to_hub": True}}
    (found,) = problems_of(raw, transformers=False)
    assert found.startswith("train.push_to_hub: not accepted") and "gptresume export" in found
    assert "--push-to-hub" in found


def test_a_missing_package_is_named_with_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec answers None
    monkeypatch.setitem(sys.modules, "peft", None)
    raw = {"model": {"name_or_path": "gpt2", "peft": {"r": 4}},
           "train": {"output_dir": "runs/x", "report_to": ["wandb", "mlflow", "none"]}}
    assert integration_problems(raw) == [
        "train.report_to: 'wandb' needs the wandb package, which is not installed; pip install "
        "'gptresume[trackers]' (or wandb), or remove wandb from train.report_to",
        "model.peft: LoRA needs the peft package, which is not installed; pip install 'gptresume[peft]' (or peft), "
        "or remove model.peft"]
    assert problems_of(raw, transformers=False) == integration_problems(raw)  # found without transformers
    monkeypatch.delitem(sys.modules, "wandb")
    monkeypatch.delitem(sys.modules, "peft")
    assert integration_problems(raw) == []


def test_a_config_without_the_new_model_fields_resolves_as_before():
    """Checkpoints written before these fields existed recorded no such keys: a resume must see no change."""
    from gptresume.resume.changes import config_changes

    plain = config_from_dict(base(from_scratch={"n_layer": 2}, tokenizer={"train_vocab_size": 500})).to_dict()
    assert not {"dtype", "revision", "trust_remote_code", "attn_implementation", "peft"} & set(plain["model"])
    lora = config_from_dict(base(name_or_path="gpt2", peft={"r": 4}, revision="v1")).to_dict()
    assert lora["model"]["peft"] == {"r": 4} and lora["model"]["revision"] == "v1"
    changed = config_changes(plain, {**plain, "model": {**plain["model"], "attn_implementation": "eager"}})
    assert [(c.key, c.kind) for c in changed] == [("model.attn_implementation", "never")]
