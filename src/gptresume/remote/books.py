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
from pathlib import Path

from gptresume.checkpoint.files import PROTECTED_NAME
from gptresume.durable import atomic_write_bytes
from gptresume.remote.url import Remote
from gptresume.rundir import HISTORY_NAME

log = logging.getLogger(__name__)

BOOK_NAMES = (HISTORY_NAME, PROTECTED_NAME)


def upload_books(remote: Remote, run_dir: Path) -> list[str]:
    """Every book the run directory has, to URL/<name>. Returns the names uploaded; the storage's errors
    propagate (the caller retries later)."""
    uploaded = []
    for name in BOOK_NAMES:
        local = Path(run_dir) / name
        if local.is_file():
            remote.storage.put_file(local, name)
            uploaded.append(name)
    return uploaded


def download_books(remote: Remote, run_dir: Path) -> list[str]:
    """Each book the bucket has and the run directory lacks (a wiped disk), written atomically. Returns the names
    downloaded. history.jsonl uploaded in the middle of an append may end in a torn line: it is cut there."""
    fetched = []
    for name in BOOK_NAMES:
        local = Path(run_dir) / name
        if local.exists():
            continue
        try:
            data = remote.storage.read_bytes(name)
        except FileNotFoundError:
            continue
        if name == HISTORY_NAME:
            data = data[: data.rfind(b"\n") + 1]
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
