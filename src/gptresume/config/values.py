"""Values checked before anything is written: the ones `TrainingArguments` and `GPT2Config` accept but that end a
run in a traceback after RUN_DIR was written, or make it train nothing or never save (a batch size of 0, a negative
learning rate, `max_steps: 0`, `save_steps: 0`, `n_embd` not a multiple of `n_head`, blocks longer than the
model's context), and a `train.output_dir` that cannot be a directory. Used by config/load.py (CLI) and by
`gptresume.train(trainer)` for its TrainingArguments. Pure functions: no torch, no transformers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integral(v) -> bool:
    return _number(v) and float(v).is_integer()


# key -> (ok(value), what the value must be). Checked only when the value is a number (a wrong type is reported
# by the type check, with its own message).
TRAIN_VALUE_RULES = {
    "per_device_train_batch_size": (lambda v: _integral(v) and v >= 1, "a positive integer"),
    "per_device_eval_batch_size": (lambda v: _integral(v) and v >= 1, "a positive integer"),
    "gradient_accumulation_steps": (lambda v: _integral(v) and v >= 1, "a positive integer (1: no accumulation)"),
    "eval_accumulation_steps": (lambda v: _integral(v) and v >= 1, "a positive integer, or null"),
    "learning_rate": (lambda v: v >= 0, "zero or more"),
    "weight_decay": (lambda v: v >= 0, "zero or more"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_epsilon": (lambda v: v >= 0, "zero or more"),
    "max_grad_norm": (lambda v: v >= 0, "zero or more (0 turns clipping off)"),
    "warmup_steps": (lambda v: v >= 0, "zero or more (a number of steps, or a fraction of the run below 1)"),
    "logging_steps": (lambda v: v > 0, "positive (a number of steps, or a fraction of the run below 1)"),
    "eval_steps": (lambda v: v > 0, "positive (a number of steps, or a fraction of the run below 1), or null"),
    "save_steps": (lambda v: v > 0, "positive: 0 never saves a checkpoint, so the run could not be resumed "
                                    "(a time-based save alone: save_strategy: \"no\" with checkpoint.every_minutes)"),
    "max_steps": (lambda v: _integral(v) and (v == -1 or v >= 1),
                  "a positive number of steps, or -1 to train num_train_epochs epochs (0 trains nothing)"),
    "seed": (lambda v: _integral(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),
    "data_seed": (lambda v: _integral(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1, or null"),
    "dataloader_num_workers": (lambda v: _integral(v) and v >= 0, "zero or more"),
    "label_smoothing_factor": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def train_value_problems(train: dict, every_minutes: float | None = None, prefix: str = "train.") -> list[str]:
    """Problems with `train:` values (TrainingArguments fields) that would fail or do nothing once training starts;
    `every_minutes`: checkpoint.every_minutes (a run that saves by the clock may turn step saves off). `prefix`
    names the fields in messages (`TrainingArguments.` for a script's Trainer)."""
    if not isinstance(train, dict):
        return []
    from gptresume.config.types import finite_problems

    # NaN and infinity, in every field at any depth (learning_rate, weight_decay, max_grad_norm, warmup_steps,
    # lr_scheduler_kwargs.min_lr, ...): no rule below can hold for them, and TrainingArguments accepts them
    out = [p for key, value in train.items() for p in finite_problems(value, f"{prefix}{key}")]
    save_strategy = "no" if train.get("save_strategy") is False else train.get("save_strategy")  # YAML's `no`
    strategy = str(getattr(save_strategy, "value", save_strategy) or "steps")
    for key, (ok, what) in TRAIN_VALUE_RULES.items():
        value = train.get(key)
        if not _number(value) or finite_problems(value, key):
            continue
        if key == "save_steps" and (strategy != "steps" or (value == 0 and every_minutes)):
            continue  # not used, or a run saved by the clock only
        if not ok(value):
            out.append(f"{prefix}{key}: {value!r} is not allowed: must be {what}")
    epochs, max_steps = train.get("num_train_epochs"), train.get("max_steps", -1)
    if _number(epochs) and epochs <= 0 and _number(max_steps) and max_steps <= 0:
        out.append(f"{prefix}num_train_epochs: {epochs!r} trains nothing (max_steps is not set); give a positive "
                   "number of epochs, or set max_steps")
    if train.get("enable_jit_checkpoint") is True:
        out.append(f"{prefix}enable_jit_checkpoint: not accepted: gptresume already handles SIGTERM (and SIGINT, "
                   "SIGUSR1): the step finishes, a checkpoint is committed with its manifest, the process exits 75. "
                   "Trainer's JIT checkpoint would catch the same signal (its handler is replaced by gptresume's, "
                   "so it would never run); remove it")
    if strategy == "no" and not every_minutes:
        out.append(f"{prefix}save_strategy: \"no\" never saves a checkpoint, so the run could not be resumed; remove "
                   "it (a checkpoint every save_steps), or add checkpoint.every_minutes to save by the clock")
    return out


def best_model_problems(train: dict, keep_last: int | None, prefix: str = "train.") -> list[str]:
    """`load_best_model_at_end` loads the checkpoint Trainer found best when training ends; with `keep_last`
    retention that checkpoint could already be deleted. gptresume keeps it (checkpoint.keep_best, implied by
    load_best_model_at_end), but keep_best protects the lowest eval loss: another `metric_for_best_model` would
    protect the wrong checkpoint, so it is refused unless every checkpoint is kept."""
    if train.get("load_best_model_at_end") is not True or keep_last is None:
        return []
    metric = train.get("metric_for_best_model")
    if metric in (None, "loss", "eval_loss") and train.get("greater_is_better") is not True:
        return []
    return [f"{prefix}load_best_model_at_end: with metric_for_best_model {metric!r}"
            f"{' and greater_is_better' if train.get('greater_is_better') else ''}, checkpoint.keep_last "
            f"({keep_last}) could delete the checkpoint Trainer loads at the end (checkpoint.keep_best protects "
            "the lowest eval loss only); use the eval loss (remove metric_for_best_model), or set "
            "checkpoint.keep_last: null to keep every checkpoint"]


# GPT2Config fields checked for a model built from scratch: key -> (ok(value), what).
GPT2_VALUE_RULES = {
    "n_layer": (lambda v: _integral(v) and v >= 1, "a positive integer"),
    "n_head": (lambda v: _integral(v) and v >= 1, "a positive integer"),
    "n_embd": (lambda v: _integral(v) and v >= 1, "a positive integer"),
    "n_positions": (lambda v: _integral(v) and v >= 1, "a positive integer"),
    "n_inner": (lambda v: _integral(v) and v >= 1, "a positive integer, or null (4 x n_embd)"),
    "resid_pdrop": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "embd_pdrop": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "attn_pdrop": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "summary_first_dropout": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "layer_norm_epsilon": (lambda v: v > 0, "positive"),
    "initializer_range": (lambda v: v >= 0, "zero or more"),
}


# model.peft (peft.LoraConfig) fields: key -> (ok(value), what). LoraConfig 0.21 accepts r: 0, a negative alpha or a
# dropout of 1.5 and fails (or trains nothing) later, after the run directory was written.
LORA_VALUE_RULES = {
    "r": (lambda v: _integral(v) and v >= 1, "a positive integer (the adapters' rank; e.g. 8 or 16)"),
    "lora_alpha": (lambda v: _number(v) and v > 0, "a positive number (the adapters' scale is lora_alpha / r)"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "target_modules": (lambda v: v is None or (isinstance(v, str) and v != "") or (
        isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)),
        "a list of module names (e.g. [c_attn, c_proj] for GPT-2, [q_proj, v_proj] for Llama), a regular "
        "expression, or all-linear"),
    "modules_to_save": (lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) and x for x in v)),
                        "a list of module names, or null"),
    "bias": (lambda v: v in ("none", "all", "lora_only"), "none, all or lora_only"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "use_dora": (lambda v: isinstance(v, bool), "true or false"),
    "layers_to_transform": (lambda v: v is None or (_integral(v) and v >= 0) or (
        isinstance(v, list) and all(_integral(x) and x >= 0 for x in v)), "a layer index or a list of them, or null"),
    "rank_pattern": (lambda v: isinstance(v, dict) and all(_integral(x) and x >= 1 for x in v.values()),
                     "a mapping of module names to positive ranks"),
    "alpha_pattern": (lambda v: isinstance(v, dict) and all(_number(x) and x > 0 for x in v.values()),
                      "a mapping of module names to positive alphas"),
}


