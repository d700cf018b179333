"""Callbacks' share of a step: the same Trainer without and with gptresume's callbacks, in the same process, the
order alternating between repetitions; with the host syncs and cross-rank collectives per step of each (one process,
then the counts again under torchrun with plan.ddp_procs processes). Measured by bench/step_cost.py."""

from __future__ import annotations

import sys
import time

from common import Plan, Runner, loadavg, median

PEERS = ("plain", "gptresume")


def measure(r: Runner, plan: Plan) -> dict:
    steps, warmup = plan.step_cost_steps, plan.demo_warmup
    runs = []
    for rep in range(plan.reps):
        order = list(PEERS) if rep % 2 == 0 else list(reversed(PEERS))
        work = r.work / f"step-cost-{rep}"
        runs.append(r.worker("step-cost", "--work", str(work), "--steps", str(steps), "--warmup", str(warmup),
                             "--logging-steps", str(plan.step_cost_logging), "--order", *order))
        res = runs[-1]
        r.log(f"  step {res['plain']['step_s'] * 1e3:.2f} ms plain, {res['gptresume']['step_s'] * 1e3:.2f} ms "
              f"with gptresume ({res['device']})")
    ddp = r.worker("step-cost", "--work", str(r.work / "step-cost-ddp"), "--steps", str(warmup + 8), "--warmup",
                   str(warmup), "--logging-steps", str(plan.step_cost_logging), nproc=plan.ddp_procs)
    summary = {peer: {key: median([run[peer][key] for run in runs]) for key in runs[0][peer]} for peer in PEERS}
    plain, ours = summary["plain"]["step_s"], summary["gptresume"]["step_s"]
    shares = [(run["gptresume"]["step_s"] - run["plain"]["step_s"]) / run["gptresume"]["step_s"] for run in runs]
    own = [(run["gptresume"]["callbacks_s_per_step"] - run["plain"]["callbacks_s_per_step"])
           / run["gptresume"]["step_s"] for run in runs]
    return {"runs": runs, "ddp": ddp, "summary": summary, "share": median(shares), "callbacks_share": median(own),
            "step_ratio": ours / plain if plain else None, "device": runs[0]["device"], "steps": steps,
            "warmup": warmup, "logging_steps": plan.step_cost_logging,
            "measured": f"{time.strftime('%Y-%m-%d %H:%M')}, load average {loadavg():.2f}", "load": loadavg(),
            "command": " ".join(["bench/run.py", *sys.argv[1:]])}
