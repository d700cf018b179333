"""`make bench`: gptresume against plain Trainer and a minimal PyTorch loop, in the same run, on this machine.

Writes bench/results.json (every raw measurement) and bench/RESULTS.md (the tables and the targets, met or not).
Every measurement runs in a fresh process (bench/worker.py); peers alternate within each repetition (the order
rotates and reverses) and each figure is the median over the repetitions (5; `--quick`: 1, with fewer steps).

Sections (`--only` runs some of them; the machine description is always written):
  peak        torch.matmul on large square matrices, fp32 and bf16: the peak MFU is measured against
  throughput  steady-state tokens/s (warm-up steps skipped) of gptresume train, plain Trainer and a minimal loop
              with the same model, data, batch and precision, for the demo model and a GPT-2 124M-shaped one;
              for the demo, Trainer out of the box and one performance setting changed at a time
  checkpoint  per save: training paused, total save time, hashing, fsync; synchronous vs checkpoint.async_save
  resume      process start to first step: fresh start, resume at batch 10 and at batch 50,000 of one epoch
  goodput     a fixed-length run stopped every T seconds by SIGTERM (then by SIGKILL), re-run after each exit,
              against its uninterrupted wall time; also checks the final weights equal the uninterrupted run's
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORKER = BENCH / "worker.py"
DEMO_YAML = ROOT / "examples" / "demo.yaml"
SECTIONS = ("peak", "throughput", "checkpoint", "resume", "goodput")
PERF_KEYS = ("bf16", "fp16", "tf32", "torch_compile", "torch_compile_backend", "torch_compile_mode", "optim", "use_cpu")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()

# Targets (issue 7): name -> (what, threshold)
TARGETS = {
    "vs_trainer": "gptresume train >= 0.99x plain Trainer throughput (same training settings, each as it ships)",
    "own_code": "gptresume's code in the training loop costs under 1% of each step (all callbacks, timed per step; "
                "signal handlers and the manifest cost nothing between saves)",
    "vs_minimal": "gptresume train >= 0.95x the minimal PyTorch loop (same training settings, each as it ships)",
    "preset": "demo preset (gptresume train) >= 1.25x plain Trainer out of the box",
    "async_block": "async save pauses training <= 10% of the synchronous save time (worst model; the copy, "
                   "without waits for a previous save still being written)",
    "resume_late": "resume latency at batch 50,000 within 10% of batch 10",
    "goodput": "goodput >= 0.9 with SIGTERM every 60 s (demo model)",
}


@dataclass
class Plan:
    reps: int = 5
    demo_warmup: int = 3
    demo_steps: int = 10
    gpt2_batch: int = 2
    gpt2_warmup: int = 2
    gpt2_steps: int = 2
    compile_variants: bool = True
    ckpt_demo_every: int = 5
    ckpt_demo_saves: int = 5
    ckpt_gpt2_batch: int = 1
    ckpt_gpt2_every: int = 2
    ckpt_gpt2_saves: int = 2
    long_position: int = 50_000
    goodput_seconds: float = 130.0  # uninterrupted length of the goodput run (steps set from the measured rate)
    goodput_interval: float = 60.0
    goodput_save_steps: int | None = None  # None: the demo config's save_steps
    matmul_n: int = 3072
    workloads: tuple = ("demo", "gpt2")


FULL = Plan()
QUICK = Plan(reps=1, demo_warmup=2, demo_steps=5, gpt2_warmup=1, gpt2_steps=2, ckpt_demo_saves=3,
             ckpt_gpt2_every=2, long_position=50_000, goodput_seconds=30.0, goodput_interval=20.0, goodput_save_steps=10,
             matmul_n=2048)


# ---------------------------------------------------------------- processes


def env() -> dict:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
             PYTHONPATH=str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", ""))
    return e


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class Runner:
    def __init__(self, work: Path, log):
        self.work = work
        self.log = log
        self.n = 0

    def worker(self, *args: str, timeout: float = 1800, ok_codes=(0,)) -> dict:
        """Run bench/worker.py in a fresh process; returns its JSON (and the parent's spawn time)."""
        self.n += 1
        out = self.work / f"result-{self.n}.json"
        logf = self.work / f"log-{self.n}.txt"
        t0 = time.time()
        with open(logf, "w") as f:
            proc = subprocess.run([sys.executable, str(WORKER), args[0], "--out", str(out), *args[1:]], cwd=self.work, env=env(),
                                  stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        wall = time.time() - t0
        if proc.returncode != 0 or not out.is_file():
            tail = logf.read_text()[-3000:]
            raise RuntimeError(f"worker {' '.join(args[:3])} failed ({proc.returncode}); log {logf}:\n{tail}")
        result = json.loads(out.read_text())
        if result.get("returncode", 0) not in ok_codes:
            tail = logf.read_text()[-3000:]
            raise RuntimeError(f"gptresume exited {result['returncode']} in {' '.join(args[:3])}; log {logf}:\n{tail}")
        result["spawn"] = t0
        result["wall_s"] = wall
        result["load"] = loadavg()
        return result


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rotated(items: list, k: int) -> list:
    """Repetition k's order: rotated by k, and reversed on odd k, so no peer always follows the same one."""
    k %= len(items)
    out = items[k:] + items[:k]
    return out[::-1] if k % 2 else out


# ---------------------------------------------------------------- machine


def machine() -> dict:
    import torch
    import transformers

    cpu, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    import accelerate

    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "isa": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile",
                                                "avx512_vnni", "fma")),
        "memory_gb": round(mem, 1) if mem else None, "gpu": torch.cuda.is_available(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "platform": platform.platform(),
        "load_at_start": loadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---------------------------------------------------------------- workloads


def write_workloads(work: Path, plan: Plan) -> dict[str, Path]:
    demo = yaml.safe_load(DEMO_YAML.read_text())
    demo["model"]["tokenizer"] = {"name_or_path": str(work / "tok-demo")}
    paths = {"demo": work / "demo.yaml", "gpt2": work / "gpt2.yaml", "long": work / "long.yaml"}
    paths["demo"].write_text(yaml.safe_dump(demo))
    gpt2 = json.loads(json.dumps(demo))
    gpt2["model"] = {"from_scratch": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
                     "tokenizer": {"name_or_path": str(work / "tok-gpt2")}}
    gpt2["train"]["per_device_train_batch_size"] = plan.gpt2_batch
    paths["gpt2"].write_text(yaml.safe_dump(gpt2))
    long = json.loads(json.dumps(demo))
    long["model"] = {"from_scratch": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 16},
                     "tokenizer": {"name_or_path": str(work / "tok-demo")}}
    long["data"] = {"source": str(work / "synthetic.txt"), "text_unit": "line", "block_size": 16,
                    "validation_fraction": 0.0}
    long["train"].update(max_steps=plan.long_position + 10_000, per_device_train_batch_size=8, save_steps=10 ** 6,
                         eval_strategy="no", logging_steps=100, warmup_steps=0)
    long["train"].pop("eval_steps", None)
    paths["long"].write_text(yaml.safe_dump(long))
    return paths


