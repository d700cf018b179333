"""A node's copy of a checkpoint the bucket committed, when the nodes share no file system
(`checkpoint.shared_filesystem: false`): with separate disks every resume goes through the bucket's commit.

Why not a local commit per node: a node's directory cannot tell whether the other nodes' parts of its newest save
were committed (a node may have died mid-upload), and all nodes must resume from the same step. Only the bucket's
manifest says both, so global rank 0 plans from it, and each node copies what it needs. The local directories are
caches: a file already there with the size and digest the manifest records is reused (hard-linked), so a restart
on the same nodes downloads only what is missing, and a fresh node downloads its share.

- Global rank 0 (`fetch_committed`, inside the resume plan): the newest commit in the bucket that verifies,
  *whole*: every file, every rank's included, downloaded (or reused) and hashed, and the state test-loaded, before
  any rank trains from it. It lands in RUN_DIR/checkpoint-N with the bucket's manifest, so the plan, the change
  table and the tools see an ordinary committed checkpoint. A local checkpoint whose manifest is not the bucket's
  commit of that name is never resumed (`bucket_check`).
- Every other node (`fetch_part`): the files it needs (`parts.needed_files`: all but other ranks' own files),
  checked against the manifest rank 0 chose. No manifest is written there: that directory does not hold the whole
  checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME, list_checkpoints
from gptresume.checkpoint.manifest import CheckpointInfo, parse_manifest, verify_checkpoint
from gptresume.durable import fsync_dir
from gptresume.remote.books import NODE_BOOKS, download_books, download_ledger_books
from gptresume.remote.fetch import newest_valid_remote
from gptresume.remote.ledger import manifest_bytes_id, manifest_id
from gptresume.remote.parts import file_faults, needed_files
from gptresume.remote.url import Remote
from gptresume.rundir import remove_path

log = logging.getLogger(__name__)

NOT_IN_BUCKET = ("not the bucket's commit of this name (with checkpoint.shared_filesystem: false only a checkpoint "
                 "committed in checkpoint.remote is resumed: every node needs its part from there)")


def copy_files(remote: Remote, name: str, files: dict, wanted, dest: Path, reuse_from: Path | None,
               downloaded: list | None = None) -> list[str]:
    """Put each file of `wanted` (relative paths, entries in `files`) into `dest`: hard-linked (or copied) from
    `reuse_from` when the file there has the recorded size and digest, else downloaded (its name appended to
    `downloaded`); every file then checked against its entry. Returns the faults (empty: all there and right)."""
    faults = []
    if reuse_from is not None and (reuse_from.is_symlink() or not reuse_from.is_dir()):
        reuse_from = None
    for rel in wanted:
        meta, target = files[rel], dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = reuse_from / rel if reuse_from is not None else None
        if old is not None and old.is_file() and not old.is_symlink() and not file_faults(old, meta):
            try:
                os.link(old, target)
            except OSError:
                shutil.copyfile(old, target)
            continue
        try:
            remote.storage.get_file(f"{name}/{rel}", target)
        except FileNotFoundError:
            faults.append(f"{rel}: missing")
            continue
        if downloaded is not None:
            downloaded.append(rel)
        faults.extend(f"{rel}: {f}" for f in file_faults(target, meta))
    return faults


def _swap_in(scratch: Path, run_dir: Path, name: str) -> Path:
    """Replace RUN_DIR/NAME (a cache of an earlier save, or nothing) with the complete copy in `scratch`."""
    dest = run_dir / name
    if dest.exists() or dest.is_symlink():
        remove_path(dest)
    os.replace(scratch, dest)
    fsync_dir(run_dir)
    return dest


def fetch_committed(remote: Remote, run_dir: Path, check=None) -> tuple[CheckpointInfo | None, list[str]]:
    """Global rank 0: the newest checkpoint committed in the bucket that verifies whole (and passes `check`, the
    load test) into RUN_DIR/checkpoint-N, with the bucket's manifest. Newer ones that do not are skipped, each
    with a message naming its URL and fault. The run's books come with it (`download_books`: history.jsonl,
    protected.json, metrics.jsonl, where the bucket's copy is newer). Returns (its info or None, messages)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> CheckpointInfo:
        step = int(CHECKPOINT_RE.match(name).group(1))
        try:
            data = remote.storage.read_bytes(f"{name}/{MANIFEST_NAME}")
        except FileNotFoundError:
            return CheckpointInfo(run_dir / name, step, [f"no {MANIFEST_NAME} (not committed: a node's part never "
                                                         "arrived, or an upload cut short)"])
        manifest, why = parse_manifest(data.decode(errors="replace"))
        if manifest is None:
            return CheckpointInfo(run_dir / name, step, [why])
        local = run_dir / name
        if manifest_id(local) == manifest_bytes_id(data):  # this very commit is here already: hash it in place
            info = verify_checkpoint(local)
            if info.valid and check is not None:
                info.faults.extend(check(info))
            if info.valid:
                return info
        scratch = Path(tempfile.mkdtemp(prefix=".node-fetch.tmp-", dir=run_dir))
        try:
            copy = scratch / name
            copy.mkdir()
            faults = copy_files(remote, name, manifest["files"], sorted(manifest["files"]), copy, local)
            if faults:
                return CheckpointInfo(local, step, faults)
            (copy / MANIFEST_NAME).write_bytes(data)
            info = verify_checkpoint(copy)
            if info.valid and check is not None:
                info.faults.extend(check(info))
            if not info.valid:
                info.path = local
                return info
            info.path = _swap_in(copy, run_dir, name)
            return info
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    chosen, skipped = newest_valid_remote(remote, fetch)
    if chosen is not None:
        for book in download_books(remote, run_dir, NODE_BOOKS, extend=True):
            print(f"Downloaded {remote.label(book)} into {run_dir}", flush=True)
        segments = download_ledger_books(remote, run_dir)
        if segments:
            print(f"Downloaded {len(segments)} sample ledger segment(s) from {remote.label('ledger')} into {run_dir}",
                  flush=True)
        print(f"Checkpoint {remote.label(chosen.path.name)} (committed by every node, verified) is in "
              f"{chosen.path}", flush=True)
    return chosen, skipped


