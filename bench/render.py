"""bench/RESULTS.md from results.json: markdown only, no measuring and no child process, so `--render-only`
rewrites the report from stored numbers and a wording change never needs a 30-minute re-run."""

from __future__ import annotations

import json
from pathlib import Path

from common import median, ratio
from targets import targets


def fmt(x, spec=".2f"):
    """A figure for a table cell; a missing one shows as a dash."""
    return "–" if x is None else format(x, spec)


def render(results: dict) -> str:
    """The markdown report: machine, targets, then one part per section that results holds."""
    parts = (_header, _targets, _peak, _throughput, _step_cost, _checkpoint, _checkpoint_ddp, _verify, _resume,
             _streaming_resume, _goodput, _packing, lambda results: _intervals(results.get("interval")), _remote,
             _ledger)
    return "\n".join(line for part in parts for line in part(results))


def _header(results: dict) -> list[str]:
    """Where and when it ran, on what machine, how busy, and how each figure was taken."""
    m = results["machine"]
    plan = results["plan"]
    return [
        "# Benchmark results",
        "",
        f"Written by {_command(results)} on {m['time']}; "
        f"took {results['wall_s'] / 60:.1f} min. Raw numbers: results.json beside this file.",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"{m['memory_gb']} GB RAM, {'GPU' if m['gpu'] else 'no GPU'}; ISA: {', '.join(m['isa'])}. "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, accelerate {m['accelerate']}.",
        f"Load average (1 min) at start {m['load_at_start']:.2f}, at end {results.get('load_at_end', float('nan')):.2f}"
        + (" — **measured on a busy machine: timings are noisy**" if max(m["load_at_start"],
                                                                        results.get("load_at_end", 0)) > 0.5 else "")
        + ".",
        "",
        f"Each figure is the median of {plan['reps']} runs"
        + (f" (packing: {plan.get('packing_reps', plan['reps'])}, each of 1-2 GB taking minutes)"
           if "packing" in results.get("sections", []) and not results["quick"] else "")
        + ", each in a fresh process; peers alternate within each repetition (the order rotates and reverses).",
        "",
    ]


def _command(results: dict) -> str:
    """The command that measured: `make bench` for every section, else bench/run.py with the options used."""
    from sections import SECTIONS

    sections = results.get("sections") or list(SECTIONS)
    if list(sections) == list(SECTIONS) and not results["quick"]:
        return "`make bench` (bench/run.py)"
    return ("`bench/run.py" + (" --quick" if results["quick"] else "")
            + ("" if list(sections) == list(SECTIONS) else " --only " + " ".join(sections)) + "`")


def _targets(results: dict) -> list[str]:
    """Each target, its measured value and whether it is met."""
    tg = results.get("targets", {})
    if not tg:
        return []
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, t in tg.items():
        v = t["value"]
        shown = "–" if v is None else f"{v * 100:.2f}%" if name in ("own_code", "hash_share") else f"{v:.3f}"
        lines.append(f"| {t['what']} | {shown} | {'met' if t['met'] else '**not met**'} |")
    lines.append("")
    return lines


def _peak(results: dict) -> list[str]:
    """The matmul GFLOP/s the MFU column divides by."""
    pk = results.get("peak")
    if not pk:
        return []
    return ["## Peak matmul", "",
            f"torch.matmul of two {pk['n']}x{pk['n']} matrices: fp32 {fmt(pk['gflops']['fp32'], '.1f')} GFLOP/s, "
            f"bf16 {fmt(pk['gflops']['bf16'], '.1f')} GFLOP/s (the MFU denominators).", ""]


def _throughput(results: dict) -> list[str]:
    """One table per model: every peer's tokens/s, against plain Trainer, and MFU."""
    th = results.get("throughput")
    if not th:
        return []
    plan = results["plan"]
    pk = results.get("peak")
    lines = ["## Training throughput", ""]
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
    return lines


