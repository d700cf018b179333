"""Model and tokenizer: a pretrained model through `from_pretrained`, or a new GPT-2 and a BPE tokenizer
trained on the corpus. Everything loads through the real HF paths; only the location differs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from gptresume.config import ModelConfig
from gptresume.errors import UsageError
from gptresume.rundir import TOKENIZER_DIR  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else that is not an existing directory is a missing path."""
    return os.path.isdir(name) or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def check_model_source(name_or_path: str, field: str) -> None:
    """Fail early (before any data work) when a local model or tokenizer directory is missing."""
    if looks_like_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise UsageError(f"{field}: directory {name_or_path!r} does not exist; give a directory written by "
                         "save_pretrained, or a hub id such as gpt2")


def hub_names(cfg) -> list[str]:
    """The hub ids a config loads from the hub (model, tokenizer, `hub:` dataset); local directories excluded."""
    from gptresume.config import HUB_PREFIX

    names = [n for n in (cfg.model.name_or_path, cfg.model.tokenizer.name_or_path) if n and not looks_like_path(n)]
    names += [s[len(HUB_PREFIX):] for s in cfg.data.sources if s.startswith(HUB_PREFIX)]
    return list(dict.fromkeys(names))


def _from_pretrained(loader, name_or_path: str, field: str, **kwargs):
    check_model_source(name_or_path, field)
    try:
        return loader.from_pretrained(os.path.expanduser(name_or_path), **kwargs)
    except (OSError, ValueError) as e:  # not found locally and the hub is unreachable or has no such repo
        from gptresume.hub import not_cached_message, offline_reason

        offline = offline_reason()
        if offline and not os.path.isdir(os.path.expanduser(name_or_path)):
            raise UsageError(not_cached_message(field, name_or_path, offline)) from None
        raise UsageError(f"{field}: could not load {name_or_path!r}: {e}".rstrip()) from None


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2's scheme) trained on `texts`; `<|endoftext|>` is EOS, BOS, UNK and pad.

    Training is deterministic for the same texts (checked across processes with tokenizers 0.23).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def load_tokenizer(cfg: ModelConfig, texts=None, checkpoint: Path | None = None):
    """The run's tokenizer: from the checkpoint being resumed (every checkpoint carries it), else as configured.

    `texts` (a Dataset with a `text` column) is needed only to train a new tokenizer.
    """
    from transformers import AutoTokenizer

    if checkpoint is not None:
        tok = AutoTokenizer.from_pretrained(str(checkpoint))
    elif cfg.tokenizer.train_vocab_size:
        log.info("Training a byte-level BPE tokenizer (vocab %d) on the corpus", cfg.tokenizer.train_vocab_size)
        tok = train_tokenizer((row["text"] for row in texts), cfg.tokenizer.train_vocab_size)
    else:
        source = cfg.tokenizer.name_or_path or cfg.name_or_path
        field = "model.tokenizer.name_or_path" if cfg.tokenizer.name_or_path else "model.name_or_path"
        same_repo = {} if cfg.tokenizer.name_or_path else source_options(cfg, model=False)
        tok = _from_pretrained(AutoTokenizer, source, field, **same_repo)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # GPT-2 ships without one; packed blocks never pad, generation needs it
    return tok


def source_options(cfg: ModelConfig, model: bool = True) -> dict:
    """from_pretrained keywords for model.name_or_path: revision, trust_remote_code (only when the user set it:
    it runs code from the repository), and for the model its dtype and attention implementation."""
    out = {}
    if cfg.revision:
        out["revision"] = cfg.revision
    if cfg.trust_remote_code:
        out["trust_remote_code"] = True
    if model:
        out.update(model_options(cfg))
    return out


def model_options(cfg: ModelConfig) -> dict:
    """dtype and attn_implementation when the config sets them (else Transformers' defaults), for a pretrained
    model and a new one alike."""
    import torch

    out = {}
    if cfg.dtype:
        out["dtype"] = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    if cfg.attn_implementation:
        out["attn_implementation"] = cfg.attn_implementation
    return out


