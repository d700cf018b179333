"""`gptresume status RUN_DIR`: the checkpoints of a run, what `train` would resume from and why, its history."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from gptresume.checkpoint import (
    MANIFEST_NAME,
    TRAINER_STATE_NAME,
    CheckpointInfo,
    list_checkpoints,
    newest_valid,
    read_trainer_state,
    verify_checkpoint,
)
from gptresume.rundir import (
    CONFIG_NAME,
    FINAL_DIR,
    INTERVAL_EVENT,
    LOCK_NAME,
    RESUME_EVENT,
    ROLLBACK_EVENT,
    UNHEALTHY_EVENT,
    read_history,
    read_metrics,
)
from gptresume.tools.common import is_adapter_dir, require_run_dir


@dataclass
class CheckpointRow:
    name: str
    step: int
    valid: bool
    faults: list[str]
    epoch: float | None = None
    loss: float | None = None
    """Training loss logged at the checkpoint's step (or the last one logged before it)."""
    eval_loss: float | None = None
    """Evaluation loss logged at the checkpoint's step, if there was an evaluation there."""
    learning_rate: float | None = None
    size_bytes: int = 0
    created: str | None = None


@dataclass
class RunStatus:
    run_dir: str
    checkpoints: list[CheckpointRow]
    resume_from: str | None
    """Checkpoint `train --resume auto` would take (the newest valid one), or None for a fresh start."""
    resume_reason: str
    skipped: dict[str, list[str]]
    """Newer checkpoints `train` would skip, with their faults."""
    complete: bool
    """The newest valid checkpoint reached max_steps: `train` would train nothing (as ResumePlan.is_complete)."""
    complete_reason: str
    global_step: int | None
    max_steps: int | None
    in_use: str | None
    """'pid N on HOST' while a trainer holds the run's lock."""
    history: list[dict] = field(default_factory=list)
    health: dict = field(default_factory=dict)
    """Rollbacks and health stops, checkpoints protected from retention, the `every: auto` interval, goodput."""

    def to_dict(self) -> dict:
        return asdict(self)


def collect_status(run_dir: str | Path) -> RunStatus:
    run_dir = require_run_dir(run_dir, "status")
    chosen, skipped = newest_valid(run_dir)  # exactly what `train --resume auto` uses
    known = {i.path.name: i for i in skipped}
    if chosen is not None:
        known[chosen.path.name] = chosen
    metrics = read_metrics(run_dir)
    rows = []
    for path in list_checkpoints(run_dir):
        info = known.get(path.name) or verify_checkpoint(path)
        rows.append(_row(info, metrics))

    state = _trainer_state(chosen.path) if chosen else {}
    global_step, max_steps = state.get("global_step"), state.get("max_steps") or _configured_max_steps(run_dir)
    has_final = (run_dir / FINAL_DIR / "config.json").is_file() or is_adapter_dir(run_dir / FINAL_DIR)
    reached = global_step is not None and bool(max_steps) and global_step >= max_steps
    if reached:
        complete = True
        complete_reason = f"{chosen.path.name} reached max_steps {max_steps}; " + (
            f"{FINAL_DIR}/ holds the final model" if has_final else f"{FINAL_DIR}/ is written by the next `train`")
    else:
        complete_reason = (f"newest valid checkpoint at step {global_step} of max_steps {max_steps or '?'}" if chosen
                           else f"no valid checkpoint yet, max_steps {max_steps or '?'}")
        if has_final:
            complete_reason += f"; {FINAL_DIR}/ exists, but `train` would train " + (
                "the remaining steps again" if chosen else "from the start")
        complete = False

    if chosen is None:
        resume_from, reason = None, "no valid checkpoint: `train` would start a new run"
    elif complete:
        resume_from, reason = chosen.path.name, "newest valid checkpoint; the run is complete, `train` trains nothing"
    else:
        resume_from, reason = chosen.path.name, f"newest valid checkpoint (step {chosen.step})"
    return RunStatus(run_dir=str(run_dir), checkpoints=rows, resume_from=resume_from, resume_reason=reason,
                     skipped={s.path.name: s.faults for s in skipped}, complete=complete,
                     complete_reason=complete_reason, global_step=global_step, max_steps=max_steps,
                     in_use=_lock_holder(run_dir), history=read_history(run_dir),
                     health=_health(run_dir, read_history(run_dir), metrics, chosen.step if chosen else 0,
                                    _lock_holder(run_dir) is not None))


