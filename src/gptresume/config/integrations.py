"""The integrations a config names (trackers in `train.report_to`, `train.push_to_hub`, `model.peft`), checked
before the run directory is touched: a missing package would otherwise end the run in Trainer's constructor, with
a traceback, after config.yaml, history.jsonl, tokenizer/ and data-cache/ were written.

`integration_problems` imports nothing (packages are looked up with `importlib.util.find_spec`, as Transformers'
own `is_wandb_available` does); `report_to_problems` and `lora_config_problems` import transformers / peft.
"""

from __future__ import annotations

import importlib.util

from gptresume.config.types import _unknown_key

# report_to name -> (module Trainer's callback imports, what to install). Transformers 5.24 INTEGRATION_TO_CALLBACK.
TRACKER_PACKAGES = {
    "wandb": ("wandb", "pip install 'gptresume[trackers]' (or wandb)"),
    "mlflow": ("mlflow", "pip install 'gptresume[trackers]' (or mlflow)"),
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "comet_ml": ("comet_ml", "pip install comet_ml"),
    "neptune": ("neptune", "pip install neptune"),
    "clearml": ("clearml", "pip install clearml"),
    "dvclive": ("dvclive", "pip install dvclive"),
    "codecarbon": ("codecarbon", "pip install codecarbon"),
    "azure_ml": ("azureml", "pip install azureml-sdk"),
    "trackio": ("trackio", "pip install trackio"),
    "swanlab": ("swanlab", "pip install swanlab"),
    "dagshub": ("dagshub", "pip install dagshub"),
    "flyte": ("flytekit", "pip install flytekit"),
}
PUSH_TO_HUB_REFUSED = (
    "Trainer pushes from its own save, before gptresume has committed (hashed and manifested) the checkpoint, so "
    "an uncommitted or torn checkpoint could be published; remove it, and push committed content with "
    "`gptresume export RUN_DIR/checkpoint-N OUT --push-to-hub REPO_ID` (or RUN_DIR for final/)")


def has_package(module: str) -> bool:
    """Is `module` importable? (find_spec: nothing is imported; a module set to None in sys.modules is missing.)"""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-initialised module
        return False


def report_to_names(value) -> list[str]:
    """`train.report_to` as a list of names ("none" and None: nothing; "all": Trainer picks the installed ones)."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    return [str(n) for n in names if str(n) not in ("none", "all")]


def integration_problems(raw: dict) -> list[str]:
    """Missing packages for the integrations `raw` (the config as read) names, and `push_to_hub`."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    out = []
    for name in report_to_names(train.get("report_to")):
        module, install = TRACKER_PACKAGES.get(name, (None, None))
        if module is not None and not has_package(module):
            out.append(f"train.report_to: {name!r} needs the {module} package, which is not installed; {install}, "
                       f"or remove {name} from train.report_to")
    if train.get("push_to_hub") is True:
        out.append(f"train.push_to_hub: not accepted: {PUSH_TO_HUB_REFUSED}")
    if model.get("peft") is not None and not has_package("peft"):
        out.append("model.peft: LoRA needs the peft package, which is not installed; pip install 'gptresume[peft]' "
                   "(or peft), or remove model.peft")
    return out


def report_to_problems(value) -> list[str]:
    """Names Trainer does not know (it would fail in its constructor, after the run directory was written)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    known = list(INTEGRATION_TO_CALLBACK)
    return [_unknown_key(name, known + ["none", "all"], where="train.report_to").replace("unknown key",
                                                                                         "unknown integration")
            for name in report_to_names(value) if name not in known]


def lora_config_problems(values: dict, prefix: str = "model.peft") -> list[str]:
    """`model.peft` keys against peft.LoraConfig's fields (did-you-mean for a misspelt one), then LoraConfig's own
    validation. Nothing when peft is missing (`integration_problems` says so)."""
    if not has_package("peft"):
        return []
    import dataclasses

    from peft import LoraConfig

    names = [f.name for f in dataclasses.fields(LoraConfig) if f.init]
    out = []
    for key in values:
        if key in ("peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
                   "peft_version"):
            out.append(f"{prefix}.{key}: set by gptresume (from model.name_or_path / model.revision); remove it")
        elif key not in names:
            out.append(_unknown_key(key, names, where=prefix))
    if out:
        return out
    try:
        lora_config(values)
    except Exception as e:  # LoraConfig's __post_init__ raises ValueError/TypeError naming the field
        out.append(f"{prefix}: peft.LoraConfig rejected the values: {' '.join(str(e).split())[:300]}")
    return out


def lora_config(values: dict):
    """The peft.LoraConfig `model.peft` describes (a causal-LM task unless it says otherwise)."""
    from peft import LoraConfig

    return LoraConfig(**{"task_type": "CAUSAL_LM", **values})
