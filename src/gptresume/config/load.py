"""Reading a config: YAML file -> `--set` overrides -> validated `Config`, every problem reported together.

The checks run in two rounds. The first needs neither torch nor transformers: the file, its YAML, the section
and key names of every section (`train:` and a GPT-2 `model.from_scratch` against the field lists checked in for the
installed Transformers release, config/hf_fields.py), the types and values of model/data/checkpoint, and the
`train:` keys gptresume refuses or requires. Only when it finds nothing does the second import transformers, for
the `train:` values (TrainingArguments) and another model type's `from_scratch` keys; so a misspelt file name, a
YAML error or a misspelt key in any section is reported in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from gptresume.config.hf_fields import training_arguments_fields
from gptresume.config.integrations import integration_problems, report_to_problems
from gptresume.config.schema import (
    FORBIDDEN_TRAIN_KEYS,
    SECTIONS,
    TRAIN_DEFAULTS,
    VERSIONED_DEFAULTS,
    Config,
    DataConfig,
)
from gptresume.config.types import _unknown_key, check_type, finite_problems, type_problem
from gptresume.config.values import (
    GPT2_SIZE_DEFAULTS,
    best_model_problems,
    from_scratch_problems,
    output_dir_problem,
    train_value_problems,
)
from gptresume.errors import ConfigError, UsageError
from gptresume.remote.url import output_dir_url_problem


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read CONFIG, apply `--set` overrides, validate everything and report all problems at once (those found
    without transformers first: when there are any, they are the ones reported)."""
    raw = read_config(path, overrides)
    check_without_transformers(raw, source=str(path))
    return config_from_dict(raw, source=str(path))


