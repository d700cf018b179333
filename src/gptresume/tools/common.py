"""What a path given to a tool is (a run, a checkpoint, or a model directory) and how to load its model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptresume.checkpoint import CHECKPOINT_RE, MANIFEST_NAME, CheckpointInfo, list_checkpoints, newest_valid
from gptresume.checkpoint import verify_checkpoint
from gptresume.checkpoint.files import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHT_NAMES, WEIGHT_FILES
from gptresume.errors import UsageError
from gptresume.rundir import TOKENIZER_DIR
from gptresume.rundir import CONFIG_NAME, FINAL_DIR, HISTORY_NAME, METRICS_NAME

MODEL_CONFIG_NAME = "config.json"
WHAT_TO_GIVE = ("give a run directory (train.output_dir), a checkpoint-N directory, "
                "or a save_pretrained/export directory")


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (any((path / n).exists() for n in (HISTORY_NAME, CONFIG_NAME, METRICS_NAME))
                              or bool(list_checkpoints(path)))


def is_checkpoint_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (bool(CHECKPOINT_RE.match(path.name)) or (path / MANIFEST_NAME).is_file())


def is_model_dir(path: Path) -> bool:
    path = Path(path)
    return ((path / MODEL_CONFIG_NAME).is_file() and any((path / w).is_file() for w in WEIGHT_FILES)) \
        or is_adapter_dir(path)


def is_adapter_dir(path: Path) -> bool:
    """PEFT adapters (adapter_config.json + adapter weights) instead of a whole model."""
    path = Path(path)
    return (path / ADAPTER_CONFIG_NAME).is_file() and any((path / w).is_file() for w in ADAPTER_WEIGHT_NAMES)


def require_run_dir(path: str | Path, command: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{command}: {path} does not exist; give a run directory (train.output_dir)")
    if not is_run_dir(path):
        hint = " (that is a checkpoint; give the directory above it)" if is_checkpoint_dir(path) else ""
        raise UsageError(f"{command}: {path} is not a run directory{hint}: it has no {HISTORY_NAME}, "
                         f"{CONFIG_NAME}, {METRICS_NAME} or checkpoint-N directory")
    return path


def describe_faults(info: CheckpointInfo) -> str:
    return "; ".join(info.faults)


@dataclass
class ModelSource:
    """Where a tool's model comes from."""

    model_dir: Path
    """Directory from_pretrained loads (a checkpoint, RUN_DIR/final, or an export)."""
    run_dir: Path | None = None
    """The run it belongs to, when there is one (for the run's config, data cache and tokenizer)."""
    checkpoint: CheckpointInfo | None = None
    """The verified checkpoint, when model_dir is one."""
    why: str = ""
    """How model_dir was chosen, for messages."""

    @property
    def label(self) -> str:
        return f"{self.model_dir} ({self.why})" if self.why else str(self.model_dir)


