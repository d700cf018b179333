"""The configs every section trains with (demo, GPT-2 124M-shaped, long-epoch) and the run directories they use.

A template run directory holds the packed data once; each measured gptresume run starts from a copy of it, so no
measurement pays for tokenizing or packing, and the peers read the same blocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from common import DEMO_YAML, Plan, Runner


def write_workloads(work: Path, plan: Plan) -> dict[str, Path]:
    demo = yaml.safe_load(DEMO_YAML.read_text())
    demo["model"]["tokenizer"] = {"name_or_path": str(work / "tok-demo")}
    paths = {"demo": work / "demo.yaml", "gpt2": work / "gpt2.yaml", "long": work / "long.yaml"}
    paths["demo"].write_text(yaml.safe_dump(demo))
    gpt2 = json.loads(json.dumps(demo))
    gpt2["model"] = {"from_scratch": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
                     "tokenizer": {"name_or_path": str(work / "tok-gpt2")}}
    gpt2["train"]["per_device_train_batch_size"] = plan.gpt2_batch
    paths["gpt2"].write_text(yaml.safe_dump(gpt2))
    long = json.loads(json.dumps(demo))
    long["model"] = {"from_scratch": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 16},
                     "tokenizer": {"name_or_path": str(work / "tok-demo")}}
    long["data"] = {"source": str(work / "synthetic.txt"), "text_unit": "line", "block_size": 16,
                    "validation_fraction": 0.0}
    long["train"].update(max_steps=plan.long_position + 10_000, per_device_train_batch_size=8, save_steps=10 ** 6,
                         eval_strategy="no", logging_steps=100, warmup_steps=0)
    long["train"].pop("eval_steps", None)
    paths["long"].write_text(yaml.safe_dump(long))
    return paths


def prepare_template(r: Runner, name: str, config: Path) -> Path:
    """A run directory holding the packed data (data-cache/): copied into every fresh run, read by the peers."""
    tpl = r.work / f"tpl-{name}"
    if not (tpl / "data-cache").is_dir():
        r.worker("train", "--peer", "gptresume", "--config", str(config), "--output-dir", str(tpl),
                 "--set", "train.max_steps=1", "--set", 'train.eval_strategy="no"', "--exit-at-step", "1")
    return tpl


def fresh_run_dir(r: Runner, tpl: Path, name: str) -> Path:
    r.n += 1
    run = r.work / f"run-{name}-{r.n}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    shutil.copytree(tpl / "data-cache", run / "data-cache")
    return run
