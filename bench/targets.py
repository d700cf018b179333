"""The targets the bench is judged by (issue 7) and the verdicts: results in, verdicts out, nothing measured.

Kept apart from the measuring so `--render-only` can re-judge an old results.json when a target changes."""

from __future__ import annotations

from common import median, ratio

# name -> what is promised; the thresholds sit with each measured value in targets()
TARGETS = {
    "vs_trainer": "gptresume train >= 0.99x plain Trainer throughput (same training settings, each as it ships)",
    "own_code": "gptresume's code in the training loop costs under 1% of each step (all callbacks, timed per step; "
                "signal handlers and the manifest cost nothing between saves)",
    "step_syncs": "gptresume's callbacks add no host sync of their own: per logging interval at most the one read of "
                  "the health values at the logging step, where Trainer reads the loss too (step_cost section)",
    "step_reductions": "one cross-rank collective per optimizer step for every flag (stop, timed/auto save, health), "
                       "2 processes (step_cost section)",
    "vs_minimal": "gptresume train >= 0.95x the minimal PyTorch loop (same training settings, each as it ships)",
    "preset": "demo preset (gptresume train) >= 1.25x plain Trainer out of the box",
    "async_block": "async save pauses training <= 10% of the synchronous save time (worst model; the copy, "
                   "without waits for a previous save still being written)",
    "async_block_ddp": "async save with 2 processes (DDP) pauses training <= 10% of the synchronous save time "
                       "(worst model; the copy, as above)",
    "hash_share": "hashing <= 5% of a synchronous save of the GPT-2 124M shape (manifest format 2: xxh3-128)",
    "verify_speed": "verify of a 1.5 GB checkpoint >= 3x faster than with sha256 (format 1, what it cost before)",
    "resume_late": "resume latency at batch 50,000 within 10% of batch 10",
    "streaming_resume_late": "streaming resume latency at batch 50,000 within 10% of batch 10",
    "goodput": "goodput >= 0.9 with SIGTERM every 60 s (demo model)",
    "packing_speed": "gptresume packing >= the faster of run_clm.py-style and nanoGPT-style packing (larger corpus)",
    "packing_memory_growth": "gptresume packing peak RSS: twice the corpus within 10% of the smaller one",
    "packing_memory": "gptresume packing peak RSS (process and largest worker) under 2 GB",
    **{f"auto_vs_best_{k}": f"checkpoint.every auto within 2% of the best fixed save_steps (10, 40, 160; a quick run "
                            f"fewer), {k} a fixed time after each start (60 s, demo model, in the full bench)"
       for k in ("SIGTERM", "SIGKILL")},
    **{f"auto_margin_{k}": f"checkpoint.every auto ahead of the worst fixed save_steps by the margin Daly's model "
                           f"predicts (measured minus predicted margin >= -0.02), {k} a fixed time after each start"
       for k in ("SIGTERM", "SIGKILL")},
    "remote": "training with checkpoint.remote (background uploads to a local S3-compatible server) >= 0.98x "
              "training without it (demo model, same saves)",
    "defaults_eval_save": "the GPT-2 fine-tune preset on 1 GB of text: evaluation and saving together under 10% of "
                          "the training time",
    "defaults_resume": "the preset's resume after a SIGTERM reaches its first step within 1.1x a fresh start's (data "
                       "cached), reading the data cache (no re-tokenisation)",
}