def _step_cost(results: dict) -> list[str]:
    """Callbacks' share of a step: the same Trainer without and with gptresume's callbacks, in one process."""
    sc = results.get("step_cost")
    if not sc:
        return []
    s, d = sc["summary"], sc["ddp"]
    rows = (("Trainer alone", "plain"), ("with gptresume's callbacks", "gptresume"))
    when = f" Measured {sc['measured']}" + (f" (`{sc['command']}`)" if sc.get("command") else "") + "." \
        if sc.get("measured") else ""
    if (sc.get("load") or 0) > 0.5 * (results["machine"].get("cores") or 1):
        when += (" **A busy machine: the step times are noise** (other processes took the cores); the time inside "
                 "the callbacks and the counts hold.")
    return ["## Callbacks' share of a step", "",
            f"The same Trainer (demo shape, random tokens, {sc['device']}) trained with `trainer.train()` and with "
            f"`gptresume.train(trainer)` in one process, the order alternating; steps {sc['warmup'] + 1}-"
            f"{sc['steps'] - 1} timed (the last saves), logging every {sc['logging_steps']} steps. Host syncs: "
            "tensor-to-Python conversions (on a GPU each waits for the device; here on the device / all). "
            f"Collectives: Python-level torch.distributed calls per step, {d['world_size']} processes (DDP's "
            f"gradient all-reduce is not one of them).{when}", "",
            "| | ms per step | ms in callbacks per step | host syncs per step (device / all) | collectives per step |",
            "|---|---:|---:|---:|---:|",
            *(f"| {name} | {fmt(s[k]['step_s'] * 1e3, '.2f')} | "
              f"{fmt(s[k].get('callbacks_s_per_step', 0) * 1e3, '.3f')} | "
              f"{fmt(s[k]['device_syncs_per_step'], '.2f')} / {fmt(s[k]['syncs_per_step'], '.2f')} | "
              f"{fmt(d[k]['collectives_per_step'], '.2f')} |" for name, k in rows),
            "", f"Step time with gptresume's callbacks vs without: {fmt(sc['share'] * 100, '.2f')}% of a step (median "
                "over the repetitions of (with - without) / with; negative: within the noise); time inside "
                f"gptresume's callbacks: {fmt(sc.get('callbacks_share', 0) * 100, '.3f')}% of a step.", ""]


def _checkpoint_ddp(results: dict) -> list[str]:
    """The checkpoint table again, for the runs with several processes."""
    return _checkpoint(results, "checkpoint_ddp")


def _verify(results: dict) -> list[str]:
    """verify_checkpoint of one checkpoint, format 1 (sha256) vs format 2 (xxh3-128)."""
    vf = results.get("verify")
    if not vf:
        return []
    s = vf["seconds"]
    return ["## Verify speed", "", vf["method"], "",
            "| manifest | digest | seconds | GB/s |", "|---|---|---:|---:|",
            *(f"| format {1 if d == 'sha256' else 2} | {d} | {fmt(s[d], '.3f')} | "
              f"{fmt(ratio(vf['bytes'] / 1e9, s[d]), '.2f')} |" for d in ("sha256", "xxh3_128")),
            "", f"{vf['bytes'] / 1e9:.2f} GB; format 2 is {fmt(ratio(s['sha256'], s['xxh3_128']), '.1f')}x faster.",
            ""]