def bucket_check(remote: Remote, check=None):
    """The resume plan's load check (`check`), and: the local checkpoint's manifest is the bucket's commit of that
    name. So a checkpoint committed here but not there (the bucket lost it) is skipped by name, never resumed
    from: the other nodes could not get their parts."""

    def checked(info: CheckpointInfo) -> list[str]:
        faults = list(check(info)) if check is not None else []
        try:
            remote_id = manifest_bytes_id(remote.storage.read_bytes(f"{info.path.name}/{MANIFEST_NAME}"))
        except FileNotFoundError:
            remote_id = None
        if remote_id != manifest_id(info.path):
            faults.append(NOT_IN_BUCKET)
        return faults

    return checked


def fetch_part(remote: Remote, run_dir: Path, name: str, manifest: dict, ranks, world_size: int | None = None) -> Path:
    """Any node but global rank 0's: the files of checkpoint NAME that `ranks` resume from, into RUN_DIR/NAME,
    checked against `manifest` (the one rank 0 verified and plans from; not re-read from the bucket). Local files
    that match are reused. `world_size`: this run's process count (another than the manifest's: every rank's files,
    for the stream's re-split). Raises RuntimeError naming the files that could not be had."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    local = run_dir / name
    scratch = Path(tempfile.mkdtemp(prefix=".node-fetch.tmp-", dir=run_dir))
    try:
        copy = scratch / name
        copy.mkdir()
        elastic = world_size is not None and world_size != manifest.get("world_size", world_size)
        wanted, downloaded = needed_files(manifest["files"], ranks, every_rank=elastic), []
        faults = copy_files(remote, name, manifest["files"], wanted, copy, local, downloaded)
        if faults:
            raise RuntimeError(f"{remote.label(name)}: " + "; ".join(faults[:5]))
        path = _swap_in(copy, run_dir, name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{name}: this node's {len(wanted)} files are in {path} ({len(downloaded)} downloaded from {remote.url}, "
          f"{len(wanted) - len(downloaded)} already here)", flush=True)
    return path


def drop_caches(run_dir: Path, keep: str | None = None, below_step: int | None = None,
                keep_newer_commits: bool = False) -> list[str]:
    """Remove this node's local checkpoint directories (caches of its parts; the bucket holds every commit): all
    but `keep`, or only those older than `below_step`. `keep_newer_commits` (global rank 0 at a start): a local
    checkpoint with a manifest newer than `keep` stays (one the bucket no longer has: the plan skipped it by name,
    and its files are kept for a person to look at). Returns the names removed; a failed delete is logged and
    skipped."""
    removed = []
    keep_step = int(CHECKPOINT_RE.match(keep).group(1)) if keep else -1
    for path in list_checkpoints(run_dir):
        step = int(CHECKPOINT_RE.match(path.name).group(1))
        if path.name == keep or (below_step is not None and step >= below_step):
            continue
        if keep_newer_commits and step > keep_step and (path / MANIFEST_NAME).is_file():
            continue
        try:
            remove_path(path)
            removed.append(path.name)
        except OSError as e:
            log.warning("Could not remove %s (%s); skipping it", path, e)
    return removed
