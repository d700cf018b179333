"""Checkpoint manifest (the commit marker), verification, and discovery of the newest valid checkpoint.

A `checkpoint-N/` directory is exactly what `Trainer` writes, plus `manifest.json`, written last and atomically
after every file is fsynced. A checkpoint is valid iff its manifest exists and every listed file has the
recorded size and digest.

Formats: 1 records sha256 per file; 2 (written now) records xxh3-128 (`"xxh3_128"`) and names it in `"digest"`.
Verification is driven by what each file entry records (`file_digest`), so format 1 manifests keep verifying and a
caller holding any checkpoint (a local one, one downloaded from object storage) just calls `verify_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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
)
from gptresume.checkpoint.storage import CheckpointStorage, LocalStorage
from gptresume.credentials import redact
from gptresume.durable import DEFAULT_DIGEST, DIGESTS, atomic_write_text, fsync_dir, hash_file

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 2
"""The newest format this gptresume reads and the one it writes (1: sha256 per file; 2: a named digest)."""

# The digest each format records when it is written (verification reads the entry, not this table).
FORMAT_OF_DIGEST = {"sha256": 1, "xxh3_128": 2}


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

    from gptresume.version import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "tokenizers": tokenizers.__version__,
            "gptresume": __version__}


def write_manifest(ckpt: Path, *, step: int, epoch: float | None, config: dict, config_fingerprint: str,
                   data_fingerprint: str | None, world_size: int, adopted: bool = False,
                   train_samples: int | None = None, digest: str = DEFAULT_DIGEST) -> dict:
    """Commit `ckpt`: hash and fsync every file, then write manifest.json atomically (the commit point).

    `digest`: xxh3_128 (format 2, the default) or sha256 (format 1, what older gptresume versions read)."""
    files = checkpoint_file_entries(ckpt, digest, fsync=True)
    fsync_dir(ckpt)
    manifest = manifest_record(files, step=step, epoch=epoch, config=config, config_fingerprint=config_fingerprint,
                               data_fingerprint=data_fingerprint, world_size=world_size, adopted=adopted,
                               train_samples=train_samples, digest=digest)
    atomic_write_text(ckpt / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def checkpoint_file_entries(ckpt: Path, digest: str = DEFAULT_DIGEST, fsync: bool = False) -> dict:
    """Every file under `ckpt` but the manifest (and its temporaries), as the manifest's `files` object:
    relative path -> {"bytes": N, DIGEST: hex}. Also what one node's part of a checkpoint lists
    (remote/parts.py), where each node hashes the files its ranks wrote."""
    files = {}
    for p in _checkpoint_files(ckpt):
        size, hexdigest = hash_file(p, fsync=fsync, digest=digest)
        files[p.relative_to(ckpt).as_posix()] = {"bytes": size, digest: hexdigest}
    return files


def manifest_record(files: dict, *, step: int, epoch: float | None, config: dict, config_fingerprint: str,
                    data_fingerprint: str | None, world_size: int, adopted: bool = False,
                    train_samples: int | None = None, digest: str = DEFAULT_DIGEST) -> dict:
    """The manifest of a checkpoint whose `files` entries are known (hashed here by `write_manifest`, or merged
    from every node's part by remote/commit.py, which writes it to the bucket)."""
    return {
        "format": FORMAT_OF_DIGEST[digest],
        **({"digest": digest} if digest != "sha256" else {}),
        "step": step,
        "epoch": epoch,
        "files": files,
        "config": redact(config),  # credentials never reach a manifest (credentials.py), nor the bucket's copy
        "config_fingerprint": config_fingerprint,
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
        "versions": library_versions(),
        "host": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "adopted": adopted,
        "train_samples": train_samples,
    }


# ---------------------------------------------------------------- verification and discovery


NO_MANIFEST = f"no {MANIFEST_NAME} (the save never committed: interrupted, or not written by gptresume)"


def read_manifest(ckpt: Path) -> tuple[dict | None, str | None]:
    """The manifest, checked against MANIFEST_SCHEMA before anything uses it; (None, why) when it is absent,
    unreadable or malformed (never an exception)."""
    path = Path(ckpt) / MANIFEST_NAME
    try:
        if not path.is_file():
            return None, NO_MANIFEST
        text = path.read_text()
    except OSError as e:
        return None, f"{MANIFEST_NAME} is unreadable ({e})"
    return parse_manifest(text)


def parse_manifest(text: str) -> tuple[dict | None, str | None]:
    """`read_manifest` for the manifest's text, wherever it was read (a local file, an object in a bucket)."""
    try:
        manifest = json.loads(text)
    except ValueError as e:
        return None, f"{MANIFEST_NAME} is unreadable ({e})"
    problems = manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return None, f"{MANIFEST_NAME} is malformed: " + "; ".join(problems[:3]) + more
    return manifest, None


def verify_checkpoint(ckpt: Path, hash_files: bool = True, on_bytes=None) -> CheckpointInfo:
    """Check a checkpoint against its manifest: the manifest's schema; every listed file present (a regular file,
    no symbolic link on the way), of the right size and (streamed) digest, the one its entry records (sha256 in
    format 1, xxh3-128 in format 2: see `file_digest`); the step of the manifest, of
    trainer_state.json and of the directory name the same. Never raises for anything found on disk.
    `on_bytes(n)`: told the bytes hashed as they are (progress of a large checkpoint)."""
    ckpt = Path(ckpt)
    m = CHECKPOINT_RE.match(ckpt.name)
    info = CheckpointInfo(path=ckpt, step=int(m.group(1)) if m else -1)
    if ckpt.is_symlink():
        info.faults.append(f"{ckpt.name} is a symbolic link (to {os.readlink(ckpt)}); a checkpoint must be a "
                           "directory inside the run")
        return info
    manifest, fault = read_manifest(ckpt)
    if fault:
        info.faults.append(fault)
        return info
    info.manifest = manifest
    if info.step < 0:
        info.step = manifest["step"]
    elif info.step != manifest["step"]:
        info.faults.append(f"{MANIFEST_NAME} says step {manifest['step']}, the directory name step {info.step}")
    for rel, meta in sorted(manifest["files"].items()):
        p = ckpt / rel
        link = _symlink_on_the_way(ckpt, rel)
        if link:
            info.faults.append(f"{rel}: {link} is a symbolic link (a checkpoint holds regular files only)")
            continue
        try:
            if not p.is_file():
                info.faults.append(f"{rel}: missing")
                continue
            size = p.stat().st_size
            if size != meta["bytes"]:
                info.faults.append(f"{rel}: wrong size ({size} bytes, manifest says {meta['bytes']})")
                continue
            if hash_files:
                algorithm, expected = file_digest(meta)
                if hash_file(p, digest=algorithm, on_bytes=on_bytes)[1] != expected:
                    info.faults.append(f"{rel}: wrong {algorithm} (contents changed since the checkpoint was "
                                       "committed)")
        except OSError as e:
            info.faults.append(f"{rel}: unreadable ({e.strerror or e})")
    if not info.faults:
        info.faults.extend(_trainer_state_faults(ckpt, manifest))
    return info


def _symlink_on_the_way(ckpt: Path, rel: str) -> str | None:
    """The first path component of `rel` (inside `ckpt`) that is a symbolic link, if any."""
    here = ckpt
    for part in PurePosixPath(rel).parts:
        here = here / part
        if here.is_symlink():
            return here.relative_to(ckpt).as_posix()
    return None


def _trainer_state_faults(ckpt: Path, manifest: dict) -> list[str]:
    """trainer_state.json (what Trainer restores its step, schedule position and data position from) must agree
    with the manifest: a global_step of 10**30 would make a half-trained run look complete."""
    path = ckpt / TRAINER_STATE_NAME
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except OSError as e:
        text = e
    return trainer_state_faults(text, manifest)


def trainer_state_faults(text: str | OSError, manifest: dict) -> list[str]:
    """`_trainer_state_faults` for the text of a present trainer_state.json (or the error reading it)."""
    if TRAINER_STATE_NAME not in manifest["files"]:
        return [f"{TRAINER_STATE_NAME}: not listed in {MANIFEST_NAME} (added after the commit)"]
    try:
        if isinstance(text, OSError):
            raise text
        state = json.loads(text)
    except (ValueError, OSError) as e:
        return [f"{TRAINER_STATE_NAME}: unreadable ({e})"]
    if not isinstance(state, dict):
        return [f"{TRAINER_STATE_NAME}: not a JSON object"]
    faults = []
    step = state.get("global_step")
    if not _is_int(step):
        faults.append(f"{TRAINER_STATE_NAME}: global_step is {step!r}, not an integer")
    elif step != manifest["step"]:
        faults.append(f"{TRAINER_STATE_NAME}: global_step {step} disagrees with {MANIFEST_NAME} step "
                      f"{manifest['step']}")
    for key, ok in (("max_steps", _is_int), ("epoch", lambda v: v is None or _is_number(v)),
                    ("log_history", lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v))):
        if key in state and not ok(state[key]):
            faults.append(f"{TRAINER_STATE_NAME}: {key} has the wrong type ({type(state[key]).__name__})")
    return faults


