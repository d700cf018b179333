"""The config schema: one dataclass per concern (model, data, checkpoint) with a docstring per field and a
`problems()` check, and `Config`, the resolved whole. `train:` is any `transformers.TrainingArguments` field,
passed straight through (HF validates the values).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptresume.config.hf_fields import gpt2_config_fields
from gptresume.config.types import _unknown_key, check_type

BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hub:"
BUILTIN_CORPORA = ("python-docs",)
TEXT_UNITS = ("document", "paragraph", "line")
TOKEN_DTYPES = ("uint16", "uint32", "int32", "int64")  # of a flat token file (data.token_dtype)

# TrainingArguments fields we refuse, each with the reason and what to use instead.
FORBIDDEN_TRAIN_KEYS = {
    "resume_from_checkpoint": "TrainingArguments(resume_from_checkpoint=...) is never read by Trainer.train() "
    "(training silently starts at step 0); use `gptresume train --resume auto|must|PATH` instead",
    "save_total_limit": "Trainer's rotation deletes old checkpoints before the new one is committed; "
    "use checkpoint.keep_last instead",
    "hub_token": "a credential in the config would be copied into config.yaml and every checkpoint's manifest; "
    "log in with `hf auth login` or set HF_TOKEN in the environment instead",
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
    """Train a new model from random weights; keys are the fields of the config class of `model_type` (default
    gpt2: GPT2Config's n_layer, n_embd, ...; llama: LlamaConfig's hidden_size, num_hidden_layers, ...)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Where the tokenizer comes from."""
    resize_embeddings: bool = False
    """Allow resizing the model's token embedding when the tokenizer is larger than it (new rows are random)."""
    dtype: str | None = None
    """Weights' dtype when loading model.name_or_path (`float32`, `bfloat16`, `float16`, `auto`); None: float32."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of model.name_or_path; pin a commit so that a resume of a LoRA run
    reads the same base weights."""
    trust_remote_code: bool = False
    """Run the modelling code of model.name_or_path's repository (executes code from it). Never passed when
    loading from gptresume's own checkpoints and run directories unless set here."""
    attn_implementation: str | None = None
    """`eager`, `sdpa`, `flash_attention_2`, ...; None: Transformers' default (sdpa where supported)."""
    peft: dict | None = None
    """LoRA adapters through the `peft` library: peft.LoraConfig fields by their own names (r, lora_alpha,
    lora_dropout, target_modules, ...). Only the adapters train; checkpoints hold the adapters."""

    def problems(self, prefix: str, transformers: bool = True) -> list[str]:
        """`transformers=False` leaves out the peft keys (checked against peft.LoraConfig) and the from_scratch keys
        of a model type other than GPT-2 (checked against its config class); GPT-2's are checked in either round."""
        out = []
        if bool(self.name_or_path) == bool(self.from_scratch is not None):
            out.append(f"{prefix}: set exactly one of name_or_path (fine-tune) or from_scratch (new model)")
        if self.dtype is not None and self.dtype not in MODEL_DTYPES:
            out.append(f"{prefix}.dtype: {self.dtype!r} is not one of {', '.join(MODEL_DTYPES)}")
        if self.peft is not None:
            if not isinstance(self.peft, dict):
                out.append(f"{prefix}.peft: must be a mapping of peft.LoraConfig fields (r, lora_alpha, ...)")
            elif self.from_scratch is not None:
                out.append(f"{prefix}.peft: LoRA adapts a pretrained model; with from_scratch the base weights are "
                           "random and never saved (adapter checkpoints hold only the adapters); use "
                           "model.name_or_path, or remove model.peft")
            else:
                from gptresume.config.values import lora_value_problems

                bad = lora_value_problems(self.peft, f"{prefix}.peft")
                out.extend(bad)
                if transformers and not bad:
                    from gptresume.config.integrations import lora_config_problems

                    out.extend(lora_config_problems(self.peft, f"{prefix}.peft"))
        if self.from_scratch is not None:
            out.extend(_from_scratch_config_problems(self.from_scratch, f"{prefix}.from_scratch", transformers))
            if not self.tokenizer.name_or_path and not self.tokenizer.train_vocab_size:
                out.append(
                    f"{prefix}.tokenizer: a from-scratch model needs a tokenizer: "
                    "set tokenizer.train_vocab_size (e.g. 8000) or tokenizer.name_or_path"
                )
        out.extend(self.tokenizer.problems(f"{prefix}.tokenizer"))
        return out


