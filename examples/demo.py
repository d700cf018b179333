"""`make demo`: train a tiny GPT-2 from scratch on CPython's bundled documentation, stop it part-way with
SIGTERM (as a scheduler would), resume it in a new process, and check the result against an uninterrupted
reference run: identical per-step losses and bitwise-identical final weights.

Re-running is safe: a finished run reports that it is complete, an interrupted one resumes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "demo.yaml"
RUN = Path("runs/demo")
REFERENCE = Path("runs/demo-reference")
STOP_AT_FRACTION = 0.4  # SIGTERM once this share of the steps is logged: part-way through an epoch


def train(run_dir: Path, extra=()) -> subprocess.Popen:
    # demo.yaml's `bf16: auto` picks bf16 where the hardware computes it natively and fp32 elsewhere
    cmd = [sys.executable, "-m", "gptresume", "train", str(CONFIG), "--set", f"train.output_dir={run_dir}", *extra]
    print("$ gptresume train", " ".join(cmd[4:]), flush=True)
    return subprocess.Popen(cmd)


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("checkpoint-*/manifest.json"))


def run_with_interruption(max_steps: int) -> None:
    """First time: start, SIGTERM part-way, then re-run the same command. Afterwards: just re-run it."""
    if not has_checkpoint(RUN):
        stop_at = int(max_steps * STOP_AT_FRACTION)
        proc = train(RUN)
        while proc.poll() is None and logged_steps(RUN) < stop_at:
            time.sleep(0.2)
        if proc.poll() is None:
            print(f"\n>>> demo: sending SIGTERM at step {logged_steps(RUN)} (like a scheduler preempting the job)\n",
                  flush=True)
            proc.send_signal(signal.SIGTERM)
        code = proc.wait()
        if code not in (0, 75):
            sys.exit(f"demo: training failed with exit code {code}")
        print(f"\n>>> demo: the run exited with code {code}; re-running the same command resumes it\n", flush=True)
    code = train(RUN).wait()
    if code != 0:
        sys.exit(f"demo: training failed with exit code {code}")


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def compare() -> bool:
    from safetensors.torch import load_file

    a, b = losses(RUN), losses(REFERENCE)
    same_losses = [s for s in b if a.get(s) == b[s]]
    wa = load_file(str(RUN / "final" / "model.safetensors"))
    wb = load_file(str(REFERENCE / "final" / "model.safetensors"))
    same_weights = [k for k in wb if k in wa and wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape
                    and bool((wa[k] == wb[k]).all())]
    history = [json.loads(line) for line in (RUN / "history.jsonl").read_text().splitlines()]
    resumes = [h for h in history if h["event"] == "resume"]
    print("\n=== Resume exactness ===")
    for h in resumes:
        print(f"  resumed in process {h['pid']} from {h['checkpoint']} (step {h['step']})")
    print(f"  per-step training losses identical: {len(same_losses)}/{len(b)} steps")
    print(f"  final weights bitwise identical:     {len(same_weights)}/{len(wb)} tensors")
    ok = len(same_losses) == len(b) == len(a) and len(same_weights) == len(wb) == len(wa) and bool(resumes)
    print("  RESULT: " + ("the stopped-and-resumed run matches the uninterrupted one exactly" if ok else
                          "MISMATCH: the resumed run differs from the reference"))
    return ok


def main() -> int:
    import yaml

    max_steps = yaml.safe_load(CONFIG.read_text())["train"]["max_steps"]
    t0 = time.time()
    print(f"=== 1. Train {RUN}, stopped part-way by SIGTERM and resumed in a new process ===", flush=True)
    run_with_interruption(max_steps)
    print(f"\n=== 2. Train {REFERENCE} without interruption, for comparison ===", flush=True)
    if train(REFERENCE).wait() != 0:
        sys.exit("demo: the reference run failed")
    ok = compare()
    print(f"\nDemo finished in {time.time() - t0:.0f} s. Try: gptresume verify {RUN}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
