"""Does a checkpoint's training state load? Checked before a resume chooses the checkpoint, so a file that
verifies against its manifest but would fail in Trainer's load phase (a pickle `torch.load(weights_only=True)`
refuses, weights whose shapes are not the model's) makes the resume fall back to the previous checkpoint with the
file named, instead of ending in a traceback half-way into `trainer.train()`.

The state files are loaded exactly as Trainer loads them (transformers 5.24 `_load_optimizer_and_scheduler`,
`_load_rng_state`, `_load_scaler`: `torch.load(weights_only=True)`, the RNG files with transformers' numpy
allowlist), memory-mapped so that no tensor data is read; weights are checked by their safetensors header (or
a weights-only load of pytorch_model.bin). Nothing here executes code from the checkpoint: weights-only
unpickling builds tensors and plain containers only.

Imports torch lazily (the tools never call this), and never `transformers.Trainer`.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptresume.checkpoint.files import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHT_NAMES,
    OPTIMIZER_NAME,
    RNG_STATE_PATTERN,
    SCHEDULER_NAME,
)

SCALER_NAME = "scaler.pt"  # Trainer's name (transformers 5.24 trainer.SCALER_NAME)
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
MAX_LISTED = 3  # mismatched tensors named in one fault


def load_faults(ckpt: Path, model_shapes: dict[str, tuple] | None = None) -> list[str]:
    """Every reason the training state in `ckpt` would not load, one per file, each naming the file (empty: it
    loads). `model_shapes` (parameter/buffer name -> shape of the model the weights go into), when given, must
    agree with the shapes of the saved weights."""
    ckpt = Path(ckpt)
    faults = []
    for path in sorted(ckpt.iterdir()) if ckpt.is_dir() else []:
        name = path.name
        if name in (OPTIMIZER_NAME, SCHEDULER_NAME, SCALER_NAME) or RNG_STATE_PATTERN.match(name):
            why = torch_load_problem(path, numpy_allowed=bool(RNG_STATE_PATTERN.match(name)))
            if why:
                faults.append(f"{name} does not load with torch.load(weights_only=True), as Trainer loads it: {why}")
    faults.extend(weight_faults(ckpt, model_shapes))
    return faults


def is_adapter_checkpoint(ckpt: Path) -> bool:
    """A PEFT run's checkpoint: adapters instead of the model's weights."""
    return (Path(ckpt) / ADAPTER_CONFIG_NAME).is_file()


def adapter_faults(ckpt: Path) -> list[str]:
    """The adapters of a LoRA checkpoint load as Trainer loads them back (`model.load_adapter`): adapter_config.json
    is a JSON object naming its peft_type, and the adapter weights parse (safetensors header, or a weights-only
    load), holding only LoRA tensors. Their shapes are checked by peft when Trainer loads them."""
    ckpt = Path(ckpt)
    try:
        config = json.loads((ckpt / ADAPTER_CONFIG_NAME).read_text())
        if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
            raise ValueError("not a JSON object with a peft_type")
    except (ValueError, OSError) as e:
        return [f"{ADAPTER_CONFIG_NAME}: unreadable ({_one_line(e)})"]
    present = [n for n in ADAPTER_WEIGHT_NAMES if (ckpt / n).is_file()]
    if not present:
        return [f"{ADAPTER_WEIGHT_NAMES[0]}: missing (the checkpoint has {ADAPTER_CONFIG_NAME} but no adapter weights)"]
    found, why = _tensor_shapes(ckpt / present[0])
    if why:
        return [f"{present[0]} does not load ({why})"]
    if not found:
        return [f"{present[0]}: holds no tensors"]
    return []


def torch_load_problem(path: Path, numpy_allowed: bool = False) -> str | None:
    """None when `path` loads weights-only (as Trainer loads it), else why not, in one line. What it holds is
    dropped (its tensors are memory-mapped, never read)."""
    return _torch_load(path, numpy_allowed)[1]


def _torch_load(path: Path, numpy_allowed: bool = False):
    import torch

    def load(mmap: bool):
        with _trainer_safe_globals() if numpy_allowed else _nothing():
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(mmap=True), None
        except RuntimeError as e:  # a file in torch's legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return load(mmap=False), None
    except Exception as e:  # any refusal or parse error is a fault of this file, never a crash
        return None, _one_line(e)


def weight_faults(ckpt: Path, model_shapes: dict[str, tuple] | None = None) -> list[str]:
    """The saved weights parse (safetensors header, or a weights-only load of pytorch_model.bin), and their shapes
    agree with `model_shapes` when given. A checkpoint without weight files in these formats (e.g. PEFT adapters,
    FSDP shards) is not checked here."""
    ckpt = Path(ckpt)
    shapes: dict[str, tuple] = {}
    if (ckpt / SAFE_WEIGHTS_INDEX_NAME).is_file():
        try:
            index = json.loads((ckpt / SAFE_WEIGHTS_INDEX_NAME).read_text())
            shards = sorted(set(index["weight_map"].values()))
            if not all(isinstance(s, str) and "/" not in s and s not in ("", ".", "..") for s in shards):
                raise ValueError("a shard name is not a file name in the checkpoint")
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
            return [f"{SAFE_WEIGHTS_INDEX_NAME}: unreadable ({_one_line(e)})"]
        files = shards
    elif (ckpt / SAFE_WEIGHTS_NAME).is_file():
        files = [SAFE_WEIGHTS_NAME]
    elif (ckpt / TORCH_WEIGHTS_NAME).is_file():
        files = [TORCH_WEIGHTS_NAME]
    else:
        return []
    faults = []
    for name in files:
        found, why = _tensor_shapes(ckpt / name)
        if why:
            faults.append(f"{name} does not load ({why})")
            continue
        if model_shapes is not None:
            faults.extend(_shape_faults(name, found, model_shapes))
        shapes.update(found)
    if model_shapes is not None and not faults and shapes and not set(shapes) & set(model_shapes):
        faults.append(f"{files[0]}: none of its {len(shapes)} tensors is a weight of the model (another "
                      "architecture?); it would load nothing")
    return faults


def _tensor_shapes(path: Path) -> tuple[dict[str, tuple], str | None]:
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:  # parses and checks the header, reads no data
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, None
        except Exception as e:  # a truncated or foreign file: safetensors raises its own error types
            return {}, _one_line(e)
    state, why = _torch_load(path)
    if why:
        return {}, f"torch.load(weights_only=True): {why}"
    if not isinstance(state, dict):
        return {}, f"expected a dict of tensors, got {type(state).__name__}"
    import torch

    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}, None


def _shape_faults(name: str, found: dict[str, tuple], model_shapes: dict[str, tuple]) -> list[str]:
    wrong = [(k, s, tuple(model_shapes[k])) for k, s in sorted(found.items())
             if k in model_shapes and tuple(model_shapes[k]) != s]
    if not wrong:
        return []
    listed = "; ".join(f"{k} is {list(s)} in the file, {list(m)} in the model" for k, s, m in wrong[:MAX_LISTED])
    more = f" (and {len(wrong) - MAX_LISTED} more)" if len(wrong) > MAX_LISTED else ""
    return [f"{name}: tensor shapes differ from the model's: {listed}{more}"]


def _trainer_safe_globals():
    """The allowlist Trainer loads RNG files under (numpy's random state); transformers' own when importable."""
    try:
        from transformers.trainer_pt_utils import safe_globals

        return safe_globals()
    except ImportError:  # pragma: no cover (the same list, for a transformers that moved it)
        import numpy as np
        import torch

        core = getattr(np, "_core", None) or np.core
        return torch.serialization.safe_globals([core.multiarray._reconstruct, np.ndarray, np.dtype,
                                                 type(np.dtype(np.uint32))])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _one_line(e: BaseException, limit: int = 300) -> str:
    """The error in one line; for a weights-only refusal, torch's line naming the refused global (the rest of its
    message is advice to load with weights_only=False, which is what must not happen)."""
    text = str(e)
    if "Weights only load failed" in text:
        named = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        text = named[0] if named else "the pickle needs objects a weights-only load refuses"
        return f"refused: {text}"[:limit]
    text = f"{type(e).__name__}: {' '.join(text.split()) or type(e).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."
