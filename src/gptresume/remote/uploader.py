"""The background uploader: every committed checkpoint goes to the remote in commit order while training goes on.

Training only enqueues (`submit`, microseconds); one thread uploads (transfer.upload_checkpoint: files, then the
manifest), verifies the remote copy against the manifest, records it in the ledger, sends the run's books
(books.py: history.jsonl, protected.json), then applies remote retention: the run directory's policy on the bucket
(`remote_keep_last`, keep_best, the protected checkpoints, never the newest verified upload).
A failure (network, credentials expired, server down) is logged with the checkpoint's name and retried with
exponential backoff (1 s doubling to 60 s) until it succeeds; the local checkpoint stays meanwhile (the ledger
guards local retention). At the end of training (done or stopped) `drain(timeout)` waits for the queue; what is
still pending then is uploaded by the next start of the run (the ledger lists what is verified).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from gptresume.checkpoint.files import MANIFEST_NAME, list_checkpoints
from gptresume.checkpoint.retention import protected
from gptresume.remote.books import upload_books
from gptresume.remote.ledger import Ledger
from gptresume.remote.transfer import delete_set_aside, remote_retention, upload_checkpoint, verify_uploaded
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


class Uploader:
    def __init__(self, remote: Remote, run_dir: Path, keep_last: int | None = None,
                 backoff: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S), *, keep_best: bool = False):
        """`keep_last`: checkpoint.remote_keep_last; `keep_best`: checkpoint.keep_best (the bucket keeps the lowest
        eval loss checkpoint as the run directory does)."""
        self.remote, self.run_dir, self.keep_last, self.keep_best = remote, Path(run_dir), keep_last, keep_best
        self.ledger = Ledger(run_dir, remote.url)
        self.backoff = backoff
        self.history: list[dict] = []
        """Per verified upload: name, seconds, attempts."""
        self.failures = 0
        self._queue: deque[Path] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- the training side

    def start(self) -> Uploader:
        """Start the thread, first queueing committed local checkpoints without a verified upload (a previous
        process stopped before its uploads finished)."""
        for ckpt in list_checkpoints(self.run_dir):
            if (ckpt / MANIFEST_NAME).is_file() and not self.ledger.is_verified(ckpt):
                self._queue.append(ckpt)
        self._thread = threading.Thread(target=self._loop, name="gptresume-upload", daemon=True)
        self._thread.start()
        return self

    def submit(self, ckpt: Path) -> None:
        """Queue a just-committed checkpoint (never blocks)."""
        with self._cond:
            if Path(ckpt) not in self._queue:
                self._queue.append(Path(ckpt))
            self._cond.notify_all()

    def may_delete(self, ckpt: Path) -> bool:
        return self.ledger.may_delete(ckpt)

    @property
    def pending(self) -> list[str]:
        with self._cond:
            return [p.name for p in self._queue]

    def drain(self, timeout: float | None) -> bool:
        """Wait until every queued upload is verified, at most `timeout` seconds; True when nothing is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=left if left is not None else 1.0)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- the thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                ckpt = self._queue[0]
                self._busy = True
            try:
                self._upload_with_retries(ckpt)
            finally:
                with self._cond:
                    if self._queue and self._queue[0] == ckpt:
                        self._queue.popleft()
                    self._busy = False
                    self._cond.notify_all()

    def _upload_with_retries(self, ckpt: Path) -> None:
        wait, attempt, t0 = self.backoff[0], 0, time.perf_counter()
        while not self._closed:
            if not (ckpt / MANIFEST_NAME).is_file():
                log.warning("Not uploading %s: it is no longer a committed checkpoint here", ckpt)
                return
            attempt += 1
            try:
                upload_checkpoint(self.remote, ckpt)
                faults = verify_uploaded(self.remote, ckpt.name, self.run_dir)
                if faults:
                    raise RuntimeError("the remote copy does not match the manifest: " + "; ".join(faults))
            except Exception as e:  # anything the storage raises: report, back off, try again
                self.failures += 1
                log.warning("Upload of %s to %s failed (attempt %d: %s); retrying in %.0fs. Training goes on; the "
                            "local checkpoint is kept until its upload is verified.", ckpt.name,
                            self.remote.url, attempt, _short(e), wait)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=wait)
                wait = min(wait * 2, self.backoff[1])
                continue
            self.ledger.record(ckpt)
            seconds = time.perf_counter() - t0
            self.history.append({"name": ckpt.name, "seconds": seconds, "attempts": attempt})
            log.info("Uploaded %s to %s and verified it (%s, %.2fs, %d attempt%s)", ckpt.name, self.remote.url,
                     _checkpoint_size(ckpt), seconds, attempt, "" if attempt == 1 else "s")
            if attempt > 1:
                print(f"Upload of {ckpt.name} to {self.remote.url} verified after {attempt} attempts", flush=True)
            self._books()  # protected.json before retention reads it
            self._retention(ckpt.name)
            return

    def _books(self) -> None:
        """After a verified upload: the remote copies a rollback set aside (left by a failed earlier try) are
        deleted, and the books (history.jsonl, protected.json) uploaded. Failures are retried after the next
        upload."""
        try:
            if self.ledger.set_aside:
                deleted = delete_set_aside(self.remote, self.ledger)
                if deleted:
                    log.info("Removed from %s (set aside by a rollback): %s", self.remote.url, ", ".join(deleted))
            upload_books(self.remote, self.run_dir)
        except Exception as e:
            log.warning("Updating %s after an upload failed (%s); trying again after the next upload",
                        self.remote.url, _short(e))

    def _retention(self, newest: str) -> None:
        """Remote retention after the upload of `newest` was verified. The run directory's protected names count
        too: they hold even when the upload of protected.json just failed."""
        try:
            deleted = remote_retention(self.remote, self.keep_last, newest, self.keep_best,
                                       also_protected=protected(self.run_dir))
        except Exception as e:
            log.warning("Remote retention at %s failed (%s); trying again after %s", self.remote.url, _short(e),
                        self.RETRY_AFTER)
            return
        if deleted:
            self._removed(deleted)
            log.info("Removed from %s: %s", self.remote.url, ", ".join(deleted))

    RETRY_AFTER = "the next upload"
    """When a failed retention (or books update) is tried again: what triggers this uploader's next round."""

    def _removed(self, deleted: list[str]) -> None:
        """Remote retention deleted these: the upload ledger marks its verified copies as gone remotely."""
        self.ledger.removed_remotely(deleted)


def _checkpoint_size(ckpt: Path) -> str:
    from gptresume.progress import size

    try:
        return size(sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()))
    except OSError:  # retention may remove it meanwhile
        return "size unknown"


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return text if len(text) <= 300 else text[:300] + "..."
