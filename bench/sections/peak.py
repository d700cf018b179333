"""Peak: torch.matmul on large square matrices, fp32 and bf16, the denominators of the throughput tables' MFU.

Measured on this machine in the same run, so MFU compares against what these cores reach today, not a datasheet."""

from __future__ import annotations

from common import Plan, Runner, median, rotated


def measure(r: Runner, plan: Plan) -> dict:
    """GFLOP/s per dtype, median over repetitions, fp32 and bf16 alternating."""
    runs = {"fp32": [], "bf16": []}
    for rep in range(plan.reps):
        for dtype in rotated(["fp32", "bf16"], rep):
            res = r.worker("matmul", "--dtype", dtype, "--n", str(plan.matmul_n))
            runs[dtype].append(res["gflops_median"])
            r.log(f"  matmul {dtype}: {res['gflops_median']:.1f} GFLOP/s")
    return {"n": plan.matmul_n, "runs": runs, "gflops": {k: median(v) for k, v in runs.items()}}
