"""Retention: which committed checkpoints to delete after a newer one is committed, and never anything else.

A checkpoint is deleted only after a newer one committed; the newest is never deleted; an uncommitted leftover
older than the newest commit (or of the step being saved again) is provably garbage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME, PROTECTED_NAME, list_checkpoints, list_set_aside
from gptresume.checkpoint.manifest import read_trainer_state, verify_checkpoint
from gptresume.durable import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)


def best_eval_step(ckpt: Path) -> int | None:
    """Step with the lowest eval_loss in the checkpoint's own log history (None without evaluations)."""
    evals = [(e["eval_loss"], e["step"]) for e in read_trainer_state(ckpt).get("log_history", []) if "eval_loss" in e]
    return min(evals)[1] if evals else None


def set_aside(ckpt: Path) -> Path:
    """Rename an existing directory out of the way of a new save of the same step (a link is renamed, never
    followed). Retention removes it once its step is older than the `keep_last` newest valid checkpoints."""
    target = ckpt.with_name(f"{ckpt.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(ckpt, target)
    return target


def clear_the_way(ckpt: Path) -> str:
    """Before a new save of step N: an existing `checkpoint-N` that was never committed (no manifest: a save of
    this step cut short by a crash or a kill) is garbage and deleted; a committed one (another timeline after an
    explicit --resume of an older checkpoint, or one damaged after its commit) is set aside. Returns what was done,
    for the log."""
    if ckpt.is_dir() and not ckpt.is_symlink() and not (ckpt / MANIFEST_NAME).is_file():
        if delete_checkpoint(ckpt):
            return f"Removed {ckpt}: a save of this step that never committed"
    return f"Moved {ckpt} aside to {set_aside(ckpt)} before saving the same step again"


def delete_checkpoint(path: Path) -> bool:
    """Delete a checkpoint so that no instant leaves a committed-but-damaged one: the manifest goes first (durably),
    then the files. A symbolic link is removed itself, never followed. A failure is logged and the checkpoint left
    (False), never swallowed."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return True
        manifest = path / MANIFEST_NAME
        if manifest.exists():
            manifest.unlink()
            fsync_dir(path)
        shutil.rmtree(path)
    except OSError as e:
        log.warning("Could not delete %s (%s); skipping it", path, e)
        return False
    return True


def protect(run_dir: Path, ckpt: Path, reason: str) -> None:
    """Keep `ckpt` whatever keep_last says (RUN_DIR/protected.json, name -> why): the last checkpoint with a finite
    loss before a NaN stop, the one a rollback resumed from. Only a person removes it (delete the entry or the
    file; `--overwrite` clears it with the run)."""
    entries = protected(run_dir)
    entries[Path(ckpt).name] = reason
    atomic_write_text(Path(run_dir) / PROTECTED_NAME, json.dumps(entries, indent=1, sort_keys=True))


def protected(run_dir: Path) -> dict[str, str]:
    """Checkpoint name -> why it is protected from retention. An unreadable file protects nothing and says so."""
    path = Path(run_dir) / PROTECTED_NAME
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s): no checkpoint is protected from retention", path, e)
        return {}
    return {str(k): str(v) for k, v in entries.items()}


def apply_retention(run_dir: Path, keep_last: int | None, newest: Path, keep_best: bool = False,
                    may_delete=None) -> list[Path]:
    """After `newest` is committed: delete valid checkpoints older than the `keep_last` newest valid ones,
    uncommitted leftovers older than `newest` (a save that crashed before a later one committed), and committed
    checkpoints that fail verification or were set aside once they are older than the `keep_last` newest valid
    ones (until then they are kept for inspection).

    With keep_best, the checkpoint at the step with the lowest eval loss is kept as well, and a checkpoint named in
    RUN_DIR/protected.json (`protect`) always is. `newest` and anything newer than it are never deleted;
    keep_last=None keeps every committed checkpoint.

    `may_delete(path) -> bool`: a guard asked before a valid checkpoint outside the window is deleted (with
    checkpoint.remote: False until its upload is verified, so the only verified copy is never deleted); one it
    refuses stays until a later retention, after the guard agrees.
    """
    newest_step = int(CHECKPOINT_RE.match(newest.name).group(1))
    keep = protected(run_dir)
    best = best_eval_step(newest) if keep_best else None
    deleted = []
    valid_seen = 0
    floor = None  # step of the keep_last-th newest valid checkpoint: what is older is outside the window

    def delete(path: Path) -> None:
        if path.name in keep:
            return
        if delete_checkpoint(path):
            deleted.append(path)

    for path in reversed(list_checkpoints(run_dir)):
        step = int(CHECKPOINT_RE.match(path.name).group(1))
        if path != newest and step >= newest_step:
            continue  # another timeline ahead of this one: never touched here
        if path != newest and not (path / MANIFEST_NAME).is_file():
            delete(path)
            continue
        # Size checks only: a full re-hash of old checkpoints on every save would cost more than the save.
        if path != newest and not verify_checkpoint(path, hash_files=False).valid:
            if floor is not None and step != best:
                delete(path)
            continue
        valid_seen += 1
        if keep_last is not None and valid_seen == keep_last:
            floor = step
        if keep_last is not None and valid_seen > keep_last and step != best:
            if may_delete is None or may_delete(path):
                delete(path)
    for step, path in list_set_aside(run_dir):
        if floor is not None and step < floor:
            delete(path)
    return deleted