def lora_value_problems(values, prefix: str = "model.peft") -> list[str]:
    """Values of `model.peft` that LoraConfig accepts but that cannot train (checked without peft or torch); the
    target modules are checked against the model when it is loaded (modeling.py `add_lora`)."""
    if not isinstance(values, dict):
        return []
    out = []
    for key, (ok, what) in LORA_VALUE_RULES.items():
        if key in values and not ok(values[key]):
            out.append(f"{prefix}.{key}: {values[key]!r} is not allowed: must be {what}")
    return out


# GPT2Config's defaults for the sizes (transformers 5.24; tests/unit/config/test_values.py compares), so that the
# sizes are checked before transformers is imported.
GPT2_SIZE_DEFAULTS = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}


def from_scratch_problems(values: dict, defaults: dict, block_size, prefix: str = "model.from_scratch") -> list[str]:
    """A new GPT-2's sizes: each positive, n_embd a multiple of n_head, and `block_size` (data.block_size) within
    n_positions. `defaults`: GPT2Config's, for the fields not given."""
    out = []
    for key, (ok, what) in GPT2_VALUE_RULES.items():
        value = values.get(key)
        if _number(value) and not ok(value):
            out.append(f"{prefix}.{key}: {value!r} is not allowed: must be {what}")
    if out:
        return out
    n_embd, n_head = values.get("n_embd", defaults.get("n_embd")), values.get("n_head", defaults.get("n_head"))
    if _integral(n_embd) and _integral(n_head) and n_embd % n_head:
        out.append(f"{prefix}.n_embd: {n_embd} is not a multiple of n_head ({n_head}): each attention head gets "
                   "n_embd / n_head dimensions; change one of them")
    room = values.get("n_positions", defaults.get("n_positions"))
    if _integral(room) and _integral(block_size) and block_size > room:
        out.append(f"data.block_size: {block_size} is longer than the model's context ({prefix}.n_positions = "
                   f"{room}); lower data.block_size or raise n_positions")
    return out


