"""Goodput: a fixed-length run stopped every T seconds by SIGTERM (then by SIGKILL), re-run after each exit,
against its uninterrupted wall time; also checks the final weights equal the uninterrupted run's.

Then the checkpoint interval study (issue 16): the same interruptions for `checkpoint.every: auto` (Daly's interval
from the measured save pause and the interruption rate, health/interval.py) against fixed save_steps of 10, 40
and 160, each run's goodput taken against one uninterrupted run that saves only at its end; and the margin the
formula predicts between auto and the worst fixed interval (from the measured pause, step time and restart cost,
for the bench's periodic interruptions: see `predicted_goodput`).

Runs the real `python -m gptresume train` command, not the worker: what a preempted user's job scheduler does."""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time

import yaml
from common import Plan, Runner, env, loadavg
from gptresume.rundir import INTERVAL_EVENT, START_EVENT
from workloads import fresh_run_dir


def _train_until_done(r: Runner, cmd: list[str], run, kind: str, interval: float, logname: str) -> dict:
    """Start `cmd`; unless uninterrupted, send `kind` `interval` seconds after each start and start it again, until
    it exits 0 (or makes no progress three starts in a row)."""
    t0, load_before = time.time(), loadavg()
    starts, codes, stalled, newest, code = 0, [], 0, -1, None
    with open(r.work / f"{logname}.log", "w") as logf:
        while True:
            starts += 1
            proc = subprocess.Popen(cmd, cwd=r.work, env=env(), stdout=logf, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=None if kind == "uninterrupted" else interval)
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
    return {"wall_s": time.time() - t0, "starts": starts, "exit_codes": codes, "load_before": load_before,
            "load": loadavg(), "finished": code == 0}


def _native_bf16() -> bool:
    """The demo preset's bf16 autocast is fast only with AVX512-BF16 or AMX (as examples/demo.py decides)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _base_cmd(configs: dict, run, steps: int) -> list[str]:
    precision = [] if _native_bf16() else ["--set", "train.bf16=false"]  # else bf16 autocast is many times slower
    return [sys.executable, "-m", "gptresume", "train", str(configs["demo"]), "--set", f"train.output_dir={run}",
            "--set", f"train.max_steps={steps}", *precision]


def _steps(plan: Plan, configs: dict, demo_rate: float | None) -> int:
    cfg = yaml.safe_load(configs["demo"].read_text())
    tokens_per_step = cfg["train"]["per_device_train_batch_size"] * cfg["data"]["block_size"]
    rate = demo_rate or 3000.0
    return max(40, int(plan.goodput_seconds * rate / tokens_per_step) // 10 * 10)


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict, demo_rate: float | None) -> dict:
    """Uninterrupted vs SIGTERM every T s vs SIGKILL every T s; the same command re-run after each exit."""
    cfg = yaml.safe_load(configs["demo"].read_text())
    steps = _steps(plan, configs, demo_rate)
    save_steps = plan.goodput_save_steps or cfg["train"].get("save_steps", 100)
    out = {"max_steps": steps, "save_steps": save_steps, "interval_s": plan.goodput_interval, "runs": {}}
    weights = {}
    for kind in ("uninterrupted", "SIGTERM", "SIGKILL"):
        run = fresh_run_dir(r, tpls["demo"], f"goodput-{kind}")
        cmd = _base_cmd(configs, run, steps) + ["--set", f"train.save_steps={save_steps}", "--set",
                                                f"train.eval_steps={save_steps}"]
        row = _train_until_done(r, cmd, run, kind, plan.goodput_interval, f"goodput-{kind}")
        if row["finished"]:
            from safetensors.torch import load_file

            weights[kind] = load_file(str(run / "final" / "model.safetensors"))
        out["runs"][kind] = row
        r.log(f"  goodput {kind}: {row['wall_s']:.1f}s, {row['starts']} start(s), exits {row['exit_codes']}"
              + ("" if row["finished"] else " - no progress, gave up"))
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


def measure_intervals(r: Runner, plan: Plan, configs: dict, tpls: dict, demo_rate: float | None) -> dict:
    """`every: auto` against fixed save_steps under SIGTERM and SIGKILL every T s, goodput against one uninterrupted
    run that saves only at its end (eval off everywhere: only checkpointing differs)."""
    interval = plan.interval_every
    steps = plan.interval_steps or _steps(plan, configs, demo_rate)
    common = ["--set", 'train.eval_strategy="no"', "--set", "checkpoint.keep_last=2", "--set", "train.logging_steps=5"]
    for key, value in (plan.interval_overrides or {}).items():
        common += ["--set", f"{key}={value}"]
    run = fresh_run_dir(r, tpls["demo"], "interval-base")
    base = _train_until_done(r, _base_cmd(configs, run, steps) + common + ["--set", f"train.save_steps={steps}"],
                             run, "uninterrupted", interval, "interval-base")
    step_s, restart_s = _step_and_restart(run)
    shutil.rmtree(run, ignore_errors=True)
    out = {"max_steps": steps, "interval_s": interval, "model": plan.interval_overrides or "demo",
           "base_wall_s": base["wall_s"], "step_s": step_s, "restart_s": restart_s, "load_before": base["load_before"],
           "runs": {}}
    r.log(f"  interval base (final save only): {base['wall_s']:.1f}s; {step_s:.3f}s/step, restart {restart_s:.1f}s")
    deltas = []
    for kind in plan.interval_kinds:
        rows = out["runs"].setdefault(kind, {})
        for setting in plan.interval_settings:
            run = fresh_run_dir(r, tpls["demo"], f"interval-{kind}-{setting}")
            if setting == "auto":  # the prior is the known preemption rate, as a user would configure it
                rate = 3600.0 / interval if kind == "SIGKILL" else 0.5  # a SIGTERM loses no work: the default
                extra = ["--set", "checkpoint.every=auto", "--set",
                         f"checkpoint.expected_interruptions_per_hour={rate:g}", "--set",
                         "checkpoint.auto_min_seconds=1"]
            else:
                extra = ["--set", f"train.save_steps={setting}"]
            row = _train_until_done(r, _base_cmd(configs, run, steps) + common + extra, run, kind, interval,
                                    f"interval-{kind}-{setting}")
            row["goodput"] = base["wall_s"] / row["wall_s"] if row["finished"] else 0.0
            if setting == "auto":
                chosen = [e for e in _history(run) if e.get("event") == INTERVAL_EVENT]
                row["chosen_s"] = [e["interval_s"] for e in chosen]
                deltas += [e["delta_s"] for e in chosen if e.get("delta_s")]
            rows[str(setting)] = row
            r.log(f"  {kind} {setting}: {row['wall_s']:.1f}s, {row['starts']} start(s), goodput "
                  f"{row['goodput']:.3f}" + (f", intervals {row['chosen_s']}" if setting == "auto" else ""))
            shutil.rmtree(run, ignore_errors=True)
    out["delta_s"] = statistics.median(deltas) if deltas else None
    out["summary"] = _summary(out, plan)
    return out


def _history(run) -> list[dict]:
    path = run / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _step_and_restart(run) -> tuple[float, float]:
    """Seconds per step (between the first and last logged rows) and the restart cost (process launch to the first
    logged step) of an uninterrupted run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [x for x in rows if "loss" in x]
    step_s = (rows[-1]["time"] - rows[0]["time"]) / max(1, rows[-1]["step"] - rows[0]["step"])
    start = next(e for e in _history(run) if e.get("event") == START_EVENT)
    return step_s, rows[0]["time"] - float(start.get("launched") or start["t"])


