"""Checkpoint manifest (the commit marker), verification, and discovery of the newest valid checkpoint.

A `checkpoint-N/` directory is exactly what `Trainer` writes, plus `manifest.json`, written last and atomically
after every file is fsynced. A checkpoint is valid iff its manifest exists and every listed file has the
recorded size and sha256.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from gptresume.checkpoint.files import (
    CHECKPOINT_RE,
    DEEPSPEED_STATE_RE,
    MANIFEST_NAME,
    OPTIMIZER_NAME,
    RESUME_STATE_NAME,
    RNG_STATE_PATTERN,
    SCHEDULER_NAME,
    SHARDED_OPTIMIZER_RE,
    TRAINER_STATE_NAME,
    list_checkpoints,
)
from gptresume.durable import atomic_write_text, fsync_dir, hash_file

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    faults: list[str] = field(default_factory=list)
    manifest: dict | None = None

    @property
    def valid(self) -> bool:
        return not self.faults

    @property
    def name(self) -> str:
        return self.path.name


def _checkpoint_files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                  and not p.name.startswith(f".{MANIFEST_NAME}"))


def library_versions() -> dict:
    import accelerate
    import datasets
    import tokenizers
    import torch
    import transformers

    import gptresume

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "tokenizers": tokenizers.__version__,
            "gptresume": gptresume.__version__}


def write_manifest(ckpt: Path, *, step: int, epoch: float | None, config: dict, config_fingerprint: str,
                   data_fingerprint: str | None, world_size: int, adopted: bool = False,
                   train_samples: int | None = None) -> dict:
    """Commit `ckpt`: hash and fsync every file, then write manifest.json atomically (the commit point)."""
    files = {}
    for p in _checkpoint_files(ckpt):
        size, digest = hash_file(p, fsync=True)
        files[p.relative_to(ckpt).as_posix()] = {"bytes": size, "sha256": digest}
    fsync_dir(ckpt)
    manifest = {
        "format": MANIFEST_FORMAT,
        "step": step,
        "epoch": epoch,
        "files": files,
        "config": config,
        "config_fingerprint": config_fingerprint,
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
        "versions": library_versions(),
        "host": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "adopted": adopted,
        "train_samples": train_samples,
    }
    atomic_write_text(ckpt / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


# ---------------------------------------------------------------- verification and discovery


def read_manifest(ckpt: Path) -> tuple[dict | None, str | None]:
    path = ckpt / MANIFEST_NAME
    if not path.is_file():
        return None, f"no {MANIFEST_NAME} (the save never committed: interrupted, or not written by gptresume)"
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
    except (ValueError, OSError) as e:
        return None, f"{MANIFEST_NAME} is unreadable ({e})"
    return manifest, None


def verify_checkpoint(ckpt: Path, hash_files: bool = True) -> CheckpointInfo:
    """Check every file the manifest lists: present, right size, right sha256 (streamed)."""
    ckpt = Path(ckpt)
    m = CHECKPOINT_RE.match(ckpt.name)
    info = CheckpointInfo(path=ckpt, step=int(m.group(1)) if m else -1)
    manifest, fault = read_manifest(ckpt)
    if fault:
        info.faults.append(fault)
        return info
    info.manifest = manifest
    if info.step < 0:
        info.step = int(manifest.get("step", -1))
    for rel, meta in sorted(manifest["files"].items()):
        p = ckpt / rel
        if not p.is_file():
            info.faults.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        if size != meta["bytes"]:
            info.faults.append(f"{rel}: wrong size ({size} bytes, manifest says {meta['bytes']})")
            continue
        if hash_files and hash_file(p)[1] != meta["sha256"]:
            info.faults.append(f"{rel}: wrong sha256 (contents changed since the checkpoint was committed)")
    return info


def newest_valid(run_dir: Path) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The newest valid checkpoint and the newer invalid ones skipped on the way (never deleted here)."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        info = verify_checkpoint(path)
        if info.valid:
            return info, skipped
        skipped.append(info)
    return None, skipped


def describe_skip(info: CheckpointInfo) -> str:
    return f"skipping {info.path}: " + "; ".join(info.faults)


# What each piece of training state restores, for the warning when it is missing.
STATE_PIECES = {
    "optimizer": ("Adam moments start from zero (a loss spike, a different trajectory)",
                  lambda n: n == OPTIMIZER_NAME or SHARDED_OPTIMIZER_RE.match(n)),
    "scheduler": ("the learning-rate schedule restarts from its first step",
                  lambda n: n == SCHEDULER_NAME or DEEPSPEED_STATE_RE.match(n)),
    "RNG state": ("dropout masks and sampling differ from an uninterrupted run", RNG_STATE_PATTERN.match),
    "trainer state": ("the step counter and data position restart at zero", lambda n: n == TRAINER_STATE_NAME),
}


def missing_state(ckpt: Path) -> dict[str, str]:
    """Pieces of training state absent from a checkpoint (e.g. save_only_model), with what each changes."""
    names = [p.name for p in Path(ckpt).iterdir()]
    missing = {piece: effect for piece, (effect, present) in STATE_PIECES.items() if not any(present(n) for n in names)}
    manifest, _ = read_manifest(Path(ckpt))
    ranks = int((manifest or {}).get("world_size") or 1)
    absent = [f"rng_state_{r}.pth" for r in range(ranks) if ranks > 1 and f"rng_state_{r}.pth" not in names]
    if absent and "RNG state" not in missing:  # several processes: one RNG file per rank
        missing["RNG state"] = (f"{', '.join(absent)} absent (saved by {ranks} processes): those ranks' dropout "
                                "masks differ from an uninterrupted run")
    return missing


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / TRAINER_STATE_NAME).read_text())


def read_resume_state(ckpt: Path) -> dict:
    """What earlier changed resumes decided (schedule plan, stream offset); {} for an unchanged run."""
    path = Path(ckpt) / RESUME_STATE_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


