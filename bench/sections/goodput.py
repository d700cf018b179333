"""Goodput: a fixed-length run stopped every T seconds by SIGTERM (then by SIGKILL), re-run after each exit,
against its uninterrupted wall time; also checks the final weights equal the uninterrupted run's.

Runs the real `python -m gptresume train` command, not the worker: what a preempted user's job scheduler does."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import yaml
from common import Plan, Runner, env, loadavg
from workloads import fresh_run_dir


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict, demo_rate: float | None) -> dict:
    """Uninterrupted vs SIGTERM every T s vs SIGKILL every T s; the same command re-run after each exit."""
    cfg = yaml.safe_load(configs["demo"].read_text())
    tokens_per_step = cfg["train"]["per_device_train_batch_size"] * cfg["data"]["block_size"]
    rate = demo_rate or 3000.0
    steps = max(40, int(plan.goodput_seconds * rate / tokens_per_step) // 10 * 10)
    save_steps = plan.goodput_save_steps or cfg["train"].get("save_steps", 100)
    out = {"max_steps": steps, "save_steps": save_steps, "interval_s": plan.goodput_interval, "runs": {}}
    weights = {}
    for kind in ("uninterrupted", "SIGTERM", "SIGKILL"):
        run = fresh_run_dir(r, tpls["demo"], f"goodput-{kind}")
        cmd = [sys.executable, "-m", "gptresume", "train", str(configs["demo"]), "--set",
               f"train.output_dir={run}", "--set", f"train.max_steps={steps}", "--set",
               f"train.save_steps={save_steps}", "--set", f"train.eval_steps={save_steps}"]
        t0, load_before = time.time(), loadavg()
        starts, codes, stalled, newest = 0, [], 0, -1
        logf = open(r.work / f"goodput-{kind}.log", "w")
        while True:
            starts += 1
            proc = subprocess.Popen(cmd, cwd=r.work, env=env(), stdout=logf, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=None if kind == "uninterrupted" else plan.goodput_interval)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
                code = proc.wait()
            codes.append(code)
            if code == 0:
                break
            if code not in (75, -signal.SIGKILL, -signal.SIGTERM):  # -SIGTERM: after training, during samples
                raise RuntimeError(f"goodput {kind}: exit {code}; see {logf.name}")
            committed = max([int(p.parent.name.split("-")[1]) for p in run.glob("checkpoint-*/manifest.json")],
                            default=-1)
            stalled = 0 if committed > newest else stalled + 1
            newest = max(newest, committed)
            if stalled >= 3:  # killed before every save: no progress at this interval and save_steps
                break
        wall = time.time() - t0
        logf.close()
        row = {"wall_s": wall, "starts": starts, "exit_codes": codes, "load_before": load_before, "load": loadavg(),
               "finished": code == 0}
        if code == 0:
            from safetensors.torch import load_file

            weights[kind] = load_file(str(run / "final" / "model.safetensors"))
        out["runs"][kind] = row
        r.log(f"  goodput {kind}: {wall:.1f}s, {starts} start(s), exits {codes}"
              + ("" if code == 0 else " - no progress, gave up"))
        shutil.rmtree(run, ignore_errors=True)
    base = out["runs"]["uninterrupted"]["wall_s"]
    for kind in ("SIGTERM", "SIGKILL"):
        row = out["runs"][kind]
        if not row["finished"]:
            row.update(goodput=0.0, exact=None)
            continue
        same = all(bool((weights[kind][k] == weights["uninterrupted"][k]).all()) for k in weights["uninterrupted"])
        row.update(goodput=base / row["wall_s"], exact=same)
    return out