def read_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """CONFIG's YAML as a dict with the `--set` overrides applied; not validated (no torch, no transformers)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found; "
                         "pass the path of a YAML file such as examples/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: the top level must be a mapping with sections model, data, train, checkpoint")
    for item in overrides or []:
        apply_override(raw, item)
    return raw


def check_without_transformers(raw: dict, source: str = "config") -> None:
    """Raise ConfigError with every problem found without importing transformers (or torch): unknown sections
    and keys, wrong types and values in model, data and checkpoint, refused or missing `train:` keys."""
    problems = _problems(raw, transformers=False)[0]
    if problems:
        raise ConfigError(problems, source)


def apply_override(raw: dict, item: str) -> None:
    """Apply one `section.key=value` override in place; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UsageError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise UsageError(f"--set {item!r}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """Validate `raw` completely (this imports transformers) and report every problem together."""
    problems, built, train = _problems(raw, transformers=True)
    if problems:
        raise ConfigError(problems, source)
    return Config(model=built["model"], data=built["data"], train=train, checkpoint=built["checkpoint"],
                  health=built["health"], defaulted=unset_versioned_defaults(raw))


def unset_versioned_defaults(raw: dict) -> frozenset:
    """The VERSIONED_DEFAULTS fields (schema.py) the raw config leaves out: resolved against the checkpoint a run
    resumes (`Config.resolve_versioned_defaults`), so a default changed since the run began does not change it."""
    out = set()
    for name in VERSIONED_DEFAULTS:
        section, key = name.split(".", 1)
        given = raw.get(section)
        if not (isinstance(given, dict) and key in given):
            out.add(name)
    return frozenset(out)


def _problems(raw: dict, transformers: bool) -> tuple[list[str], dict, dict]:
    """(problems, built sections, resolved train dict). Without `transformers` only the checks that need neither
    it nor torch run (their problems are the same, in the same order), and the train dict is not resolved."""
    problems: list[str] = []
    for key in raw:
        if key not in (*SECTIONS, "train"):
            problems.append(_unknown_key(key, [*SECTIONS, "train"], where="top level"))
    built = {}
    for name, cls in SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            problems.append(f"{name}: must be a mapping (got {type(section).__name__})")
            section = {}
        obj, errs = _build_dataclass(cls, section, name)
        problems.extend(errs or (obj.problems(name) if transformers or name != "model"
                                 else obj.problems(name, transformers=False)))
        built[name] = obj
    every_minutes = built["checkpoint"].every_minutes or built["checkpoint"].every == "auto"  # saves by the clock
    problems.extend(integration_problems(raw))  # missing packages: found before anything is written
    if not transformers:
        raw_train = raw.get("train") or {}
        problems.extend(_train_problems_without_transformers(raw_train))
        problems.extend(train_value_problems(raw_train, every_minutes) + _model_size_problems(built)
                        + _streaming_problems(built, raw_train) + _separate_disks_problems(built, raw_train))
        return problems, built, {}
    train, errs = _build_train(raw.get("train") or {})
    if not errs:
        _default_evaluation(train, built["data"])
        errs = (train_value_problems(train, every_minutes) + _model_size_problems(built)
                + _streaming_problems(built, train))
        errs += best_model_problems(train, built["checkpoint"].keep_last) + _separate_disks_problems(built, train)
    problems.extend(errs or report_to_problems(train.get("report_to")) or _training_arguments_problems(train))
    return problems, built, train


def _separate_disks_problems(built: dict, train) -> list[str]:
    """checkpoint.shared_filesystem: false needs checkpoint.remote and excludes what needs one run directory."""
    from gptresume.remote.url import separate_disks_problems

    c = built.get("checkpoint")
    if c is None or c.shared_filesystem is not False:
        return []
    return separate_disks_problems(train, built.get("health"))


def _streaming_problems(built: dict, train: dict) -> list[str]:
    """A streamed source has no length: Trainer needs max_steps; its position lives in this process's reader, so
    DataLoader worker processes would hold it out of reach."""
    data = built.get("data")
    if data is None or not data.streaming or not isinstance(train, dict):
        return []
    out = []
    steps = train.get("max_steps")
    if not isinstance(steps, int) or steps < 1:
        out.append("train.max_steps: a streaming run (data.streaming) needs a positive max_steps (a stream has no "
                   "epochs to count)")
    if built.get("checkpoint") is not None and built["checkpoint"].async_save:
        out.append("checkpoint.async_save: not with data.streaming yet (the stream's state is written with the "
                   "synchronous save)")
    if train.get("dataloader_num_workers"):
        out.append("train.dataloader_num_workers: must be 0 with data.streaming (the stream's position is kept in "
                   "the training process)")
    return out


def _model_size_problems(built: dict) -> list[str]:
    """A from-scratch GPT-2's sizes against each other and against data.block_size (GPT2Config's defaults for the
    fields not given); a pretrained model's context is checked when it is loaded (training/run.py)."""
    model = built["model"]
    data = built["data"]
    if model.tokenizer.train_vocab_size and (data.token_dtype is not None or any(
            str(s).lower().endswith(".bin") for s in data.sources)):
        return ["model.tokenizer.train_vocab_size: the data source is already tokenized (no text to train a "
                "tokenizer on); set model.tokenizer.name_or_path to the tokenizer that wrote the ids"]
    if not isinstance(model.from_scratch, dict) or model.from_scratch.get("model_type", "gpt2") != "gpt2":
        return []  # another model type is checked against its own config class (schema.py)
    return from_scratch_problems(model.from_scratch, GPT2_SIZE_DEFAULTS, built["data"].block_size)


