"""Exactness on a GPU (run by bench/gpu.sh): the demo model in bf16 with deterministic algorithms, an uninterrupted
run against one stopped part-way and resumed (synchronous saves, then asynchronous ones, whose copies go through
pinned host memory), compared step by step (losses) and bit for bit (final weights). Writes a JSON summary.

  python bench/gpu_check.py --work DIR --out F [--steps N]

Exits 2 without an NVIDIA GPU (nothing is run): this check means nothing on a CPU, where make test covers it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gptresume(work: Path, run: Path, *args: str) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUBLAS_WORKSPACE_CONFIG=":4096:8", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "gptresume", "train", str(ROOT / "examples" / "demo.yaml"),
                           "--set", f"train.output_dir={run}", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    (work / f"{run.name}.log").open("a").write(proc.stdout + proc.stderr)
    return proc.returncode, time.time() - t0, proc.stdout + proc.stderr


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = (load_file(str(p / "final" / "model.safetensors")) for p in (a, b))
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and bool((x[k] == y[k]).all()) for k in x)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=80)
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing run", file=sys.stderr)
        return 2
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    stop = a.steps // 2 + 3  # between two saves: the resume restarts from a stop checkpoint, not a periodic one
    common = ["--set", "train.use_cpu=false", "--set", "train.bf16=true", "--set", "train.full_determinism=true",
              "--set", f"train.max_steps={a.steps}", "--set", f"train.save_steps={a.steps // 4}",
              "--set", f"train.eval_steps={a.steps // 2}"]
    result = {"device": torch.cuda.get_device_name(0), "steps": a.steps, "stop_at": stop, "runs": {}}
    ref = work / "uninterrupted"
    code, wall, out = gptresume(work, ref, *common)
    result["runs"]["uninterrupted"] = {"exit": code, "wall_s": wall}
    if code != 0:
        print(out[-3000:], file=sys.stderr)
        raise SystemExit(f"gpu_check: the uninterrupted run failed ({code}); log in {work}")
    for mode, extra in (("sync", []), ("async", ["--set", "checkpoint.async_save=true"])):
        run = work / f"stopped-{mode}"
        first, w1, out1 = gptresume(work, run, *common, *extra, "--stop-at-step", str(stop))
        second, w2, out2 = gptresume(work, run, *common, *extra)
        row = {"exit_stop": first, "exit_resume": second, "wall_s": w1 + w2,
               "synchronous_fallback": "saving synchronously" in out1 + out2}
        if first == 75 and second == 0:
            la, lb = losses(ref), losses(run)
            row.update(losses_equal=la == lb, steps_logged=len(lb), weights_bitwise_equal=same_weights(ref, run),
                       first_differing_step=next((s for s in sorted(la) if la.get(s) != lb.get(s)), None))
        result["runs"][mode] = row
        print(f"gpu_check {mode}: {row}", flush=True)
    result["exact"] = all(r.get("losses_equal") and r.get("weights_bitwise_equal")
                          for k, r in result["runs"].items() if k != "uninterrupted")
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