def prepare_template(r: Runner, name: str, config: Path) -> Path:
    """A run directory holding the packed data (data-cache/): copied into every fresh run, read by the peers."""
    tpl = r.work / f"tpl-{name}"
    if not (tpl / "data-cache").is_dir():
        r.worker("train", "--peer", "gptresume", "--config", str(config), "--output-dir", str(tpl),
                 "--set", "train.max_steps=1", "--set", 'train.eval_strategy="no"', "--exit-at-step", "1")
    return tpl


def fresh_run_dir(r: Runner, tpl: Path, name: str) -> Path:
    r.n += 1
    run = r.work / f"run-{name}-{r.n}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    shutil.copytree(tpl / "data-cache", run / "data-cache")
    return run


def throughput_of(res: dict, warmup: int) -> float | None:
    ends = [(s, t) for s, t in res.get("step_ends", []) if s >= warmup]
    if len(ends) < 2:
        return None
    (s0, t0), (s1, t1) = ends[0], ends[-1]
    return (s1 - s0) * res["tokens_per_step"] / (t1 - t0)


# ---------------------------------------------------------------- sections


def section_peak(r: Runner, plan: Plan) -> dict:
    runs = {"fp32": [], "bf16": []}
    for rep in range(plan.reps):
        for dtype in rotated(["fp32", "bf16"], rep):
            res = r.worker("matmul", "--dtype", dtype, "--n", str(plan.matmul_n))
            runs[dtype].append(res["gflops_median"])
            r.log(f"  matmul {dtype}: {res['gflops_median']:.1f} GFLOP/s")
    return {"n": plan.matmul_n, "runs": runs, "gflops": {k: median(v) for k, v in runs.items()}}


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
        {"name": "+ optim adamw_torch (not fused)", "peer": "trainer", "args": ootb + ["--set", "train.optim=adamw_torch"]},
        {"name": "+ eager attention (not SDPA)", "peer": "trainer", "args": ootb + ["--attn", "eager"]},
    ]
    if plan.compile_variants:  # compile on top of bf16: what it would add to the preset
        variants += [
            {"name": "+ bf16 + torch.compile", "peer": "trainer",
             "args": ootb + bf16 + ["--set", "train.torch_compile=true"]},
        ]
    preset = {k: v for k, v in yaml.safe_load(DEMO_YAML.read_text())["train"].items() if k in PERF_KEYS}
    for v in variants:  # a variant with the preset's settings is the plain Trainer run: measured once
        sets = dict(x.split("=", 1) for x in v["args"][v["args"].index("--set") + 1::2]) if "--set" in v["args"] else {}
        changed = {k.removeprefix("train."): yaml.safe_load(x) for k, x in sets.items()}
        if changed == preset and "--attn" not in v["args"]:
            v["same_as"] = {"trainer": "plain Trainer", "minimal": "minimal loop"}[v["peer"]]
    return same + variants


