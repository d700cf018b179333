"""`gptresume export CHECKPOINT OUT`: a from_pretrained-ready directory (weights, configs, tokenizer), nothing else.

The model and tokenizer files are copied byte for byte from a verified checkpoint (or a run's final/), so the
exported weights are exactly the trained ones; optimizer, scheduler, RNG and trainer state are left behind.
The directory is assembled under a temporary name next to OUT and renamed into place: OUT is either absent,
the previous contents (on failure), or complete.

A LoRA run's checkpoint (or final/) exports its adapters (adapter_config.json, adapter_model.safetensors, byte for
byte), or with `merge=True` a whole model: the base model with the adapters merged into its weights
(peft's merge_and_unload), saved with save_pretrained.

`push_to_hub=REPO_ID` uploads OUT once it is complete (huggingface_hub's create_repo + upload_folder): only a
verified, committed checkpoint (or final/) is ever exported, so nothing uncommitted is pushed. The repository id
and the hub's reachability (HF_HUB_OFFLINE) are checked before anything is written.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path

from gptresume.checkpoint import fsync_dir
from gptresume.checkpoint.manifest import file_digest
from gptresume.errors import UsageError
from gptresume.rundir import TOKENIZER_DIR
from gptresume.checkpoint.files import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from gptresume.tools.common import ModelSource, is_adapter_dir, load_adapter_model, read_adapter_config, resolve_model

EXPORT_INFO_NAME = "gptresume-export.json"
# What from_pretrained needs; everything else in a checkpoint is training state.
MODEL_PATTERNS = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                  "model.safetensors.index.json")
ADAPTER_PATTERNS = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def export(path: str | Path, out: str | Path, force: bool = False, merge: bool = False,
           push_to_hub: str | None = None) -> tuple[Path, ModelSource]:
    if push_to_hub is not None:
        check_hub_target(push_to_hub)
    source = resolve_model(path, "export")
    adapters = is_adapter_dir(source.model_dir)
    if merge and not adapters:
        raise UsageError(f"export --merge: {source.model_dir} holds a whole model, not LoRA adapters; export it "
                         "without --merge")
    out = Path(out)
    _check_target(out, source, force)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if merge:
            load_adapter_model(source.model_dir, "export --merge").merge_and_unload().save_pretrained(str(tmp))
        elif adapters:
            read_adapter_config(source.model_dir, "export")  # a damaged adapter is refused, not copied on
            _copy_matching(source.model_dir, tmp, ADAPTER_PATTERNS)
        elif not any(name.endswith(".safetensors") for name in _copy_matching(source.model_dir, tmp, MODEL_PATTERNS)):
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
    if push_to_hub is not None:
        push(out, push_to_hub, source)
    return out, source


def check_hub_target(repo_id: str) -> None:
    """Refuse (exit 2, before anything is written) a malformed repository id or a hub switched off."""
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UsageError(f"export --push-to-hub: {repo_id!r} is not a hub repository id ({e}); give NAME or "
                         "ORG/NAME") from None
    if HF_HUB_OFFLINE:
        raise UsageError("export --push-to-hub: the hub is switched off (HF_HUB_OFFLINE is set); unset it to "
                         "upload, or export without --push-to-hub and upload the directory later")


def push(out: Path, repo_id: str, source: ModelSource) -> None:
    """Upload the complete export OUT to the hub model repository `repo_id` (created if missing, private)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(out),
                          commit_message=f"gptresume export of {source.label}")
    except Exception as e:  # network, authentication, permissions: the export itself is complete in OUT
        raise UsageError(f"export --push-to-hub: {out} is complete but the upload to {repo_id} failed "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); re-run the command (with "
                         "--force) or upload the directory with `huggingface-cli upload`") from None


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
                    model_digests={k: dict([file_digest(v)]) for k, v in m["files"].items()
                                   if k.endswith(".safetensors")})
    if is_adapter_dir(source.model_dir):
        info["adapters"] = True
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
