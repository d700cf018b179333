"""What changed between the config a checkpoint was trained with and the config of a resume, and what each
change means for the resumed run.

Every changed field falls into one class. The class decides whether the resume needs `--allow-change` and
how the change is applied:

  free       logging / save cadence, retention, workers: applied to the restored trainer state, noted; eval
             cadence too when the model has no dropout (with dropout on, each evaluation draws from the global
             RNG, which moves every later dropout mask: then eval cadence is an `other` change)
  optimizer  learning rate, weight decay, Adam betas / eps, gradient clipping: with --allow-change, written into
             the restored optimizer and scheduler so the very next step uses the new value
  schedule   max_steps, epochs, warmup, scheduler type: with --allow-change, re-planned so the learning rate
             is continuous at the resume step (schedule.py)
  batch      per-device batch, accumulation, process count: the same global batch resumes without a flag
             (same samples per step); a different one needs --allow-change and continues by samples consumed
  data       the data source and its packed tokens: with --allow-change data, continues at the same sample
             offset in the new data
  never      block size, tokenizer, model architecture, seed: the checkpoint cannot continue under them
  other      any other TrainingArguments field: with --allow-change KEY, handed to Trainer as it is
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptresume.errors import UsageError

FREE, OPTIMIZER, SCHEDULE, BATCH, DATA, NEVER, OTHER = (
    "free", "optimizer", "schedule", "batch", "data", "never", "other")
ALLOWABLE_CLASSES = (OPTIMIZER, SCHEDULE, BATCH, DATA)

# Fields that change what is logged, evaluated or kept, never what is trained.
FREE_KEYS = {
    "train.output_dir", "train.logging_steps", "train.logging_strategy", "train.logging_first_step",
    "train.logging_dir", "train.eval_steps", "train.eval_strategy", "train.eval_delay", "train.eval_on_start",
    "train.per_device_eval_batch_size", "train.eval_accumulation_steps", "train.save_steps",
    "train.save_strategy", "train.report_to", "train.run_name", "train.project", "train.disable_tqdm",
    "train.log_level", "train.log_level_replica", "train.dataloader_num_workers",
    "train.dataloader_pin_memory", "train.dataloader_persistent_workers", "train.dataloader_prefetch_factor",
    "train.skip_memory_metrics", "data.num_proc",
    # how many validation blocks each evaluation reads: the model is in eval mode (no dropout) and the DataLoader
    # draws one seed per evaluation whatever its length, so training is the same (an eval-cadence change is not)
    "data.eval_batches",
}
FREE_PREFIXES = ("checkpoint.", "health.")
# How often evaluation runs: free without dropout; with dropout each evaluation's DataLoader draws a seed from the
# global torch RNG (torch 2.13 `_BaseDataLoaderIter.__init__`), which moves every later dropout mask.
EVAL_CADENCE_KEYS = {"train.eval_steps", "train.eval_strategy", "train.eval_delay", "train.eval_on_start"}
EVAL_WITH_DROPOUT = ("with dropout on, each evaluation draws from the global RNG and moves every later dropout "
                     "mask, so the eval cadence changes training")

# TrainingArguments field -> how the resumed optimizer gets it.
OPTIMIZER_KEYS = {
    "train.learning_rate": "param groups' lr and the scheduler's base learning rates",
    "train.weight_decay": "weight_decay of the param groups that decay",
    "train.adam_beta1": "betas[0] of every param group",
    "train.adam_beta2": "betas[1] of every param group",
    "train.adam_epsilon": "eps of every param group",
    "train.max_grad_norm": "gradient clipping of the next steps",
}
SCHEDULE_KEYS = {"train.max_steps", "train.num_train_epochs", "train.warmup_steps", "train.warmup_ratio",
                 "train.lr_scheduler_type", "train.lr_scheduler_kwargs"}
BATCH_KEYS = {"train.per_device_train_batch_size", "train.gradient_accumulation_steps", "world_size"}
DATA_KEYS = {"data.source", "data.text_column", "data.text_unit", "data.hub_config", "data.hub_split",
             "data.validation_fraction", "data.token_dtype", "data.validation_source", "data.validation_hub_split",
             "data.max_train_tokens", "data.validation_max_blocks", "data"}

# Why these can never change under a checkpoint.
NEVER_REASONS = {
    "data.block_size": "the checkpoint's data position counts blocks of the old size; the packed samples would "
                       "be different blocks (start a new run, fine-tuning from this one's final/ model)",
    "model.": "the checkpoint's weights and optimizer state belong to the old model and tokenizer (start a new "
              "run with model.name_or_path set to this run's final/ or an export to fine-tune from it)",
    "train.seed": "the data order and dropout masks of the trained steps came from the old seed; the RNG "
                  "state in the checkpoint continues that stream, a new seed cannot",
    "train.data_seed": "the data order of the current epoch came from the old data_seed",
    "data.streaming": "the checkpoint's data position is a sample count (packed) or a reader state (streaming); "
                      "one cannot become the other",
    "data.shuffle_buffer": "the streamed blocks in the checkpoint's shuffle buffer, and their order, depend on it",
    "data.stream_parts": "the stream's parts and the identity of their blocks were fixed when the run started",
}


@dataclass
class Change:
    """One changed field: its class (`kind`), whether the resume may apply it, and a note for people. Decisions
    read `kind`, `allowed` and `equivalent`, never the note's wording."""

    key: str
    old: object
    new: object
    kind: str = OTHER
    allowed: bool = False
    note: str = ""
    old_default: bool = False
    """`old` is the declared default of a field the checkpoint's record leaves out (resume/effective.py)."""
    new_default: bool = False
    """`new` is the declared default of a field the current config leaves out."""
    equivalent: bool = False
    """The new value trains the same samples per step (a batch change with the same global batch) or the same
    tokens (a data change with the same packed tokens): the data position carries over as it is, and a streaming
    run may resume under it."""

    @property
    def refused(self) -> bool:
        return self.kind != FREE and not self.allowed