def section_throughput(r: Runner, plan: Plan, configs: dict, tpls: dict) -> dict:
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


def section_checkpoint(r: Runner, plan: Plan, configs: dict, tpls: dict) -> dict:
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
                               str(run), "--save-timing", "--exit-when-saved", *sets)
                if res.get("returncode") != 0:
                    raise RuntimeError(f"checkpoint run failed: {res.get('returncode')}")
                ev, ends = res["events"], res["step_ends"]
                res["train_window_s"] = ev["saves_done"] - ends[0][1]  # first step end -> last save committed
                modes[mode].append({k: res[k] for k in ("saves", "train_window_s", "load")})
                per = res["saves"]
                r.log(f"  {workload} {mode}: paused {median([s['blocked_s'] for s in per]):.3f}s, total "
                      f"{median([s['total_s'] for s in per]):.3f}s per save, hash "
                      f"{median([s.get('hash_s', 0) for s in per]):.3f}s, fsync {median([s.get('fsync_s', 0) for s in per]):.3f}s")
                shutil.rmtree(run, ignore_errors=True)
        summary = {}
        for mode, runs in modes.items():
            def per_run(key, runs=runs):
                return median([median([s.get(key, 0.0) for s in run["saves"]]) for run in runs])
            for run in runs:
                for sv in run["saves"]:
                    sv["copy_s"] = sv["blocked_s"] - sv.get("waited_s", 0.0)  # paused, less waiting for the last save
            summary[mode] = {k: per_run(k) for k in ("blocked_s", "copy_s", "total_s", "hash_s", "fsync_s",
                                                     "waited_s", "write_s", "commit_s", "bytes")}
            summary[mode]["train_window_s"] = median([run["train_window_s"] for run in runs])
        out[workload] = {"save_every": every, "saves_per_run": saves, "summary": summary, "runs": modes}
    return out


