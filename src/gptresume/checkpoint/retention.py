"""Retention: which checkpoints to delete after a newer one is committed, and never anything else; one policy for
the run directory and the bucket.

`to_delete` is the policy: a pure function of a listing (name, step, committed?, valid?, set aside?), the newest
commit, keep_last, the best step, the protected names and a guard. `retain` applies it to any
`checkpoint.storage.CheckpointStorage`: the run directory (`apply_retention`) and the `checkpoint.remote` bucket
(remote/transfer.py `remote_retention`) keep the same checkpoints for the same listing.

A checkpoint is deleted only after a newer one committed; the newest is never deleted; an uncommitted leftover
older than the newest commit (or of the step being saved again) is provably garbage.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from gptresume.checkpoint.files import (
    CHECKPOINT_RE,
    MANIFEST_NAME,
    PROTECTED_NAME,
    SET_ASIDE_RE,
    TRAINER_STATE_NAME,
)
from gptresume.checkpoint.manifest import quick_faults
from gptresume.checkpoint.storage import CheckpointStorage, LocalStorage
from gptresume.durable import atomic_write_text

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Listed:
    """One entry of a run's storage, as retention sees it."""

    name: str
    """`checkpoint-N`, or `checkpoint-N.replaced-...` (set aside out of a new save's way)."""
    step: int
    committed: bool = True
    """Its manifest exists (the commit marker)."""
    valid: bool | None = True
    """It passes the cheap check (`manifest.quick_faults`: manifest, sizes, trainer state); None: not checked
    (retention never needs it: the newest, what is at or above its step, keep_last None)."""
    set_aside: bool = False


def to_delete(listing: Iterable[Listed], newest: str, keep_last: int | None, best_step: int | None = None,
              protected: Collection[str] = (), may_delete: Callable[[str], bool] | None = None) -> list[str]:
    """What retention deletes, in order, after `newest` (a name) was committed; nothing else is touched.

    - the `keep_last` newest valid checkpoints are kept (keep_last None: every committed one);
    - `newest`, and everything at or above its step (another timeline ahead of this one), are never deleted;
    - an uncommitted checkpoint older than `newest` (a save that crashed before a later one committed) goes;
    - a committed one that fails the check, and a set-aside one, go once older than the keep_last newest valid
      ones (until then they are kept for inspection);
    - the checkpoint of `best_step` (keep_best: the lowest eval loss) and every `protected` name are kept;
    - `may_delete(name) -> bool`: a guard asked before a valid checkpoint outside the window is deleted (with
      checkpoint.remote, locally: False until its upload is verified); one it refuses stays until a later
      retention, after the guard agrees.
    """
    entries = list(listing)
    newest_step = int(CHECKPOINT_RE.match(newest).group(1))
    protected = set(protected)
    out = []
    valid_seen = 0
    floor = None  # step of the keep_last-th newest valid checkpoint: what is older is outside the window

    def delete(name: str) -> None:
        if name not in protected:
            out.append(name)

    for e in sorted((e for e in entries if not e.set_aside), key=lambda e: e.step, reverse=True):
        if e.name != newest and e.step >= newest_step:
            continue  # another timeline ahead of this one: never touched here
        if e.name != newest and not e.committed:
            delete(e.name)
            continue
        if e.name != newest and not e.valid:
            if floor is not None and e.step != best_step:
                delete(e.name)
            continue
        valid_seen += 1
        if keep_last is not None and valid_seen == keep_last:
            floor = e.step
        if keep_last is not None and valid_seen > keep_last and e.step != best_step and e.name not in protected:
            if may_delete is None or may_delete(e.name):
                delete(e.name)
    for e in sorted((e for e in entries if e.set_aside), key=lambda e: (e.step, e.name)):
        if floor is not None and e.step < floor:
            delete(e.name)
    return out


# ---------------------------------------------------------------- applied to a storage


def survey(storage: CheckpointStorage, newest: str | None = None, checked: bool = True) -> list[Listed]:
    """The listing `to_delete` decides on: every `checkpoint-N` directory (committed? valid?) and every set-aside
    one of `storage`. Validity is checked (`quick_faults`) only where retention reads it: not for `newest` and what
    is at or above its step, and not at all with `checked=False` (keep_last None)."""
    newest_step = int(CHECKPOINT_RE.match(newest).group(1)) if newest else None
    listing = []
    for name in storage.listdir():
        if m := SET_ASIDE_RE.match(name):
            listing.append(Listed(name, int(m.group(1)), set_aside=True))
        elif (m := CHECKPOINT_RE.match(name)) and storage.isdir(name):
            step = int(m.group(1))
            committed = storage.isfile(f"{name}/{MANIFEST_NAME}")
            skip = not checked or not committed or (newest_step is not None and (name == newest or step >= newest_step))
            listing.append(Listed(name, step, committed, None if skip else not quick_faults(storage, name)))
    return listing


