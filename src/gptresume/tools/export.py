"""`gptresume export CHECKPOINT OUT`: a from_pretrained-ready directory (weights, configs, tokenizer), nothing else.

The model and tokenizer files are copied byte for byte from a verified checkpoint (or a run's final/), so the
exported weights are exactly the trained ones; optimizer, scheduler, RNG and trainer state are left behind.
The directory is assembled under a temporary name next to OUT and renamed into place: OUT is either absent,
the previous contents (on failure), or complete.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path

from gptresume.checkpoint import fsync_dir
from gptresume.errors import UsageError
from gptresume.rundir import TOKENIZER_DIR
from gptresume.tools.common import ModelSource, resolve_model

EXPORT_INFO_NAME = "gptresume-export.json"
# What from_pretrained needs; everything else in a checkpoint is training state.
MODEL_PATTERNS = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                  "model.safetensors.index.json")
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def export(path: str | Path, out: str | Path, force: bool = False) -> tuple[Path, ModelSource]:
    source = resolve_model(path, "export")
    out = Path(out)
    _check_target(out, source, force)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        copied = _copy_matching(source.model_dir, tmp, MODEL_PATTERNS)
        if not any(name.endswith(".safetensors") for name in copied):
            _convert_to_safetensors(source, tmp)  # e.g. a checkpoint written with save_safetensors=False
        tokenizer_dir = source.model_dir
        if not _copy_matching(tokenizer_dir, tmp, TOKENIZER_PATTERNS) and source.run_dir is not None:
            tokenizer_dir = source.run_dir / TOKENIZER_DIR
            _copy_matching(tokenizer_dir, tmp, TOKENIZER_PATTERNS)
        if not any(tmp.glob("tokenizer*.json")) and not (tmp / "vocab.json").is_file():
            raise UsageError(f"export: no tokenizer files in {source.model_dir}"
                             + (f" or {source.run_dir / TOKENIZER_DIR}" if source.run_dir else ""))
        (tmp / EXPORT_INFO_NAME).write_text(json.dumps(_provenance(source, tokenizer_dir), indent=1) + "\n")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)  # safetensors writes 0600; an export is meant to be shared
        fsync_dir(tmp)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, source


def _check_target(out: Path, source: ModelSource, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"export: {out} exists and is not a directory; choose another OUT")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"export: {out} exists and is not empty; choose another OUT, or pass --force to replace it")
    resolved_out, model_dir = out.resolve(), source.model_dir.resolve()
    if resolved_out == model_dir or model_dir in resolved_out.parents or resolved_out in model_dir.parents:
        raise UsageError(f"export: OUT {out} overlaps the model being exported ({source.model_dir}); "
                         "choose a directory outside it")


def _copy_matching(src: Path, dst: Path, patterns) -> list[str]:
    copied = []
    if not src.is_dir():
        return copied
    for p in sorted(src.iterdir()):
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns):
            with open(p, "rb") as fin, open(dst / p.name, "wb") as fout:
                shutil.copyfileobj(fin, fout, 8 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            copied.append(p.name)
    return copied


def _convert_to_safetensors(source: ModelSource, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(source.model_dir))
    for p in tmp.glob("*.json"):
        p.unlink()
    model.save_pretrained(str(tmp))  # safetensors is the default serialization in transformers 5


def _provenance(source: ModelSource, tokenizer_dir: Path) -> dict:
    info = {"exported_from": str(source.model_dir.resolve()), "tokenizer_from": str(tokenizer_dir.resolve()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if source.checkpoint is not None and source.checkpoint.manifest:
        m = source.checkpoint.manifest
        info.update(step=m.get("step"), epoch=m.get("epoch"), config_fingerprint=m.get("config_fingerprint"),
                    data_fingerprint=m.get("data_fingerprint"),
                    model_sha256={k: v["sha256"] for k, v in m["files"].items() if k.endswith(".safetensors")})
    return info


def _replace(tmp: Path, out: Path) -> None:
    """Put tmp at out; an existing out is moved aside first and removed only once tmp is in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