def make_synthetic(path: Path, tokens: int, seed: int = 0) -> None:
    """Lines of random words from the demo corpus: cheap to tokenize, long enough for one epoch of `tokens`."""
    import random

    from pydoc_data.topics import topics

    words = sorted({w for t in topics.values() for w in t.split() if w.isalpha() and len(w) < 9})
    rng = random.Random(seed)
    n_words = int(tokens / 1.2) + 1000  # most of these words are one or two tokens
    with open(path, "w") as f:
        for _ in range(n_words // 200):
            f.write(" ".join(rng.choices(words, k=200)) + "\n")


def fake_position(src: Path, dst: Path, step: int) -> None:
    """checkpoint-10 of src, re-labelled as checkpoint-STEP of the same epoch in dst (a new run directory):
    trainer_state.json says STEP, the manifest is updated to match. Only the data position differs."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    ckpt = next(src.glob("checkpoint-*"))
    new = dst / f"checkpoint-{step}"
    shutil.copytree(ckpt, new)
    state_path = new / "trainer_state.json"
    state = json.loads(state_path.read_text())
    old_step = state["global_step"]
    state["epoch"] = state["epoch"] * step / old_step
    state["global_step"] = step
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    manifest = json.loads((new / "manifest.json").read_text())
    raw = state_path.read_bytes()
    manifest["files"]["trainer_state.json"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    manifest["step"], manifest["epoch"] = step, state["epoch"]
    (new / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def section_resume(r: Runner, plan: Plan, configs: dict) -> dict:
    long_cfg = configs["long"]
    text = r.work / "synthetic.txt"
    blocks = (plan.long_position + 200) * 8
    if not text.exists():
        make_synthetic(text, blocks * 16)
    early = r.work / "long-early"
    if not (early / "checkpoint-10").is_dir():
        shutil.rmtree(early, ignore_errors=True)
        r.log("  preparing the long-epoch run (tokenizing the synthetic corpus, training 10 steps)")
        res = r.worker("train", "--peer", "gptresume", "--config", str(long_cfg), "--output-dir", str(early),
                       "--cli-args", "--stop-at-step", "10", ok_codes=(75,))
    late = r.work / "long-late"
    shutil.rmtree(late, ignore_errors=True)
    fake_position(early, late, plan.long_position)
    kinds = ["fresh start", "resume at batch 10", f"resume at batch {plan.long_position:,}"]
    rows = {k: [] for k in kinds}
    for rep in range(plan.reps):
        for kind in rotated(kinds, rep):
            if kind == "fresh start":
                run = fresh_run_dir(r, early, "long")
            else:
                run = early if kind == "resume at batch 10" else late
            res = r.worker("train", "--peer", "gptresume", "--config", str(long_cfg), "--output-dir", str(run),
                           "--exit-after-steps", "1")
            ev = res["events"]
            first_end = res["step_ends"][0][1]
            row = {"start_to_first_step_s": first_end - res["spawn"],
                   "start_to_train_call_s": ev["train_call"] - res["spawn"],
                   "train_call_to_first_step_s": ev["first_step_begin"] - ev["train_call"],
                   "first_step": res["step_ends"][0][0], "load": res["load"]}
            rows[kind].append(row)
            r.log(f"  {kind}: first step {row['first_step']} after {row['start_to_first_step_s']:.2f}s "
                  f"(train() to first step {row['train_call_to_first_step_s']:.2f}s)")
            if kind == "fresh start":
                shutil.rmtree(run, ignore_errors=True)
    summary = {k: {m: median([x[m] for x in v]) for m in ("start_to_first_step_s", "start_to_train_call_s",
                                                           "train_call_to_first_step_s")} for k, v in rows.items()}
    return {"position": plan.long_position, "blocks": blocks, "batch": 8, "block_size": 16,
            "runs": rows, "summary": summary}


def section_goodput(r: Runner, plan: Plan, configs: dict, tpls: dict, demo_rate: float | None) -> dict:
    """Uninterrupted vs SIGTERM every T s vs SIGKILL every T s; the same command re-run after each exit."""
    cfg = yaml.safe_load(configs["demo"].read_text())
    tokens_per_step = cfg["train"]["per_device_train_batch_size"] * cfg["data"]["block_size"]
    rate = demo_rate or 3000.0
    steps = max(40, int(plan.goodput_seconds * rate / tokens_per_step) // 10 * 10)
    save_steps = plan.goodput_save_steps or cfg["train"].get("save_steps", 100)
    out = {"max_steps": steps, "save_steps": save_steps, "interval_s": plan.goodput_interval, "runs": {}}
    weights = {}
    for kind in ("uninterrupted", "SIGTERM", "SIGKILL"):
        run = fresh_run_dir(r, tpls["demo"], f"goodput-{kind}")
        cmd = [sys.executable, "-m", "gptresume", "train", str(configs["demo"]), "--set",
               f"train.output_dir={run}", "--set", f"train.max_steps={steps}", "--set",
               f"train.save_steps={save_steps}", "--set", f"train.eval_steps={save_steps}"]
        t0, load_before = time.time(), loadavg()
        starts, codes, stalled, newest = 0, [], 0, -1
        logf = open(r.work / f"goodput-{kind}.log", "w")
        while True:
            starts += 1
            proc = subprocess.Popen(cmd, cwd=r.work, env=env(), stdout=logf, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=None if kind == "uninterrupted" else plan.goodput_interval)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
                code = proc.wait()
            codes.append(code)
            if code == 0:
                break
            if code not in (75, -signal.SIGKILL, -signal.SIGTERM):  # -SIGTERM: after training, during samples
                raise RuntimeError(f"goodput {kind}: exit {code}; see {logf.name}")
            committed = max([int(p.parent.name.split("-")[1]) for p in run.glob("checkpoint-*/manifest.json")],
                            default=-1)
            stalled = 0 if committed > newest else stalled + 1
            newest = max(newest, committed)
            if stalled >= 3:  # killed before every save: no progress at this interval and save_steps
                break
        wall = time.time() - t0
        logf.close()
        row = {"wall_s": wall, "starts": starts, "exit_codes": codes, "load_before": load_before, "load": loadavg(),
               "finished": code == 0}
        if code == 0:
            from safetensors.torch import load_file

            weights[kind] = load_file(str(run / "final" / "model.safetensors"))
        out["runs"][kind] = row
        r.log(f"  goodput {kind}: {wall:.1f}s, {starts} start(s), exits {codes}"
              + ("" if code == 0 else " - no progress, gave up"))
        shutil.rmtree(run, ignore_errors=True)
    base = out["runs"]["uninterrupted"]["wall_s"]
    for kind in ("SIGTERM", "SIGKILL"):
        row = out["runs"][kind]
        if not row["finished"]:
            row.update(goodput=0.0, exact=None)
            continue
        same = all(bool((weights[kind][k] == weights["uninterrupted"][k]).all()) for k in weights["uninterrupted"])
        row.update(goodput=base / row["wall_s"], exact=same)
    return out


# ---------------------------------------------------------------- report


def ratio(a, b):
    return a / b if a and b else None


def targets(results: dict) -> dict:
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
    ck = results.get("checkpoint", {})
    if ck:
        worst = max(ratio(w["summary"]["async"]["copy_s"], w["summary"]["sync"]["blocked_s"]) or 0
                    for w in ck.values())
        t["async_block"] = worst, 0.10
    rs = results.get("resume", {}).get("summary")
    if rs:
        keys = list(rs)
        t["resume_late"] = ratio(rs[keys[2]]["start_to_first_step_s"], rs[keys[1]]["start_to_first_step_s"]), 1.10
    gp = results.get("goodput", {}).get("runs", {}).get("SIGTERM")
    if gp:
        t["goodput"] = gp["goodput"], 0.90
    out = {}
    for name, (value, limit) in t.items():
        lower_is_better = name in ("async_block", "resume_late", "own_code")
        met = value is not None and (value <= limit if lower_is_better else value >= limit)
        out[name] = {"what": TARGETS[name], "value": value, "limit": limit, "met": met}
    return out


def fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def render(results: dict) -> str:
    m = results["machine"]
    plan = results["plan"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (bench/run.py{' --quick' if results['quick'] else ''}) on {m['time']}; "
        f"took {results['wall_s'] / 60:.1f} min. Raw numbers: bench/results.json.",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"{m['memory_gb']} GB RAM, {'GPU' if m['gpu'] else 'no GPU'}; ISA: {', '.join(m['isa'])}. "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, accelerate {m['accelerate']}.",
        f"Load average (1 min) at start {m['load_at_start']:.2f}, at end {results.get('load_at_end', float('nan')):.2f}"
        + (" — **measured on a busy machine: timings are noisy**" if max(m["load_at_start"],
                                                                        results.get("load_at_end", 0)) > 0.5 else "")
        + ".",
        "",
        f"Each figure is the median of {plan['reps']} runs, each in a fresh process; peers alternate within each "
        "repetition (the order rotates and reverses).",
        "",
    ]
    tg = results.get("targets", {})
    if tg:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for name, t in tg.items():
            v = t["value"]
            shown = "–" if v is None else f"{v * 100:.2f}%" if name == "own_code" else f"{v:.3f}"
            lines.append(f"| {t['what']} | {shown} | {'met' if t['met'] else '**not met**'} |")
        lines.append("")
    pk = results.get("peak")
    if pk:
        lines += ["## Peak matmul", "",
                  f"torch.matmul of two {pk['n']}x{pk['n']} matrices: fp32 {fmt(pk['gflops']['fp32'], '.1f')} GFLOP/s, "
                  f"bf16 {fmt(pk['gflops']['bf16'], '.1f')} GFLOP/s (the MFU denominators).", ""]
    th = results.get("throughput")
    if th:
        lines += ["## Training throughput", ""]
        for workload, w in th.items():
            f = w["facts"]
            title = ("Demo model (examples/demo.yaml: 4 layers x 256, batch 8 x 128)" if workload == "demo" else
                     f"GPT-2 124M-shaped (12 layers x 768, vocab 50257, random init, batch "
                     f"{plan['gpt2_batch']} x 128)")
            lines += [f"### {title}", "",
                      f"{f.get('params', 0) / 1e6:.1f}M parameters; {f.get('flops_per_token', 0) / 1e6:.0f} MFLOP "
                      f"per token (6N + 12LdT); steady state over steps {w['warmup_steps'] + 1}-"
                      f"{w['warmup_steps'] + w['measured_steps']} (first {w['warmup_steps']} skipped).", "",
                      "*kept memory*: glibc's malloc keeps freed memory for reuse instead of unmapping it "
                      "(src/gptresume/allocator.py); `gptresume train` does this itself, the plain Trainer and the "
                      "minimal loop run with glibc's defaults unless the row says otherwise.", "",
                      *(["Rows starting with + are Trainer out of the box with one setting changed. "
                         "gptresume train, plain Trainer and the minimal loop use the demo preset "
                         "(examples/demo.yaml).", ""] if workload == "demo" else []),
                      "| run | settings | tokens/s | vs plain Trainer | MFU |", "|---|---|---:|---:|---:|"]
            ref = w["peers"].get("plain Trainer", {}).get("tokens_per_s")
            for name, row in w["peers"].items():
                s = row.get("settings") or {}
                peak = (pk or {}).get("gflops", {}).get("bf16" if s.get("bf16") else "fp32")
                mfu = ratio((row["tokens_per_s"] or 0) * f.get("flops_per_token", 0) / 1e9, peak)
                desc = ", ".join(x for x in ["bf16" if s.get("bf16") else "fp32", s.get("optim", ""),
                                             s.get("attn", ""), "compile" if s.get("torch_compile") else "",
                                             "kept memory" if s.get("allocator") == "kept memory" else ""] if x)
                lines.append(f"| {name} | {desc} | {fmt(row['tokens_per_s'], ',.0f')} | "
                             f"{fmt(ratio(row['tokens_per_s'], ref), '.3f')} | {fmt(mfu and mfu * 100, '.1f')}% |")
            shares = w["peers"].get("gptresume train", {}).get("callback_share")
            if shares:
                lines += ["", f"All callbacks of the gptresume run (gptresume's and Trainer's own) took "
                              f"{median(shares) * 100:.2f}% of each step: what gptresume adds to Trainer's loop."]
            lines.append("")
    ck = results.get("checkpoint")
    if ck:
        lines += ["## Checkpoint cost", "",
                  "Per save (median over the saves of a run, then over runs). *Paused*: training blocked "
                  "(synchronous: the whole save; asynchronous: copying the state to CPU memory, plus *waited*: "
                  "waiting for the previous save when saves come faster than the background write). *Total*: "
                  "until the manifest is committed. *Window*: first step end to last save committed (what the "
                  "saves cost the run as a whole: on a CPU-bound machine the writer thread competes with training "
                  "for the same cores).",
                  "", "| model | mode | size MB | paused s | of which waited s | total s | hashing s | fsync s | "
                      "copy / sync save | window s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for workload, w in ck.items():
            sync_total = w["summary"]["sync"]["total_s"]
            for mode in ("sync", "async"):
                s = w["summary"][mode]
                lines.append(f"| {workload} | {mode} | {fmt((s['bytes'] or 0) / 1e6, '.0f')} | "
                             f"{fmt(s['blocked_s'], '.3f')} | {fmt(s['waited_s'], '.3f')} | {fmt(s['total_s'], '.3f')} | "
                             f"{fmt(s['hash_s'], '.3f')} | {fmt(s['fsync_s'], '.3f')} | "
                             f"{fmt(ratio(s['copy_s'], sync_total) if mode == 'async' else None, '.3f')} | "
                             f"{fmt(s['train_window_s'], '.1f')} |")
        def copies(w, first: bool):
            return median([median([sv["blocked_s"] - sv.get("waited_s", 0.0) for sv in run["saves"]][
                slice(0, 1) if first else slice(1, None)] or [None]) for run in w["runs"]["async"]])

        lines += ["", "Asynchronous copy, first save of a run (into fresh memory, which the kernel maps page by "
                      "page) / later saves (into the previous save's buffers): " + ", ".join(
                          f"{k} {fmt(copies(w, True), '.3f')} s / {fmt(copies(w, False), '.3f')} s "
                          f"({fmt(ratio(copies(w, False), w['summary']['sync']['total_s']), '.3f')} of a "
                          f"synchronous save)" for k, w in ck.items()) + "."]
        lines += ["", "Hashing as a share of the synchronous save: " + ", ".join(
            f"{k} {fmt(ratio(w['summary']['sync']['hash_s'], w['summary']['sync']['total_s']) * 100 if ratio(w['summary']['sync']['hash_s'], w['summary']['sync']['total_s']) else None, '.0f')}%"
            for k, w in ck.items()) + ".", ""]
    rs = results.get("resume")
    if rs:
        lines += ["## Resume latency", "",
                  f"A tiny model on a packed dataset of {rs['blocks']:,} random blocks of {rs['block_size']} tokens "
                  f"(one epoch = {rs['blocks'] // rs['batch']:,} batches of {rs['batch']}). Process start to the end of "
                  "the first (resumed) step.", "",
                  "| start | to first step s | of which: start to train() s | train() to first step s |",
                  "|---|---:|---:|---:|"]
        for kind, s in rs["summary"].items():
            lines.append(f"| {kind} | {fmt(s['start_to_first_step_s'])} | {fmt(s['start_to_train_call_s'])} | "
                         f"{fmt(s['train_call_to_first_step_s'])} |")
        lines.append("")
    gp = results.get("goodput")
    if gp:
        lines += ["## Goodput under preemption", "",
                  f"The demo config, {gp['max_steps']} steps, a checkpoint every {gp['save_steps']} steps; "
                  f"interrupted {gp['interval_s']:.0f} s after each start and re-run at once (single runs, not "
                  "medians: each takes minutes).", "",
                  "| run | wall s | starts | goodput | load before / after | final weights equal uninterrupted |",
                  "|---|---:|---:|---:|---|---|"]
        for kind, g in gp["runs"].items():
            lines.append(f"| {kind} | {g['wall_s']:.1f} | {g['starts']} | {fmt(g.get('goodput', 1.0), '.3f')} | "
                         f"{g['load_before']:.1f} / {g['load']:.1f} | "
                         f"{'–' if g.get('exact', 0) is None or kind == 'uninterrupted' else ('yes' if g['exact'] else '**no**')} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def write_results(out: Path, results: dict) -> None:
    """Judge the targets, then write OUT/results.json (raw) and OUT/RESULTS.md (rendered)."""
    results["targets"] = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "RESULTS.md").write_text(render(results) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repetition, fewer steps: a smoke run (minutes)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--work", help="working directory (default: a temporary one, deleted afterwards)")
    p.add_argument("--out", default=str(BENCH), help="where RESULTS.md and results.json go (default: bench/)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--reps", type=int, help="repetitions per figure (default 5; --quick 1)")
    p.add_argument("--workloads", nargs="+", choices=("demo", "gpt2"), help="throughput/checkpoint: only these models")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite RESULTS.md (and the targets) from the results.json in --out")
    a = p.parse_args()
    if a.render_only:
        write_results(Path(a.out), json.loads((Path(a.out) / "results.json").read_text()))
        return 0
    plan = QUICK if a.quick else FULL
    if a.no_compile:
        plan.compile_variants = False
    if a.reps:
        plan.reps = a.reps
    if a.workloads:
        plan.workloads = tuple(a.workloads)
    sections = a.only or list(SECTIONS)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gptresume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    r = Runner(work, log)
    results = {"quick": a.quick, "plan": asdict(plan), "machine": machine(), "sections": sections, "timing_s": {}}
    log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load "
        f"{results['machine']['load_at_start']:.2f}; work dir {work}")
    try:
        configs = write_workloads(work, plan)
        if not (work / "tok-gpt2").is_dir():
            r.worker("setup-tokenizers", "--work", str(work))
        needs = {"throughput", "checkpoint", "goodput"} & set(sections)
        tpls = {name: prepare_template(r, name, configs[name]) for name in ("demo", "gpt2")} if needs else {}
        for name in sections:
            s0 = time.time()
            log(f"== {name}")
            if name == "peak":
                results["peak"] = section_peak(r, plan)
            elif name == "throughput":
                results["throughput"] = section_throughput(r, plan, configs, tpls)
            elif name == "checkpoint":
                results["checkpoint"] = section_checkpoint(r, plan, configs, tpls)
            elif name == "resume":
                results["resume"] = section_resume(r, plan, configs)
            elif name == "goodput":
                rate = results.get("throughput", {}).get("demo", {}).get("peers", {}).get(
                    "gptresume train", {}).get("tokens_per_s")
                results["goodput"] = section_goodput(r, plan, configs, tpls, rate)
            results["timing_s"][name] = time.time() - s0
    finally:
        results["wall_s"] = time.time() - t0
        results["load_at_end"] = loadavg()
        out = Path(a.out)
        write_results(out, results)
        log(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'} ({results['wall_s'] / 60:.1f} min)")
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    for t in results["targets"].values():
        print(f"  {'met    ' if t['met'] else 'NOT MET'}  {t['what']}: {fmt(t['value'], '.3f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
