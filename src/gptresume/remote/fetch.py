"""A start with no usable local checkpoint (a new machine, a wiped disk): the newest valid remote checkpoint is
downloaded into the run directory and verified like a local one, then resumed as if it had been there.

Discovery is `checkpoint.manifest.newest_valid_in` over the bucket, the function local discovery uses: newest step
first, each remote checkpoint downloaded to a scratch directory and verified (every file hashed, locally), until
one is valid. Newer remote checkpoints without a manifest (an upload cut short) or failing verification are
skipped, each with a message naming its URL and the fault; they are left on the remote (remote retention removes
them later). The run's books (remote/books.py: history.jsonl, protected.json) come with it when the run directory
has none: a rollback's data skip is recorded in the one, the checkpoints retention must keep in the other."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE
from gptresume.checkpoint.manifest import CheckpointInfo, newest_valid_in
from gptresume.durable import fsync_dir
from gptresume.remote.books import download_books
from gptresume.remote.ledger import Ledger
from gptresume.remote.transfer import download_checkpoint
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)


def newest_valid_remote(remote: Remote, fetch) -> tuple[CheckpointInfo | None, list[str]]:
    """`newest_valid_in` over the bucket with `fetch(name) -> CheckpointInfo`: the chosen checkpoint, and a logged
    line for each newer one skipped (why)."""
    chosen, skipped_infos = newest_valid_in(remote.storage, fetch)
    skipped = []
    for info in skipped_infos:
        message = f"skipping remote {remote.label(info.path.name)}: " + "; ".join(info.faults)
        log.warning(message)
        skipped.append(message)
    return chosen, skipped


def fetch_newest_valid(remote: Remote, run_dir: Path) -> tuple[Path | None, list[str]]:
    """Download the newest remote checkpoint that verifies into RUN_DIR/checkpoint-N (the caller holds the run
    lock). Returns (its local path or None, one message per skipped newer remote checkpoint)."""
    run_dir = Path(run_dir)

    def fetch(name: str) -> CheckpointInfo:
        """Download and verify; a valid copy is moved into the run directory."""
        if (run_dir / name).exists():  # one that failed its own checks here: kept for inspection, not replaced
            return CheckpointInfo(run_dir / name, int(CHECKPOINT_RE.match(name).group(1)),
                                  [f"a local {name} exists (not usable); the remote copy does not replace it"])
        scratch = Path(tempfile.mkdtemp(prefix=".remote-fetch.tmp-", dir=run_dir))
        try:
            info = download_checkpoint(remote, name, scratch / name)
            if info.valid:
                os.replace(scratch / name, run_dir / name)
                fsync_dir(run_dir)
                info.path = run_dir / name
            return info
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    chosen, skipped = newest_valid_remote(remote, fetch)
    if chosen is None:
        return None, skipped
    name = chosen.path.name
    Ledger(run_dir, remote.url).record(chosen.path)  # the remote holds this very commit, verified
    for book in download_books(remote, run_dir):  # a rollback's data skip, the protected checkpoints
        print(f"Downloaded {remote.label(book)} into {run_dir}", flush=True)
    print(f"Downloaded {remote.label(name)} (verified) into {run_dir / name}", flush=True)
    return chosen.path, skipped