# Sized on real corpora (issue 26): 20 batches of Transformers' default eval batch (8 blocks) per evaluation keep
# evaluation under 7% of the training between evaluations at gptresume's defaults (save_steps 100, batch 8; about
# 1% with examples/gpt2-finetune.yaml); nanoGPT evaluates eval_iters=200 batches, litgpt eval.max_iters=100.
DEFAULT_EVAL_BATCHES = 20
# Held-out blocks at most: enough for the default evaluation on 8 processes (20 x 8 x 8 = 1,280 blocks) and for a
# whole-split evaluation on request, without holding 5% of a 10 GB corpus out of training.
DEFAULT_VALIDATION_MAX_BLOCKS = 2000


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
    """Share of packed blocks held out for evaluation, at most validation_max_blocks (0 disables evaluation). A
    streamed source, whose length is unknown, holds out its first validation_max_blocks blocks when it is above 0."""
    validation_max_blocks: int | None = DEFAULT_VALIDATION_MAX_BLOCKS
    """Most blocks held out for evaluation: a 10 GB corpus holds out this many blocks, not 5% of it; a streamed
    source holds out exactly this many from its start. null: no cap (validation_fraction alone). A run started
    before this field existed keeps no cap when it resumes (see VERSIONED_DEFAULTS)."""
    eval_batches: int | None = DEFAULT_EVAL_BATCHES
    """Batches per evaluation (train.per_device_eval_batch_size blocks on each process): always the first
    eval_batches x batch x processes blocks of the validation split, so eval losses compare across a run and its
    resumes. null: the whole split every time. A run started before this field keeps the whole split."""
    num_proc: int | None = None
    """Processes that tokenize; None: the usable cores for 64 MB of text or more, else this process alone."""
    token_dtype: str | None = None
    """dtype of a flat token file source (`.bin`, e.g. nanoGPT's uint16 train.bin): uint16, uint32, int32, int64."""
    validation_source: str | list[str] | None = None
    """Evaluate on this source instead of a held-out fraction (files, globs, a .bin, a saved dataset, or
    `hub:NAME` with data.validation_hub_split); needs validation_fraction: 0."""
    validation_hub_split: str | None = None
    """Split of a `hub:` validation_source (default: validation)."""
    max_train_tokens: int | None = None
    """Read at most this many tokens of the training source (the stream is cut there, before any split)."""
    streaming: bool | None = None
    """Stream the training source (hub datasets, local text/jsonl/parquet files): read, tokenized and packed on
    the fly, shuffled through a buffer; the position is saved in each checkpoint. Needs train.max_steps."""
    shuffle_buffer: int | None = None
    """Blocks in a streaming run's shuffle buffer (default 1000)."""
    stream_parts: int | None = None
    """Parts a streamed source is split into, each read and packed by one process (default: the process count of the
    run's first start). Fixed for the run's life; a resume may use fewer processes, or as many as there are parts."""

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
        if self.validation_max_blocks is not None and self.validation_max_blocks < 1:
            out.append(f"{prefix}.validation_max_blocks: must be at least 1, or null for no cap "
                       f"(got {self.validation_max_blocks}); validation_fraction: 0 holds nothing out")
        if self.eval_batches is not None and self.eval_batches < 1:
            out.append(f"{prefix}.eval_batches: must be at least 1, or null for the whole validation split "
                       f"(got {self.eval_batches}); train.eval_strategy: \"no\" turns evaluation off")
        out.extend(_pretokenized_problems(self, prefix))
        return out

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