def output_dir_problem(value, field: str = "train.output_dir") -> str | None:
    """Why `value` cannot be the run directory (None when it is one, or can be created): a regular file, a path
    under a regular file, a name longer than the file system allows. Reads the file system, writes nothing."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return f"{field}: expected a directory path, got {value!r}"
    path = Path(value)
    try:
        absolute = Path(os.path.abspath(path))
    except (OSError, ValueError) as e:
        return f"{field}: {value!r} is not a usable path ({e})"
    if "\x00" in str(path):
        return f"{field}: the path holds a NUL byte"
    here = Path(absolute.anchor)
    for part in absolute.parts[1:]:
        limit = _name_max(here)
        if len(os.fsencode(part)) > limit:
            shown = part if len(part) <= 40 else part[:40] + "..."
            return (f"{field}: the path component {shown!r} is {len(os.fsencode(part))} bytes; the file system allows "
                    f"{limit}; choose a shorter name")
        here = here / part
        try:
            st = os.stat(here)
        except FileNotFoundError:
            continue  # created by the run; its components are still checked for length
        except NotADirectoryError:
            return f"{field}: a component of {value} is a file, so the run directory cannot be created there"
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                return f"{field}: {value} is longer than the file system allows; choose a shorter path"
            continue  # e.g. permissions: reported when the run directory is written
        if not _is_dir_mode(st.st_mode):
            if here == absolute:
                return f"{field}: {value} is a file, not a directory; give the path of a run directory"
            return f"{field}: {here} is a file, so {value} cannot be created under it; choose another path"
    if len(os.fsencode(str(absolute))) >= _path_max():
        return f"{field}: {value} is longer than the file system allows; choose a shorter path"
    return None


def _is_dir_mode(mode: int) -> bool:
    import stat

    return stat.S_ISDIR(mode)


def _name_max(existing: Path) -> int:
    """NAME_MAX of the file system holding the nearest existing directory (255 on Linux file systems)."""
    here = existing
    while True:
        try:
            return int(os.pathconf(here, "PC_NAME_MAX"))
        except (OSError, ValueError):
            if here.parent == here:
                return 255
            here = here.parent


def _path_max() -> int:
    try:
        return int(os.pathconf("/", "PC_PATH_MAX"))
    except (OSError, ValueError):
        return 4096