def _checkpoint(results: dict, key: str = "checkpoint") -> list[str]:
    """Per model and mode: what a save pauses and costs, then the first vs later async copies and hashing."""
    ck = results.get(key)
    if not ck:
        return []
    procs = max(w.get("processes", 1) for w in ck.values())
    title = "## Checkpoint cost" + (f", {procs} processes (DDP under torchrun, timed on rank 0)" if procs > 1 else "")
    lines = [title, "",
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

    def hash_percent(w):
        share = ratio(w["summary"]["sync"]["hash_s"], w["summary"]["sync"]["total_s"])
        return share * 100 if share else None

    lines += ["", "Hashing as a share of the synchronous save: " + ", ".join(
        f"{k} {fmt(hash_percent(w), '.0f')}%" for k, w in ck.items()) + ".", ""]
    return lines


def _resume(results: dict) -> list[str]:
    """Start to first step for a fresh start and the two resume positions."""
    rs = results.get("resume")
    if not rs:
        return []
    lines = ["## Resume latency", "",
             f"A tiny model on a packed dataset of {rs['blocks']:,} random blocks of {rs['block_size']} tokens "
             f"(one epoch = {rs['blocks'] // rs['batch']:,} batches of {rs['batch']}). Process start to the end of "
             "the first (resumed) step.", "",
             *_latency_table(rs["summary"])]
    return lines


def _latency_table(summary: dict) -> list[str]:
    """Start-to-first-step rows (resume and streaming_resume sections), then a blank line."""
    rows = [f"| {kind} | {fmt(s['start_to_first_step_s'])} | {fmt(s['start_to_train_call_s'])} | "
            f"{fmt(s['train_call_to_first_step_s'])} |" for kind, s in summary.items()]
    return ["| start | to first step s | of which: start to train() s | train() to first step s |",
            "|---|---:|---:|---:|", *rows, ""]


def _streaming_resume(results: dict) -> list[str]:
    """Start to first step of a streaming run resumed early and late in its source."""
    ss = results.get("streaming_resume")
    if not ss:
        return []
    lines = ["## Streaming resume latency", "",
             f"The same tiny model streaming the synthetic text (data.streaming, batches of {ss['batch']} blocks of "
             f"{ss['block_size']} tokens); the late resume positions the reader {ss['documents_skipped']:,} "
             "documents into the source. Process start to the end of the first resumed step.", "",
             *_latency_table(ss["summary"])]
    return lines


def _goodput(results: dict) -> list[str]:
    """The interrupted runs against the uninterrupted one."""
    gp = results.get("goodput")
    if not gp:
        return []
    lines = ["## Goodput under preemption", "",
             f"The demo config, {gp['max_steps']} steps, a checkpoint every {gp['save_steps']} steps; "
             f"interrupted {gp['interval_s']:.0f} s after each start and re-run at once (single runs, not "
             "medians: each takes minutes).", "",
             "| run | wall s | starts | goodput | load before / after | final weights equal uninterrupted |",
             "|---|---:|---:|---:|---|---|"]
    for kind, g in gp["runs"].items():
        exact = "–" if g.get("exact", 0) is None or kind == "uninterrupted" else ("yes" if g["exact"] else "**no**")
        lines.append(f"| {kind} | {g['wall_s']:.1f} | {g['starts']} | {fmt(g.get('goodput', 1.0), '.3f')} | "
                     f"{g['load_before']:.1f} / {g['load']:.1f} | "
                     f"{exact} |")
    lines.append("")
    return lines


def _packing(results: dict) -> list[str]:
    """Tokens/s and peak memory of the three packings at each corpus size."""
    pk = results.get("packing")
    if not pk:
        return []
    lines = ["## Packing", "",
             "Generated text (lines of random words) packed into blocks of 1024 tokens by the demo tokenizer; "
             "peak RSS of the process and of its largest tokenizing worker (ru_maxrss).", "",
             "| text | packing | tokens/s | peak RSS MB | largest worker MB |", "|---|---|---:|---:|---:|"]
    for mb, runs in sorted(pk["runs"].items(), key=lambda kv: int(kv[0])):
        for peer, v in runs.items():
            lines.append(f"| {mb} MB | {peer} | {v['tokens_per_s']:,.0f} | {v['peak_rss_mb']:.0f} | "
                         f"{v['peak_worker_rss_mb']:.0f} |")
    lines.append("")
    return lines


def _intervals(iv: dict | None) -> list[str]:
    """checkpoint.every: auto against fixed save_steps (issue 16)."""
    if not iv:
        return []
    model = "the demo model" if iv.get("model") == "demo" else f"the demo config with {iv.get('model')}"
    lines = ["## Checkpoint interval: `every: auto` against fixed save_steps", "",
             f"{model}, {iv['max_steps']} steps, interrupted {iv['interval_s']:.0f} s after each start; goodput = the "
             f"uninterrupted run that saves only at its end ({iv['base_wall_s']:.1f} s) / wall time. Measured: "
             f"{iv['step_s']:.3f} s per step, restart {iv['restart_s']:.1f} s, save pause delta "
             f"{fmt(iv.get('delta_s'), '.3f')} s. Predicted: one session of the periodic interruption (a restart, "
             "then a save every tau pausing delta; a kill keeps the work up to the last save, a stop all of it).", "",
             "| signal | setting | wall s | starts | goodput | predicted | auto's intervals (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for kind, rows in iv["runs"].items():
        pred = iv.get("summary", {}).get(kind, {}).get("predicted", {})
        for setting, g in rows.items():
            chosen = ", ".join(f"{x:.1f}" for x in g.get("chosen_s", [])) or "–"
            lines.append(f"| {kind} | {setting if setting == 'auto' else 'save_steps ' + setting} | "
                         f"{g['wall_s']:.1f} | {g['starts']} | {g['goodput']:.3f} | {fmt(pred.get(setting), '.3f')} | "
                         f"{chosen} |")
    lines.append("")
    return lines


def _remote(results: dict) -> list[str]:
    """Tokens/s with and without checkpoint.remote."""
    rm = results.get("remote")
    if not rm:
        return []
    lines = ["## Uploads to object storage (checkpoint.remote)", "",
             f"The demo config in fp32, a checkpoint every {rm['save_every']} steps, "
             f"{rm['measured_steps']} steps measured "
             "after the warm-up; uploads go to moto's S3-compatible server on 127.0.0.1 (in the bench process, on "
             "the same cores) through s3fs, each verified by reading it back.", "",
             "| mode | tokens/s | vs local only |", "|---|---:|---:|"]
    local = rm["tokens_per_s"]["local only"]
    for mode, tps in rm["tokens_per_s"].items():
        lines.append(f"| {mode} | {fmt(tps, ',.0f')} | {fmt(ratio(tps, local), '.3f')} |")
    lines.append("")
    return lines


def _ledger(results: dict) -> list[str]:
    from sections.ledger import render as ledger_lines  # its own section file renders it (issue 27)

    return ledger_lines(results)


def write_results(out: Path, results: dict) -> None:
    """Judge the targets, then write OUT/results.json (raw) and OUT/RESULTS.md (rendered)."""
    results["targets"] = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "RESULTS.md").write_text(render(results) + "\n")