def predicted_goodput(tau_s: float, delta_s: float, interval_s: float, restart_s: float, kills: bool) -> float:
    """The bench's interruptions are periodic, not Poisson, so the prediction follows them exactly: each session of
    `interval_s` wall seconds is a restart, then training with a save every tau (each pausing delta). A kill keeps
    only the work up to the session's last save; a graceful stop keeps all of it, at the cost of one more save."""
    import math

    work = max(0.0, interval_s - restart_s)
    saves = math.floor(work / (tau_s + delta_s))
    useful = saves * tau_s if kills else max(0.0, work - (saves + 1) * delta_s)
    return useful / interval_s


def _summary(out: dict, plan: Plan) -> dict:
    """Per kind: the best and worst fixed interval, auto against them, and the formula's predicted margin."""
    summary = {}
    delta = out.get("delta_s") or 0.0
    for kind, rows in out["runs"].items():
        fixed = {k: v["goodput"] for k, v in rows.items() if k != "auto"}
        if not fixed or "auto" not in rows:
            continue
        best, worst = max(fixed, key=fixed.get), min(fixed, key=fixed.get)
        tau = {k: int(k) * out["step_s"] for k in fixed}
        chosen = rows["auto"].get("chosen_s") or [plan.interval_every]
        tau["auto"] = statistics.median(chosen)
        pred = {k: predicted_goodput(t, delta, out["interval_s"], out["restart_s"], kind == "SIGKILL")
                for k, t in tau.items()}
        auto = rows["auto"]["goodput"]
        summary[kind] = {"best_fixed": best, "worst_fixed": worst, "auto": auto,
                         "auto_vs_best": auto / fixed[best] if fixed[best] else None,
                         "margin_vs_worst": auto - fixed[worst], "predicted": pred,
                         "predicted_margin_vs_worst": pred["auto"] - pred[worst]}
    return summary
