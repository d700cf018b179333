"""Signs of life for the phases that take more than a few seconds (packing, hashing, evaluation, loading a large
checkpoint, verifying a run): one line that updates in place on a terminal, a few timed lines in a log, and one
summary line when the phase ends.

Why not tqdm: in a log (a scheduler's output file, `tee`, CI) a bar is either silent or a flood; a phase here
prints nothing during its first QUIET_S seconds (a quick phase shows only its summary), then a line each time
another 10% is done (at most one per MIN_GAP_S) and at least one per MAX_GAP_S: a phase of T seconds prints at
most 10 + T / MAX_GAP_S + 1 lines. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger("gptresume.progress")

QUIET_S = 10.0  # a phase shorter than this prints only its summary line
MIN_GAP_S = 10.0  # lines in a log at most this often
MAX_GAP_S = 60.0  # and at least this often once the phase is past QUIET_S
REDRAW_S = 0.5  # a terminal's line is redrawn at most this often


def clock() -> str:
    """The wall-clock time that starts every progress line (as the training progress lines do)."""
    return time.strftime("%H:%M:%S")


def size(n: float) -> str:
    """Bytes for people: 512 B, 6.1 MB, 1.5 GB (powers of 1000, as the committed-checkpoint line)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s, 0.8 s."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def count(n: float) -> str:
    """1,234 (a rate below 10 keeps two decimals: 0.37 batches/s, not 0)."""
    return f"{n:,.0f}" if n >= 10 or float(n).is_integer() else f"{n:.2f}"


class Progress:
    """One phase: `update(done)` as work gets done (cheap: it prints only when a rule above says so), `finish(text)`
    once, with the summary. `total` None: the amount is unknown (no percentage, no ETA).

    `interactive`: one line redrawn in place on stderr (default: when stderr is a terminal); else lines through the
    `gptresume.progress` logger (or `emit`). `clock`: seconds, injectable so tests need no real time."""

    def __init__(self, what: str, total: float | None = None, unit: Callable[[float], str] = count,
                 rate_unit: str = "/s", interactive: bool | None = None, emit: Callable[[str], None] | None = None,
                 clock_s: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.rate_unit = what, total, unit, rate_unit
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.emit = emit or log.info
        self.clock_s = clock_s
        self.start = clock_s()
        self.done = 0.0
        self.extra = ""
        self.lines = 0  # lines printed (a log) or redraws (a terminal)
        self._last_line = self.start
        self._next_mark = 0.1
        self._drawn = False
        self.finished = False

    @property
    def elapsed(self) -> float:
        return self.clock_s() - self.start

    def update(self, done: float, extra: str = "") -> None:
        """`done` of `total` so far; `extra`: more to show (e.g. tokens written)."""
        self.done, self.extra = done, extra
        now = self.clock_s()
        elapsed = now - self.start
        if self.interactive:
            if elapsed >= 1.0 and now - self._last_line >= REDRAW_S:
                self._redraw(now)
            return
        if elapsed < QUIET_S:
            return
        fraction = self.fraction
        crossed = fraction is not None and fraction >= self._next_mark
        gap = now - self._last_line
        if (crossed and gap >= MIN_GAP_S) or gap >= MAX_GAP_S:
            if fraction is not None:
                self._next_mark = (int(fraction * 10) + 1) / 10
            self._last_line = now
            self.lines += 1
            self.emit(f"{clock()} {self.status()}")

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 0.99 if not self.finished else 1.0)

    def status(self) -> str:
        """`what: done/total (pct) | rate | extra | eta`."""
        elapsed = max(self.elapsed, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.what}: {self.unit(self.done)}"
                 + (f"/{self.unit(self.total)} ({self.fraction:.0%})" if self.total else "")]
        parts.append(f"{self.unit(rate)}{self.rate_unit}")
        if self.extra:
            parts.append(self.extra)
        if self.total and rate > 0:
            parts.append(f"eta {duration(max(0.0, (self.total - self.done) / rate))}")
        return " | ".join(parts)

    def _redraw(self, now: float) -> None:
        self._last_line = now
        self.lines += 1
        self._drawn = True
        sys.stderr.write(f"\r{clock()} {self.status()}\x1b[K")
        sys.stderr.flush()

    def close(self, summary: str | None = None) -> None:
        """End the phase with its summary only if it showed progress (a long phase); a short one ends silently (the
        caller prints its own result line)."""
        if self.lines:
            self.finish(summary)
        self.finished = True

    def finish(self, summary: str | None = None) -> None:
        """End the phase with one line: `summary`, or the phase's totals and time."""
        if self.finished:
            return
        self.finished = True
        text = summary if summary is not None else f"{self.what}: {self.unit(self.done)} in {duration(self.elapsed)}"
        if self.interactive:
            sys.stderr.write(("\r" if self._drawn else "") + f"{clock()} {text}" + ("\x1b[K" if self._drawn else "")
                             + "\n")
            sys.stderr.flush()
        else:
            self.emit(f"{clock()} {text}")


def rate(amount: float, seconds: float, unit: Callable[[float], str] = count, per: str = "/s") -> str:
    return f"{unit(amount / seconds)}{per}" if seconds > 0 else "–"
