"""Multinode: the pause per save of a 2-node commit through the bucket against a one-node local save (issue 27).

Two runs of the same model, data, batch, world size (2 processes, gloo on CPU) and save steps:
- "one node, local commit": `gptresume.launch --nproc_per_node 2`, one run directory; each save is written, hashed
  and fsynced, and rank 0 writes the manifest before training goes on;
- "2 nodes, commit in the bucket": two `gptresume.launch --nnodes 2 --nproc_per_node 1` members on 127.0.0.1, each
  in its own directory (checkpoint.shared_filesystem: false) with an S3-compatible server (moto, in this process);
  a save is written to each node's disk and training goes on while each node hashes, uploads and verifies its
  part and global rank 0 commits the manifest in the bucket.

The pause per save is read from metrics.jsonl (a row per step, its wall time): the step after a save takes the
save's pause on top of a step, so pause = that step's duration minus the median duration of the other steps (the
first steps, warm-up, left out). Also reported: the median step duration away from saves (background uploads share
the CPU), and the seconds from a save's start to its commit (the committed line of each mode).

`make bench` runs it as the section "multinode" (bench/results/multinode.json, rendered by `render` below); on its
own, without the other sections:
    python bench/sections/multinode.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):  # run as a script: bench/ on the path, as bench/run.py has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import env, machine
from sections.remote import CREDENTIALS

BUCKET = "gptresume-multinode"
WARMUP = 3
COMMITTED = {"local": re.compile(r"checkpoint-(\d+) committed \([^,]+, ([0-9.]+) s\)"),
             "bucket": re.compile(r"checkpoint-(\d+) committed in \S+ by \d+ node\(s\) \([^,]+, ([0-9.]+) s from")}
PAUSED = re.compile(r"checkpoint-(\d+) committed in \S+ by \d+ node\(s\) .*training paused ([0-9.]+) s\)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server():
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{
        "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}).create_bucket(Bucket=BUCKET)
    return server, endpoint


def write_config(work: Path, steps: int, every: int) -> Path:
    import yaml

    config = {
        "model": {"from_scratch": {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 128},
                  "tokenizer": {"train_vocab_size": 8000}},
        "data": {"source": "builtin:python-docs", "block_size": 128, "validation_fraction": 0.0},
        "train": {"output_dir": "run", "max_steps": steps, "per_device_train_batch_size": 8, "learning_rate": 1e-3,
                  "logging_steps": 1, "save_steps": every, "seed": 42, "bf16": False, "use_cpu": True,
                  "eval_strategy": "no", "dataloader_drop_last": True},
        "checkpoint": {"keep_last": 2},
    }
    path = work / "multinode.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(cwd: Path, config: Path, port: int, extra_env: dict, *args) -> subprocess.Popen:
    """`gptresume.launch` (torchrun's options in `args`, then `--set`s after the config) in `cwd`, output to a log."""
    cwd.mkdir(parents=True, exist_ok=True)
    sets = list(args[args.index("--set"):]) if "--set" in args else []
    options = list(args[:len(args) - len(sets)])
    with open(cwd / f"launch-{time.monotonic_ns()}.log", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "gptresume.launch", *options, "--master_addr", "127.0.0.1",
                                 "--master_port", str(port), "-m", "gptresume", "train", str(config), *sets],
                                cwd=cwd, env={**env(), "OMP_NUM_THREADS": "1", **extra_env}, stdout=out,
                                stderr=subprocess.STDOUT)