# ---------------------------------------------------------------- the manifest's schema

HEX_RE = re.compile(r"^[0-9a-f]+$")


def file_digest(meta: dict) -> tuple[str, str]:
    """(digest name, hex) recorded in one `files` entry: the first DIGESTS name it holds (an entry validated by
    `manifest_problems` holds one). What verification hashes with, whichever gptresume wrote the manifest."""
    for name in DIGESTS:
        if name in meta:
            return name, meta[name]
    raise KeyError(f"no digest among {', '.join(DIGESTS)}")


def _entry_ok(meta, digest_names) -> bool:
    """{bytes: non-negative int, NAME: hex of NAME's length} for at least one allowed digest NAME."""
    if not (isinstance(meta, dict) and _is_int(meta.get("bytes")) and meta["bytes"] >= 0):
        return False
    present = [n for n in DIGESTS if n in meta]
    if not present or any(n not in digest_names for n in present):
        return False
    return all(isinstance(meta[n], str) and len(meta[n]) == DIGESTS[n][1] and HEX_RE.match(meta[n])
               for n in present)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt(check):
    return lambda v: v is None or check(v)


# key -> (required, check, what it must be). Keys a newer gptresume may add are allowed (and ignored).
MANIFEST_SCHEMA = {
    "format": (True, lambda v: _is_int(v) and 1 <= v <= MANIFEST_FORMAT, f"an integer from 1 to {MANIFEST_FORMAT}"),
    "step": (True, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "files": (True, lambda v: isinstance(v, dict), "an object of file -> {bytes, digest}"),
    "digest": (False, lambda v: v in DIGESTS, f"one of {', '.join(DIGESTS)}"),
    "config": (True, lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
               "an object of sections"),
    "epoch": (False, _opt(_is_number), "a number or null"),
    "config_fingerprint": (False, _opt(lambda v: isinstance(v, str)), "a string"),
    "data_fingerprint": (False, _opt(lambda v: isinstance(v, str)), "a string or null"),
    "world_size": (False, lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "versions": (False, lambda v: isinstance(v, dict), "an object"),
    "host": (False, lambda v: isinstance(v, str), "a string"),
    "created": (False, lambda v: isinstance(v, str), "a string"),
    "adopted": (False, lambda v: isinstance(v, bool), "true or false"),
    "train_samples": (False, _opt(lambda v: _is_int(v) and v >= 0), "a non-negative integer or null"),
}


def manifest_problems(manifest) -> list[str]:
    """What is wrong with a parsed manifest (empty when it may be used): key types, and a `files` object whose
    keys are relative paths that stay inside the checkpoint and whose values are {bytes: int, DIGEST: hex}:
    sha256 in format 1; in format 2 the digest the manifest names (xxh3_128 when it names none), or sha256."""
    if not isinstance(manifest, dict):
        return [f"expected a JSON object, got {type(manifest).__name__}"]
    problems = []
    for key, (required, ok, what) in MANIFEST_SCHEMA.items():
        if key not in manifest:
            if required:
                problems.append(f"no '{key}'")
        elif not ok(manifest[key]):
            if key == "format" and _is_int(manifest[key]) and manifest[key] > MANIFEST_FORMAT:
                problems.append(f"format {manifest[key]} was written by a newer gptresume (this one reads "
                                f"{MANIFEST_FORMAT}); upgrade gptresume")
            else:
                problems.append(f"'{key}' must be {what} (got {_short(manifest[key])})")
    files = manifest.get("files")
    if manifest.get("format") == 1:
        allowed = ("sha256",)
    else:
        named = manifest.get("digest") if manifest.get("digest") in DIGESTS else DEFAULT_DIGEST
        allowed = tuple(dict.fromkeys((named, "sha256")))
    what = " or ".join(f'"{n}": {DIGESTS[n][1]} lowercase hex digits' for n in allowed)
    if isinstance(files, dict):
        for rel, meta in files.items():
            why = path_problem(rel)
            if why:
                problems.append(f"files: {_short(rel)} {why}")
            elif not _entry_ok(meta, allowed):
                problems.append(f"files: {rel}: must be {{\"bytes\": a non-negative integer, {what}}} "
                                f"(got {_short(meta)})")
    return problems


def path_problem(rel) -> str | None:
    """Why `rel` is not a relative path inside a checkpoint (None when it is one)."""
    if not isinstance(rel, str) or not rel:
        return "is not a file name"
    if "\x00" in rel:
        return "holds a NUL byte"
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        return "is an absolute path (a manifest lists files inside its checkpoint)"
    if any(part in ("..", ".") for part in rel.split("/")) or pure.as_posix() != rel:
        return "leaves the checkpoint or is not a normalised relative path"
    if rel == MANIFEST_NAME:
        return "is the manifest itself"
    return None


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def newest_valid(run_dir: Path, check=None) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The newest valid checkpoint of a run directory and the newer invalid ones skipped on the way (never deleted
    here): `newest_valid_in` with full verification (every file re-hashed).

    `check(info) -> list[str]`: more faults for a checkpoint that verified (the training path passes the load
    check of checkpoint/loadable.py); a checkpoint with any is skipped like one that fails verification."""
    run_dir = Path(run_dir)

    def verify(name: str) -> CheckpointInfo:
        progress = verifying(run_dir / name)
        info = verify_checkpoint(run_dir / name, on_bytes=lambda n, p=progress: p.update(p.done + n))
        progress.close()
        if info.valid and check is not None:
            info.faults.extend(check(info))
        return info

    return newest_valid_in(LocalStorage(run_dir), verify)


def newest_valid_in(storage: CheckpointStorage, verify) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """Discovery, wherever the checkpoints are: `verify(name) -> CheckpointInfo` on each `checkpoint-N` of
    `storage`, newest step first, until one is valid. Returns it and the newer ones skipped (each with its
    faults). Verification hashes a local copy (`verify_checkpoint`): for a bucket, `verify` downloads first
    (remote/fetch.py)."""
    skipped = []
    for name in reversed(checkpoint_names(storage)):
        info = verify(name)
        if info.valid:
            return info, skipped
        skipped.append(info)
    return None, skipped


def checkpoint_names(storage: CheckpointStorage) -> list[str]:
    """The `checkpoint-N` directories of a storage, oldest step first (`files.list_checkpoints`, by name)."""
    found = [(int(m.group(1)), name) for name in storage.listdir() if (m := CHECKPOINT_RE.match(name))]
    return [name for _, name in sorted(found) if storage.isdir(name)]


def quick_faults(storage: CheckpointStorage, name: str) -> list[str]:
    """What `verify_checkpoint(..., hash_files=False)` finds, through the storage interface, so retention judges
    a checkpoint in a bucket as it judges one on disk: the checkpoint a link; its manifest absent, unreadable or
    malformed; the step of the manifest and of the name apart; a listed file absent (or reached through a link)
    or of another size; trainer_state.json disagreeing with the manifest. No file is read besides the manifest
    and trainer_state.json (a full re-hash of old checkpoints on every save would cost more than the save).
    Never raises for what it finds; a storage that cannot be read raises its own error."""
    if storage.islink(name):
        return [f"{name} is a symbolic link; a checkpoint must be a directory inside the run"]
    try:
        text = storage.read_text(f"{name}/{MANIFEST_NAME}")
    except FileNotFoundError:
        return [NO_MANIFEST]
    except (OSError, UnicodeDecodeError) as e:
        return [f"{MANIFEST_NAME} is unreadable ({e})"]
    manifest, fault = parse_manifest(text)
    if fault:
        return [fault]
    faults = []
    m = CHECKPOINT_RE.match(name)
    if m and int(m.group(1)) != manifest["step"]:
        faults.append(f"{MANIFEST_NAME} says step {manifest['step']}, the directory name step {m.group(1)}")
    present = storage.sizes(name)
    for rel, meta in sorted(manifest["files"].items()):
        if rel not in present:
            faults.append(f"{rel}: missing")
        elif present[rel] != meta["bytes"]:
            faults.append(f"{rel}: wrong size ({present[rel]} bytes, manifest says {meta['bytes']})")
    if not faults and (TRAINER_STATE_NAME in present or storage.isfile(f"{name}/{TRAINER_STATE_NAME}")):
        try:
            state = storage.read_text(f"{name}/{TRAINER_STATE_NAME}")
        except (OSError, UnicodeDecodeError) as e:
            state = e if isinstance(e, OSError) else OSError(str(e))
        faults.extend(trainer_state_faults(state, manifest))
    return faults


def verifying(ckpt: Path, shown: str | None = None):
    """A Progress for hashing `ckpt` (the bytes its manifest lists): lines only for a checkpoint large enough to take
    more than a few seconds (gptresume/progress.py)."""
    from gptresume.progress import Progress, size

    manifest, _ = read_manifest(ckpt)
    total = sum(int(f.get("bytes", 0)) for f in (manifest or {}).get("files", {}).values()) or None
    return Progress(f"verifying {shown or ckpt.name}", total, unit=size)


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


