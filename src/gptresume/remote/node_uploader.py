"""The upload thread of one node when the nodes share no file system (`checkpoint.shared_filesystem: false`).

Who writes what:
- every node's leader (its local rank 0) runs one NodeUploader: per save it hashes the files its node's ranks
  wrote into its local checkpoint-N, uploads them, reads them back and verifies them, then writes its part list
  (remote/parts.py); afterwards its local checkpoint directories older than that save are dropped (caches: the
  bucket holds every commit);
- global rank 0's NodeUploader then commits (remote/commit.py): once every node's part list of this attempt is in
  the bucket it writes URL/checkpoint-N/manifest.json, then the run's books (history.jsonl, protected.json,
  metrics.jsonl: only rank 0 writes them) and applies remote retention, as the one-node uploader does.

Training only enqueues (`submit_part`, from the commit of a save, after every rank's files are on its node's disk);
hashing, uploads, the wait for the other nodes and the commit run here, so the training step never waits for them
and no collective is added. Failures are retried with backoff (uploader.py), except a set of parts that cannot
make one checkpoint (remote/commit.py PartError), which is reported and left uncommitted. At the end of training or
after a stop `drain` waits for this node's queue and, on the other nodes, until rank 0's commit of the last part is
in the bucket, so a node's exit 75 means the checkpoint is committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE
from gptresume.remote.books import NODE_BOOKS, upload_books, upload_ledger_books
from gptresume.remote.commit import POLL_FIRST_S, POLL_MAX_S, commit_checkpoint, committed_by, wait_for_parts
from gptresume.remote.materialize import drop_caches
from gptresume.remote.parts import PartError, part_record, upload_part
from gptresume.remote.uploader import Uploader, _short
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)


@dataclass
class NodeRole:
    """What one node's uploader needs to know about the job (training/nodes.py finds it at the start)."""

    node: int
    """This node's index (torchrun's GROUP_RANK)."""
    ranks: list[int]
    """The global ranks on this node."""
    nodes: dict[int, list[int]]
    """Every node's ranks: the parts a commit waits for."""
    attempt: str
    """Global rank 0's token for this start: the parts (and the commit) of this process's saves."""
    commits: bool
    """Global rank 0's node: commits, keeps the books, applies remote retention."""
    world_size: int


