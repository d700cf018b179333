"""One YAML file -> one validated dataclass per concern.

Every problem (unknown key, wrong type, bad value) is collected and reported together, each naming its
field and, for a misspelt key, the closest valid one. `train:` passes any `transformers.TrainingArguments`
field straight through; HF validates the values.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptresume.errors import ConfigError, UsageError

BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hub:"
BUILTIN_CORPORA = ("python-docs",)
TEXT_UNITS = ("document", "paragraph", "line")

# TrainingArguments fields we refuse, each with the reason and what to use instead.
FORBIDDEN_TRAIN_KEYS = {
    "resume_from_checkpoint": "TrainingArguments(resume_from_checkpoint=...) is never read by Trainer.train() "
    "(training silently starts at step 0); use `gptresume train --resume auto|must|PATH` instead",
    "save_total_limit": "Trainer's rotation deletes old checkpoints before the new one is committed; "
    "use checkpoint.keep_last instead",
}
# Our defaults for TrainingArguments fields the user did not set.
TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "logging_steps": 10,
    "save_steps": 100,
    "report_to": "none",
}


@dataclass
class TokenizerConfig:
    name_or_path: str | None = None
    """Hub id or directory holding a saved tokenizer. Default: the model's own (model.name_or_path)."""
    train_vocab_size: int | None = None
    """Train a byte-level BPE tokenizer of this size on the training corpus, saved to RUN_DIR/tokenizer."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        if self.name_or_path and self.train_vocab_size:
            out.append(f"{prefix}: set either name_or_path or train_vocab_size, not both")
        if self.train_vocab_size is not None and self.train_vocab_size < 257:
            out.append(
                f"{prefix}.train_vocab_size: {self.train_vocab_size} is below 257 "
                "(256 byte symbols plus <|endoftext|>); use e.g. 8000"
            )
        return out


@dataclass
class ModelConfig:
    name_or_path: str | None = None
    """Pretrained model to fine-tune: a hub id such as `gpt2`, or a directory written by save_pretrained."""
    from_scratch: dict | None = None
    """Train a new GPT-2 from random weights; keys are transformers.GPT2Config fields (n_layer, n_embd, ...)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Where the tokenizer comes from."""
    resize_embeddings: bool = False
    """Allow resizing the model's token embedding when the tokenizer is larger than it (new rows are random)."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        if bool(self.name_or_path) == bool(self.from_scratch is not None):
            out.append(f"{prefix}: set exactly one of name_or_path (fine-tune) or from_scratch (new model)")
        if self.from_scratch is not None:
            out.extend(_gpt2_config_problems(self.from_scratch, f"{prefix}.from_scratch"))
            if not self.tokenizer.name_or_path and not self.tokenizer.train_vocab_size:
                out.append(
                    f"{prefix}.tokenizer: a from-scratch model needs a tokenizer: "
                    "set tokenizer.train_vocab_size (e.g. 8000) or tokenizer.name_or_path"
                )
        out.extend(self.tokenizer.problems(f"{prefix}.tokenizer"))
        return out


