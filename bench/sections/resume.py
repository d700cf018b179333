"""Resume: process start to first step for a fresh start, a resume at batch 10 and one at batch 50,000 of one epoch.

The late position is checkpoint-10 relabelled (fake_position), so the two resumes differ only in how far into the
epoch the data must be positioned: what the target (late within 10% of early) is about."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from common import Plan, Runner, median, rotated
from gptresume.checkpoint.files import checkpoint_name
from workloads import fresh_run_dir


def make_synthetic(path: Path, tokens: int, seed: int = 0) -> None:
    """Lines of random words from the demo corpus: cheap to tokenize, long enough for one epoch of `tokens`."""
    import random

    from pydoc_data.topics import topics

    words = sorted({w for t in topics.values() for w in t.split() if w.isalpha() and len(w) < 9})
    rng = random.Random(seed)
    n_words = int(tokens / 1.2) + 1000  # most of these words are one or two tokens
    with open(path, "w") as f:
        for _ in range(n_words // 200):
            f.write(" ".join(rng.choices(words, k=200)) + "\n")


def fake_position(src: Path, dst: Path, step: int) -> None:
    """checkpoint-10 of src, re-labelled as checkpoint-STEP of the same epoch in dst (a new run directory):
    trainer_state.json says STEP, the manifest is updated to match. Only the data position differs."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    ckpt = next(src.glob("checkpoint-*"))
    new = dst / checkpoint_name(step)
    shutil.copytree(ckpt, new)
    state_path = new / "trainer_state.json"
    state = json.loads(state_path.read_text())
    old_step = state["global_step"]
    state["epoch"] = state["epoch"] * step / old_step
    state["global_step"] = step
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    manifest = json.loads((new / "manifest.json").read_text())
    raw = state_path.read_bytes()
    manifest["files"]["trainer_state.json"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    manifest["step"], manifest["epoch"] = step, state["epoch"]
    (new / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def measure(r: Runner, plan: Plan, configs: dict) -> dict:
    """Start-up timings of the three kinds of start, alternating, median over repetitions."""
    long_cfg = configs["long"]
    text = r.work / "synthetic.txt"
    blocks = (plan.long_position + 200) * 8
    if not text.exists():
        make_synthetic(text, blocks * 16)
    early = r.work / "long-early"
    if not (early / "checkpoint-10").is_dir():
        shutil.rmtree(early, ignore_errors=True)
        r.log("  preparing the long-epoch run (tokenizing the synthetic corpus, training 10 steps)")
        res = r.worker("train", "--peer", "gptresume", "--config", str(long_cfg), "--output-dir", str(early),
                       "--cli-args", "--stop-at-step", "10", ok_codes=(75,))
    late = r.work / "long-late"
    shutil.rmtree(late, ignore_errors=True)
    fake_position(early, late, plan.long_position)
    kinds = ["fresh start", "resume at batch 10", f"resume at batch {plan.long_position:,}"]
    rows = {k: [] for k in kinds}
    for rep in range(plan.reps):
        for kind in rotated(kinds, rep):
            if kind == "fresh start":
                run = fresh_run_dir(r, early, "long")
            else:
                run = early if kind == "resume at batch 10" else late
            res = r.worker("train", "--peer", "gptresume", "--config", str(long_cfg), "--output-dir", str(run),
                           "--exit-after-steps", "1")
            ev = res["events"]
            first_end = res["step_ends"][0][1]
            row = {"start_to_first_step_s": first_end - res["spawn"],
                   "start_to_train_call_s": ev["train_call"] - res["spawn"],
                   "train_call_to_first_step_s": ev["first_step_begin"] - ev["train_call"],
                   "first_step": res["step_ends"][0][0], "load": res["load"]}
            rows[kind].append(row)
            r.log(f"  {kind}: first step {row['first_step']} after {row['start_to_first_step_s']:.2f}s "
                  f"(train() to first step {row['train_call_to_first_step_s']:.2f}s)")
            if kind == "fresh start":
                shutil.rmtree(run, ignore_errors=True)
    summary = {k: {m: median([x[m] for x in v]) for m in ("start_to_first_step_s", "start_to_train_call_s",
                                                           "train_call_to_first_step_s")} for k, v in rows.items()}
    return {"position": plan.long_position, "blocks": blocks, "batch": 8, "block_size": 16,
            "runs": rows, "summary": summary}