class NodeUploader(Uploader):
    def __init__(self, remote: Remote, run_dir: Path, role: NodeRole, keep_last: int | None = None,
                 keep_best: bool = False, backoff: tuple[float, float] | None = None):
        super().__init__(remote, run_dir, keep_last, *(() if backoff is None else (backoff,)), keep_best=keep_best)
        self.role = role
        self._jobs: dict[Path, tuple] = {}
        self.last_part: str | None = None
        """The newest checkpoint whose part this node uploaded and verified."""
        self.committed: list[str] = []
        """Checkpoints committed in the bucket by this process (global rank 0's node only)."""
        self.refused: list[str] = []
        """Checkpoints whose parts could not make one checkpoint (reported; never committed)."""

    def start(self) -> NodeUploader:
        """Start the thread. Unlike the one-node uploader nothing left by an earlier process is queued: its parts
        belong to its own attempt, which can no longer commit (the resume took the bucket's newest commit)."""
        import threading

        self._thread = threading.Thread(target=self._loop, name="gptresume-node-upload", daemon=True)
        self._thread.start()
        return self

    def submit_part(self, ckpt: Path, fields: dict | None, started: float, after_commit=None) -> None:
        """Queue this node's part of the save `ckpt` (every rank's files are on this node's disk). `fields`: on
        global rank 0 what the manifest records besides the files (step, epoch, config, ...), else None.
        `started`: when the save began (the committed line reports the time from there to the commit).
        `after_commit(ckpt)`: global rank 0, once the bucket holds the commit (the sample ledger books the
        checkpoint's segments, every node's fetched into `ckpt` first)."""
        with self._cond:
            self._jobs[Path(ckpt)] = (fields, started, time.perf_counter() - started, after_commit)
        self.submit(ckpt)

    def drain(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds for this node's queue and, on a node other than global rank 0's, for rank
        0's commit of the last part. What did not make it is reported here, naming what a re-run resumes from
        (never "uploaded by the next start": a node's part of another attempt never commits), so this returns
        True once it has waited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not super().drain(timeout):
            log.warning("After %gs the part(s) %s of this node (%d) are not in %s: those checkpoints are not "
                        "committed; a re-run resumes from the newest checkpoint the bucket committed.", timeout,
                        ", ".join(self.pending), self.role.node, self.remote.url)
            return True
        name = self.last_part
        if self.role.commits or name is None:
            return True
        wait = POLL_FIRST_S
        while not committed_by(self.remote, name, self.role.attempt):
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("After %gs %s is not committed in %s (global rank 0 commits it once every node's part "
                            "is there); a re-run resumes from the newest checkpoint the bucket committed.", timeout,
                            name, self.remote.url)
                return True
            time.sleep(wait)
            wait = min(wait * 2, POLL_MAX_S)
        print(f"{name} committed in {self.remote.url} (this node's part included)", flush=True)
        return True

    # ---------------------------------------------------------------- the thread

    def _upload_with_retries(self, ckpt: Path) -> None:
        with self._cond:
            fields, started, paused, after_commit = self._jobs.get(ckpt, (None, time.perf_counter(), 0.0, None))
        name, role = ckpt.name, self.role
        step = int(CHECKPOINT_RE.match(name).group(1))
        wait, attempt, part, sent = self.backoff[0], 0, None, False
        manifest = None
        while not self._closed:
            attempt += 1
            try:
                if part is None:
                    part = part_record(ckpt, step=step, node=role.node, ranks=role.ranks, attempt=role.attempt)
                if not sent:
                    upload_part(self.remote, ckpt, part, self.run_dir)
                    sent = True
                    self.last_part = name
                    self._drop_older(step)
                if role.commits:
                    parts = wait_for_parts(self.remote, name, role.attempt, role.nodes, lambda: self._closed)
                    if parts is None:
                        return
                    manifest = commit_checkpoint(self.remote, name, fields, parts, role.nodes, role.attempt)
                break
            except PartError as e:
                self.refused.append(name)
                log.error("%s is not committed: %s. The previous commit in %s stays the newest.", name, e,
                          self.remote.url)
                return
            except Exception as e:  # anything the storage raises: report, back off, try again
                self.failures += 1
                log.warning("%s of %s to %s failed (attempt %d: %s); retrying in %.0fs. Training goes on.",
                            "Commit" if sent else f"Upload of node {role.node}'s part", name, self.remote.url,
                            attempt, _short(e), wait)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=wait)
                wait = min(wait * 2, self.backoff[1])
        else:
            return
        with self._cond:
            self._jobs.pop(ckpt, None)
        seconds = time.perf_counter() - started
        self.history.append({"name": name, "seconds": seconds, "attempts": attempt, "paused": paused})
        if manifest is None:
            log.debug("Node %d's part of %s is in %s, verified (%.2fs)", role.node, name, self.remote.url, seconds)
            return
        self.committed.append(name)
        size = sum(int(f["bytes"]) for f in manifest["files"].values())
        log.info("%s %s committed in %s by %d node(s) (%.1f MB, %.2f s from the save; training paused %.2f s)",
                 time.strftime("%H:%M:%S"), name, self.remote.url, len(role.nodes), size / 1e6, seconds, paused)
        if after_commit is not None:
            self._after_commit(ckpt, manifest, after_commit)
        self._books()
        self._retention(name)

    def _after_commit(self, ckpt: Path, manifest: dict, hook) -> None:
        """The sample ledger's booking of a committed checkpoint: the other nodes' ledger segments (streaming: one
        per rank) are fetched into the local copy first, so the books hold every rank's samples."""
        from gptresume.ledger.segment import is_segment_name
        from gptresume.remote.materialize import copy_files

        try:
            missing = [rel for rel in manifest["files"] if is_segment_name(rel) and not (ckpt / rel).is_file()]
            faults = copy_files(self.remote, ckpt.name, manifest["files"], missing, ckpt, None)
            if faults:
                raise RuntimeError("; ".join(faults))
            hook(ckpt)
        except Exception as e:  # the commit stands; the next start books the checkpoint's segments from the bucket
            log.warning("ledger: could not book %s after its commit (%s); the next start books it", ckpt.name,
                        _short(e))

    def _books(self) -> None:
        """After a commit: the run's books (global rank 0's), metrics.jsonl and the sample ledger's included."""
        try:
            upload_books(self.remote, self.run_dir, NODE_BOOKS)
            upload_ledger_books(self.remote, self.run_dir)
        except Exception as e:
            log.warning("Updating the books in %s failed (%s); trying again after the next commit", self.remote.url,
                        _short(e))

    RETRY_AFTER = "the next commit"

    def _removed(self, deleted: list[str]) -> None:
        """Nothing to mark: a node's uploads are committed in the bucket, not kept in the local upload ledger."""

    def _drop_older(self, step: int) -> None:
        """This node's part of checkpoint-`step` is in the bucket: older local checkpoint directories go."""
        removed = drop_caches(self.run_dir, below_step=step)
        if removed:
            log.debug("Node %d dropped its local copies of %s (the bucket holds the commits)", self.role.node,
                      ", ".join(removed))