def _health(run_dir: Path, history: list[dict], metrics: list[dict], committed_step: int, running: bool) -> dict:
    """health/: what status reports about the run's health and its checkpoint interval."""
    from gptresume.checkpoint import protected
    from gptresume.health.goodput import goodput, interruptions, stops
    intervals = [e for e in history if e.get("event") == INTERVAL_EVENT]
    count, hours = interruptions(history)
    return {"rollbacks": [e for e in history if e.get("event") == ROLLBACK_EVENT],
            "health_stops": [e for e in history if e.get("event") == UNHEALTHY_EVENT],
            "protected": protected(run_dir), "interval": intervals[-1] if intervals else None,
            "interruptions": count, "stops": stops(history), "training_hours": round(hours, 4),
            "goodput": goodput(history, metrics, committed_step, running).to_dict()}


def _row(info: CheckpointInfo, metrics: list[dict]) -> CheckpointRow:
    path = info.path
    row = CheckpointRow(name=path.name, step=info.step, valid=info.valid, faults=list(info.faults))
    row.size_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    manifest = info.manifest or {}
    row.created = manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))
    row.epoch = manifest.get("epoch")
    # The checkpoint's own log history describes its timeline; metrics.jsonl (current timeline) is the fallback.
    # Entries are read defensively: an invalid checkpoint's trainer_state.json may hold anything.
    history = _logged(_trainer_state(path).get("log_history"), info.step) or _logged(metrics, info.step)
    train_logs = [e for e in history if _number(e.get("loss"))]
    if train_logs:
        last = max(train_logs, key=lambda e: e.get("step", 0))
        row.loss, row.learning_rate = last["loss"], _number_or_none(last.get("learning_rate"))
        row.epoch = row.epoch if row.epoch is not None else _number_or_none(last.get("epoch"))
    evals = [e for e in history if _number(e.get("eval_loss")) and e.get("step") == info.step]
    if evals:
        row.eval_loss = evals[-1]["eval_loss"]
    return row


def _logged(entries, upto: int) -> list[dict]:
    """Log entries (dicts with a numeric step) up to step `upto`."""
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and _number(e.get("step", 0)) and e.get("step", 0) <= upto]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_or_none(v):
    return v if _number(v) else None


def _trainer_state(ckpt: Path) -> dict:
    try:
        state = read_trainer_state(ckpt) if (ckpt / TRAINER_STATE_NAME).is_file() else {}
    except (ValueError, OSError):
        return {}
    return state if isinstance(state, dict) else {}


def _configured_max_steps(run_dir: Path) -> int | None:
    try:
        config = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
        return int(config["train"]["max_steps"]) if config["train"].get("max_steps", -1) > 0 else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        return None


def _lock_holder(run_dir: Path) -> str | None:
    """Who holds RUN_DIR/.lock (a trainer running now), without taking it."""
    lock = run_dir / LOCK_NAME
    if not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------- text output


