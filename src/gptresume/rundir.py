"""Names of the files in a run directory, and readers for them: shared by training and the tools.

Nothing here imports the training path (transformers.Trainer); the tools read runs through this module and
`checkpoint.py` only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
HISTORY_NAME = "history.jsonl"
FINAL_DIR = "final"
TENSORBOARD_DIR = "tensorboard"
LOCK_NAME = ".lock"


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
    return [int(e.get("step") or 0) for e in history if e.get("event") == "resume"]
