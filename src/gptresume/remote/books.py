"""The run's books in the bucket: `history.jsonl` and `protected.json` beside the checkpoints.

- history.jsonl records a rollback's data skip: a resume from the bucket on a wiped disk reads it there.
- protected.json names the checkpoints retention must keep (checkpoint/retention.py `protect`: the newest good one
  before a NaN stop, the one a rollback resumed from). Remote retention reads the bucket's copy (and the run
  directory's), so `remote_keep_last` keeps them as `keep_last` does on disk; a start on a wiped disk downloads
  it, so that machine's retention keeps them too.

Both are uploaded after every verified checkpoint upload (uploader.py, before remote retention), at a rollback
(rollback.py) and after a health stop (`after_protect`), and downloaded into a run directory that has none with
the checkpoint a start fetches (fetch.py). Only a local copy is ever uploaded: a bucket's protected.json is never
deleted or emptied by gptresume (removing a protection there is a person's decision, as on disk).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gptresume.checkpoint.files import PROTECTED_NAME
from gptresume.durable import atomic_write_bytes
from gptresume.remote.url import Remote
from gptresume.rundir import HISTORY_NAME, METRICS_NAME

log = logging.getLogger(__name__)

BOOK_NAMES = (HISTORY_NAME, PROTECTED_NAME)
NODE_BOOKS = (*BOOK_NAMES, METRICS_NAME)
"""With checkpoint.shared_filesystem: false, metrics.jsonl too: global rank 0 may be on another node at the next
start (or every disk may be new), and the loss curve must stay one curve across resumes."""
JSONL_BOOKS = (HISTORY_NAME, METRICS_NAME)


def upload_books(remote: Remote, run_dir: Path, names=BOOK_NAMES) -> list[str]:
    """Every book the run directory has, to URL/<name>. Returns the names uploaded; the storage's errors
    propagate (the caller retries later)."""
    uploaded = []
    for name in names:
        local = Path(run_dir) / name
        if local.is_file():
            remote.storage.put_file(local, name)
            uploaded.append(name)
    return uploaded


def download_books(remote: Remote, run_dir: Path, names=BOOK_NAMES, extend: bool = False) -> list[str]:
    """Each book the bucket has and the run directory lacks (a wiped disk), written atomically. Returns the names
    downloaded. A JSON-lines book uploaded in the middle of an append may end in a torn line: it is cut there.

    `extend` (several nodes without a shared file system, where global rank 0 may run on another node than last
    time): a local JSON-lines book is also replaced by the bucket's copy unless it begins with it. A local copy
    that begins with the bucket's is this node's own continuation (lines written after the last upload); any
    other was left by an earlier start on this node, while another node kept the books since."""
    fetched = []
    for name in names:
        local = Path(run_dir) / name
        if local.exists() and not (extend and name in JSONL_BOOKS and local.is_file()):
            continue
        try:
            data = remote.storage.read_bytes(name)
        except FileNotFoundError:
            continue
        if name in JSONL_BOOKS:
            data = data[: data.rfind(b"\n") + 1]
        if local.exists() and local.read_bytes().startswith(data):
            continue
        atomic_write_bytes(local, data)
        fetched.append(name)
    return fetched


def after_protect(remote: Remote, run_dir: Path) -> bool:
    """After `protect` named a checkpoint outside an upload (a health stop, once the uploads are done): the books
    go to the bucket now, so the protection holds there even if this disk is lost before the next start. A
    failure is a warning (the next verified upload sends them again)."""
    try:
        upload_books(remote, run_dir)
    except Exception as e:  # the storage's own errors
        log.warning("Could not upload %s to %s (%s: %s); it is sent again after the next verified upload. Until "
                    "then remote retention on another machine does not know which checkpoints are protected.",
                    PROTECTED_NAME, remote.url, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return False
    return True


# ---------------------------------------------------------------- the sample ledger's books (separate disks)

SEGMENT_GLOB = "steps-*.npz"


def upload_ledger_books(remote: Remote, run_dir: Path) -> list[str]:
    """checkpoint.shared_filesystem: false: URL/ledger/ made equal to RUN_DIR/ledger/'s segments (global rank 0's,
    after each commit): the new ones uploaded, the ones the local books set aside (a resume from an earlier
    checkpoint abandoned them) deleted. Segments are named by their steps and never change once booked, so a name
    present with the same size is the same segment. Returns the names uploaded."""
    from gptresume.rundir import SAMPLE_LEDGER_DIR

    local = {p.name: p for p in (Path(run_dir) / SAMPLE_LEDGER_DIR).glob(SEGMENT_GLOB)}
    if not local and not remote.storage.listdir(SAMPLE_LEDGER_DIR):
        return []
    there = remote.storage.sizes(SAMPLE_LEDGER_DIR)
    uploaded = []
    for name, path in sorted(local.items()):
        if there.get(name) != path.stat().st_size:
            remote.storage.put_file(path, f"{SAMPLE_LEDGER_DIR}/{name}")
            uploaded.append(name)
    for name in sorted(set(there) - set(local)):
        if "/" not in name:
            remote.storage.remove(f"{SAMPLE_LEDGER_DIR}/{name}")
    return uploaded


def download_ledger_books(remote: Remote, run_dir: Path) -> list[str]:
    """Global rank 0 at a start with separate disks: its RUN_DIR/ledger/ takes the bucket's segments unless it
    already holds every one of them (this node kept the books since). Local segments the bucket does not hold are
    set aside into ledger/abandoned/ (an earlier start on this node booked them; another node kept the books
    since). Returns the names downloaded."""
    from gptresume.ledger.books import _set_aside
    from gptresume.rundir import SAMPLE_LEDGER_DIR

    there = {n for n in remote.storage.listdir(SAMPLE_LEDGER_DIR) if n.startswith("steps-") and n.endswith(".npz")}
    root = Path(run_dir) / SAMPLE_LEDGER_DIR
    local = {p.name for p in root.glob(SEGMENT_GLOB)}
    if there <= local:
        return []
    root.mkdir(parents=True, exist_ok=True)
    for name in sorted(local - there):
        _set_aside(run_dir, root / name)
    fetched = []
    for name in sorted(there - local):
        tmp = root / f".{name}.tmp-download"
        remote.storage.get_file(f"{SAMPLE_LEDGER_DIR}/{name}", tmp)
        os.replace(tmp, root / name)
        fetched.append(name)
    return fetched
