"""The verdict on a run's sample ledger (pure: segments in, findings out; `gptresume ledger RUN_DIR` prints it).

What is proved, from the booked segments (ledger/books.py: the lineage of the newest commit):
- coverage: the segments cover steps 1..last without a gap or an overlap (a ledger turned on mid-run proves nothing
  about the steps before it);
- packed data: within each data epoch (of one training set: a changed data fingerprint starts a new count), no block
  index is trained twice, or trained and also skipped (rollback) or dropped (dataloader_drop_last); every epoch the
  run went past has each of its n blocks trained, skipped or dropped; indices lie in [0, n); every recorded sample
  was observed leaving the sampler;
- streaming: no block (part, number) is trained twice; the blocks the stream held at the last commit (shuffle
  buffer, packed but not yet buffered) were not trained; every block each part produced was trained, skipped or is
  held: nothing lost across elastic changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gptresume.data.stream_state import PART_STRIDE, UNKNOWN_BLOCK
from gptresume.ledger.segment import Segment

SHOWN = 5  # sample ids named per finding


@dataclass
class Verdict:
    lines: list[str] = field(default_factory=list)
    """What the ledger covers and proves, one line per fact."""
    violations: list[str] = field(default_factory=list)
    """Each a sentence naming the first offending samples and steps."""
    claim: str = "every sample of each completed epoch was trained once, none twice"
    """What an empty `violations` proves."""

    @property
    def ok(self) -> bool:
        return not self.violations


def check(segments: list[Segment]) -> Verdict:
    v = Verdict()
    if not segments:
        v.violations.append("the ledger is empty: no committed checkpoint of this run recorded its samples "
                            "(checkpoint.ledger: true, or gptresume.train(..., ledger=True))")
        return v
    _coverage(segments, v)
    kinds = {s.kind for s in segments}
    if len(kinds) > 1:
        v.violations.append(f"the ledger mixes {' and '.join(sorted(kinds))} segments")
        return v
    if segments[0].kind == "packed":
        _packed(segments, v)
    else:
        v.claim = ("every block the stream produced was trained once, none twice, or is still held by the stream "
                   "(its shuffle buffers) at the last commit")
        _stream(segments, v)
    return v


def _coverage(segments: list[Segment], v: Verdict) -> None:
    expected = 1
    for s in segments:
        if s.first > expected:
            v.violations.append(f"steps {expected}-{s.first - 1} are not in the ledger"
                                + (" (it starts there: was checkpoint.ledger off before?)" if expected == 1 else ""))
        elif s.first < expected:
            v.violations.append(f"steps {s.first}-{min(s.last, expected - 1)} are in the ledger twice")
        expected = max(expected, s.last + 1)
    trained = sum(int(s.counts.sum()) for s in segments)
    v.lines.append(f"steps 1-{expected - 1} in {len(segments)} segment(s), {trained} samples trained")


def _steps_of(s: Segment) -> np.ndarray:
    return np.repeat(s.steps, s.counts)


# ---------------------------------------------------------------- packed data


def _packed(segments: list[Segment], v: Verdict) -> None:
    spans: list[list[Segment]] = []
    for s in segments:  # one training set: the same fingerprint and size
        key = (s.meta.get("data_fingerprint"), s.meta.get("samples"))
        if spans and (spans[-1][0].meta.get("data_fingerprint"), spans[-1][0].meta.get("samples")) == key:
            spans[-1].append(s)
        else:
            spans.append([s])
    for i, span in enumerate(spans):
        _packed_span(span, v, first_span=i == 0, several=len(spans) > 1)


def _packed_span(span: list[Segment], v: Verdict, first_span: bool, several: bool) -> None:
    n = int(span[0].meta.get("samples") or 0)
    where = f" (data {span[0].meta.get('data_fingerprint')}, steps {span[0].first}-{span[-1].last})" if several else ""
    if n < 1:
        v.violations.append(f"segment of steps {span[0].first}-{span[0].last}: no sample count in its meta")
        return
    unobserved = sum(int(s.meta.get("unobserved", 0)) for s in span)
    if unobserved:
        v.violations.append(f"{unobserved} sample(s){where} were attributed to steps without the sampler yielding "
                            "them: the ledger's count model and Trainer disagree (report it)")

    def cat(name, default_dtype=np.int64):
        arrays = [getattr(s, name) for s in span if getattr(s, name) is not None]
        return np.concatenate(arrays) if arrays else np.zeros(0, default_dtype)

    ids, epochs, padded = cat("ids"), cat("epochs"), cat("padded", np.bool_)
    steps = np.concatenate([_steps_of(s) for s in span])
    if len(padded) != len(ids):
        padded = np.zeros(len(ids), np.bool_)
    skipped, skipped_epochs = cat("skipped_ids"), cat("skipped_epochs")
    dropped, dropped_epochs = cat("dropped_ids"), cat("dropped_epochs")
    bad = np.concatenate([ids, skipped, dropped])
    bad = bad[(bad < 0) | (bad >= n)]
    if len(bad):
        v.violations.append(f"sample index(es) outside the training set of {n}{where}: {_first(bad)}")
        return
    # every event as (epoch, index): trained (kind 0), skipped (1), dropped (2)
    key = np.concatenate([epochs, skipped_epochs, dropped_epochs]) * n + np.concatenate([ids, skipped, dropped])
    kind = np.concatenate([np.zeros(len(ids), np.int8), np.ones(len(skipped), np.int8),
                           np.full(len(dropped), 2, np.int8)])
    step = np.concatenate([steps, np.full(len(skipped), -1), np.full(len(dropped), -1)])
    pad = np.concatenate([padded, np.zeros(len(skipped) + len(dropped), np.bool_)])
    order = np.argsort(key, kind="stable")
    key, kind, step, pad = key[order], kind[order], step[order], pad[order]
    repeated = np.flatnonzero(key[1:] == key[:-1]) + 1  # each later occurrence of a key
    if len(repeated):
        _report_repeats(key, kind, step, pad, repeated, n, where, v)
    first_epoch, last_epoch = int(key[0] // n), int(key[-1] // n)
    complete, partial = [], []
    for e in range(first_epoch, last_epoch + 1):
        lo, hi = np.searchsorted(key, [e * n, (e + 1) * n])
        present = len(np.unique(key[lo:hi]))
        went_past = e < last_epoch
        started_here = first_span or e > first_epoch  # a span after a data change starts mid-epoch
        if present == n:
            complete.append(e)
        elif went_past and started_here:
            seen = np.unique(key[lo:hi] - e * n)
            missing = np.setdiff1d(np.arange(n), seen)
            v.violations.append(f"epoch {e}{where}: {len(missing)} of {n} blocks never trained (nor skipped or "
                                f"dropped): {_first(missing)}")
        else:
            partial.append((e, present))
    counts = {name: int((kind == k).sum()) for k, name in ((1, "skipped"), (2, "dropped"))}
    extra = ", ".join(f"{c} {name}" for name, c in counts.items() if c)
    if complete:
        v.lines.append(f"{_epochs(complete)}{where}: each of the {n} blocks trained once"
                       + (f" ({extra}: listed, never trained)" if extra else ""))
    for e, present in partial:
        v.lines.append(f"epoch {e}{where}: {present} of {n} blocks so far (not complete)")


def _report_repeats(key, kind, step, pad, repeated, n, where, v: Verdict) -> None:
    names = {0: "trained", 1: "skipped", 2: "dropped"}
    shown = []
    for i in repeated[:SHOWN]:
        j = i
        while j > 0 and key[j - 1] == key[i]:
            j -= 1
        events = [f"{names[int(kind[x])]}" + (f" at step {int(step[x])}" if step[x] >= 0 else "")
                  + (" (padding)" if pad[x] else "") for x in range(j, i + 1)]
        shown.append(f"block {int(key[i] % n)} of epoch {int(key[i] // n)}: " + ", ".join(events))
    cause = ""
    if bool(pad[repeated].all()):
        cause = (" -- each repeat fills an epoch's last global batch (accelerate's even_batches with several "
                 "processes); set train.dataloader_drop_last: true, or a training set whose size is a multiple of "
                 "the global batch")
    v.violations.append(f"{len(repeated)} sample(s) of an epoch{where} recorded more than once; first: "
                        + "; ".join(shown) + cause)


# ---------------------------------------------------------------- streaming


def _stream(segments: list[Segment], v: Verdict) -> None:
    ids = np.concatenate([s.ids for s in segments])
    steps = np.concatenate([_steps_of(s) for s in segments])
    skipped = np.concatenate([s.skipped_ids for s in segments if s.skipped_ids is not None] or [np.zeros(0, np.int64)])
    held = segments[-1].held_ids if segments[-1].held_ids is not None else np.zeros(0, np.int64)
    parts = segments[-1].meta.get("parts") or {}
    known = ids[ids != UNKNOWN_BLOCK]
    order = np.argsort(known, kind="stable")
    sorted_ids = known[order]
    twice = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) + 1
    if len(twice):
        uid = int(sorted_ids[twice[0]])
        at = steps[ids == uid]
        v.violations.append(f"{len(twice)} block(s) trained more than once; first: {_block(uid)} at steps "
                            f"{', '.join(map(str, at.tolist()))}")
    for name, other in (("held by the stream at the last commit", held), ("skipped by a rollback", skipped)):
        both = np.intersect1d(known, other[other != UNKNOWN_BLOCK])
        if len(both):
            v.violations.append(f"{len(both)} block(s) trained and also {name}: "
                                + ", ".join(_block(int(u)) for u in both[:SHOWN]))
    accounted = np.unique(np.concatenate([known, held, skipped]))
    produced_total, passes = 0, []
    for key in sorted(parts, key=int):
        part, produced = int(key), int(parts[key]["produced"])
        produced_total += produced
        passes.append(int(parts[key]["passes"]))
        expected = part * PART_STRIDE + np.arange(produced, dtype=np.int64)
        missing = np.setdiff1d(expected, accounted)
        if len(missing):
            v.violations.append(f"part {part}: {len(missing)} of its {produced} blocks neither trained, skipped nor "
                                "held: " + ", ".join(_block(int(u)) for u in missing[:SHOWN]))
    if not parts:
        v.violations.append("the last segment does not say how many blocks each part produced")
        return
    v.lines.append(f"stream of {len(parts)} part(s): {produced_total} blocks produced; {len(known)} trained, "
                   f"{len(held)} held in the stream at step {segments[-1].last}, {len(skipped)} skipped; passes over "
                   f"each part: {', '.join(map(str, passes))}")
    writers = sorted({int(s.meta.get("world_size", 0)) for s in segments})
    if len(writers) > 1:
        v.lines.append(f"process counts across the run: {', '.join(map(str, writers))}")


def _block(uid: int) -> str:
    return f"(part {uid // PART_STRIDE}, block {uid % PART_STRIDE})"


def _first(values) -> str:
    values = np.asarray(values)
    return ", ".join(map(str, values[:SHOWN].tolist())) + (", ..." if len(values) > SHOWN else "")


def _epochs(epochs: list[int]) -> str:
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]}-{epochs[-1]}"
    return "epochs " + ", ".join(map(str, epochs))
