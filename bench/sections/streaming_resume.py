"""Streaming resume: process start to the first resumed step of a streaming run (data.streaming) at batch 10 and at
batch 50,000, the same measure as the resume section for a packed run.

The late position is checkpoint-10 of a real streaming run relabelled (resume.fake_position) with its stream state
moved on: the reader positioned at the document the stream reaches after 50,000 batches (estimated from the
source's tokens per line), `yielded` set to match. The shuffle buffer and the model are checkpoint-10's, so the two
resumes differ only in how far into the source the reader must be positioned: what the target (late within 10% of
early) is about."""

from __future__ import annotations

import hashlib
import json
import shutil
from itertools import islice
from pathlib import Path

import yaml
from common import Plan, Runner, median, rotated
from gptresume.checkpoint.files import checkpoint_name
from sections.resume import fake_position, make_synthetic


def write_config(r: Runner, long_cfg: Path) -> Path:
    cfg = yaml.safe_load(long_cfg.read_text())
    cfg["data"].update(source=str(r.work / "synthetic-stream.txt"), streaming=True, validation_fraction=0.0)
    path = r.work / "long-stream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def move_stream(run: Path, config: Path, step: int) -> dict:
    """checkpoint-STEP's stream state, moved to where an uninterrupted stream is after STEP batches."""
    from gptresume.config import load_config
    from gptresume.data.streaming import DEFAULT_SHUFFLE_BUFFER, STATE_NAME, open_documents
    from transformers import AutoTokenizer

    cfg = load_config(config)
    ckpt = run / checkpoint_name(step)
    train = cfg.train
    blocks = step * train["per_device_train_batch_size"] * train.get("gradient_accumulation_steps", 1)
    ds, column = open_documents(cfg.data)
    sample = [ex[column] for ex in islice(iter(ds), 200)]
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tokens = sum(len(x) + 1 for x in tokenizer(sample, add_special_tokens=False)["input_ids"])
    buffered = cfg.data.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER
    rows = int((blocks + buffered) * cfg.data.block_size * len(sample) / tokens)
    ds, _ = open_documents(cfg.data)
    it = iter(ds)
    read = sum(1 for _ in islice(it, rows))
    if read < rows:
        raise SystemExit(f"the synthetic source has {read} documents, fewer than the {rows} needed")
    state_path = ckpt / STATE_NAME
    state = json.loads(state_path.read_text())
    state.update(reader=ds.state_dict(), yielded=blocks, epoch=0)
    state_path.write_text(json.dumps(state))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    raw = state_path.read_bytes()
    manifest["files"][STATE_NAME] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return {"documents_skipped": rows, "blocks": blocks}


def measure(r: Runner, plan: Plan, configs: dict) -> dict:
    """Start-up timings of a streaming resume early and late in the source, alternating, median over repetitions."""
    config = write_config(r, configs["long"])
    text = r.work / "synthetic-stream.txt"  # the resume section's text, with room for the shuffle buffer read ahead
    if not text.exists():
        make_synthetic(text, int((plan.long_position + 200) * 8 * 16 * 1.25))
    early = r.work / "stream-early"
    if not (early / "checkpoint-10").is_dir():
        shutil.rmtree(early, ignore_errors=True)
        r.log("  preparing the streaming run (training 10 steps)")
        r.worker("train", "--peer", "gptresume", "--config", str(config), "--output-dir", str(early),
                 "--cli-args", "--stop-at-step", "10", ok_codes=(75,))
    late = r.work / "stream-late"
    shutil.rmtree(late, ignore_errors=True)
    fake_position(early, late, plan.long_position)
    moved = move_stream(late, config, plan.long_position)
    r.log(f"  late position: {moved['documents_skipped']:,} documents into the source")
    kinds = ["streaming resume at batch 10", f"streaming resume at batch {plan.long_position:,}"]
    rows = {k: [] for k in kinds}
    for rep in range(plan.reps):
        for kind in rotated(kinds, rep):
            src = early if kind == kinds[0] else late
            run = r.work / "stream-run"  # a copy: the measured run writes its own step-11 files
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(src, run)
            res = r.worker("train", "--peer", "gptresume", "--config", str(config), "--output-dir", str(run),
                           "--exit-after-steps", "1")
            ev = res["events"]
            row = {"start_to_first_step_s": res["step_ends"][0][1] - res["spawn"],
                   "start_to_train_call_s": ev["train_call"] - res["spawn"],
                   "train_call_to_first_step_s": ev["first_step_begin"] - ev["train_call"],
                   "first_step": res["step_ends"][0][0]}
            rows[kind].append(row)
            r.log(f"  {kind}: first step {row['first_step']} after {row['start_to_first_step_s']:.2f}s "
                  f"(train() to first step {row['train_call_to_first_step_s']:.2f}s)")
    shutil.rmtree(r.work / "stream-run", ignore_errors=True)
    summary = {k: {m: median([x[m] for x in v]) for m in ("start_to_first_step_s", "start_to_train_call_s",
                                                           "train_call_to_first_step_s")} for k, v in rows.items()}
    return {"position": plan.long_position, "documents_skipped": moved["documents_skipped"], "batch": 8,
            "block_size": 16, "runs": rows, "summary": summary}