def _pretokenized_problems(cfg: DataConfig, prefix: str) -> list[str]:
    out = []
    if cfg.token_dtype is not None and cfg.token_dtype not in TOKEN_DTYPES:
        out.append(f"{prefix}.token_dtype: {cfg.token_dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
    if cfg.validation_source is not None:
        vs = [cfg.validation_source] if isinstance(cfg.validation_source, str) else list(cfg.validation_source)
        if not vs or any(not v for v in vs) or any(v.startswith(BUILTIN_PREFIX) for v in vs):
            out.append(f"{prefix}.validation_source: must name files, a glob, a .bin, a saved dataset or hub:NAME")
        if cfg.validation_fraction:
            out.append(f"{prefix}.validation_fraction: set it to 0 with validation_source (the validation blocks "
                       f"come from {cfg.validation_source!r}, none are held out of the training source)")
    if cfg.validation_hub_split is not None and not (isinstance(cfg.validation_source, str)
                                                 and cfg.validation_source.startswith(HUB_PREFIX)):
        out.append(f"{prefix}.validation_hub_split: only for a hub:NAME validation_source")
    if cfg.streaming:
        if (cfg.validation_fraction or cfg.validation_source is not None) and cfg.validation_max_blocks is None:
            out.append(f"{prefix}.validation_max_blocks: a streamed source's length is unknown, so its validation "
                       "blocks are the first validation_max_blocks blocks of the "
                       + ("validation_source" if cfg.validation_source is not None else "stream")
                       + "; set a number of blocks (e.g. 2000), or validation_fraction: 0 for no evaluation")
        if cfg.token_dtype is not None or cfg.max_train_tokens is not None:
            out.append(f"{prefix}.streaming: token_dtype and max_train_tokens apply to packed sources only")
        if any(s.startswith(BUILTIN_PREFIX) for s in cfg.sources):
            out.append(f"{prefix}.streaming: the built-in corpus is small; train it without streaming")
    if cfg.stream_parts is not None and (not cfg.streaming or cfg.stream_parts < 1):
        out.append(f"{prefix}.stream_parts: must be at least 1, and only with streaming: true (got "
                   f"{cfg.stream_parts})")
    if cfg.shuffle_buffer is not None and cfg.shuffle_buffer < 1:
        out.append(f"{prefix}.shuffle_buffer: must be at least 1 (got {cfg.shuffle_buffer})")
    if cfg.max_train_tokens is not None and cfg.max_train_tokens < cfg.block_size:
        out.append(f"{prefix}.max_train_tokens: {cfg.max_train_tokens} is less than one block "
                   f"(data.block_size={cfg.block_size}); raise it or remove it")
    return out


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
    copy of the weights and optimizer state in CPU memory. One process or several (DDP: every rank's writer
    finishes and rank 0 commits); DeepSpeed and FSDP save synchronously, with a warning saying why."""
    remote: str | None = None
    """An fsspec URL (s3://bucket/runs/demo, gs://..., az://..., file:///...) every committed checkpoint is
    uploaded to in the background (files first, manifest last, then verified); a start without a usable local
    checkpoint resumes from the newest valid one there. Checked (write, read back, delete a probe) before training."""
    remote_options: dict | None = None
    """fsspec options of the remote's file system, e.g. {endpoint_url: http://127.0.0.1:9000} for an
    S3-compatible server. Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from here."""
    remote_keep_last: int | None = None
    """Remote checkpoints to keep (older ones deleted only after a newer upload is verified); null keeps all."""
    remote_wait_seconds: float = 120.0
    """At the end of training or after a stop, wait up to this long for pending uploads before exiting; what is
    still pending is uploaded by the next start of the run."""
    shared_filesystem: bool = True
    """Whether every node of a multi-node run sees the same train.output_dir. false (with remote): each node keeps
    its own run directory on its own disk, uploads its part of every checkpoint, and global rank 0 commits the
    checkpoint in the bucket once every node's part is there; every resume goes through the bucket's commit. A
    start checks it (a probe file) and refuses a setting that contradicts the disks."""

    every: str | None = None
    """`auto`: save when Daly's optimum interval has passed since the last save, from the measured pause per save
    and the run's own rate of interruptions (health/interval.py); train.save_steps is then not used."""
    expected_interruptions_per_hour: float = 0.5
    """With every: auto, the prior rate per training hour of interruptions that lose work (kills, crashes,
    preemptions without a SIGTERM; a graceful stop commits first), pooled with the rate the run's history shows
    (weighted as one hour of observation)."""
    auto_min_seconds: float = 10.0
    """With every: auto, the shortest interval between saves."""
    auto_max_seconds: float = 3600.0
    """With every: auto, the longest interval between saves."""
    ledger: bool = False
    """Record which samples (block indices; streaming: block identities) each optimizer step trained, in
    RUN_DIR/ledger/ and in each checkpoint; `gptresume ledger RUN_DIR` checks every sample of each completed epoch
    was trained exactly once."""

    def problems(self, prefix: str) -> list[str]:
        from gptresume.remote.url import remote_problems, shared_filesystem_problems

        out = remote_problems(self.remote, self.remote_options, self.remote_keep_last, prefix)
        out += shared_filesystem_problems(self.shared_filesystem, self.remote, prefix)
        if self.remote_wait_seconds < 0:
            out.append(f"{prefix}.remote_wait_seconds: must be zero or more")
        if self.keep_last is not None and self.keep_last < 1:
            out.append(f"{prefix}.keep_last: must be at least 1, or null to keep every checkpoint")
        if self.every_minutes is not None and self.every_minutes <= 0:
            out.append(f"{prefix}.every_minutes: must be positive, or null")
        if self.every not in (None, "auto"):
            out.append(f"{prefix}.every: {self.every!r} is not allowed: use auto, or null (train.save_steps)")
        if self.expected_interruptions_per_hour < 0:
            out.append(f"{prefix}.expected_interruptions_per_hour: must be zero or more")
        if not 0 < self.auto_min_seconds <= self.auto_max_seconds:
            out.append(f"{prefix}.auto_min_seconds / auto_max_seconds: need 0 < auto_min_seconds <= auto_max_seconds")
        return out


HEALTH_ACTIONS = ("stop", "rollback")


@dataclass
class SpikeConfig:
    enabled: bool = False
    """Watch the training loss for spikes (off by default)."""
    window: int = 100
    """Steps of recent loss the mean and standard deviation are taken over."""
    std: float | None = 6.0
    """A loss this many standard deviations above the window's mean is suspect (null: use factor only)."""
    factor: float | None = None
    """A loss above factor x the window's mean is suspect (null: use std only; both: above both)."""
    confirm: int = 3
    """Consecutive suspect steps that make a spike (fewer are outliers and ignored); no checkpoint is committed
    while a step is suspect."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        if self.window < 2:
            out.append(f"{prefix}.window: must be at least 2")
        if self.std is None and self.factor is None:
            out.append(f"{prefix}: set std or factor (or both)")
        if self.std is not None and self.std <= 0:
            out.append(f"{prefix}.std: must be positive")
        if self.factor is not None and self.factor <= 1:
            out.append(f"{prefix}.factor: must be above 1")
        if self.confirm < 1:
            out.append(f"{prefix}.confirm: must be at least 1")
        return out


@dataclass
class HealthConfig:
    on_nan: str = "stop"
    """A NaN/inf training loss or gradient norm: `stop` (exit 1, naming the newest good checkpoint, which is kept)
    or `rollback` (resume from a good checkpoint automatically). Either way no checkpoint of it is committed."""
    on_spike: str = "rollback"
    """A confirmed loss spike (health.spike.enabled): rollback or stop."""
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    """When a loss counts as a spike."""
    rollback_steps: int = 0
    """A rollback resumes from the newest verified checkpoint at least this many steps before the event."""
    skip_batches: int = 0
    """Batches (optimizer steps of data) of the stream to skip after the rollback checkpoint."""
    max_rollbacks: int = 3
    """Rollbacks per run; one more event stops the run (exit 1)."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        for name in ("on_nan", "on_spike"):
            if getattr(self, name) not in HEALTH_ACTIONS:
                out.append(f"{prefix}.{name}: {getattr(self, name)!r} is not one of {', '.join(HEALTH_ACTIONS)}")
        for name in ("rollback_steps", "skip_batches", "max_rollbacks"):
            if getattr(self, name) < 0:
                out.append(f"{prefix}.{name}: must be zero or more")
        if self.spike.enabled:
            out.extend(self.spike.problems(f"{prefix}.spike"))
        return out


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    train: dict
    """transformers.TrainingArguments fields, same names; train.output_dir is the run directory."""
    checkpoint: CheckpointConfig
    health: HealthConfig = field(default_factory=HealthConfig)
    defaulted: frozenset = field(default_factory=frozenset, compare=False, repr=False)
    """The VERSIONED_DEFAULTS fields the config file did not set (config/load.py): resolved against the resumed
    checkpoint's recorded config by `resolve_versioned_defaults`. Empty for a Config built in code: every value as
    given."""

    def resolve_versioned_defaults(self, recorded: dict | None) -> dict:
        """Give each field in `defaulted` the value the run it continues recorded: `recorded` is the config of the
        checkpoint being resumed (None: a new run, which gets the current defaults). Returns the resolved config
        (`to_dict`). Idempotent: the same `recorded` always gives the same values."""
        for name in self.defaulted:
            section_name, key = name.split(".", 1)
            section = getattr(self, section_name)
            current = type(section).__dataclass_fields__[key].default
            value = current if recorded is None else recorded_value(recorded, name)
            setattr(section, key, value)
        return self.to_dict()

    @property
    def run_dir(self) -> Path:
        return Path(self.train["output_dir"])

    def to_dict(self) -> dict:
        return {
            "model": {k: v for k, v in dataclasses.asdict(self.model).items()
                      if not (k in OPTIONAL_MODEL_FIELDS and v == OPTIONAL_MODEL_FIELDS[k])},
            "data": {k: v for k, v in dataclasses.asdict(self.data).items()
                     if not (k in OPTIONAL_DATA_FIELDS and v == OPTIONAL_DATA_FIELDS[k])},
            "train": dict(self.train),
            "checkpoint": {k: v for k, v in dataclasses.asdict(self.checkpoint).items()
                           if not (k in OPTIONAL_CHECKPOINT_FIELDS and v == OPTIONAL_CHECKPOINT_FIELDS[k])},
            # the health section (issue 16) likewise: only when it differs from the defaults
            **({"health": dataclasses.asdict(self.health)} if self.health != HealthConfig() else {}),
        }

    def fingerprint(self) -> str:
        """Stable hash of the resolved config: equal configs give equal fingerprints on any machine."""
        return fingerprint_of(self.to_dict())

    def training_arguments(self, **extra):
        """The TrainingArguments this config describes (HF validates every value)."""
        from transformers import TrainingArguments

        return TrainingArguments(**{**self.train, **extra})


# model fields added after runs existed (issue 18): in the resolved config only when set, so a run that does not
# use them keeps the config (and fingerprint) its checkpoints recorded, and resumes without a "change".
OPTIONAL_MODEL_FIELDS = {"dtype": None, "revision": None, "trust_remote_code": False, "attn_implementation": None,
                         "peft": None}
# checkpoint fields every run's config records; every field added since (checkpoint.remote, issue 17; every: auto
# and its bounds, issue 16; ledger, issue 27; any new option) the same way as above: only when set, at its declared
# default.
RECORDED_CHECKPOINT_FIELDS = ("keep_last", "keep_best", "every_minutes", "async_save")
OPTIONAL_CHECKPOINT_FIELDS = {f.name: f.default for f in dataclasses.fields(CheckpointConfig)
                              if f.name not in RECORDED_CHECKPOINT_FIELDS}
# data fields added after runs existed (issue 15), the same way: in the resolved config only when set.
OPTIONAL_DATA_FIELDS = {"token_dtype": None, "validation_source": None, "validation_hub_split": None,
                        "max_train_tokens": None, "streaming": None, "shuffle_buffer": None,
                        "stream_parts": None,  # issue 27
                        # issue 26: absent from the recorded config means no cap / the whole split (their legacy
                        # values), so a run that chose those records the config it recorded before
                        "validation_max_blocks": None, "eval_batches": None}
# Defaults that changed after runs existed (issue 26): field -> its value before the change (its "legacy" value,
# omitted from the resolved config). A field here that the config does not set resolves, on a resume, to what the
# resumed checkpoint's recorded config holds: the legacy value when that config predates the field. A new run gets
# the field's current default and records it. So the split a run trains on, and its eval losses, never change
# under it because a default changed; the rule lives here, applied by `Config.resolve_versioned_defaults`.
VERSIONED_DEFAULTS = {"data.validation_max_blocks": None, "data.eval_batches": None}
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MODEL_TYPE = "gpt2"
SECTIONS = {"model": ModelConfig, "data": DataConfig, "checkpoint": CheckpointConfig, "health": HealthConfig}


def recorded_value(recorded: dict, name: str):
    """A VERSIONED_DEFAULTS field's value in a recorded (checkpoint manifest) config: the value there, its legacy
    value when the config predates the field (or holds something no version wrote)."""
    section_name, key = name.split(".", 1)
    section = recorded.get(section_name) if isinstance(recorded, dict) else None
    legacy = VERSIONED_DEFAULTS[name]
    if not isinstance(section, dict) or key not in section:
        return legacy
    value = section[key]
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    return value if ok else legacy


def data_config_of_record(values: dict) -> DataConfig:
    """The DataConfig a recorded config's `data:` section describes (tools reading a run): unknown keys dropped,
    and a VERSIONED_DEFAULTS field the record lacks at its legacy value, not today's default."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    given = {k: v for k, v in (values or {}).items() if k in names}
    for name in VERSIONED_DEFAULTS:
        section_name, key = name.split(".", 1)
        if section_name == "data":
            given[key] = recorded_value({"data": values or {}}, name)
    return DataConfig(**given)


def fingerprint_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _from_scratch_config_problems(values: dict, prefix: str, transformers: bool = True) -> list[str]:
    """from_scratch keys against the config class of its `model_type` (GPT2Config by default: its fields are
    checked in, config/hf_fields.py, so a GPT-2's keys are checked without importing transformers). Without
    `transformers`, another model type is left for the round that imports it."""
    if not isinstance(values, dict):
        return [f"{prefix}: must be a mapping of config fields (GPT2Config's by default)"]
    model_type = values.get("model_type", DEFAULT_MODEL_TYPE)
    defaults = gpt2_config_fields() if model_type == DEFAULT_MODEL_TYPE else None
    if defaults is None:
        if not transformers:
            return []
        from transformers import AutoConfig, CONFIG_MAPPING

        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
            return [_unknown_key(model_type, list(CONFIG_MAPPING.keys()), where=f"{prefix}.model_type")
                    .replace("unknown key", "unknown model type")]
        defaults = AutoConfig.for_model(model_type).to_dict()
    out = []
    for key, value in values.items():
        if key == "model_type":
            continue
        if key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
            out.append(f"{prefix}.{key}: set from the tokenizer; remove it")
        elif key not in defaults:
            out.append(_unknown_key(key, [k for k in defaults if not k.startswith("_")], where=prefix))
        elif isinstance(defaults[key], (int, float)) and not isinstance(defaults[key], bool):
            ok, _ = check_type(value, type(defaults[key]) | None)
            if not ok:
                out.append(f"{prefix}.{key}: expected a number, got {value!r}")
    if out or model_type == DEFAULT_MODEL_TYPE:
        return out  # GPT-2's sizes are checked without transformers (config/values.py)
    from transformers import AutoConfig

    given = {k: v for k, v in values.items() if k != "model_type"}
    try:
        config = AutoConfig.for_model(model_type, **given)
    except Exception as e:  # the config class's own validation: its message names the field
        return [f"{prefix}: {model_type} config rejected the values: {' '.join(str(e).split())[:300]}"]
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        out.append(f"{prefix}.hidden_size: {hidden} is not a multiple of num_attention_heads ({heads}); change one "
                   "of them")
    return out
