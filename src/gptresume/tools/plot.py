"""`gptresume plot RUN_DIR -o FILE.png`: training and eval loss (top) and learning rate (bottom) against step.

The curves come from RUN_DIR/metrics.jsonl, which is one continuous record across resumes (a resume drops the
rows logged after the checkpoint it continues from). Each resume in RUN_DIR/history.jsonl is a dashed vertical
line at the step it resumed from; each rollback (history.jsonl, health/rollback.py) a dotted purple line from the
step it was detected at, with the checkpoint it went back to.
"""

from __future__ import annotations

from pathlib import Path

from gptresume.errors import UsageError
from gptresume.rundir import METRICS_NAME, ROLLBACK_EVENT, read_history, read_metrics, resume_steps
from gptresume.tools.common import require_run_dir

IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def rollback_marks(history: list[dict]) -> list[tuple[int, int]]:
    """(step detected, step rolled back to) of each rollback in history.jsonl, as the plot marks them."""
    return [(int(e["step"]), int(e.get("to_step") or 0)) for e in history
            if e.get("event") == ROLLBACK_EVENT and isinstance(e.get("step"), int)]


def plot_run(run_dir: str | Path, out: str | Path, dpi: int = 110) -> list[int]:
    """Write the figure to `out`; returns the resume steps marked on it (one line per resume)."""
    run_dir = require_run_dir(run_dir, "plot")
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"plot: -o {out}: use a file name ending in {', '.join(IMAGE_SUFFIXES)}")
    if not out.parent.is_dir():
        raise UsageError(f"plot: -o {out}: directory {out.parent} does not exist")
    metrics = read_metrics(run_dir)
    train = sorted((r["step"], r["loss"]) for r in metrics if r.get("loss") is not None)
    evals = sorted((r["step"], r["eval_loss"]) for r in metrics if r.get("eval_loss") is not None)
    lrs = sorted((r["step"], r["learning_rate"]) for r in metrics if r.get("learning_rate") is not None)
    if not train and not evals:
        raise UsageError(f"plot: {run_dir / METRICS_NAME} holds no logged loss yet; train for at least "
                         "logging_steps steps first")
    history = read_history(run_dir)
    rollbacks = rollback_marks(history)
    rolled_back = {to for _, to in rollbacks}
    resumes = [s for s in resume_steps(history) if s not in rolled_back]  # a rollback's resume is drawn as one

    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), height_ratios=(3, 1.4),
                                         layout="constrained")
    if train:
        ax_loss.plot(*zip(*train), color="tab:blue", linewidth=1.2, label="training loss")
    if evals:
        ax_loss.plot(*zip(*evals), color="tab:orange", marker="o", markersize=4, linewidth=1.5, label="eval loss")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{run_dir.resolve().name}: {len(train)} logged steps, {len(evals)} evaluations, "
                      f"{len(resumes)} resume{'s' if len(resumes) != 1 else ''}")
    ax_loss.grid(alpha=0.3)
    if lrs:
        ax_lr.plot(*zip(*lrs), color="tab:green", linewidth=1.2, label="learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        ax_lr.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    for i, step in enumerate(resumes):
        for ax in (ax_loss, ax_lr):
            ax.axvline(step, color="tab:red", linestyle="--", linewidth=1,
                       label="resumed" if (i == 0 and ax is ax_loss) else None)
        ax_loss.annotate(f"resume @{step}", xy=(step, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                         textcoords="offset points", color="tab:red", fontsize=8)
    for i, (step, to) in enumerate(rollbacks):
        ax_loss.axvline(step, color="tab:purple", linestyle=":", linewidth=1.2,
                        label="rollback" if i == 0 else None)
        ax_loss.annotate(f"rollback @{step} -> {to}", xy=(step, 0.92), xycoords=("data", "axes fraction"),
                         xytext=(3, -12), textcoords="offset points", color="tab:purple", fontsize=8)
    ax_loss.legend(loc="upper right")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return resumes