def classify(key: str) -> str:
    if key in FREE_KEYS or key.startswith(FREE_PREFIXES):
        return FREE
    if key in OPTIMIZER_KEYS:
        return OPTIMIZER
    if key in SCHEDULE_KEYS:
        return SCHEDULE
    if key in BATCH_KEYS:
        return BATCH
    if key in DATA_KEYS:
        return DATA
    if never_reason(key):
        return NEVER
    return OTHER


def never_reason(key: str) -> str | None:
    for prefix, reason in NEVER_REASONS.items():
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return reason
    return None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("from_scratch", "lr_scheduler_kwargs"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train_value(config: dict, name: str):
    """A train.* value as Trainer sees it: the config's, else TrainingArguments' default."""
    train = config.get("train", {})
    if name in train and train[name] is not None:
        return train[name]
    from transformers import TrainingArguments

    for f in dataclasses.fields(TrainingArguments):
        if f.name == name:
            return f.default_factory() if f.default is dataclasses.MISSING else f.default
    raise KeyError(name)


def global_batch(config: dict, world_size: int) -> int:
    return (int(train_value(config, "per_device_train_batch_size"))
            * int(train_value(config, "gradient_accumulation_steps")) * int(world_size))


def config_changes(old: dict, new: dict, old_world: int = 1, new_world: int = 1, old_version: str | None = None,
                   new_version: str | None = None) -> list[Change]:
    """Every differing field, classified, comparing the values the runs use: a `train` field one side leaves out is
    the default declared by the Transformers release that wrote it (`old_version` / `new_version`, None: the
    installed one; resume/effective.py). The process count is compared as the pseudo-field `world_size`.
    Eval cadence is classified free here; `eval_cadence_with_dropout` re-classifies it once the model is known."""
    defaulted: tuple[set, set] = (set(), set())
    if isinstance(old.get("train"), dict) and isinstance(new.get("train"), dict):
        from gptresume.resume.effective import effective_train

        old_train, new_train, *defaulted = effective_train(old["train"], new["train"], old_version, new_version)
        old, new = {**old, "train": old_train}, {**new, "train": new_train}
    a, b = _flatten(old), _flatten(new)
    old_defaulted, new_defaulted = ({f"train.{name}" for name in names} for names in defaulted)
    changes = [Change(k, a.get(k), b.get(k), classify(k), old_default=k in old_defaulted,
                      new_default=k in new_defaulted)
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if old_world != new_world:
        changes.append(Change("world_size", old_world, new_world, BATCH))
    if any(c.kind == BATCH for c in changes):
        old_batch, new_batch = global_batch(old, old_world), global_batch(new, new_world)
        for c in changes:
            if c.kind == BATCH and old_batch == new_batch:
                c.allowed = c.equivalent = True
                c.note = f"same global batch ({new_batch}): same samples per step"
            elif c.kind == BATCH:
                c.note = f"global batch {old_batch} -> {new_batch}"
    return changes


def eval_cadence_with_dropout(changes: list[Change], allowed: set[str]) -> None:
    """With dropout on, a changed eval cadence changes training: it becomes an `other` change, refused unless
    allowed like any other training change."""
    for c in changes:
        if c.key in EVAL_CADENCE_KEYS and c.kind == FREE:
            c.kind, c.note, c.allowed = OTHER, EVAL_WITH_DROPOUT, c.key in allowed


def allow_keys(requested: list[str], known_keys: set[str], where: str = "--allow-change {}") -> set[str]:
    """Expand --allow-change values (a field, its short name, or a class) into full field names.

    Refuses names that are unknown or can never change, so a typo cannot silently allow nothing. `where` names a
    value in the refusal (`--allow-change {}` for the CLI, `gptresume.train(allow_change=[{!r}])` for Python)."""
    allowed: set[str] = set()
    groups = {OPTIMIZER: set(OPTIMIZER_KEYS), SCHEDULE: SCHEDULE_KEYS, BATCH: BATCH_KEYS, DATA: DATA_KEYS}
    for item in requested:
        name = item.strip()
        if name in groups:
            allowed |= groups[name]
            continue
        candidates = [name] if "." in name or name in ("world_size", "data") else [f"train.{name}", f"data.{name}"]
        full = next((c for c in candidates if c in known_keys or classify(c) != OTHER or _is_train_field(c)), None)
        if full is None:
            raise UsageError(f"{where.format(name)}: no such config field; give a field such as learning_rate, "
                             f"train.max_steps or data.source, or a class: {', '.join(ALLOWABLE_CLASSES)}")
        reason = never_reason(full)
        if reason:
            raise UsageError(f"{where.format(name)}: {full} can never change on resume: {reason}")
        allowed.add(full)
    return allowed


def _is_train_field(key: str) -> bool:
    if not key.startswith("train."):
        return False
    from transformers import TrainingArguments

    return any(f.name == key.removeprefix("train.") for f in dataclasses.fields(TrainingArguments))


def apply_allowed(changes: list[Change], allowed: set[str]) -> None:
    for c in changes:
        if c.kind in (OPTIMIZER, SCHEDULE, BATCH, DATA, OTHER) and c.key in allowed:
            c.allowed = True


ACTIONS = {
    FREE: "applied (does not change training)",
    OPTIMIZER: "applied to the restored optimizer",
    SCHEDULE: "schedule re-planned from the resume step",
    BATCH: "continues by samples consumed",
    DATA: "continues at the same sample offset",
    OTHER: "applied as is (Trainer)",
}


def _action(c: Change) -> str:
    if c.kind == NEVER:
        return "NEVER: " + (never_reason(c.key) or "")
    if c.refused:
        text = f"REFUSED (--allow-change {'data' if c.kind == DATA else c.key.removeprefix('train.')})"
    elif c.equivalent:
        text = "ok"
    else:
        text = ACTIONS[c.kind]
    return f"{text}; {c.note}" if c.note else text


def format_changes(changes: list[Change]) -> str:
    rows = [("field", "checkpoint", "now", "class", "on resume")] + [
        (key, _short(old) + _default_mark(c.old_default and key == c.key),
         _short(new) + _default_mark(c.new_default and key == c.key), c.kind, _action(c))
        for c in changes for key, old, new in _per_key(c)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)


def _per_key(c: Change) -> list[tuple[str, object, object]]:
    """A change of a mapping (model.from_scratch, lr_scheduler_kwargs) as one row per differing key, so
    `model.from_scratch.n_layer 2 -> 4` shows instead of two dicts cut at 40 characters. Nested mappings go on
    down; a key only one side has shows `None` on the other (as in the flat rows)."""
    if not isinstance(c.old, dict) and not isinstance(c.new, dict):
        return [(c.key, c.old, c.new)]
    old, new = c.old if isinstance(c.old, dict) else {}, c.new if isinstance(c.new, dict) else {}
    if not old and not new or (not isinstance(c.old, dict) and c.old is not None) or (
            not isinstance(c.new, dict) and c.new is not None):
        return [(c.key, c.old, c.new)]  # a mapping against a scalar: one row, as it is
    rows = []
    for k in sorted(set(old) | set(new), key=str):
        if old.get(k) != new.get(k):
            rows.extend(_per_key(Change(f"{c.key}.{k}", old.get(k), new.get(k), c.kind)))
    return rows or [(c.key, c.old, c.new)]


def _default_mark(defaulted: bool) -> str:
    return " (default)" if defaulted else ""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def refusal_hint(changes: list[Change]) -> str:
    refused = [c for c in changes if c.refused]
    if any(c.kind == NEVER for c in refused):
        return ("Fields marked NEVER cannot change under this checkpoint: restore them, or start a new run with "
                "another train.output_dir.")
    flags = sorted({"data" if c.kind == DATA else c.key.removeprefix("train.") for c in refused})
    return ("To resume with these changes, add " + " ".join(f"--allow-change {f}" for f in flags)
            + f" (Python: gptresume.train(trainer, allow_change={flags!r})); to resume exactly, restore the "
            "original values.")
