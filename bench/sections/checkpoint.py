"""Checkpoint: per save, training paused, total save time, hashing and fsync; synchronous vs checkpoint.async_save.

Each save's timing comes from the worker (--save-timing); the median is over the saves of a run, then over runs."""

from __future__ import annotations

import shutil

from common import Plan, Runner, median, rotated
from workloads import fresh_run_dir


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict) -> dict:
    """Per workload and mode (sync, async): every save's timings and their medians."""
    out = {}
    for workload in plan.workloads:
        every, saves = ((plan.ckpt_demo_every, plan.ckpt_demo_saves) if workload == "demo"
                        else (plan.ckpt_gpt2_every, plan.ckpt_gpt2_saves))
        modes = {"sync": [], "async": []}
        for rep in range(plan.reps):
            for mode in rotated(["sync", "async"], rep):
                run = fresh_run_dir(r, tpls[workload], workload)
                sets = ["--set", f"train.max_steps={every * saves}", "--set", f"train.save_steps={every}",
                        "--set", 'train.eval_strategy="no"', "--set", f"checkpoint.async_save={mode == 'async'}",
                        "--set", "checkpoint.keep_last=2"]
                if workload == "gpt2":
                    sets += ["--set", f"train.per_device_train_batch_size={plan.ckpt_gpt2_batch}"]
                res = r.worker("train", "--peer", "gptresume", "--config", str(configs[workload]), "--output-dir",
                               str(run), "--save-timing", "--exit-when-saved", *sets)
                if res.get("returncode") != 0:
                    raise RuntimeError(f"checkpoint run failed: {res.get('returncode')}")
                ev, ends = res["events"], res["step_ends"]
                res["train_window_s"] = ev["saves_done"] - ends[0][1]  # first step end -> last save committed
                modes[mode].append({k: res[k] for k in ("saves", "train_window_s", "load")})
                per = res["saves"]
                r.log(f"  {workload} {mode}: paused {median([s['blocked_s'] for s in per]):.3f}s, total "
                      f"{median([s['total_s'] for s in per]):.3f}s per save, hash "
                      f"{median([s.get('hash_s', 0) for s in per]):.3f}s, fsync {median([s.get('fsync_s', 0) for s in per]):.3f}s")
                shutil.rmtree(run, ignore_errors=True)
        summary = {}
        for mode, runs in modes.items():
            def per_run(key, runs=runs):
                return median([median([s.get(key, 0.0) for s in run["saves"]]) for run in runs])
            for run in runs:
                for sv in run["saves"]:
                    sv["copy_s"] = sv["blocked_s"] - sv.get("waited_s", 0.0)  # paused, less waiting for the last save
            summary[mode] = {k: per_run(k) for k in ("blocked_s", "copy_s", "total_s", "hash_s", "fsync_s",
                                                     "waited_s", "write_s", "commit_s", "bytes")}
            summary[mode]["train_window_s"] = median([run["train_window_s"] for run in runs])
        out[workload] = {"save_every": every, "saves_per_run": saves, "summary": summary, "runs": modes}
    return out