def resolve_model(path: str | Path, command: str) -> ModelSource:
    """A checkpoint (must verify), a run (its final/ if present, else its newest valid checkpoint), or a model dir."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{command}: {path} does not exist; {WHAT_TO_GIVE}")
    if not path.is_dir():
        raise UsageError(f"{command}: {path} is not a directory; {WHAT_TO_GIVE}")
    if is_checkpoint_dir(path):
        info = verify_checkpoint(path)
        if not info.valid:
            raise UsageError(f"{command}: {path} is not a valid checkpoint: {describe_faults(info)}. "
                             "Use another checkpoint (see `gptresume status` on its run)")
        return ModelSource(path, path.parent if is_run_dir(path.parent) else None, info,
                           f"checkpoint, step {info.step}")
    if is_run_dir(path):
        final = path / FINAL_DIR
        if is_model_dir(final):
            return ModelSource(final, path, None, "the run's final model")
        info, skipped = newest_valid(path)
        if info is None:
            faults = "".join(f"\n  {s.name}: {describe_faults(s)}" for s in skipped)
            raise UsageError(f"{command}: run {path} has no final/ model and no valid checkpoint{faults}")
        why = f"newest valid checkpoint, step {info.step}"
        if skipped:
            why += "; skipped " + ", ".join(f"{s.name} ({describe_faults(s)})" for s in skipped)
        return ModelSource(info.path, path, info, why)
    if is_model_dir(path):
        run_dir = path.parent if path.name == FINAL_DIR and is_run_dir(path.parent) else None
        return ModelSource(path, run_dir, None, "model directory")
    if (path / ADAPTER_CONFIG_NAME).is_file():
        raise UsageError(f"{command}: {path} holds {ADAPTER_CONFIG_NAME} but no adapter weights "
                         f"({' or '.join(ADAPTER_WEIGHT_NAMES)}); give the checkpoint or run the adapters came from")
    raise UsageError(f"{command}: {path} is not a run, a checkpoint or a model directory (no {MODEL_CONFIG_NAME} "
                     f"with weights, no {MANIFEST_NAME}, no {HISTORY_NAME}); {WHAT_TO_GIVE}")


def load_tokenizer_for(source: ModelSource, command: str):
    """The tokenizer saved with the model, else the run's RUN_DIR/tokenizer."""
    from transformers import AutoTokenizer

    candidates = [source.model_dir]
    if source.run_dir is not None:
        candidates.append(source.run_dir / TOKENIZER_DIR)
    for where in candidates:
        if any(where.glob("tokenizer*.json")) or (where / "vocab.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(where))
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return tok
    raise UsageError(f"{command}: no tokenizer files in {' or '.join(map(str, candidates))}")


def load_model_for(source: ModelSource, command: str):
    """The model in eval mode, in float32, on the GPU when there is one. Adapters (a LoRA run) are loaded onto
    their base model (adapter_config.json's base_model_name_or_path and revision), never with trust_remote_code."""
    import torch
    from transformers import AutoModelForCausalLM

    from safetensors import SafetensorError

    try:
        if is_adapter_dir(source.model_dir):
            model = load_adapter_model(source.model_dir, command)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(source.model_dir), dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        # damaged files: weights whose shapes are not the config's, a config missing a field, a torn safetensors
        raise UsageError(f"{command}: could not load a causal LM from {source.model_dir}: "
                         f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model


def load_adapter_model(adapter_dir: Path, command: str):
    """Base model + LoRA adapters, in float32 (peft's PeftModel, ready for generate and forward)."""
    import torch
    from safetensors import SafetensorError

    try:
        from peft import PeftModel
    except ImportError:
        raise UsageError(f"{command}: {adapter_dir} holds LoRA adapters, which need the peft package; "
                         "pip install 'gptresume[peft]' (or peft)") from None
    from transformers import AutoModelForCausalLM

    config = read_adapter_config(adapter_dir, command)
    base = config["base_model_name_or_path"]
    revision = config.get("revision") if isinstance(config.get("revision"), str) else None
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, revision=revision,
                                                     trust_remote_code=False)
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        raise UsageError(f"{command}: could not load the LoRA adapters in {adapter_dir} onto their base model "
                         f"{base}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None


def read_adapter_config(adapter_dir: Path, command: str) -> dict:
    """adapter_config.json, checked before peft reads it (peft 0.21 answers a damaged one with a KeyError or a
    TypeError from deep inside), and the adapter weights' header: one message naming the file otherwise."""
    import json

    path = Path(adapter_dir) / ADAPTER_CONFIG_NAME
    fix = "it is damaged; use a checkpoint of the run (gptresume status RUN_DIR lists them) or export it again"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{command}: {path} is not readable JSON ({' '.join(str(e).split())[:120]}); {fix}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{command}: {path} is not a JSON object; {fix}")
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UsageError(f"{command}: {path} names no base_model_name_or_path; export a merged model "
                         "(gptresume export --merge) from the run instead")
    for key in ("peft_type", "r", "target_modules"):
        if key not in config:
            raise UsageError(f"{command}: {path} has no {key!r}; {fix}")
    if config["peft_type"] != "LORA":
        raise UsageError(f"{command}: {path}: peft_type {config['peft_type']!r} is not LORA (gptresume trains LoRA "
                         "adapters)")
    weights = Path(adapter_dir) / ADAPTER_WEIGHT_NAMES[0]
    if weights.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                names = list(f.keys())
        except (OSError, SafetensorError) as e:
            raise UsageError(f"{command}: {weights} does not parse as safetensors ({' '.join(str(e).split())[:120]}); "
                             f"{fix}") from None
        if not any("lora_" in n for n in names):
            raise UsageError(f"{command}: {weights} holds no LoRA weights (no lora_A / lora_B tensors); {fix}")
    return config


def context_length(model) -> int | None:
    """Positions the model has embeddings for (GPT-2's n_positions), or None when the config does not say."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
