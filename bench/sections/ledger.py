"""Ledger: what the sample ledger (checkpoint.ledger, issue 27) costs a training step, as a share of its time.

Two figures. End to end: the demo model with and without the ledger, the two alternating, steady-state tokens/s
over the same steps with a checkpoint every `save_every` steps in both (each commit writes and books a segment
with the ledger on). Direct: the ledger's own work timed in this process at the demo's global batch, and at a large
one: the sampler's yields observed, each step's samples attributed at its end, and at each save the segment taken,
written into a checkpoint and read back into the books; minus the same sampler iterated without the ledger; per
step, divided by the step time the end-to-end runs measured. On a busy 2-core machine the end-to-end difference is
within noise; the direct figure is the one to read."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from common import Plan, Runner, median, ratio, rotated
from sections.throughput import throughput_of
from workloads import fresh_run_dir

MODES = ("ledger off", "ledger on")
LARGE_BATCH = 512  # a global batch of real pre-training runs (e.g. 8 GPUs x 16 x accumulation 4)

METHOD = [
    "The demo model in fp32; tokens/s from the first step end after the warm-up to the last, as in the throughput "
    "section; the same save interval in both modes, so the difference is the ledger.",
    "The direct cost runs gptresume's PackedRecorder on a StreamSampler of 100,000 blocks in the bench process: "
    "observe every yield, attribute each step (CPU time of the process, so the machine's other load stays out), "
    "take, write and book a segment every `save_every` steps (wall time: it waits for an fsync); the same "
    "sampler iterated without the ledger is subtracted; medians of 5 alternating repetitions. Share = that time per "
    "step / the measured step time.",
]


def direct_cost(global_batch: int, save_every: int, steps: int, n: int = 100_000) -> dict:
    """The ledger's own work (packed data, process 0) at this global batch: seconds per step (the sampler's yields
    observed and attributed) and per save (the segment taken, written into a checkpoint, read back and booked)."""
    from gptresume.ledger.books import book_checkpoint
    from gptresume.ledger.packed import PackedRecorder
    from gptresume.ledger.segment import CHECKPOINT_SEGMENT
    from gptresume.resume.position import Geometry, StreamSampler

    def iterate(with_ledger: bool, work: Path) -> tuple[float, float]:
        sampler = StreamSampler(n, 7, 0)
        sampler._perm(0)  # the permutation is drawn with or without the ledger: outside the timed part
        recorder = PackedRecorder(sampler, Geometry(global_batch, 1, 1), 0) if with_ledger else None
        it = iter(sampler)
        stepping = saving = 0.0
        for step in range(1, steps + 1):
            t0 = time.process_time()  # this process's CPU time: the machine's other load stays out
            for _ in range(global_batch):
                next(it)
            if recorder is not None:
                recorder.step_done(step)
            stepping += time.process_time() - t0
            if recorder is not None and step % save_every == 0:
                t0 = time.perf_counter()  # wall time: the fsync waits for the disk
                ckpt = work / f"checkpoint-{step}"
                ckpt.mkdir()
                recorder.take().write(ckpt / CHECKPOINT_SEGMENT)
                book_checkpoint(work, ckpt)
                saving += time.perf_counter() - t0
        return stepping, saving

    work = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    without, with_ = [], []
    try:
        for rep in range(5):  # alternating, the median of each
            without.append(iterate(False, work)[0])
            (work / f"r{rep}").mkdir()
            with_.append(iterate(True, work / f"r{rep}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_step = max(0.0, median([w[0] for w in with_]) - median(without)) / steps
    per_save = median([w[1] for w in with_]) / (steps // save_every)
    return {"global_batch": global_batch, "steps": steps, "save_every": save_every, "per_step_s": per_step,
            "per_sample_us": per_step / global_batch * 1e6, "per_save_s": per_save,
            "per_step_with_saves_s": per_step + per_save / save_every}


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict) -> dict:
    warm, steps = plan.demo_warmup, 4 * plan.demo_steps
    every = plan.demo_steps
    total = warm + steps
    runs = {mode: [] for mode in MODES}
    per_step = []
    for rep in range(plan.reps):
        for mode in rotated(list(MODES), rep):
            run = fresh_run_dir(r, tpls["demo"], "demo")
            sets = ["--set", f"train.max_steps={total}", "--set", 'train.eval_strategy="no"',
                    "--set", "train.bf16=false", "--set", f"train.save_steps={every}",
                    "--set", "checkpoint.keep_last=2",
                    "--set", f"checkpoint.ledger={'true' if mode == 'ledger on' else 'false'}"]
            res = r.worker("train", "--peer", "gptresume", "--config", str(configs["demo"]), "--output-dir",
                           str(run), "--exit-at-step", str(total), *sets)
            tps = throughput_of(res, warm)
            runs[mode].append(tps)
            if tps:
                per_step.append(res["tokens_per_step"] / tps)
            r.log(f"  demo {mode}: {tps:,.0f} tokens/s (load {res['load']:.1f})")
            shutil.rmtree(run, ignore_errors=True)
    off, on = median(runs["ledger off"]), median(runs["ledger on"])
    step_s = median(per_step)
    demo_batch = int(res["tokens_per_step"] // 128)  # the demo's block size
    direct = [direct_cost(b, every, steps) for b, steps in ((demo_batch, 40 * every), (LARGE_BATCH, 8 * every))]
    for d in direct:
        d["share_of_demo_step"] = d["per_step_with_saves_s"] / step_s if step_s else None
    return {"save_every": every, "warmup_steps": warm, "measured_steps": steps, "runs": runs,
            "tokens_per_s": {"ledger off": off, "ledger on": on}, "ratio": ratio(on, off), "step_s": step_s,
            "direct": direct, "method": METHOD}


def render(results: dict) -> list[str]:
    """RESULTS.md lines for this section (bench/render.py calls it)."""
    from render import fmt

    lg = results.get("ledger")
    if not lg:
        return []
    lines = ["## Sample ledger (checkpoint.ledger)", "",
             f"The demo config in fp32, a checkpoint every {lg['save_every']} steps in both modes, "
             f"{lg['measured_steps']} steps measured after the warm-up; step time {fmt(lg['step_s'], '.3f')} s.", "",
             "| mode | tokens/s | vs ledger off |", "|---|---:|---:|"]
    off = lg["tokens_per_s"]["ledger off"]
    for mode, tps in lg["tokens_per_s"].items():
        lines.append(f"| {mode} | {fmt(tps, ',.0f')} | {fmt(ratio(tps, off), '.3f')} |")
    lines += ["", "The ledger's own work (process 0, packed data; timed directly): per step (its samples observed and "
              "attributed), per save (the segment written into the checkpoint, read back, booked with an fsync), "
              f"and their sum per step with a save every {lg['save_every']} steps as a share of the demo's step:", "",
              "| global batch | per step | per sample | per save | share of the demo's step |",
              "|---:|---:|---:|---:|---:|"]
    for d in lg["direct"]:
        share = d.get("share_of_demo_step")
        lines.append(f"| {d['global_batch']} | {d['per_step_s'] * 1e3:.3f} ms | {d['per_sample_us']:.2f} µs | "
                     f"{d['per_save_s'] * 1e3:.1f} ms | {'–' if share is None else f'{share:.2%}'} |")
    lines.append("")
    return lines
