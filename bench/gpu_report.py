"""bench/RESULTS-gpu.md from bench/gpu.sh's two stages: the exactness check (bench/gpu_check.py's JSON) and
bench/run.py's RESULTS.md and results/*.json for the GPU (gathered into bench/results-gpu.json). Measures nothing."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


def gpu_line() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown GPU"


def exactness(path: Path, code: int) -> list[str]:
    lines = ["## Exactness on the GPU (bench/gpu_check.py)", ""]
    if not path.is_file():
        return lines + [f"**Not measured**: bench/gpu_check.py exited {code} without a result (see its log).", ""]
    r = json.loads(path.read_text())
    lines += [f"Demo model (examples/demo.yaml) on {r['device']}, bf16, `train.full_determinism: true`, "
              f"CUBLAS_WORKSPACE_CONFIG=:4096:8; {r['steps']} steps, stopped at step {r['stop_at']} and resumed, "
              "against one uninterrupted run.", "",
              "| saves | stop / resume exit | losses equal (every step) | final weights bitwise equal | "
              "first differing step |", "|---|---|---|---|---|"]
    for mode, row in r["runs"].items():
        if mode == "uninterrupted":
            continue
        yes = lambda v: "yes" if v else ("**no**" if v is not None else "–")  # noqa: E731
        lines.append(f"| {mode}{' (fell back to synchronous)' if row.get('synchronous_fallback') else ''} | "
                     f"{row['exit_stop']} / {row['exit_resume']} | {yes(row.get('losses_equal'))} | "
                     f"{yes(row.get('weights_bitwise_equal'))} | {row.get('first_differing_step') or '–'} |")
    lines += ["", f"**Exact: {'yes' if r['exact'] else 'NO'}**", ""]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--exact", required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--exact-exit", type=int, default=0)
    p.add_argument("--bench-exit", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    bench = Path(a.bench)
    lines = ["# GPU check (bench/gpu.sh)", "",
             f"{gpu_line()}; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; the script took {a.seconds} s.", ""]
    lines += exactness(Path(a.exact), a.exact_exit)
    if (bench / "RESULTS.md").is_file():
        body = (bench / "RESULTS.md").read_text().split("\n", 1)[1]  # its own title dropped
        lines += ["# bench/run.py on the GPU (GPT-2 124M shape)",
                  *([f"bench/run.py exited {a.bench_exit} (a stage past its time limit is cut short: what "
                     "it measured is below)."] if a.bench_exit else []), body]
        gathered = {p.stem: json.loads(p.read_text()) for p in sorted((bench / "results").glob("*.json"))}
        Path(a.out).with_name("results-gpu.json").write_text(json.dumps(gathered, indent=1))
    else:
        lines += [f"**bench/run.py wrote nothing** (exit {a.bench_exit}).", ""]
    Path(a.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
