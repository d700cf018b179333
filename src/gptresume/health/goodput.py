"""Goodput and the run's interruption record, from RUN_DIR/history.jsonl and metrics.jsonl only (status reads
them without importing torch; `checkpoint.every: auto` re-estimates its interruption rate from them).

A *session* is one start or resume (a history line `start` / `resume`), from the moment its process launched
(`launched`) to its own last line (stopped, complete, rollback, unhealthy), or, for a process that was killed and
wrote none, to the launch of the next session (the best bound on its end that the books hold) or, for the newest
session, to its last logged metrics row (or now, while it runs).

goodput = training time that survived into a committed checkpoint / wall time of all sessions. The numerator
sums `train_s` (training seconds, saves and evaluation excluded) of the metrics rows up to the newest committed
step: rows a resume discarded (steps trained again) and steps after the newest commit do not count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from gptresume.rundir import (
    COMPLETE_EVENT,
    RESUME_EVENT,
    ROLLBACK_EVENT,
    START_EVENT,
    STOPPED_EVENT,
    UNHEALTHY_EVENT,
)

SESSION_EVENTS = (START_EVENT, RESUME_EVENT)
ENDING_EVENTS = (STOPPED_EVENT, COMPLETE_EVENT, ROLLBACK_EVENT, UNHEALTHY_EVENT)


def process_start_time() -> float:
    """When this process started (Linux /proc), so a session's wall time includes imports and data loading;
    now where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


@dataclass
class Session:
    start: float
    end: float | None
    pid: object
    ended_by: str | None

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end or self.start) - self.start)


def _t(e: dict) -> float | None:
    v = e.get("t")
    return float(v) if isinstance(v, (int, float)) else None


def sessions(history: list[dict], metrics: list[dict] | None = None, running: bool = False,
             now: float | None = None) -> list[Session]:
    """The sessions of a run, oldest first (only history lines with times: older books without `t` are left out)."""
    out: list[Session] = []
    for e in history:
        t = _t(e)
        if t is None:
            continue
        if e.get("event") in SESSION_EVENTS:
            launched = e.get("launched")
            start = float(launched) if isinstance(launched, (int, float)) else t
            if out and out[-1].end is None:
                out[-1].end = start if out[-1].pid != e.get("pid") else t
            if out and out[-1].pid == e.get("pid") and out[-1].ended_by == ROLLBACK_EVENT:
                start = out[-1].end  # the same process continuing after its rollback
            out.append(Session(start, None, e.get("pid"), None))
        elif out and e.get("event") in ENDING_EVENTS and e.get("pid") == out[-1].pid:
            out[-1].end, out[-1].ended_by = t, e.get("event")
    if out and out[-1].end is None:
        if running:
            out[-1].end = now if now is not None else time.time()
        else:
            times = [float(r["time"]) for r in metrics or [] if isinstance(r.get("time"), (int, float))]
            out[-1].end = max([out[-1].start, *times])
    return out


def interruptions(history: list[dict]) -> tuple[int, float]:
    """(interruptions that lost work, training hours): sessions that ended with no line of their own (killed or
    crashed) and were followed by another process. A graceful stop commits first and loses nothing, so it does
    not shorten Daly's M (`stops` counts them); a rollback in the same process and the end of the run are not
    interruptions either."""
    ss = sessions(history)
    count = sum(1 for i, s in enumerate(ss) if s.ended_by is None and i + 1 < len(ss) and ss[i + 1].pid != s.pid)
    return count, sum(s.seconds for s in ss) / 3600.0


def stops(history: list[dict]) -> int:
    """Graceful stops (SIGTERM, SIGINT, SIGUSR1, --stop-at-step): each committed a checkpoint first."""
    return sum(1 for s in sessions(history) if s.ended_by == STOPPED_EVENT)


@dataclass
class Goodput:
    useful_s: float
    wall_s: float
    committed_step: int

    @property
    def ratio(self) -> float | None:
        return self.useful_s / self.wall_s if self.wall_s > 0 else None

    def to_dict(self) -> dict:
        return {"goodput": None if self.ratio is None else round(self.ratio, 4), "useful_s": round(self.useful_s, 2),
                "wall_s": round(self.wall_s, 2), "committed_step": self.committed_step}


def goodput(history: list[dict], metrics: list[dict], committed_step: int, running: bool = False,
            now: float | None = None) -> Goodput:
    useful = sum(float(r["train_s"]) for r in metrics
                 if isinstance(r.get("train_s"), (int, float)) and int(r.get("step") or 0) <= committed_step)
    wall = sum(s.seconds for s in sessions(history, metrics, running, now))
    return Goodput(useful, wall, committed_step)
