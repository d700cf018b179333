"""The run directory's books: every name in RUN_DIR, the run lock, history.jsonl and metrics.jsonl (written and
read), clearing a run for --overwrite. Shared by training, the Python API and the tools.

Nothing here imports torch or transformers; the tools read runs through this module and `checkpoint/` only.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, PROTECTED_NAME
from gptresume.durable import atomic_write_text
from gptresume.errors import UsageError

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
HISTORY_NAME = "history.jsonl"
FINAL_DIR = "final"
TENSORBOARD_DIR = "tensorboard"
TRACKERS_NAME = "trackers.json"  # the wandb / MLflow run each tracker continues on resume (training/trackers.py)
LOCK_NAME = ".lock"
TOKENIZER_DIR = "tokenizer"
DATA_CACHE_DIR = "data-cache"
REMOTE_LEDGER_NAME = "remote-uploads.json"  # checkpoints with a verified copy at checkpoint.remote (remote/ledger.py)
# history.jsonl: the `event` of each line (append_history), written by training/ and read by status, plot,
# health/goodput.py and health/rollback.py.
START_EVENT = "start"  # a session of a new run (also after --overwrite)
RESUME_EVENT = "resume"  # a session that resumed from a checkpoint
STOPPED_EVENT = "stopped"  # a graceful stop (signal, --stop-at-step) after committing a checkpoint
COMPLETE_EVENT = "complete"  # training reached its last step
ROLLBACK_EVENT = "rollback"  # a NaN or a confirmed spike: rolled back to an earlier checkpoint (health/rollback.py)
UNHEALTHY_EVENT = "unhealthy"  # a NaN or a confirmed spike stopped the run (the last good checkpoint named)
INTERVAL_EVENT = "interval"  # checkpoint.every: auto chose a save interval (health/interval.py)
SAMPLE_LEDGER_DIR = "ledger"  # the sample ledger's segments, one per committed checkpoint (gptresume/ledger/books.py)
# What --overwrite removes besides the checkpoints (the data cache stays: it is keyed by its inputs).
RUN_FILES = (CONFIG_NAME, METRICS_NAME, HISTORY_NAME, FINAL_DIR, TOKENIZER_DIR, TENSORBOARD_DIR, TRACKERS_NAME,
             PROTECTED_NAME, REMOTE_LEDGER_NAME, SAMPLE_LEDGER_DIR)
# Temporary names written under the run lock and renamed into place: a kill can leave one behind.
TEMPORARIES = (f".{FINAL_DIR}.tmp*", f".{FINAL_DIR}.old-*", f"{CONFIG_NAME}.tmp", ".*.tmp-*",
               f"{DATA_CACHE_DIR}/*.tmp-*")


def perplexity(loss: float) -> float:
    """exp(loss), as metrics.jsonl's eval_perplexity and the tools report it (inf instead of an overflow)."""
    return math.exp(loss) if loss < 50 else float("inf")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON Lines file; a torn or unreadable line (a crash mid-write) is skipped, a missing file is []."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    """RUN_DIR/metrics.jsonl: one row per logged step or evaluation, continuous across resumes."""
    return read_jsonl(Path(run_dir) / METRICS_NAME)


def read_history(run_dir: Path) -> list[dict]:
    """RUN_DIR/history.jsonl: start / resume / stopped / complete events, oldest first."""
    return read_jsonl(Path(run_dir) / HISTORY_NAME)


def resume_steps(history: list[dict]) -> list[int]:
    """Steps at which the run was resumed in a new process, in the order of the resumes."""
    return [int(e.get("step") or 0) for e in history if e.get("event") == RESUME_EVENT]


def read_trackers(run_dir: Path) -> dict:
    """RUN_DIR/trackers.json: tracker name -> its record (run id, where it logs, the last step it holds); {} when
    absent or torn."""
    try:
        data = json.loads((Path(run_dir) / TRACKERS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_tracker(run_dir: Path, name: str, record: dict) -> None:
    """Replace tracker `name`'s record in RUN_DIR/trackers.json (atomically; rank 0 only)."""
    data = read_trackers(run_dir)
    data[name] = record
    atomic_write_text(Path(run_dir) / TRACKERS_NAME, json.dumps(data, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------- the run lock

_held: dict[str, list] = {}  # run directory -> [fd, depth]: a process may re-enter its own lock


@contextmanager
def run_lock(run_dir: Path, announce: bool = True):
    """One trainer per run directory: a second one would interleave checkpoints. Re-entrant within a process (the
    CLI takes it before loading anything; the start pipeline, training/start.py, takes it again).

    `announce`: write "pid P on HOST" into the lock file at once (what a refused second process reports). A lock
    taken before the inputs are checked passes False, so a refused command leaves the file untouched, and calls
    `announce_lock_holder` once it is going to write the run directory anyway."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise UsageError(f"{run_dir} is in use by another gptresume process ({other}); wait for it, "
                             "or stop it (SIGTERM saves a checkpoint)") from None
        _held[key] = [fd, 1]
        if announce:
            announce_lock_holder(run_dir)
        yield
    finally:
        _held.pop(key, None)
        os.close(fd)


def announce_lock_holder(run_dir: Path) -> None:
    """Record this process as the holder in the lock file it holds (a second process names it when refused)."""
    held = _held.get(str(Path(run_dir).resolve()))
    if held is not None:
        os.ftruncate(held[0], 0)
        os.pwrite(held[0], f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)


# ---------------------------------------------------------------- writing the books


def append_history(run_dir: Path, event: str, **fields) -> None:
    """One line per start, resume, stop, completion (history.jsonl): what `status` and `plot` show. Credentials
    (in `argv`, or anywhere in the fields) are redacted (credentials.py)."""
    from gptresume.credentials import redact, redact_argv

    if isinstance(fields.get("argv"), list):
        fields["argv"] = redact_argv(fields["argv"])
    fields = redact(fields)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "t": round(time.time(), 3), "host": socket.gethostname(),
             "pid": os.getpid(), "event": event, **fields}
    with open(Path(run_dir) / HISTORY_NAME, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metrics logged after the checkpoint being resumed: the resumed run logs those steps again."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() and _step_of(ln) <= last_step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # an unreadable (torn) line is dropped


def clear_run(run_dir: Path) -> None:
    """--overwrite: remove what a previous run left (checkpoints, metrics, history, final model). A symbolic link
    among them is removed itself, never followed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for path in sorted(run_dir.iterdir()):
        if CHECKPOINT_RE.match(path.name):
            remove_path(path)
    for name in RUN_FILES:
        p = run_dir / name
        if p.exists() or p.is_symlink():
            remove_path(p)


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary files and directories (TEMPORARIES) a killed process left in RUN_DIR. Only under the
    run lock: then no process is writing them."""
    run_dir = Path(run_dir)
    removed = []
    for pattern in TEMPORARIES:
        for path in sorted(run_dir.glob(pattern)):
            remove_path(path)
            removed.append(path)
    return removed


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree; a symbolic link is unlinked, never followed."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)