def format_status(status: RunStatus) -> str:
    out = [f"Run {status.run_dir}"]
    if status.in_use:
        out.append(f"  training now: {status.in_use}")
    out.append("")
    if status.checkpoints:
        header = ("checkpoint", "step", "epoch", "loss", "eval loss", "lr", "size", "created", "status")
        table = [header]
        for r in status.checkpoints:
            mark = "valid" if r.valid else "INVALID: " + "; ".join(r.faults)
            if r.name == status.resume_from:
                mark += " (newest valid)" if status.complete else " <- train resumes here"
            table.append((r.name, str(r.step), _num(r.epoch, ".2f"), _num(r.loss, ".4f"), _num(r.eval_loss, ".4f"),
                          _num(r.learning_rate, ".2e"), _size(r.size_bytes), (r.created or "-")[:19].replace("T", " "),
                          mark))
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            cells = [c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            out.append("  ".join(cells + [row[-1]]).rstrip())
    else:
        out.append(f"no checkpoint-N directories ({MANIFEST_NAME}-committed checkpoints appear at each save)")
    out.append("")
    target = status.resume_from or "nothing (fresh start)"
    out.append(f"train --resume auto: {target}: {status.resume_reason}")
    for name, faults in status.skipped.items():
        out.append(f"  skips {name}: " + "; ".join(faults))
    out.append(f"complete: {'yes' if status.complete else 'no'} ({status.complete_reason})")
    out.extend(_health_lines(status.health))
    if status.history:
        out.append("")
        out.append("history:")
        for e in status.history:
            out.append("  " + _history_line(e))
    return "\n".join(out)


def _health_lines(h: dict) -> list[str]:
    if not h:
        return []
    out = []
    g = h.get("goodput") or {}
    if g.get("goodput") is not None:
        out.append(f"goodput: {g['goodput']:.1%} ({g['useful_s']:.1f}s of training up to the newest commit, step "
                   f"{g['committed_step']}, in {g['wall_s']:.1f}s of wall time; "
                   f"{h['interruptions']} kill(s) or crash(es) and "
                   f"{h['stops']} stop(s) in {h['training_hours']:.3f} training hours)")
    iv = h.get("interval")
    if iv:
        out.append(f"checkpoint interval (every: auto): {iv['interval_s']:.1f}s, from delta {iv['delta_s']:.3f}s per "
                   f"save and M {iv['mtbi_h']:.2f}h between interruptions"
                   + (f" (held at the {iv['bounded']} bound)" if iv.get("bounded") else ""))
    for e in h.get("rollbacks") or []:
        out.append(f"rollback {e.get('rollback')}: step {e.get('step')} ({e.get('reason')}) -> "
                   f"{Path(str(e.get('checkpoint'))).name}, skipped {e.get('skip_batches')} batch(es)"
                   + (f", set aside {', '.join(e['set_aside'])}" if e.get("set_aside") else ""))
    for e in h.get("health_stops") or []:
        out.append(f"health stop: step {e.get('step')} ({e.get('reason')}); newest good checkpoint "
                   f"{Path(str(e['checkpoint'])).name if e.get('checkpoint') else 'none'}")
    for name, why in (h.get("protected") or {}).items():
        out.append(f"protected from retention: {name} ({why})")
    return [""] + out if out else []


def _history_line(e: dict) -> str:
    try:
        return _history_text(e)
    except (TypeError, ValueError, AttributeError, KeyError):  # a line a person or another tool wrote by hand
        return "(unreadable history entry) " + json.dumps(e, default=str)[:200]


def _history_text(e: dict) -> str:
    event = e.get("event", "?")
    parts = [str(e.get("time", "?")).replace("T", " ")[:19], f"{event:<8}", f"step {e.get('step', '?'):<6}",
             f"{e.get('host', '?')} pid {e.get('pid', '?')}"]
    details = []
    if event == RESUME_EVENT and e.get("checkpoint"):
        details.append(f"from {Path(e['checkpoint']).name}")
    if e.get("reason"):
        details.append(str(e["reason"]))
    if event == ROLLBACK_EVENT:
        details.append(f"to {Path(str(e.get('checkpoint'))).name}, skipping {e.get('skip_batches')} batch(es)")
    if event == INTERVAL_EVENT:
        details.append(f"every {e.get('interval_s')}s (delta {e.get('delta_s')}s, M {e.get('mtbi_h')}h)")
    for name, faults in (e.get("skipped") or {}).items():
        details.append(f"skipped {name} ({'; '.join(faults)})")
    changes = e.get("changes") or []
    if changes:
        details.append("changes: " + ", ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes))
    return "  ".join(parts) + ("  " + "; ".join(details) if details else "")


def _num(value, fmt: str) -> str:
    return format(value, fmt) if _number(value) else "-"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def status_json(status: RunStatus) -> str:
    return json.dumps(status.to_dict(), indent=1, default=str)