@dataclass
class DataConfig:
    source: str | list[str] = "builtin:python-docs"
    """`builtin:python-docs` (CPython's bundled documentation, no download), `hub:NAME` (a Hugging Face
    dataset id), or files: .txt, .jsonl/.json, .csv, .parquet paths or globs (one string or a list),
    relative to the current directory."""
    text_column: str = "text"
    """Column holding the text, for JSON Lines, CSV, Parquet and hub datasets."""
    text_unit: str = "document"
    """How .txt files split into documents (an EOS token goes after each): document (a file), paragraph, line."""
    hub_config: str | None = None
    """Configuration name of a hub dataset (e.g. wikitext-2-raw-v1)."""
    hub_split: str = "train"
    """Split of a hub dataset to train on."""
    block_size: int = 128
    """Tokens per training example: the token stream is packed into blocks of exactly this length."""
    validation_fraction: float = 0.05
    """Share of packed blocks held out for evaluation (0 disables evaluation)."""
    num_proc: int | None = None
    """Processes for tokenization (datasets.map num_proc); None tokenizes in this process."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        sources = [self.source] if isinstance(self.source, str) else list(self.source)
        if not sources or any(not s for s in sources):
            out.append(f"{prefix}.source: must name a corpus, a hub dataset or files")
        for s in sources:
            if s.startswith(BUILTIN_PREFIX) and s[len(BUILTIN_PREFIX):] not in BUILTIN_CORPORA:
                out.append(f"{prefix}.source: unknown built-in corpus {s!r}; available: "
                           + ", ".join(BUILTIN_PREFIX + c for c in BUILTIN_CORPORA))
        if len(sources) > 1 and any(s.startswith((BUILTIN_PREFIX, HUB_PREFIX)) for s in sources):
            out.append(f"{prefix}.source: a list may only hold file paths or globs")
        if self.text_unit not in TEXT_UNITS:
            out.append(f"{prefix}.text_unit: {self.text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
        if self.block_size < 2:
            out.append(f"{prefix}.block_size: must be at least 2 (got {self.block_size})")
        if not 0 <= self.validation_fraction < 1:
            out.append(f"{prefix}.validation_fraction: must be in [0, 1) (got {self.validation_fraction})")
        if self.num_proc is not None and self.num_proc < 1:
            out.append(f"{prefix}.num_proc: must be at least 1 or null (got {self.num_proc})")
        return out

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


@dataclass
class CheckpointConfig:
    keep_last: int | None = 3
    """Committed checkpoints to keep (oldest deleted first, only after a newer one is committed); null keeps all."""
    keep_best: bool = False
    """Also keep the checkpoint with the lowest eval loss, whatever keep_last says."""
    every_minutes: float | None = None
    """Also save a checkpoint when this many minutes have passed since the last save (beside save_steps)."""
    async_save: bool = False
    """Write checkpoints in a background thread: training pauses only to copy the state into CPU memory, the
    files are written, hashed and fsynced while it goes on, and the manifest commits them once they are durable.
    At most one save is in flight (the next waits); a stop or the end of training waits for it. Costs one extra
    copy of the weights and optimizer state in CPU memory. Single-process runs only (others save synchronously)."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        if self.keep_last is not None and self.keep_last < 1:
            out.append(f"{prefix}.keep_last: must be at least 1, or null to keep every checkpoint")
        if self.every_minutes is not None and self.every_minutes <= 0:
            out.append(f"{prefix}.every_minutes: must be positive, or null")
        return out


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    train: dict
    """transformers.TrainingArguments fields, same names; train.output_dir is the run directory."""
    checkpoint: CheckpointConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.train["output_dir"])

    def to_dict(self) -> dict:
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dict(self.train),
            "checkpoint": dataclasses.asdict(self.checkpoint),
        }

    def fingerprint(self) -> str:
        """Stable hash of the resolved config: equal configs give equal fingerprints on any machine."""
        return fingerprint_of(self.to_dict())

    def training_arguments(self, **extra):
        """The TrainingArguments this config describes (HF validates every value)."""
        from transformers import TrainingArguments

        return TrainingArguments(**{**self.train, **extra})


SECTIONS = {"model": ModelConfig, "data": DataConfig, "checkpoint": CheckpointConfig}


def fingerprint_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read CONFIG, apply `--set` overrides, validate everything and report all problems at once."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found; pass the path of a YAML file such as examples/demo.yaml")
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
    return config_from_dict(raw, source=str(path))


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
        problems.extend(errs or obj.problems(name))
        built[name] = obj
    train, errs = _build_train(raw.get("train") or {})
    if not errs:
        _default_evaluation(train, built["data"])
    problems.extend(errs or _training_arguments_problems(train))
    if problems:
        raise ConfigError(problems, source)
    return Config(model=built["model"], data=built["data"], train=train, checkpoint=built["checkpoint"])