def _build_dataclass(cls, raw: dict, prefix: str):
    """Instantiate dataclass `cls` from `raw`, collecting unknown-key and type problems instead of raising."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs, problems = {}, []
    for key, value in raw.items():
        if key not in names:
            problems.append(_unknown_key(key, names, where=prefix))
            continue
        hint = hints[key]
        if not dataclasses.is_dataclass(hint) and (bad := finite_problems(value, f"{prefix}.{key}")):
            problems.extend(bad)  # every number of every section, at any depth (from_scratch, peft, options...)
            continue
        if dataclasses.is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                problems.append(f"{prefix}.{key}: must be a mapping (got {value!r})")
                continue
            sub, errs = _build_dataclass(hint, value, f"{prefix}.{key}")
            problems.extend(errs)
            kwargs[key] = sub
            continue
        ok, coerced = check_type(value, hint)
        if not ok:
            problems.append(type_problem(f"{prefix}.{key}", value, hint))
            continue
        kwargs[key] = coerced
    return (cls(**kwargs) if not problems else cls()), problems


def _train_problems_without_transformers(raw: dict) -> list[str]:
    """What `_build_train` reports without importing transformers: a train section that is not a mapping, refused
    keys, unknown keys (against the checked-in TrainingArguments fields of the installed release, config/hf_fields.py;
    a release without an entry is checked with transformers, in the second round), a missing output_dir (same
    messages, same order)."""
    if not isinstance(raw, dict):
        return [f"train: must be a mapping (got {type(raw).__name__})"]
    known = training_arguments_fields()
    problems = []
    for key in raw:
        if key in FORBIDDEN_TRAIN_KEYS:
            problems.append(f"train.{key}: not accepted: {FORBIDDEN_TRAIN_KEYS[key]}")
        elif known is not None and key not in known:
            problems.append(_unknown_key(key, list(known), where="train"))
    if not raw.get("output_dir"):
        problems.append("train.output_dir: required; it is the run directory (e.g. runs/demo)")
    elif why := output_dir_url_problem(raw["output_dir"]) or output_dir_problem(raw["output_dir"]):
        problems.append(why)
    return problems


def _build_train(raw: dict):
    from transformers import TrainingArguments

    problems = []
    if not isinstance(raw, dict):
        return {}, [f"train: must be a mapping (got {type(raw).__name__})"]
    fields_ = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    try:
        hints = typing.get_type_hints(TrainingArguments)
    except Exception:  # some HF annotations do not resolve; then only HF's own validation applies
        hints = {}
    # transformers 5.24 annotates `fsdp` as `str | None`, yet documents `fsdp=True` (a string is deprecated)
    hints.pop("fsdp", None)
    from gptresume.config.device import resolve_precision

    raw = resolve_precision(raw)  # `bf16: auto`: what this machine computes natively (config/device.py)
    train = dict(TRAIN_DEFAULTS)
    for key, value in raw.items():
        if key in FORBIDDEN_TRAIN_KEYS:
            problems.append(f"train.{key}: not accepted: {FORBIDDEN_TRAIN_KEYS[key]}")
            continue
        if key not in fields_:
            problems.append(_unknown_key(key, list(fields_), where="train"))
            continue
        if bad := finite_problems(value, f"train.{key}"):  # as train_value_problems reports them without transformers
            problems.extend(bad)
            continue
        if key in hints:
            ok, value = check_type(value, hints[key], strict=False)
            if not ok:
                problems.append(type_problem(f"train.{key}", raw[key], hints[key]))
                continue
        train[key] = value
    if not train.get("output_dir"):
        problems.append("train.output_dir: required; it is the run directory (e.g. runs/demo)")
    elif why := output_dir_url_problem(train["output_dir"]) or output_dir_problem(train["output_dir"]):
        problems.append(why)
    return train, problems


def _default_evaluation(train: dict, data: DataConfig) -> None:
    """Evaluate at every save when there is a validation split, unless the user chose otherwise."""
    if "eval_strategy" not in train:
        train["eval_strategy"] = "steps" if data.validation_fraction > 0 or data.validation_source else "no"
    if train["eval_strategy"] == "steps" and "eval_steps" not in train and (train.get("save_steps") or 0) > 0:
        train["eval_steps"] = train.get("save_steps")


def _training_arguments_problems(train: dict) -> list[str]:
    from transformers import TrainingArguments

    try:
        TrainingArguments(**train)
    except Exception as e:  # HF raises ValueError/TypeError with its own explanation
        return [f"train: transformers.TrainingArguments rejected the values: {e}"]
    return []


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically: temp file then rename), credentials redacted (credentials.py:
    they are refused on input; this is the second layer)."""
    from gptresume.credentials import redact

    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(redact(config.to_dict()), sort_keys=False))
    tmp.replace(path)