def run_mode(work: Path, mode: str, config: Path, endpoint: str | None, rep: int) -> dict:
    base = work / f"{mode}-{rep}"
    shutil.rmtree(base, ignore_errors=True)
    port = _port()
    if mode == "local":
        procs = [launch(base / "node0", config, port, {}, "--nproc_per_node", "2")]
    else:
        sets = ["--set", "checkpoint.shared_filesystem=false", "--set", f"checkpoint.remote=s3://{BUCKET}/r{rep}",
                "--set", f"checkpoint.remote_options={{endpoint_url: '{endpoint}'}}", "--set",
                "checkpoint.remote_keep_last=2"]
        remote_env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
        procs = [launch(base / f"node{k}", config, port, remote_env, "--nnodes", "2", "--nproc_per_node", "1",
                        "--node_rank", str(k), *sets) for k in (0, 1)]
    codes = [p.wait(timeout=3600) for p in procs]
    logs = "".join(p.read_text() for p in sorted(base.rglob("launch-*.log")))
    if codes != [0] * len(codes):
        raise RuntimeError(f"{mode} run failed ({codes}):\n{logs[-4000:]}")
    rows = [json.loads(x) for x in (base / "node0" / "run" / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in x]
    commit = [float(s) for _, s in COMMITTED[mode].findall(logs)]
    # training blocked by a save: a local synchronous save commits before training goes on (its committed line's
    # seconds); with the bucket, training goes on once every rank's files are on its disk (the line says how long)
    blocked = commit if mode == "local" else [float(s) for _, s in PAUSED.findall(logs)]
    return {"rows": rows, "commit_s": commit, "blocked_s": blocked}


def pauses(rows: list[dict], every: int, steps: int) -> tuple[list[float], float]:
    """(the pause of each save before the last step, the median step duration away from saves)."""
    t = {r["step"]: r["time"] for r in rows}
    dt = {s: t[s] - t[s - 1] for s in t if s - 1 in t}
    after_save = {s + 1 for s in range(every, steps, every)}
    plain = [d for s, d in dt.items() if s not in after_save and s > WARMUP]
    step = statistics.median(plain)
    return [dt[s] - step for s in sorted(after_save) if s in dt], step


def measure(work: Path, quick: bool = False, reps: int | None = None) -> dict:
    steps, every = (30, 10) if quick else (60, 10)
    reps = reps or (1 if quick else 3)
    config = write_config(work, steps, every)
    credentials = mock.patch.dict(os.environ, CREDENTIALS)  # the workers inherit them (bench/common.py env())
    credentials.start()
    server, endpoint = _server()
    results = {"local": [], "bucket": []}
    try:
        for rep in range(reps):
            for mode in (("local", "bucket") if rep % 2 == 0 else ("bucket", "local")):
                got = run_mode(work, mode, config, endpoint, rep)
                p, step = pauses(got["rows"], every, steps)
                results[mode].append({"pauses_s": p, "step_s": step, "commit_s": got["commit_s"],
                                      "blocked_s": got["blocked_s"]})
                print(f"  {mode}: pause per save {statistics.median(p):.3f} s (step {step:.3f} s), training blocked "
                      f"{statistics.median(got['blocked_s']):.3f} s, commit {statistics.median(got['commit_s']):.2f} s "
                      "after the save's start", flush=True)
    finally:
        server.stop()
        credentials.stop()  # the environment as it was

    def med(mode, key):
        values = [x for r in results[mode] for x in (r[key] if isinstance(r[key], list) else [r[key]])]
        return statistics.median(values)

    summary = {mode: {"pause_per_save_s": med(mode, "pauses_s"), "step_s": med(mode, "step_s"),
                      "blocked_s": med(mode, "blocked_s"), "save_to_commit_s": med(mode, "commit_s")}
               for mode in results}
    summary["pause_ratio"] = summary["bucket"]["pause_per_save_s"] / summary["local"]["pause_per_save_s"]
    return {"steps": steps, "save_every": every, "reps": reps, "runs": results, "summary": summary,
            "machine": machine()}


def measure_section(r, plan) -> dict:
    """bench/run.py's entry: the plan's repetitions (at most 3: each is two 2-process runs), quick = 30 steps."""
    work = r.work / "multinode"
    work.mkdir(parents=True, exist_ok=True)
    quick = plan.reps <= 1
    return measure(work, quick, min(plan.reps, 3))


def render(results: dict) -> list[str]:
    """RESULTS.md lines for this section (bench/render.py calls it)."""
    m = results.get("multinode")
    if not m:
        return []
    return ["## Several nodes without a shared file system: a commit through the bucket", "",
            f"2 processes (gloo, CPU), the demo model, a save every {m['save_every']} of {m['steps']} steps, "
            f"{m['reps']} repetition(s), each mode alternating first. One node with a local commit "
            "(`--nproc_per_node 2`, one run directory) against 2 nodes on 127.0.0.1 with separate run directories and "
            "an S3-compatible server on loopback (`checkpoint.shared_filesystem: false`): the commit is the bucket's "
            "manifest, written by global rank 0 once every node's part is uploaded and verified.", "",
            HEADER, rows(m), ""]


HEADER = ("| per save (median) | one node, local commit | 2 nodes, commit in the bucket | ratio |\n"
          "|---|---|---|---|")


def rows(result: dict) -> str:
    s = result["summary"]
    out = []
    for key, what in (("pause_per_save_s", "pause: the step after a save, over a typical step"),
                      ("blocked_s", "training blocked by the save"),
                      ("save_to_commit_s", "save's start to its commit"),
                      ("step_s", "a step away from saves")):
        a, b = s["local"][key], s["bucket"][key]
        out.append(f"| {what} | {a:.3f} s | {b:.3f} s | {b / a:.2f} |")
    return "\n".join(out)


def main() -> int:
    """This section alone: measures, writes bench/results/multinode.json as `make bench` would, prints its table."""
    from common import BENCH, source_version
    from render import write_report, write_section

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptresume-bench-multinode-"))
    start = time.time()
    try:
        result = measure(work, a.quick, a.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_section(BENCH, "multinode", {
        "section": "multinode", "quick": a.quick, "command": "bench/sections/multinode.py" + " --quick" * a.quick,
        "plan": {"reps": result["reps"]}, "machine": result.pop("machine"), "load_at_end": os.getloadavg()[0],
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **source_version(), "wall_s": time.time() - start,
        "data": result})
    write_report(BENCH)
    print("\n".join(render({"multinode": result})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