def _unknown_key(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    elif len(valid) <= 12:
        hint = f"; valid keys: {', '.join(sorted(valid))}"
    else:
        hint = "; see the field names of transformers.TrainingArguments" if where == "train" else ""
    return f"{where}: unknown key {key!r}{hint}"


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
            problems.append(f"{prefix}.{key}: expected {_type_name(hint)}, got {value!r}")
            continue
        kwargs[key] = coerced
    return (cls(**kwargs) if not problems else cls()), problems


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
    train = dict(TRAIN_DEFAULTS)
    for key, value in raw.items():
        if key in FORBIDDEN_TRAIN_KEYS:
            problems.append(f"train.{key}: not accepted: {FORBIDDEN_TRAIN_KEYS[key]}")
            continue
        if key not in fields_:
            problems.append(_unknown_key(key, list(fields_), where="train"))
            continue
        if key in hints:
            ok, value = check_type(value, hints[key], strict=False)
            if not ok:
                problems.append(f"train.{key}: expected {_type_name(hints[key])}, got {raw[key]!r}")
                continue
        train[key] = value
    if not train.get("output_dir"):
        problems.append("train.output_dir: required; it is the run directory (e.g. runs/demo)")
    return train, problems


def _default_evaluation(train: dict, data: DataConfig) -> None:
    """Evaluate at every save when there is a validation split, unless the user chose otherwise."""
    if "eval_strategy" not in train:
        train["eval_strategy"] = "steps" if data.validation_fraction > 0 else "no"
    if train["eval_strategy"] == "steps" and "eval_steps" not in train:
        train["eval_steps"] = train.get("save_steps")


def _training_arguments_problems(train: dict) -> list[str]:
    from transformers import TrainingArguments

    try:
        TrainingArguments(**train)
    except Exception as e:  # HF raises ValueError/TypeError with its own explanation
        return [f"train: transformers.TrainingArguments rejected the values: {e}"]
    return []


def _gpt2_config_problems(values: dict, prefix: str) -> list[str]:
    from transformers import GPT2Config

    if not isinstance(values, dict):
        return [f"{prefix}: must be a mapping of GPT2Config fields"]
    defaults = GPT2Config().to_dict()
    out = []
    for key, value in values.items():
        if key in ("vocab_size", "bos_token_id", "eos_token_id"):
            out.append(f"{prefix}.{key}: set from the tokenizer; remove it")
        elif key not in defaults:
            out.append(_unknown_key(key, [k for k in defaults if not k.startswith("_")], where=prefix))
        elif isinstance(defaults[key], (int, float)) and not isinstance(defaults[key], bool):
            ok, _ = check_type(value, type(defaults[key]) | None)
            if not ok:
                out.append(f"{prefix}.{key}: expected a number, got {value!r}")
    return out


def check_type(value: Any, hint: Any, strict: bool = True) -> tuple[bool, Any]:
    """Is `value` (from YAML) acceptable for annotation `hint`? Returns (ok, value coerced where safe).

    YAML reads `5e-4` (no dot) as a string, so numeric strings are accepted for float fields.
    With strict=False, annotations we do not understand are accepted (HF validates them later).
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(hint)
        if value is None:
            return type(None) in args, value
        for arg in args:
            if arg is type(None):
                continue
            ok, coerced = check_type(value, arg, strict)
            if ok:
                return True, coerced
        return False, value
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, list):
            return False, value
        (item,) = typing.get_args(hint) or (Any,)
        results = [check_type(v, item, strict) for v in value]
        return all(ok for ok, _ in results), [v for _, v in results]
    if origin in (dict, typing.Dict):  # noqa: UP006
        return isinstance(value, dict), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, value
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict:
        return isinstance(value, dict), value
    if hint is type(None):
        return value is None, value
    if isinstance(hint, type) and issubclass(hint, str):  # str-valued enums such as IntervalStrategy
        return isinstance(value, str), value
    return (not strict), value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in typing.get_args(hint)]
        return " or ".join("null" if n == "NoneType" else n for n in names)
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically: temp file then rename)."""
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
