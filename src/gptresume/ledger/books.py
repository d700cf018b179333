"""RUN_DIR/ledger/: the run's sample ledger, one segment per committed checkpoint (`steps-<first>-<last>.npz`),
written by rank 0 right after the checkpoint's manifest (the checkpoint holds the same segment, hashed by its
manifest, so a kill between the two loses nothing: the resume books it again).

The books follow the run's lineage like metrics.jsonl does: a resume from checkpoint-S moves every segment past S
to ledger/abandoned/ (steps trained by a killed process after its last commit are never booked; steps rolled back
are set aside, as their checkpoints are), and books checkpoint-S's own segment. So the books hold exactly the steps
up to the resumed checkpoint, then the resumed run's steps.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from gptresume.ledger.segment import Segment, read_checkpoint_segment
from gptresume.rundir import SAMPLE_LEDGER_DIR

log = logging.getLogger(__name__)

LEDGER_DIR = SAMPLE_LEDGER_DIR
ABANDONED_DIR = "abandoned"
_SEGMENT_RE = re.compile(r"^steps-(\d+)-(\d+)\.npz$")


def book_name(segment: Segment) -> str:
    return f"steps-{segment.first:09d}-{segment.last:09d}.npz"


def booked(run_dir: Path) -> list[tuple[int, int, Path]]:
    """(first step, last step, path) of every segment in the books, in step order."""
    root = Path(run_dir) / LEDGER_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), int(m.group(2)), p) for p in root.iterdir() if (m := _SEGMENT_RE.match(p.name))]
    return sorted(found)


def book_checkpoint(run_dir: Path, ckpt: Path) -> Path | None:
    """Copy a committed checkpoint's segment into the books (rank 0, after its manifest); None when it has none."""
    segment = read_checkpoint_segment(ckpt)
    if segment is None or not len(segment.steps):
        return None
    root = Path(run_dir) / LEDGER_DIR
    root.mkdir(exist_ok=True)
    for _, last, path in booked(run_dir):  # another segment ending at this step: an earlier attempt at it
        if last == segment.last and path.name != book_name(segment):
            _set_aside(run_dir, path)
    path = root / book_name(segment)
    segment.write(path, durable=True)
    return path


def prepare_for_resume(run_dir: Path, step: int, ckpt: Path | None) -> None:
    """Before a (re)start from `ckpt` at `step` (None, 0: a fresh start): segments past `step` are set aside and the
    checkpoint's own segment is booked, so the books end exactly at the resumed checkpoint."""
    run_dir = Path(run_dir)
    moved = [_set_aside(run_dir, path) for first, last, path in booked(run_dir) if last > step]
    if moved:
        log.info("Ledger: %d segment(s) past step %d set aside in %s", len(moved), step,
                 run_dir / LEDGER_DIR / ABANDONED_DIR)
    if ckpt is not None:
        try:
            book_checkpoint(run_dir, ckpt)
        except Exception:  # the checkpoint is valid (verified) and trains; `gptresume ledger` reports the gap
            log.exception("ledger: could not book %s's segment into %s", Path(ckpt).name, run_dir / LEDGER_DIR)


def _set_aside(run_dir: Path, path: Path) -> Path:
    target_dir = Path(run_dir) / LEDGER_DIR / ABANDONED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.npz"
    os.replace(path, target)
    return target


def read_books(run_dir: Path) -> list[Segment]:
    """Every booked segment, in step order (SegmentError names an unreadable one)."""
    return [Segment.read(path) for _, _, path in booked(run_dir)]


def lineage(run_dir: Path) -> tuple[list[Segment], list[str]]:
    """The segments of the run's lineage as a resume would see it (read-only): the booked ones up to the newest
    committed checkpoint, plus that checkpoint's own segment when a kill came between its commit and its booking.
    Also notes on what was left out."""
    from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME, list_checkpoints

    run_dir = Path(run_dir)
    committed = [p for p in list_checkpoints(run_dir) if (p / MANIFEST_NAME).is_file()]
    newest = committed[-1] if committed else None
    end = int(CHECKPOINT_RE.match(newest.name).group(1)) if newest is not None else None
    notes, segments = [], []
    for _, last, path in booked(run_dir):
        if end is not None and last > end:
            notes.append(f"{path.name}: past the newest committed checkpoint ({newest.name}), left out (a rollback "
                         "or a resume from an earlier checkpoint abandoned it)")
            continue
        segments.append(Segment.read(path))
    if newest is not None and (not segments or segments[-1].last < end):
        own = read_checkpoint_segment(newest)
        if own is not None and len(own.steps):
            segments.append(own)
            notes.append(f"{newest.name}: its segment is not booked yet (the next start books it); read from it")
    return segments, notes
