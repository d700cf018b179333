"""One checkpoint up or down, what a remote run holds, and remote retention: all through the bucket's
`checkpoint.storage.FsspecStorage` (`Remote.storage`), the interface the run directory's retention and discovery
go through too.

The remote layout mirrors the local one: URL/checkpoint-N/<the same files>/manifest.json. As locally, the
manifest is the commit marker: it is uploaded after every other file, so a remote checkpoint without one is an
upload that never finished (skipped by a resume, removed by remote retention once older than the newest verified
upload).

Verification is always `checkpoint.manifest.verify_checkpoint` on a local copy: whatever digest a manifest
records (its format decides), the remote copy is checked the way a local checkpoint is.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME, checkpoint_name
from gptresume.checkpoint.manifest import CheckpointInfo, checkpoint_names, read_manifest, verify_checkpoint
from gptresume.checkpoint.retention import remove_checkpoint, retain
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)

# Test hook: "STEP:SECONDS" makes the upload of checkpoint-STEP sleep SECONDS after its first file, so a test can
# stop the storage server while an upload is observably in progress.
TEST_UPLOAD_DELAY_ENV = "GPTRESUME_TEST_UPLOAD_DELAY"


def upload_checkpoint(remote: Remote, ckpt: Path) -> None:
    """Upload a committed local checkpoint: the files its manifest lists, then the manifest (the remote commit
    marker). A manifest already on the remote for this name (an older upload of a checkpoint set aside and saved
    again) is deleted first, so no instant shows it over files of another save."""
    manifest, why = read_manifest(ckpt)
    if manifest is None:
        raise ValueError(f"{ckpt}: not committed ({why})")
    storage, name = remote.storage, ckpt.name
    marker = f"{name}/{MANIFEST_NAME}"
    if storage.isfile(marker):
        storage.remove(marker)
    for i, rel in enumerate(sorted(manifest["files"])):
        storage.put_file(ckpt / rel, f"{name}/{rel}")
        if i == 0:
            _delay_for_tests(name)
    storage.put_file(ckpt / MANIFEST_NAME, marker)


def download_checkpoint(remote: Remote, name: str, dest: Path) -> CheckpointInfo:
    """Download URL/NAME into `dest` (created) and verify it: its manifest, then every file it lists (no other
    file is fetched). Returns the verification; the faults name the remote checkpoint's files."""
    storage = remote.storage
    dest.mkdir(parents=True, exist_ok=True)
    info = CheckpointInfo(path=dest, step=_step(name))
    try:
        storage.get_file(f"{name}/{MANIFEST_NAME}", dest / MANIFEST_NAME)
    except FileNotFoundError:
        info.faults.append(f"no {MANIFEST_NAME} (the upload never finished)")
        return info
    manifest, why = read_manifest(dest)
    if manifest is None:
        info.faults.append(why)
        return info
    if manifest["step"] != info.step:
        info.faults.append(f"{MANIFEST_NAME} says step {manifest['step']}, the name step {info.step}")
        return info
    for rel in sorted(manifest["files"]):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            storage.get_file(f"{name}/{rel}", target)
        except FileNotFoundError:
            info.faults.append(f"{rel}: missing")
    if info.faults:
        return info
    checked = verify_checkpoint(dest)
    checked.step = info.step
    return checked


def verify_uploaded(remote: Remote, name: str, scratch_parent: Path) -> list[str]:
    """Faults of the remote copy of checkpoint NAME (empty: every file has the size and digest its manifest
    records), checked on a scratch copy under `scratch_parent` that is removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=f".remote-verify-{name}.tmp-", dir=scratch_parent))
    try:
        return download_checkpoint(remote, name, scratch / name).faults
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remote_checkpoints(remote: Remote) -> list[str]:
    """Names of the `checkpoint-N` directories under the remote URL, oldest step first ([] when there is none):
    `checkpoint.manifest.checkpoint_names` of the bucket."""
    return checkpoint_names(remote.storage)


def delete_remote_checkpoint(remote: Remote, name: str) -> bool:
    """Delete URL/NAME, the manifest first (no instant shows a committed-but-partial checkpoint): retention's
    `remove_checkpoint` on the bucket. Nothing there is nothing to do; a failure is logged and the checkpoint left
    (False)."""
    storage = remote.storage
    try:
        if not storage.isdir(name) and not storage.isfile(name):
            return True
    except Exception as e:  # network, permissions: the next retention tries again
        log.warning("Could not delete %s (%s); skipping it", remote.label(name), e)
        return False
    return remove_checkpoint(storage, name)


def delete_set_aside(remote: Remote, ledger) -> list[str]:
    """Delete the remote copies of the checkpoints a rollback set aside (`ledger.set_aside`), each only while the
    remote manifest is still the set-aside commit's (a newer save under that name is left alone). Returns the
    names deleted; the storage's errors propagate, and what was not done stays in the ledger for the next try."""
    from gptresume.remote.ledger import manifest_bytes_id

    deleted = []
    for name, sha in sorted(ledger.set_aside.items()):
        try:
            remote_sha = manifest_bytes_id(remote.storage.read_bytes(f"{name}/{MANIFEST_NAME}"))
        except FileNotFoundError:
            remote_sha = None
        if remote_sha == sha:
            if not delete_remote_checkpoint(remote, name):
                raise OSError(f"could not delete {remote.label(name)}")
            deleted.append(name)
        ledger.deleted_set_aside(name)
    return deleted


def remote_retention(remote: Remote, keep_last: int | None, newest: str, keep_best: bool = False,
                     also_protected=()) -> list[str]:
    """After the upload of `newest` (a name) was verified: the run directory's retention policy
    (`checkpoint.retention.retain`) applied to the bucket, with `remote_keep_last`. So the bucket keeps the
    `keep_last` newest valid checkpoints, the best one (keep_best, from the newest's trainer_state.json), those its
    protected.json or `also_protected` (the run directory's) names, and `newest` and everything newer; uncommitted
    uploads older than `newest` go. `newest` is a verified copy, so the only verified copy is never deleted.
    keep_last=None keeps every committed checkpoint. Returns the names deleted."""
    return retain(remote.storage, keep_last, newest, keep_best, also_protected=also_protected)


def _step(name: str) -> int:
    m = CHECKPOINT_RE.match(name)
    return int(m.group(1)) if m else -1


_delayed: set[str] = set()


def _delay_for_tests(name: str) -> None:
    spec = os.environ.get(TEST_UPLOAD_DELAY_ENV)
    if spec and name not in _delayed:  # once per process: a retry uploads without the delay
        at, _, seconds = spec.partition(":")
        if name == checkpoint_name(at):
            import time

            _delayed.add(name)
            log.warning("%s: the upload of %s sleeps %ss", TEST_UPLOAD_DELAY_ENV, name, seconds)
            time.sleep(float(seconds))
