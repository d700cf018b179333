"""Defaults: the shipped GPT-2 fine-tune preset (examples/gpt2-finetune.yaml) on a generated corpus of 1 GB of text,
with only the model shape (demo-sized on a CPU, GPT-2 124M on a GPU) and the step count changed, measured as a
user would meet it: wall-time shares from process start (data preparation, start-up to the first step, training,
evaluation, saving), then a SIGTERM, and the re-run's time to its first step against a fresh start's (data cached).

Targets (issue 26): evaluation and saving together under 10% of the training time at the defaults; the stopped
run's resume at its first step within 1.1x a fresh start's, with a cache hit (no re-tokenisation).

Runs, each `gptresume train` in a fresh process (bench/worker.py):
  1. the preset on a new run directory: packs the corpus, trains to `defaults_steps` (past the preset's first save
     and evaluation, save_steps 200), and is sent SIGTERM there: it commits a checkpoint and exits 75;
  2. the same command again: it resumes (the log must show the data cache hit, and no packing);
  3. a fresh start of the same config in a new run directory holding a copy of the data cache (what a resume is
     compared with: the same start-up without a checkpoint to verify and load).
`--quick` uses a 32 MB corpus, save_steps 10 and fewer steps: a smoke run of the same path, not the defaults.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from common import ROOT, Plan, Runner
from workloads import fresh_run_dir

PRESET = ROOT / "examples" / "gpt2-finetune.yaml"
DOCUMENT_BYTES = 256 << 10  # the preset reads each .txt file as one document: files of 256 KB, 4,096 per GB
SHAPES = {"demo": {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 512},  # the demo's, at the preset's
          # block_size of 512 (the demo's own context is 128)
          "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}}


def preset_config(work: Path, corpus: Path, model: str, steps: int, overrides: dict) -> Path:
    """The preset with the model shape and the step count changed (and `overrides`, for --quick): a new model of
    that shape with a GPT-2-sized vocabulary (the bench's tok-gpt2: offline, no hub), trained `steps` steps."""
    cfg = yaml.safe_load(PRESET.read_text())
    cfg["model"] = {"from_scratch": dict(SHAPES[model]), "tokenizer": {"name_or_path": str(work / "tok-gpt2")}}
    cfg["data"]["source"] = str(corpus / "*.txt")
    cfg["train"].pop("num_train_epochs", None)
    cfg["train"]["max_steps"] = steps
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        cfg[section][name] = value
    path = work / f"defaults-{model}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _log_of(r: Runner) -> str:
    return (r.work / f"log-{r.n}.txt").read_text(errors="replace")


def _train(r: Runner, config: Path, run: Path, *args: str, ok=(0,)) -> tuple[dict, str]:
    res = r.worker("train", "--peer", "gptresume", "--config", str(config), "--output-dir", str(run), *args,
                   timeout=6 * 3600, ok_codes=ok)
    return res, _log_of(r)


def _phases(res: dict) -> dict:
    """Seconds from process start (the parent's spawn) to train(), to the first step's end; training, evaluation
    and saving between the first step's start and the last step's end (evaluations and saves are pauses between
    steps, so training is that span less them); the shares of evaluation and saving against training."""
    ev, ends = res["events"], res["step_ends"]
    evals = [s for _, s in res.get("evals", [])]
    saves = [s for step, s in res.get("saves", []) if step < ends[-1][0]]  # not the stop's own save
    span = ends[-1][1] - ev["first_step_begin"]
    eval_s, save_s = sum(evals), sum(saves)
    train_s = span - eval_s - save_s
    return {"start_to_train_call_s": ev["train_call"] - res["spawn"],
            "start_to_first_step_s": ends[0][1] - res["spawn"], "steps": ends[-1][0] - ends[0][0] + 1,
            "train_s": train_s, "eval_s": eval_s, "save_s": save_s, "evaluations": len(evals), "saves": len(saves),
            "eval_share": eval_s / train_s if train_s > 0 else None,
            "save_share": save_s / train_s if train_s > 0 else None,
            "eval_save_share": (eval_s + save_s) / train_s if train_s > 0 else None,
            "tokens_per_s": res.get("tokens_per_step", 0) * (ends[-1][0] - ends[0][0]) / max(
                ends[-1][1] - ends[0][1] - eval_s - save_s, 1e-9) if len(ends) > 1 else None}


def measure(r: Runner, plan: Plan) -> dict:
    import torch

    from packing_peers import make_corpus

    model = "gpt2" if torch.cuda.is_available() else "demo"
    corpus = r.work / f"defaults-corpus-{plan.defaults_mb}-{DOCUMENT_BYTES}"
    if not corpus.is_dir():
        r.log(f"  generating {plan.defaults_mb} MB of text")
        make_corpus(corpus, plan.defaults_mb, file_bytes=DOCUMENT_BYTES)
    text_bytes = sum(p.stat().st_size for p in corpus.glob("*.txt"))
    config = preset_config(r.work, corpus, model, plan.defaults_steps + 50, dict(plan.defaults_overrides or {}))
    run = r.work / "defaults-run"
    shutil.rmtree(run, ignore_errors=True)

    r.log(f"  1. the preset ({model} shape) on a new run: packing {text_bytes / 1e6:,.0f} MB, then SIGTERM at step "
          f"{plan.defaults_steps}")
    first, log1 = _train(r, config, run, "--sigterm-at-step", str(plan.defaults_steps), ok=(75,))
    fresh = _phases(first)
    if "packing:" not in log1:
        raise RuntimeError("the first run did not pack the corpus (no 'packing:' line); its log:\n" + log1[-2000:])
    committed = sorted(run.glob("checkpoint-*/manifest.json"))
    r.log(f"     to first step {fresh['start_to_first_step_s']:.1f}s; {fresh['evaluations']} evaluation(s) "
          f"{fresh['eval_s']:.1f}s, {fresh['saves']} save(s) {fresh['save_s']:.1f}s, training {fresh['train_s']:.1f}s "
          f"(evaluation + saving {fresh['eval_save_share'] or 0:.1%} of training); committed: "
          f"{', '.join(p.parent.name for p in committed)}")

    r.log("  2. the same command again: the resume")
    resumed, log2 = _train(r, config, run, "--exit-after-steps", "1")
    cache_hit = "tokens from cache" in log2
    retokenized = "packing:" in log2
    r.log(f"     to first step {resumed['step_ends'][0][1] - resumed['spawn']:.1f}s (step "
          f"{resumed['step_ends'][0][0]}); cache hit: {cache_hit}; packed again: {retokenized}")

    r.log("  3. a fresh start with the data cached")
    cached_run = fresh_run_dir(r, run, "defaults-fresh")
    cached, _ = _train(r, config, cached_run, "--exit-after-steps", "1")
    shutil.rmtree(cached_run, ignore_errors=True)
    resume_s = resumed["step_ends"][0][1] - resumed["spawn"]
    cached_s = cached["step_ends"][0][1] - cached["spawn"]
    data_prep = fresh["start_to_train_call_s"] - (cached["events"]["train_call"] - cached["spawn"])
    total = resumed["step_ends"][0][1] - first["spawn"]  # unused gaps between the runs are not in the shares
    wall = first["step_ends"][-1][1] - first["spawn"]
    shares = {"data preparation (hash, tokenise, pack, fingerprint)": data_prep,
              "start-up to the first step, without it": fresh["start_to_first_step_s"] - data_prep,
              "training": fresh["train_s"], "evaluation": fresh["eval_s"], "saving": fresh["save_s"]}
    r.log(f"     to first step {cached_s:.1f}s: resume / fresh start = {resume_s / cached_s:.3f}")
    shutil.rmtree(run, ignore_errors=True)
    return {"model": model, "shape": SHAPES[model], "corpus_mb": plan.defaults_mb, "text_bytes": text_bytes,
            "sigterm_at": plan.defaults_steps, "overrides": dict(plan.defaults_overrides or {}),
            "config": yaml.safe_load(config.read_text()), "fresh": fresh, "wall_s": wall,
            "wall_shares_s": shares, "resume": {"start_to_first_step_s": resume_s, "first_step":
                                                 resumed["step_ends"][0][0], "cache_hit": cache_hit,
                                                 "packed_again": retokenized},
            "fresh_cached": {"start_to_first_step_s": cached_s}, "resume_vs_fresh": resume_s / cached_s,
            "fresh_uncached_vs_resume": fresh["start_to_first_step_s"] / resume_s, "span_s": total,
            "raw": {"first": _trim(first), "resumed": _trim(resumed), "cached": _trim(cached)}}


def _trim(res: dict) -> dict:
    """A run's figures without its per-step list (kept: the first and last step ends)."""
    out = {k: v for k, v in res.items() if k != "step_ends"}
    ends = res.get("step_ends") or []
    out["first_and_last_step_end"] = [ends[0], ends[-1]] if ends else []
    return json.loads(json.dumps(out, default=str))