def build_model(cfg: ModelConfig, tokenizer, seed: int, checkpoint: Path | None = None):
    """The model to train. On resume a full model is built from the checkpoint (no hub access), and Trainer then
    restores the full training state from the same checkpoint; a LoRA run's checkpoints hold only the adapters, so
    its base model is read again from model.name_or_path (pin model.revision) and Trainer loads the adapters.
    `trust_remote_code` is passed only when the config sets it, also for checkpoints (their config.json could
    name code to run)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    if checkpoint is not None and cfg.peft is None:
        return AutoModelForCausalLM.from_pretrained(str(checkpoint), **model_options(cfg),
                                                    **({"trust_remote_code": True} if cfg.trust_remote_code else {}))
    if cfg.from_scratch is not None:
        transformers.set_seed(seed)  # the initial weights depend on train.seed only
        values = dict(cfg.from_scratch)
        model_type = values.pop("model_type", "gpt2")
        config = AutoConfig.for_model(model_type, **values, vocab_size=len(tokenizer),
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        options = {k: v for k, v in model_options(cfg).items() if v != "auto"}  # a new model has no saved dtype
        return AutoModelForCausalLM.from_config(config, **options)
    model = _from_pretrained(AutoModelForCausalLM, cfg.name_or_path, "model.name_or_path", **source_options(cfg))
    check_vocab_fits(model, tokenizer, cfg)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.peft is not None:
        model = add_lora(model, cfg, seed)
    return model


def add_lora(model, cfg: ModelConfig, seed: int):
    """The base model wrapped by peft with fresh LoRA adapters (seeded: the same start on every machine). Trainer
    saves a PeftModel as adapter_model.safetensors + adapter_config.json and, on resume, loads the adapters back
    (transformers 5.24 `_load_from_checkpoint`)."""
    import transformers
    from peft import get_peft_model

    from gptresume.config.integrations import lora_config

    why = lora_target_problem(model, cfg.peft.get("target_modules"))
    if why:
        raise UsageError(why)
    transformers.set_seed(seed)
    config = lora_config(cfg.peft)
    config.base_model_name_or_path = cfg.name_or_path
    config.revision = cfg.revision
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:  # peft's own checks against this model
        raise UsageError(f"model.peft: peft could not add LoRA adapters to {cfg.name_or_path}: "
                         f"{' '.join(str(e).split())[:300]}") from None


def lora_target_problem(model, targets, field: str = "model.peft.target_modules") -> str | None:
    """A `target_modules` entry that names no module of `model` (peft's rule: a module's full name, or its last
    part(s) after a dot; a string is a regular expression over the full names), with the layer names the model
    has. peft 0.21 alone refuses only when no entry matches, so a misspelt one among others would train silently
    without its adapters. None when every entry matches (or peft picks them: null, all-linear)."""
    import re

    if targets is None or targets == "all-linear":
        return None
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        try:
            if any(re.fullmatch(targets, n) for n in names):
                return None
        except re.error as e:
            return f"{field}: {targets!r} is not a valid regular expression ({e})"
        missing = [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
        if not missing:
            return None
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    return (f"{field}: {', '.join(map(repr, missing))} names no module of the model ({kind}); its adaptable layers "
            f"are {', '.join(adaptable_layer_names(model))}")


def adaptable_layer_names(model) -> list[str]:
    """The last name part of every layer LoRA can adapt (linear, GPT-2's Conv1D, embedding, convolution)."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if name and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")}
    return sorted(names)


def check_vocab_fits(model, tokenizer, cfg: ModelConfig) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= rows:
        return
    if not cfg.resize_embeddings:
        raise UsageError(
            f"model.tokenizer: the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows; "
            "use the model's own tokenizer, or set model.resize_embeddings: true to add randomly initialised rows")
    log.warning("Resizing the token embedding from %d to %d rows (new rows are randomly initialised)",
                rows, len(tokenizer))
    model.resize_token_embeddings(len(tokenizer))


def has_dropout(model) -> bool:
    """Does the model draw dropout masks when training? (Then anything else that draws from the global RNG, such
    as an evaluation's DataLoader, changes the masks of every later step.)"""
    import torch

    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    values = config.to_dict().items() if hasattr(config, "to_dict") else ()
    # Dropout applied functionally (attention dropout in some models) shows only in the config; `summary_*` fields
    # belong to heads the causal LM does not have (GPT2Config.summary_first_dropout).
    return any(("dropout" in k or k.endswith("pdrop")) and not k.startswith("summary_")
               and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for k, v in values)


def checkpoint_model_shapes(checkpoint: Path) -> tuple[dict[str, tuple] | None, str | None]:
    """(name -> shape of every weight of the model `checkpoint/config.json` describes, None) without allocating
    it (built on the meta device), or (None, why not). What `build_model` loads the checkpoint's weights into."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(checkpoint), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as e:  # a missing, torn or foreign config.json is a fault of the checkpoint, not a bug
        return None, f"config.json: does not describe a causal LM Transformers builds ({type(e).__name__}: " \
                     f"{' '.join(str(e).split())[:200]})"
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, None


def tokenizer_problem(checkpoint: Path) -> str | None:
    """None when the tokenizer saved in `checkpoint` loads (as `load_tokenizer` loads it on a resume)."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=False)
    except Exception as e:  # torn tokenizer.json, missing files: a fault of the checkpoint
        return f"tokenizer files do not load ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return None


def context_problem(model, block_size: int, field: str = "data.block_size") -> str | None:
    """A block longer than the model's context (GPT-2's n_positions) fails at the first step with an index error;
    None when it fits or the config does not say."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        room = getattr(config, name, None)
        if isinstance(room, int) and room > 0:
            if block_size > room:
                return (f"{field}: {block_size} is longer than the model's context ({name} = {room}); set "
                        f"data.block_size to {room} or less")
            return None
    return None
