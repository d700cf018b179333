"""What every bench section shares: paths, the plan (how many repetitions, how long), the worker runner and the
median/rotation helpers. Kept free of torch, yaml and the product at import time, so the renderer and the targets
can use the helpers without paying for (or depending on) the measuring side."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORKER = BENCH / "worker.py"
DEMO_YAML = ROOT / "examples" / "demo.yaml"


@dataclass
class Plan:
    """How much to measure: FULL for `make bench`, QUICK for a smoke run; each results/SECTION.json records the one
    used."""

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
    interval_settings: tuple = ("auto", 10, 40, 160)  # checkpoint.every: auto against these save_steps (issue 16)
    interval_kinds: tuple = ("SIGTERM", "SIGKILL")
    interval_every: float = 60.0  # seconds from each start to its signal
    interval_steps: int | None = None  # None: goodput_seconds of training at the measured rate
    interval_overrides: dict | None = None  # --set KEY=VALUE for every run; QUICK: a smaller model and batch
    matmul_n: int = 3072
    workloads: tuple = ("demo", "gpt2")
    packing_mb: tuple = (1024, 2048)  # generated text packed by the packing section: a size and twice it
    packing_reps: int = 1  # each packing of 1-2 GB runs for minutes (about 70 min for the section on 2 cores)
    ddp_procs: int = 2  # checkpoint_ddp: processes under torchrun (gloo on CPU)
    verify_mb: int = 1536  # verify: the checkpoint's size (GPT-2 124M with Adam is about 1.5 GB)
    step_cost_steps: int = 60  # step_cost: optimizer steps per peer (the first demo_warmup and the last not timed)
    step_cost_logging: int = 10  # step_cost: logging_steps (Trainer reads the loss there; so does run health)
    defaults_mb: int = 1024  # defaults: generated text the GPT-2 fine-tune preset packs
    defaults_steps: int = 210  # defaults: SIGTERM at this step (past the preset's first save and evaluation, 200)
    defaults_overrides: dict | None = None  # defaults: config values beside the shape and the steps (--quick only)


FULL = Plan()
QUICK = Plan(reps=1, demo_warmup=2, demo_steps=5, gpt2_warmup=1, gpt2_steps=2, ckpt_demo_saves=3,
             ckpt_gpt2_every=2, long_position=50_000, goodput_seconds=30.0, goodput_interval=20.0,
             goodput_save_steps=10,
             interval_kinds=("SIGKILL",), interval_settings=("auto", 10, 40), interval_every=90.0,
             interval_steps=100,
             interval_overrides={"model.from_scratch.n_layer": 1, "model.from_scratch.n_head": 2,
                                 "model.from_scratch.n_embd": 32, "train.per_device_train_batch_size": 2},
             matmul_n=2048, packing_mb=(16, 32), verify_mb=256, step_cost_steps=20,
             defaults_mb=32, defaults_steps=12,
             defaults_overrides={"train.save_steps": 10, "train.per_device_train_batch_size": 2,
                                 "train.gradient_accumulation_steps": 1})


# ---------------------------------------------------------------- processes


def env() -> dict:
    """The environment of every child process: offline (the bench must not time downloads), the source tree first."""
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
    """Starts each measurement in a fresh process (bench/worker.py), so no figure inherits another's warm caches,
    allocator state or compiled kernels; numbers its result and log files in the work directory."""

    def __init__(self, work: Path, log):
        self.work = work
        self.log = log
        self.n = 0

    def worker(self, *args: str, timeout: float = 1800, ok_codes=(0,), nproc: int = 1) -> dict:
        """Run bench/worker.py in a fresh process (`nproc` > 1: that many under torchrun, rank 0 reporting);
        returns its JSON (and the parent's spawn time)."""
        self.n += 1
        out = self.work / f"result-{self.n}.json"
        logf = self.work / f"log-{self.n}.txt"
        t0 = time.time()
        launch = [sys.executable]
        if nproc > 1:
            launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
        with open(logf, "w") as f:
            proc = subprocess.run([*launch, str(WORKER), args[0], "--out", str(out), *args[1:]], cwd=self.work,
                                  env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs):
    """Median that skips missing figures (None: a run that measured nothing); None when none is left."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rotated(items: list, k: int) -> list:
    """Repetition k's order: rotated by k, and reversed on odd k, so no peer always follows the same one."""
    k %= len(items)
    out = items[k:] + items[:k]
    return out[::-1] if k % 2 else out


def ratio(a, b):
    """a / b, or None when either is missing or zero: a table cell shows "–" rather than failing."""
    return a / b if a and b else None


# ---------------------------------------------------------------- machine


def source_version() -> dict:
    """The commit the measured code is at, and whether the source tree had uncommitted changes (bench/ results
    and reports aside): what a section's figures belong to."""
    def git(*args) -> str:
        try:
            # rstrip only: `git status --porcelain` lines begin with a status column that may be a space
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line for line in git("status", "--porcelain", "--", "src", "bench", "examples").splitlines()
               if not line[3:].startswith(("bench/results/", "bench/RESULTS.md"))]
    return {"commit": git("rev-parse", "--short=10", "HEAD") or "unknown", "dirty": bool(changed)}


def machine() -> dict:
    """What the figures depend on (CPU and ISA, cores, memory, GPU, versions, load): written with every result."""
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
