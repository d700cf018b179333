"""Retention: which committed checkpoints to delete after a newer one is committed, and never anything else.

A checkpoint is deleted only after a newer one committed; the newest is never deleted; an uncommitted leftover
older than the newest commit is provably garbage.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME, list_checkpoints
from gptresume.checkpoint.manifest import read_trainer_state, verify_checkpoint
from gptresume.durable import fsync_dir

log = logging.getLogger(__name__)


def best_eval_step(ckpt: Path) -> int | None:
    """Step with the lowest eval_loss in the checkpoint's own log history (None without evaluations)."""
    evals = [(e["eval_loss"], e["step"]) for e in read_trainer_state(ckpt).get("log_history", []) if "eval_loss" in e]
    return min(evals)[1] if evals else None


def set_aside(ckpt: Path) -> Path:
    """Rename an existing directory out of the way of a new save of the same step (kept, never deleted)."""
    target = ckpt.with_name(f"{ckpt.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(ckpt, target)
    return target


def delete_checkpoint(path: Path) -> bool:
    """Delete a checkpoint so that no instant leaves a committed-but-damaged one: the manifest goes first (durably),
    then the files. A failure is logged and the checkpoint left (False), never swallowed."""
    try:
        manifest = path / MANIFEST_NAME
        if manifest.exists():
            manifest.unlink()
            fsync_dir(path)
        shutil.rmtree(path)
    except OSError as e:
        log.warning("Could not delete %s (%s); skipping it", path, e)
        return False
    return True


def apply_retention(run_dir: Path, keep_last: int | None, newest: Path, keep_best: bool = False) -> list[Path]:
    """After `newest` is committed: delete valid checkpoints older than the `keep_last` newest valid ones,
    and uncommitted leftovers older than `newest` (a save that crashed before a later one committed).

    With keep_best, the checkpoint at the step with the lowest eval loss is kept as well. Checkpoints with a
    manifest that fails verification are kept for inspection; `newest` is never deleted.
    """
    newest_step = int(CHECKPOINT_RE.match(newest.name).group(1))
    best = best_eval_step(newest) if keep_best else None
    deleted = []
    valid_seen = 0
    for path in reversed(list_checkpoints(run_dir)):
        step = int(CHECKPOINT_RE.match(path.name).group(1))
        if step > newest_step or path == newest:
            valid_seen += path == newest
            continue
        has_manifest = (path / MANIFEST_NAME).is_file()
        if not has_manifest:
            if delete_checkpoint(path):
                deleted.append(path)
            continue
        # Size checks only: a full re-hash of old checkpoints on every save would cost more than the save.
        if not verify_checkpoint(path, hash_files=False).valid:
            continue
        valid_seen += 1
        if keep_last is not None and valid_seen > keep_last and step != best and delete_checkpoint(path):
            deleted.append(path)
    return deleted
