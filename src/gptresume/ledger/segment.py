"""One ledger segment: the samples of a run of consecutive optimizer steps, as compressed int64 arrays in a `.npz`
(read with `allow_pickle=False`: nothing in a ledger can execute code).

Arrays (CSR by step):
  steps    the steps covered, consecutive           counts   samples trained by each step (all processes)
  ids      the samples, step after step             epochs   packed data: the data epoch of each sample
  padded   packed data: the sample repeats one of the epoch's start to fill its last global batch (accelerate's
           even_batches with several processes)
  skipped_ids / skipped_epochs   samples a rollback left untrained right before the first step
  dropped_ids / dropped_epochs   packed data: an epoch's tail that train.dataloader_drop_last leaves untrained
  held_ids streaming: the blocks the stream holds (shuffle buffer, packed but not yet buffered) after the last step
  meta     JSON: kind ("packed" | "stream"), and what the check needs (samples per epoch, data fingerprint, the
           stream's parts with their block counts and passes)

Sample ids: packed data, the block's index in the packed training split; streaming, part * 2**40 + the block's
number within its part (data/stream_state.py `block_id`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHECKPOINT_SEGMENT = "sample_ledger.npz"
SEGMENT_FORMAT = 1
ARRAYS = ("steps", "counts", "ids", "epochs", "padded", "skipped_ids", "skipped_epochs", "dropped_ids",
          "dropped_epochs", "held_ids")
_EMPTY = {"padded": np.bool_}


def rank_segment_name(rank: int, world_size: int) -> str:
    """A process's segment file in a checkpoint (streaming: each process records its own blocks)."""
    return CHECKPOINT_SEGMENT if world_size == 1 else f"sample_ledger_{rank}.npz"


def is_segment_name(name: str) -> bool:
    return name == CHECKPOINT_SEGMENT or (name.startswith("sample_ledger_") and name.endswith(".npz"))


class SegmentError(ValueError):
    """A segment file that cannot be read or is inconsistent (the message names the file)."""


@dataclass
class Segment:
    kind: str
    steps: np.ndarray
    counts: np.ndarray
    ids: np.ndarray
    epochs: np.ndarray | None = None
    padded: np.ndarray | None = None
    skipped_ids: np.ndarray | None = None
    skipped_epochs: np.ndarray | None = None
    dropped_ids: np.ndarray | None = None
    dropped_epochs: np.ndarray | None = None
    held_ids: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def of(cls, kind: str, meta: dict | None = None, **arrays) -> Segment:
        arrays = {k: None if v is None else np.asarray(v) for k, v in arrays.items()}
        return cls(kind=kind, meta=dict(meta or {}), **arrays)

    @property
    def first(self) -> int:
        return int(self.steps[0]) if len(self.steps) else 0

    @property
    def last(self) -> int:
        return int(self.steps[-1]) if len(self.steps) else 0

    def step_ids(self, i: int) -> np.ndarray:
        start = int(self.counts[:i].sum())
        return self.ids[start:start + int(self.counts[i])]

    # ------------------------------------------------------------ files

    def write(self, path: Path, durable: bool = False) -> None:
        """Write the segment; `durable`: temp file, fsync, rename, fsync of the directory (the run's books)."""
        path = Path(path)
        arrays = {k: getattr(self, k) for k in ARRAYS if getattr(self, k) is not None}
        meta = {"format": SEGMENT_FORMAT, "kind": self.kind, **self.meta}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}") if durable else path
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8), **arrays)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            from gptresume.durable import fsync_dir

            os.replace(tmp, path)
            fsync_dir(path.parent)

    @classmethod
    def read(cls, path: Path) -> Segment:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(bytes(data.pop("meta")).decode())
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise SegmentError(f"{path}: unreadable ledger segment ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != SEGMENT_FORMAT or meta.get("kind") not in (
                "packed", "stream"):
            raise SegmentError(f"{path}: not a ledger segment of format {SEGMENT_FORMAT}")
        unknown = set(data) - set(ARRAYS)
        if unknown or not {"steps", "counts", "ids"} <= set(data):
            raise SegmentError(f"{path}: unexpected arrays {sorted(unknown) or sorted(data)}")
        kind = meta.pop("kind")
        meta.pop("format")
        segment = cls(kind=kind, meta=meta, **data)
        why = segment.problem()
        if why:
            raise SegmentError(f"{path}: {why}")
        return segment

    def problem(self) -> str | None:
        s = self
        if s.steps.ndim != 1 or s.counts.shape != s.steps.shape or s.ids.ndim != 1:
            return "steps, counts and ids must be flat arrays of one length per step"
        if len(s.steps) and (np.any(np.diff(s.steps) != 1) or s.steps[0] < 1):
            return "steps must be consecutive and start at 1 or later"
        if np.any(s.counts < 0) or int(s.counts.sum()) != len(s.ids):
            return f"counts add up to {int(s.counts.sum())}, ids hold {len(s.ids)}"
        for ids, other in (("ids", "epochs"), ("ids", "padded"), ("skipped_ids", "skipped_epochs"),
                           ("dropped_ids", "dropped_epochs")):
            a, b = getattr(s, ids), getattr(s, other)
            if b is not None and (a is None or a.shape != b.shape):
                return f"{other} must have one entry per entry of {ids}"
        return None


def merge(segments: list[Segment]) -> Segment:
    """One segment from the per-process segments of one commit (streaming): each step's samples, process after
    process; the held blocks of all of them."""
    first = segments[0]
    for s in segments[1:]:
        if s.kind != first.kind or not np.array_equal(s.steps, first.steps):
            raise SegmentError(f"the processes' segments of one commit cover different steps ({first.first}-"
                               f"{first.last} and {s.first}-{s.last})")
    if len(segments) == 1:
        return first
    counts = sum(s.counts for s in segments)
    parts = [np.split(s.ids, np.cumsum(s.counts)[:-1]) for s in segments]
    ids = np.concatenate([x for step in zip(*parts) for x in step]) if len(first.steps) else np.zeros(0, np.int64)

    def joined(name):
        arrays = [getattr(s, name) for s in segments if getattr(s, name) is not None]
        return np.concatenate(arrays) if arrays else None

    meta = dict(first.meta)
    if first.kind == "stream":
        meta["parts"] = {k: v for s in segments for k, v in s.meta.get("parts", {}).items()}
    return Segment(kind=first.kind, steps=first.steps, counts=counts, ids=ids, skipped_ids=joined("skipped_ids"),
                   held_ids=joined("held_ids"), meta=meta)


def read_checkpoint_segment(ckpt: Path) -> Segment | None:
    """The segment a committed checkpoint holds (its processes' files merged), or None when it has none."""
    ckpt = Path(ckpt)
    names = sorted((p.name for p in ckpt.iterdir() if is_segment_name(p.name)), key=_rank_order)
    if not names:
        return None
    return merge([Segment.read(ckpt / n) for n in names])


def _rank_order(name: str) -> int:
    stem = name[:-len(".npz")]
    return int(stem.rpartition("_")[2]) if stem != CHECKPOINT_SEGMENT[:-4] else 0
