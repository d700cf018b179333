"""A start with no usable local checkpoint (a new machine, a wiped disk): the newest valid remote checkpoint is
downloaded into the run directory and verified like a local one, then resumed as if it had been there.

Newer remote checkpoints without a manifest (an upload cut short) or failing verification are skipped, each with
a message naming its URL and the fault; they are left on the remote (remote retention removes them later).
The run's history.jsonl comes with it when the run directory has none: a rollback's data skip is recorded there."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gptresume.durable import fsync_dir
from gptresume.remote.ledger import Ledger
from gptresume.remote.transfer import download_checkpoint, download_history, remote_checkpoints
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)


def fetch_newest_valid(remote: Remote, run_dir: Path) -> tuple[Path | None, list[str]]:
    """Download the newest remote checkpoint that verifies into RUN_DIR/checkpoint-N (the caller holds the run
    lock). Returns (its local path or None, one message per skipped newer remote checkpoint)."""
    run_dir = Path(run_dir)
    skipped = []
    for name in reversed(remote_checkpoints(remote)):
        if (run_dir / name).exists():
            continue  # a local checkpoint of this step exists and failed its own checks: not replaced here
        scratch = Path(tempfile.mkdtemp(prefix=".remote-fetch.tmp-", dir=run_dir))
        try:
            info = download_checkpoint(remote, name, scratch / name)
            if not info.valid:
                message = f"skipping remote {remote.label(name)}: " + "; ".join(info.faults)
                log.warning(message)
                skipped.append(message)
                continue
            os.replace(scratch / name, run_dir / name)
            fsync_dir(run_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        Ledger(run_dir, remote.url).record(run_dir / name)  # the remote holds this very commit, verified
        if download_history(remote, run_dir):  # a rollback's data skip (health/rollback.py) is recorded there
            print(f"Downloaded {remote.label('history.jsonl')} into {run_dir}", flush=True)
        print(f"Downloaded {remote.label(name)} (verified) into {run_dir / name}", flush=True)
        return run_dir / name, skipped
    return None, skipped
