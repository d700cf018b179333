"""Verify: `verify_checkpoint` of one checkpoint of the GPT-2 124M size (1.5 GB: weights and Adam's moments) with a
format 1 manifest (sha256, what every checkpoint recorded before format 2) and a format 2 one (xxh3-128): the cost
of `gptresume verify` and of start-up verification. In a fresh process (bench/worker.py verify-speed)."""

from __future__ import annotations

from common import Plan, Runner, median

METHOD = ("One checkpoint directory of random bytes (a model file, an optimizer file twice its size, a small "
          "trainer_state.json), committed by write_manifest once per digest, then verify_checkpoint timed (the "
          "function `gptresume verify` and start-up verification call), from the page cache; the two digests "
          "alternate, each figure the median over the repetitions.")


def measure(r: Runner, plan: Plan) -> dict:
    res = r.worker("verify-speed", "--size-mb", str(plan.verify_mb), "--work", str(r.work),
                   "--reps", str(max(3, plan.reps)))
    out = {"bytes": res["bytes"], "runs_s": res["runs_s"], "method": METHOD,
           "seconds": {k: median(v) for k, v in res["runs_s"].items()}}
    s = out["seconds"]
    r.log(f"  verify {res['bytes'] / 1e9:.2f} GB: sha256 {s['sha256']:.3f}s, xxh3_128 {s['xxh3_128']:.3f}s "
          f"({s['sha256'] / s['xxh3_128']:.1f}x)")
    return out
