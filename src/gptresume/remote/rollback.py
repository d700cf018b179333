"""A rollback on a run with checkpoint.remote: the checkpoints it set aside must not come back from the bucket, and
its data skip must reach a resume from the bucket.

The rollback (training/health.py) moves the checkpoints after its target aside locally, but their verified remote
copies are still URL/checkpoint-N, the newest there: a start on a wiped disk would download one, and remote
retention would count them as the newest verified copies and delete older, good ones. The skip is recorded in
history.jsonl, which a wiped disk loses too. So, at the rollback and before training goes on, the ledger forgets
those copies and lists them for deletion, they are deleted (each only while the remote manifest is still the
set-aside commit's), and the books are uploaded (history.jsonl, and protected.json naming the rollback's target:
books.py; a resume from the bucket downloads them: remote/fetch.py). What
fails (the storage unreachable) is retried after every later upload (uploader.py); the warning says what a resume
from the bucket could meet until then.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gptresume.checkpoint.files import ROLLED_BACK_RE, checkpoint_name
from gptresume.remote.ledger import Ledger, manifest_id
from gptresume.remote.books import upload_books
from gptresume.remote.transfer import delete_set_aside
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)


def after_rollback(remote: Remote, run_dir: Path, moved: list[Path]) -> list[str]:
    """`moved`: the set-aside directories (`checkpoint-N.rolled-back-*`). Returns the remote copies deleted."""
    ledger = Ledger(run_dir, remote.url)
    ledger.rolled_back({checkpoint_name(ROLLED_BACK_RE.match(p.name).group(1)): manifest_id(p) for p in moved})
    try:
        deleted = delete_set_aside(remote, ledger)
        upload_books(remote, run_dir)
    except Exception as e:  # the storage's own errors: retried after the next upload
        names = ", ".join(sorted(ledger.set_aside)) or "none"
        log.warning("After the rollback, %s could not be updated (%s: %s). Set-aside checkpoints still there: %s. "
                    "Until the next upload succeeds, a resume from the bucket on another machine may pick one of "
                    "them or miss the rollback's data skip.", remote.url, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "", names)
        return []
    if deleted:
        print(f"Removed from {remote.url} (set aside by the rollback): {', '.join(deleted)}", flush=True)
    return deleted