def retain(storage: CheckpointStorage, keep_last: int | None, newest: str, keep_best: bool = False,
           may_delete: Callable[[str], bool] | None = None, also_protected: Collection[str] = ()) -> list[str]:
    """Apply `to_delete` to `storage` after `newest` (a name) was committed there: the best step read from the
    newest's trainer_state.json, the protected names from the storage's protected.json (plus `also_protected`).
    Returns the names deleted; a failed delete is logged and left for the next retention."""
    listing = survey(storage, newest, checked=keep_last is not None)
    best = best_step_in(storage, newest) if keep_best else None
    keep = set(read_protected(storage)) | set(also_protected)
    return [name for name in to_delete(listing, newest, keep_last, best, keep, may_delete)
            if remove_checkpoint(storage, name)]


def remove_checkpoint(storage: CheckpointStorage, name: str) -> bool:
    """Delete a checkpoint so that no instant leaves a committed-but-damaged one: the manifest goes first (durably,
    on a local disk), then the files. A link is removed itself, never followed. A failure is logged and the
    checkpoint left (False), never swallowed."""
    try:
        if storage.islink(name) or not storage.isdir(name):
            storage.remove(name)
            return True
        manifest = f"{name}/{MANIFEST_NAME}"
        if storage.isfile(manifest):
            storage.remove(manifest)
        storage.remove(name)
    except OSError as e:
        log.warning("Could not delete %s (%s); skipping it", storage.label(name), e)
        return False
    return True


def best_step_in(storage: CheckpointStorage, name: str) -> int | None:
    """Step with the lowest eval_loss in checkpoint `name`'s own log history (trainer_state.json); None without
    evaluations, or when the file cannot be read (said in the log: then no checkpoint is kept as the best)."""
    try:
        state = json.loads(storage.read_text(f"{name}/{TRAINER_STATE_NAME}"))
        history = state.get("log_history", []) if isinstance(state, dict) else []
        evals = [(e["eval_loss"], e["step"]) for e in history if isinstance(e, dict) and "eval_loss" in e]
    except (OSError, ValueError, TypeError, KeyError) as e:
        log.warning("keep_best: %s is unreadable (%s); no checkpoint is kept as the best",
                    storage.label(f"{name}/{TRAINER_STATE_NAME}"), e)
        return None
    return min(evals)[1] if evals else None


def best_eval_step(ckpt: Path) -> int | None:
    """Step with the lowest eval_loss in the checkpoint's own log history (None without evaluations)."""
    ckpt = Path(ckpt)
    return best_step_in(LocalStorage(ckpt.parent), ckpt.name)


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
    """`remove_checkpoint` in the directory holding `path`."""
    path = Path(path)
    return remove_checkpoint(LocalStorage(path.parent), path.name)


def protect(run_dir: Path, ckpt: Path, reason: str) -> None:
    """Keep `ckpt` whatever keep_last says (RUN_DIR/protected.json, name -> why): the last checkpoint with a finite
    loss before a NaN stop, the one a rollback resumed from. Only a person removes it (delete the entry or the
    file; `--overwrite` clears it with the run)."""
    entries = protected(run_dir)
    entries[Path(ckpt).name] = reason
    atomic_write_text(Path(run_dir) / PROTECTED_NAME, json.dumps(entries, indent=1, sort_keys=True))


def protected(run_dir: Path) -> dict[str, str]:
    """Checkpoint name -> why it is protected from retention. An unreadable file protects nothing and says so."""
    return read_protected(LocalStorage(run_dir))


def read_protected(storage: CheckpointStorage) -> dict[str, str]:
    """`protected` for any storage: its protected.json (a bucket holds the run directory's copy, uploaded with the
    books: remote/books.py)."""
    try:
        entries = json.loads(storage.read_text(PROTECTED_NAME))
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        log.warning("%s is unreadable (%s): no checkpoint is protected from retention", storage.label(PROTECTED_NAME),
                    e)
        return {}
    return {str(k): str(v) for k, v in entries.items()}


def apply_retention(run_dir: Path, keep_last: int | None, newest: Path, keep_best: bool = False,
                    may_delete=None) -> list[Path]:
    """`retain` in the run directory, after `newest` is committed: valid checkpoints older than the `keep_last`
    newest valid ones go, uncommitted leftovers older than `newest` (a save that crashed before a later one
    committed) go, and committed checkpoints that fail the cheap check or were set aside go once they are older
    than the `keep_last` newest valid ones (until then they are kept for inspection).

    With keep_best, the checkpoint at the step with the lowest eval loss is kept as well, and a checkpoint named in
    RUN_DIR/protected.json (`protect`) always is. `newest` and anything newer than it are never deleted;
    keep_last=None keeps every committed checkpoint.

    `may_delete(path) -> bool`: a guard asked before a valid checkpoint outside the window is deleted (with
    checkpoint.remote: False until its upload is verified, so the only verified copy is never deleted); one it
    refuses stays until a later retention, after the guard agrees.
    """
    run_dir = Path(run_dir)
    guard = (lambda name: may_delete(run_dir / name)) if may_delete is not None else None
    return [run_dir / name for name in retain(LocalStorage(run_dir), keep_last, Path(newest).name, keep_best, guard)]