def targets(results: dict) -> dict:
    """name -> {what, value, limit, met} for every target whose section is in RESULTS (the others are left out)."""
    t = {}
    th = results.get("throughput", {})
    demo = th.get("demo", {}).get("peers", {})
    if demo:
        g = demo["gptresume train"]["tokens_per_s"]
        t["vs_trainer"] = ratio(g, demo["plain Trainer"]["tokens_per_s"]), 0.99
        shares = demo["gptresume train"].get("callback_share")
        t["own_code"] = (median(shares) if shares else None), 0.01
        t["vs_minimal"] = ratio(g, demo["minimal loop"]["tokens_per_s"]), 0.95
        t["preset"] = ratio(g, demo["Trainer out of the box"]["tokens_per_s"]), 1.25
    sc = results.get("step_cost")
    if sc:
        s = sc["summary"]
        t["step_syncs"] = (s["gptresume"]["syncs_per_step"] - s["plain"]["syncs_per_step"]) * sc["logging_steps"], 1.0
        d = sc["ddp"]
        t["step_reductions"] = d["gptresume"]["collectives_per_step"] - d["plain"]["collectives_per_step"], 1.0
    ck = results.get("checkpoint", {})
    if ck:
        worst = max(ratio(w["summary"]["async"]["copy_s"], w["summary"]["sync"]["blocked_s"]) or 0
                    for w in ck.values())
        t["async_block"] = worst, 0.10
        g = ck.get("gpt2", {}).get("summary", {}).get("sync", {})
        if g:
            t["hash_share"] = ratio(g.get("hash_s"), g.get("total_s")), 0.05
    ckd = results.get("checkpoint_ddp", {})
    if ckd:
        t["async_block_ddp"] = max(ratio(w["summary"]["async"]["copy_s"], w["summary"]["sync"]["blocked_s"]) or 0
                                   for w in ckd.values()), 0.10
    vf = results.get("verify", {}).get("seconds")
    if vf:
        t["verify_speed"] = ratio(vf.get("sha256"), vf.get("xxh3_128")), 3.0
    rs = results.get("resume", {}).get("summary")
    if rs:
        keys = list(rs)
        t["resume_late"] = ratio(rs[keys[2]]["start_to_first_step_s"], rs[keys[1]]["start_to_first_step_s"]), 1.10
    ss = results.get("streaming_resume", {}).get("summary")
    if ss:
        early, late = list(ss)
        t["streaming_resume_late"] = ratio(ss[late]["start_to_first_step_s"], ss[early]["start_to_first_step_s"]), 1.10
    gp = results.get("goodput", {}).get("runs", {}).get("SIGTERM")
    if gp:
        t["goodput"] = gp["goodput"], 0.90
    pk = results.get("packing", {}).get("runs")
    if pk:
        small, large = pk[min(pk, key=int)], pk[max(pk, key=int)]
        faster_peer = max(large["run_clm"]["tokens_per_s"], large["nanogpt"]["tokens_per_s"])
        t["packing_speed"] = ratio(large["gptresume"]["tokens_per_s"], faster_peer), 1.0
        peak = lambda run: max(run["gptresume"]["peak_rss_mb"], run["gptresume"]["peak_worker_rss_mb"])  # noqa: E731
        t["packing_memory_growth"] = ratio(peak(large), peak(small)), 1.10
        t["packing_memory"] = max(peak(small), peak(large)) / 1024, 2.0
    for kind, sm in results.get("interval", {}).get("summary", {}).items():
        t[f"auto_vs_best_{kind}"] = sm["auto_vs_best"], 0.98
        t[f"auto_margin_{kind}"] = sm["margin_vs_worst"] - sm["predicted_margin_vs_worst"], -0.02
    rm = results.get("remote")
    if rm:
        t["remote"] = rm["ratio"], 0.98
    df = results.get("defaults")
    if df:
        t["defaults_eval_save"] = df["fresh"]["eval_save_share"], 0.10
        hit = df["resume"]["cache_hit"] and not df["resume"]["packed_again"]
        t["defaults_resume"] = (df["resume_vs_fresh"] if hit else None), 1.10
    out = {}
    for name, (value, limit) in t.items():
        lower_is_better = name in ("async_block", "async_block_ddp", "hash_share", "resume_late",
                                   "streaming_resume_late", "own_code", "packing_memory_growth", "packing_memory",
                                   "step_syncs", "step_reductions",
                                   "defaults_eval_save", "defaults_resume")
        met = value is not None and (value <= limit if lower_is_better else value >= limit)
        out[name] = {"what": TARGETS[name], "value": value, "limit": limit, "met": met}
    return out
