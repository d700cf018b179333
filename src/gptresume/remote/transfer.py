"""One checkpoint up or down, and what a remote run holds.

The remote layout mirrors the local one: URL/checkpoint-N/<the same files>/manifest.json. As locally, the
manifest is the commit marker: it is uploaded after every other file, so a remote checkpoint without one is an
upload that never finished (skipped by a resume, removed by remote retention once older than the kept ones).

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
from gptresume.checkpoint.manifest import CheckpointInfo, read_manifest, verify_checkpoint
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
    fs, name = remote.fs, ckpt.name
    marker = remote.path(name, MANIFEST_NAME)
    if fs.exists(marker):
        fs.rm_file(marker)
    for i, rel in enumerate(sorted(manifest["files"])):
        fs.makedirs(os.path.dirname(remote.path(name, rel)), exist_ok=True)
        fs.put_file(str(ckpt / rel), remote.path(name, rel))
        if i == 0:
            _delay_for_tests(name)
    fs.put_file(str(ckpt / MANIFEST_NAME), marker)
    fs.invalidate_cache()


def download_checkpoint(remote: Remote, name: str, dest: Path) -> CheckpointInfo:
    """Download URL/NAME into `dest` (created) and verify it: its manifest, then every file it lists (no other
    file is fetched). Returns the verification; the faults name the remote checkpoint's files."""
    fs = remote.fs
    dest.mkdir(parents=True, exist_ok=True)
    info = CheckpointInfo(path=dest, step=_step(name))
    try:
        fs.get_file(remote.path(name, MANIFEST_NAME), str(dest / MANIFEST_NAME))
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
            fs.get_file(remote.path(name, rel), str(target))
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
    """Names of the `checkpoint-N` directories under the remote URL, oldest step first ([] when there is none)."""
    fs = remote.fs
    try:
        entries = fs.ls(remote.root, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    except TypeError:  # a file system whose ls takes no refresh
        entries = fs.ls(remote.root, detail=False)
    names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries}
    return sorted((n for n in names if CHECKPOINT_RE.match(n)), key=_step)


def delete_remote_checkpoint(remote: Remote, name: str) -> bool:
    """Delete URL/NAME, the manifest first (no instant shows a committed-but-partial checkpoint). A failure is
    logged and the checkpoint left (False)."""
    fs = remote.fs
    try:
        marker = remote.path(name, MANIFEST_NAME)
        if fs.exists(marker):
            fs.rm_file(marker)
        if fs.exists(remote.path(name)):
            fs.rm(remote.path(name), recursive=True)
    except Exception as e:  # network, permissions: the next retention tries again
        log.warning("Could not delete %s (%s); skipping it", remote.label(name), e)
        return False
    return True


def delete_set_aside(remote: Remote, ledger) -> list[str]:
    """Delete the remote copies of the checkpoints a rollback set aside (`ledger.set_aside`), each only while the
    remote manifest is still the set-aside commit's (a newer save under that name is left alone). Returns the
    names deleted; the storage's errors propagate, and what was not done stays in the ledger for the next try."""
    from gptresume.remote.ledger import manifest_bytes_id

    deleted = []
    for name, sha in sorted(ledger.set_aside.items()):
        try:
            remote_sha = manifest_bytes_id(remote.fs.cat_file(remote.path(name, MANIFEST_NAME)))
        except FileNotFoundError:
            remote_sha = None
        if remote_sha == sha:
            if not delete_remote_checkpoint(remote, name):
                raise OSError(f"could not delete {remote.label(name)}")
            deleted.append(name)
        ledger.deleted_set_aside(name)
    return deleted


def upload_history(remote: Remote, run_dir: Path) -> None:
    """RUN_DIR/history.jsonl to URL/history.jsonl: a resume from the bucket reads a rollback's data skip there,
    and `status URL` the run's events."""
    from gptresume.rundir import HISTORY_NAME

    local = Path(run_dir) / HISTORY_NAME
    if local.is_file():
        remote.fs.put_file(str(local), remote.path(HISTORY_NAME))


def download_history(remote: Remote, run_dir: Path) -> bool:
    """URL/history.jsonl into a run directory that has none (a wiped disk); True when one was fetched."""
    from gptresume.durable import atomic_write_text
    from gptresume.rundir import HISTORY_NAME

    local = Path(run_dir) / HISTORY_NAME
    if local.exists():
        return False
    try:
        data = remote.fs.cat_file(remote.path(HISTORY_NAME))
    except FileNotFoundError:
        return False
    text = data.decode(errors="replace")
    atomic_write_text(local, text[: text.rfind("\n") + 1])  # an upload taken mid-append ends in a torn line
    return True


def remote_retention(remote: Remote, keep_last: int | None, verified: list[str]) -> list[str]:
    """After a remote checkpoint is verified: delete remote checkpoints older than the `keep_last` newest verified
    ones (`verified`: names whose remote copy this run verified). Nothing newer than that floor is touched, so
    the newest verified copy is never deleted. keep_last=None keeps everything."""
    kept = sorted(verified, key=_step)[-keep_last:] if keep_last else []
    if not kept or len(verified) < keep_last:
        return []
    floor = _step(kept[0])
    deleted = []
    for name in remote_checkpoints(remote):
        if _step(name) < floor and delete_remote_checkpoint(remote, name):
            deleted.append(name)
    return deleted


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
