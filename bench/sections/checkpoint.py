"""Checkpoint: per save, training paused, total save time, hashing and fsync; synchronous vs checkpoint.async_save.

Each save's timing comes from the worker (--save-timing; how each figure is taken: METHOD, also written into
results.json); the median is over the saves of a run, then over runs."""

from __future__ import annotations

import shutil

from common import Plan, Runner, median, rotated
from workloads import fresh_run_dir

METHOD = [
    "Paused: from the end of the last callback event before the save (on_step_end, or on_log/on_evaluate when that "
    "step also logs or evaluates) to on_save, as a TrainerCallback placed after gptresume's own sees them: the "
    "save alone, with no patch of gptresume.",
    "Committed (the manifest step: hash, fsync, manifest, retention) from gptresume's own DEBUG line "
    "\"Committed checkpoint-N in X s\"; the asynchronous write, wait and total from the background saver's "
    "per-save history (trainer.async_saver.history).",
    "Hashing: gptresume.durable.hash_file re-run, streaming, on the files of each checkpoint still kept at the end "
    "(from the page cache, as in the commit; checked against the manifest). Fsync: each of those files copied and "
    "the copy's os.fsync timed (freshly written pages, as the commit fsyncs them). Both after training, alone: "
    "an asynchronous commit's hashing competes with training for the cores, which these figures leave out.",
]


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict, nproc: int = 1) -> dict:
    """Per workload and mode (sync, async): every save's timings and their medians. `nproc` > 1: the same runs
    under torchrun with that many processes (DDP over gloo on CPU), timed on rank 0 (the rank that copies and
    writes the model and optimizer; the pause of a synchronous save includes waiting for every rank's commit)."""
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
                               str(run), "--save-timing", "--exit-when-saved", *sets, nproc=nproc)
                if res.get("returncode") != 0:
                    raise RuntimeError(f"checkpoint run failed: {res.get('returncode')}")
                ev, ends = res["events"], res["step_ends"]
                res["train_window_s"] = ev["saves_done"] - ends[0][1]  # first step end -> last save committed
                modes[mode].append({k: res[k] for k in ("saves", "train_window_s", "load")})
                per = res["saves"]
                if len(per) != saves:
                    raise RuntimeError(f"{workload} {mode}: {len(per)} saves timed, {saves} expected: {per}")
                r.log(f"  {workload} {mode}{f' x{nproc} processes' if nproc > 1 else ''}: "
                      f"paused {median([s['blocked_s'] for s in per]):.3f}s, total "
                      f"{median([s['total_s'] for s in per]):.3f}s per save, committed "
                      f"{median([s['commit_s'] for s in per]):.3f}s, "
                      f"hash {median([s.get('hash_s') for s in per]):.3f}s, "
                      f"fsync {median([s.get('fsync_s') for s in per]):.3f}s")
                shutil.rmtree(run, ignore_errors=True)
        summary = {}
        for mode, runs in modes.items():
            def per_run(key, runs=runs):  # hash_s, fsync_s, bytes: only on the checkpoints kept at the end
                default = None if key in ("hash_s", "fsync_s", "bytes") else 0.0
                return median([median([s.get(key, default) for s in run["saves"]]) for run in runs])
            for run in runs:
                for sv in run["saves"]:
                    sv["copy_s"] = sv["blocked_s"] - sv.get("waited_s", 0.0)  # paused, less waiting for the last save
            summary[mode] = {k: per_run(k) for k in ("blocked_s", "copy_s", "total_s", "hash_s", "fsync_s",
                                                     "waited_s", "write_s", "commit_s", "bytes")}
            summary[mode]["train_window_s"] = median([run["train_window_s"] for run in runs])
        out[workload] = {"save_every": every, "saves_per_run": saves, "summary": summary, "runs": modes,
                         "method": METHOD, "processes": nproc}
    return out
