"""`make bench`: gptresume against plain Trainer and a minimal PyTorch loop, in the same run, on this machine.

Each section writes its own results, bench/results/SECTION.json (every raw measurement, with the date, the commit,
the plan and the machine it was measured with), as soon as it is done; bench/RESULTS.md (the tables and the
targets, met or not) is then rendered from every section's file, so `--only SECTION` refreshes that section's
rows and leaves the others as they were measured (each says when, and at which commit). Every measurement runs in
a fresh process (bench/worker.py); peers alternate within each repetition (the order rotates and reverses) and each
figure is the median over the repetitions (5; `--quick`: 1, with fewer steps).

Sections (`--only` runs some of them; the machine description is always written):
  peak        torch.matmul on large square matrices, fp32 and bf16: the peak MFU is measured against
  throughput  steady-state tokens/s (warm-up steps skipped) of gptresume train, plain Trainer and a minimal loop
              with the same model, data, batch and precision, for the demo model and a GPT-2 124M-shaped one;
              for the demo, Trainer out of the box and one performance setting changed at a time
  step_cost   callbacks' share of a step: the same Trainer without and with gptresume's callbacks in one process
              (demo shape, random tokens), with the host syncs and cross-rank collectives per step of each
  checkpoint  per save: training paused, total save time, hashing, fsync; synchronous vs checkpoint.async_save
  checkpoint_ddp  the same with 2 processes under torchrun (DDP; gloo on CPU)
  verify      verify_checkpoint of a 1.5 GB checkpoint: format 1 (sha256) vs format 2 (xxh3-128) manifest
  resume      process start to first step: fresh start, resume at batch 10 and at batch 50,000 of one epoch
  streaming_resume  the same for a streaming run (data.streaming): resume at batch 10 and at batch 50,000
  goodput     a fixed-length run stopped every T seconds by SIGTERM (then by SIGKILL), re-run after each exit,
              against its uninterrupted wall time; also checks the final weights equal the uninterrupted run's
  packing     tokens/s and peak memory packing generated text of two sizes (1 and 2 GB; --quick 16 and 32 MB):
              gptresume vs run_clm.py-style and nanoGPT prepare.py-style packing
  interval    checkpoint.every: auto (Daly's interval) against save_steps 10, 40, 160 under SIGTERM and SIGKILL
              every 60 s: goodput, and the margin over the worst fixed interval that the model predicts
  remote      tokens/s with and without checkpoint.remote (uploads to an S3-compatible server on 127.0.0.1)
  ledger      the sample ledger's cost: tokens/s with and without it, and its own work per step timed directly
  defaults    the GPT-2 fine-tune preset on 1 GB of generated text (only the model shape and the steps changed):
              wall-time shares (data preparation, start-up, training, evaluation, saving), then SIGTERM and the
              resume's time to its first step against a fresh start's
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

# Run as a script (`make bench` = `python bench/run.py`): Python puts bench/ first on sys.path, so the modules
# beside this one import by their plain names.
from common import BENCH, FULL, QUICK, Runner, loadavg, machine, source_version
from render import fmt, write_report, write_section
from sections import (SECTIONS, checkpoint, defaults, goodput, ledger, multinode, packing, peak, remote, resume,
                      step_cost, streaming_resume, throughput, verify)
from workloads import prepare_template, write_workloads


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repetition, fewer steps: a smoke run (minutes)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--work", help="working directory (default: a temporary one, deleted afterwards)")
    p.add_argument("--out", default=str(BENCH),
                   help="where RESULTS.md and results/SECTION.json go (default: bench/; another directory for a "
                        "smoke run that must not replace the committed figures)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--reps", type=int, help="repetitions per figure (default 5; --quick 1)")
    p.add_argument("--workloads", nargs="+", choices=("demo", "gpt2"), help="throughput/checkpoint: only these models")
    p.add_argument("--plan", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override fields of the plan (common.Plan), e.g. gpt2_batch=16 matmul_n=8192 (bench/gpu.sh)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite RESULTS.md (and the targets) from the results/*.json in --out")
    a = p.parse_args()
    out = Path(a.out)
    if a.render_only:
        write_report(out)
        return 0
    plan = QUICK if a.quick else FULL
    if a.no_compile:
        plan.compile_variants = False
    if a.reps:
        plan.reps = a.reps
    if a.workloads:
        plan.workloads = tuple(a.workloads)
    for item in a.plan:
        key, _, value = item.partition("=")
        if key not in asdict(plan):
            p.error(f"--plan {item}: no field {key!r} in common.Plan")
        setattr(plan, key, type(getattr(plan, key))(json.loads(value)))
    sections = a.only or list(SECTIONS)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gptresume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    r = Runner(work, log)
    results = {"quick": a.quick, "plan": asdict(plan), "machine": machine(), "sections": sections, "timing_s": {}}
    version = source_version()
    command = "bench/run.py" + (" --quick" if a.quick else "") + (" --only " + " ".join(a.only) if a.only else "")
    log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load "
        f"{results['machine']['load_at_start']:.2f}; work dir {work}; commit {version['commit']}"
        + (" with uncommitted changes" if version["dirty"] else ""))
    measured = []
    try:
        configs = write_workloads(work, plan)
        if not (work / "tok-gpt2").is_dir():
            r.worker("setup-tokenizers", "--work", str(work))
        needs = {"throughput", "checkpoint", "checkpoint_ddp", "goodput", "interval", "remote",
                 "ledger"} & set(sections)
        # the remote and ledger sections train the demo only; the others the measured workloads
        models = ("demo",) if needs <= {"remote", "ledger"} else tuple(
            m for m in ("demo", "gpt2") if m in plan.workloads or (m == "demo" and needs - {"throughput", "checkpoint",
                                                                                           "checkpoint_ddp"}))
        tpls = {name: prepare_template(r, name, configs[name]) for name in models} if needs else {}
        for name in sections:
            s0, load0 = time.time(), loadavg()
            log(f"== {name}")
            if name == "peak":
                results["peak"] = peak.measure(r, plan)
            elif name == "throughput":
                results["throughput"] = throughput.measure(r, plan, configs, tpls)
            elif name == "step_cost":
                results["step_cost"] = step_cost.measure(r, plan)
            elif name == "checkpoint":
                results["checkpoint"] = checkpoint.measure(r, plan, configs, tpls)
            elif name == "checkpoint_ddp":
                results["checkpoint_ddp"] = checkpoint.measure(r, plan, configs, tpls, nproc=plan.ddp_procs)
            elif name == "verify":
                results["verify"] = verify.measure(r, plan)
            elif name == "resume":
                results["resume"] = resume.measure(r, plan, configs)
            elif name == "streaming_resume":
                results["streaming_resume"] = streaming_resume.measure(r, plan, configs)
            elif name == "goodput":
                rate = results.get("throughput", {}).get("demo", {}).get("peers", {}).get(
                    "gptresume train", {}).get("tokens_per_s")
                results["goodput"] = goodput.measure(r, plan, configs, tpls, rate)
            elif name == "packing":
                results["packing"] = packing.measure(r, plan)
            elif name == "interval":
                rate = results.get("throughput", {}).get("demo", {}).get("peers", {}).get(
                    "gptresume train", {}).get("tokens_per_s")
                results["interval"] = goodput.measure_intervals(r, plan, configs, tpls, rate)
            elif name == "remote":
                results["remote"] = remote.measure(r, plan, configs, tpls)
            elif name == "ledger":
                results["ledger"] = ledger.measure(r, plan, configs, tpls)
            elif name == "multinode":
                results["multinode"] = multinode.measure_section(r, plan)
            elif name == "defaults":
                results["defaults"] = defaults.measure(r, plan)
            results["timing_s"][name] = time.time() - s0
            write_section(out, name, {"section": name, "quick": a.quick, "command": command, "plan": asdict(plan),
                                      "machine": {**results["machine"], "load_at_start": load0},
                                      "load_at_end": loadavg(), "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                      **version, "wall_s": time.time() - s0, "data": results[name]})
            measured.append(name)
    finally:
        report = write_report(out)
        log(f"wrote {out / 'RESULTS.md'} and {', '.join(f'results/{n}.json' for n in measured) or 'no section'} "
            f"({(time.time() - t0) / 60:.1f} min)")
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    for t in report["targets"].values():
        if t["section"] in measured:
            print(f"  {'met    ' if t['met'] else 'NOT MET'}  {t['what']}: {fmt(t['value'], '.3f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
