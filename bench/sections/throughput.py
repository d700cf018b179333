"""Throughput: steady-state tokens/s (warm-up steps skipped) of gptresume train, plain Trainer and a minimal loop
with the same model, data, batch and precision, for the demo model and a GPT-2 124M-shaped one; for the demo,
Trainer out of the box and one performance setting changed at a time, so the preset's gain is attributed."""

from __future__ import annotations

import yaml
from common import DEMO_YAML, Plan, Runner, median, rotated
from workloads import fresh_run_dir

PERF_KEYS = ("bf16", "fp16", "tf32", "torch_compile", "torch_compile_backend", "torch_compile_mode", "optim", "use_cpu")


def _has_gpu() -> bool:
    """Imported here, not at the top: the bench's own process loads torch only when a section needs it."""
    import torch

    return torch.cuda.is_available()


def throughput_of(res: dict, warmup: int) -> float | None:
    """Tokens/s from the first to the last step end after the warm-up: start-up and compilation stay out."""
    ends = [(s, t) for s, t in res.get("step_ends", []) if s >= warmup]
    if len(ends) < 2:
        return None
    (s0, t0), (s1, t1) = ends[0], ends[-1]
    return (s1 - s0) * res["tokens_per_step"] / (t1 - t0)


def peers_for(workload: str, plan: Plan) -> list[dict]:
    """(name, peer, extra worker args). The demo adds Trainer out of the box and one change at a time."""
    same = [
        {"name": "gptresume train", "peer": "gptresume", "args": []},
        {"name": "plain Trainer", "peer": "trainer", "args": []},
        {"name": "minimal loop", "peer": "minimal", "args": []},
        # gptresume keeps freed CPU memory for reuse (allocator.py); the other two run with glibc's defaults.
        # These rows separate what that setting gains from what gptresume's code costs.
        {"name": "gptresume train, glibc defaults", "peer": "gptresume", "args": ["--allocator", "default"]},
    ]
    if workload != "demo":
        return same
    same += [
        {"name": "plain Trainer + kept memory", "peer": "trainer", "args": ["--allocator", "kept"]},
        {"name": "minimal loop + kept memory", "peer": "minimal", "args": ["--allocator", "kept"]},
    ]
    ootb = ["--out-of-the-box"]
    bf16 = ["--set", "train.bf16=true"] + ([] if _has_gpu() else ["--set", "train.use_cpu=true"])  # HF: bf16 on CPU
    variants = [
        {"name": "Trainer out of the box", "peer": "trainer", "args": ootb},
        {"name": "minimal loop out of the box", "peer": "minimal", "args": ootb},
        {"name": "+ bf16 autocast", "peer": "trainer", "args": ootb + bf16},
        {"name": "+ optim adamw_torch (not fused)", "peer": "trainer",
         "args": ootb + ["--set", "train.optim=adamw_torch"]},
        {"name": "+ eager attention (not SDPA)", "peer": "trainer", "args": ootb + ["--attn", "eager"]},
    ]
    if plan.compile_variants:  # compile on top of bf16: what it would add to the preset
        variants += [
            {"name": "+ bf16 + torch.compile", "peer": "trainer",
             "args": ootb + bf16 + ["--set", "train.torch_compile=true"]},
        ]
    from gptresume.config.device import resolve_precision  # the preset's `bf16: auto`, as this machine resolves it

    train = resolve_precision(yaml.safe_load(DEMO_YAML.read_text())["train"])
    # false is the default; use_cpu on a machine without a GPU changes nothing (the CPU is all there is)
    ignored = () if _has_gpu() else ("use_cpu",)
    preset = {k: v for k, v in train.items() if k in PERF_KEYS and v not in (False, None) and k not in ignored}
    for v in variants:  # a variant with the preset's settings is the plain Trainer run: measured once
        sets = dict(x.split("=", 1) for x in v["args"][v["args"].index("--set") + 1::2]) if "--set" in v["args"] else {}
        changed = {k.removeprefix("train."): yaml.safe_load(x) for k, x in sets.items()}
        changed = {k: x for k, x in changed.items() if k not in ignored}
        if changed == preset and "--attn" not in v["args"]:
            v["same_as"] = {"trainer": "plain Trainer", "minimal": "minimal loop"}[v["peer"]]
    return same + variants


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict) -> dict:
    """Per workload: tokens/s of every peer (median over repetitions), its settings, the model facts."""
    out = {}
    for workload in plan.workloads:
        warm, steps = ((plan.demo_warmup, plan.demo_steps) if workload == "demo"
                       else (plan.gpt2_warmup, plan.gpt2_steps))
        total = warm + steps
        peers = peers_for(workload, plan)
        rows = {p["name"]: {"runs": [], "settings": None} for p in peers}
        facts = {}
        for rep in range(plan.reps):
            for p in rotated([p for p in peers if "same_as" not in p], rep):
                args = ["train", "--peer", p["peer"], "--config", str(configs[workload]),
                        "--set", f"train.max_steps={total}", "--set", 'train.eval_strategy="no"',
                        "--set", "train.save_steps=1000000", "--exit-at-step", str(total), *p["args"]]
                if p["peer"] == "gptresume":
                    args += ["--output-dir", str(fresh_run_dir(r, tpls[workload], workload))]
                else:
                    args += ["--output-dir", str(r.work / f"out-{r.n}"), "--data-from", str(tpls[workload])]
                res = r.worker(*args)
                tps = throughput_of(res, warm)
                rows[p["name"]]["runs"].append(tps)
                if "callback_s" in res:  # per step, over the steps after the first
                    n = max(1, len(res["step_ends"]) - 1)
                    step_s = (res["step_ends"][-1][1] - res["step_ends"][0][1]) / n
                    rows[p["name"]].setdefault("callback_share", []).append(res["callback_s"] / n / step_s)
                rows[p["name"]]["settings"] = dict(res.get("settings") or {}, allocator=res.get("allocator"))
                rows[p["name"]].setdefault("load", []).append(res["load"])
                facts = {k: res[k] for k in ("params", "params_no_wpe", "flops_per_token", "tokens_per_step")}
                r.log(f"  {workload} {p['name']}: {tps:,.0f} tokens/s (load {res['load']:.1f})")
        for p in peers:
            if "same_as" in p:
                rows[p["name"]] = dict(rows[p["same_as"]], same_as=p["same_as"])
        for row in rows.values():
            row["tokens_per_s"] = median(row["runs"])
        out[workload] = {"warmup_steps": warm, "measured_steps": steps, "facts": facts, "peers": rows}
    return out
