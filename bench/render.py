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


TITLES = {"peak": "Peak matmul", "throughput": "Training throughput", "checkpoint": "Checkpoint cost",
          "checkpoint_ddp": "Checkpoint cost, several processes", "verify": "Verify speed",
          "resume": "Resume latency", "streaming_resume": "Streaming resume latency",
          "goodput": "Goodput under preemption", "packing": "Packing",
          "interval": "Checkpoint interval: `every: auto` against fixed save_steps",
          "remote": "Uploads to object storage (checkpoint.remote)",
          "defaults": "The shipped defaults on a real-sized corpus",
          "step_cost": "Callbacks' share of a step", "ledger": "The sample ledger's cost",
          "multinode": "Several nodes: a commit through the bucket"}


def render_report(records: dict[str, dict]) -> str:
    """RESULTS.md from the sections' records (bench/results/SECTION.json): the targets, then each section's tables
    under the line that says when, at which commit, with which command and on which machine it was measured."""
    from sections import SECTIONS

    lines = ["# Benchmark results", "",
             "Each section is measured on its own (`bench/run.py --only SECTION`; `make bench` runs every one) and "
             "writes bench/results/SECTION.json (raw numbers, plan, machine); this file is rendered from those files "
             "(`bench/run.py --render-only`), so a section's tables are always those of its latest measurement, "
             "which the line under its title dates. Each figure is a median over repetitions, each in a fresh "
             "process, peers alternating (the order rotates and reverses).", ""]
    targets = report_targets(records)
    if targets:
        lines += ["## Targets", "", "| target | measured | met | section, measured |", "|---|---|---|---|"]
        for name, t in targets.items():
            v = t["value"]
            shown = "–" if v is None else f"{v * 100:.2f}%" if name in PERCENT_TARGETS else f"{v:.3f}"
            rec = records[t["section"]]
            lines.append(f"| {t['what']} | {shown} | {'met' if t['met'] else '**not met**'} | {t['section']}, "
                         f"{rec['measured'][:10]}{' (quick)' if rec['quick'] else ''} |")
        lines.append("")
    missing = [name for name in SECTIONS if name not in records]
    for name in SECTIONS:
        if name in records:
            part = section_lines(name, records)
            lines += part[:1] + ["", provenance(records[name])] + part[1:]
    if missing:
        lines += ["## Not measured yet", "",
                  "No results for: " + ", ".join(missing)
                  + f". Measure with `bench/run.py --only {' '.join(missing)}`.",
                  ""]
    return "\n".join(lines)


PERCENT_TARGETS = ("own_code", "hash_share", "defaults_eval_save")


def section_lines(name: str, records: dict) -> list[str]:
    """A section's tables, by the renderer below that knows its data (`peak` lends throughput its MFU
    denominators)."""
    rec = records[name]
    view = {"plan": rec.get("plan") or {}, "machine": rec.get("machine") or {}, "quick": rec.get("quick"),
            name: rec["data"]}
    if name == "throughput" and "peak" in records:
        view["peak"] = records["peak"]["data"]
    part = RENDERERS[name](view)
    return part or [f"## {TITLES.get(name, name)}", "", "(no figures)", ""]


ONE_RUN = {"defaults": lambda plan: 1, "packing": lambda plan: plan.get("packing_reps", 1)}
"""Sections whose repetitions are not the plan's `reps`: the defaults section is one run, packing has its own."""


def provenance(rec: dict) -> str:
    """`Measured 2026-12-07 03:12 UTC at commit abc1234 by `bench/run.py --only X` (5 repetitions), in 12.3 min, on
    ...; load 1.0 at start, 1.2 at end`."""
    m = rec.get("machine") or {}
    plan = rec.get("plan") or {}
    n = ONE_RUN[rec["section"]](plan) if rec.get("section") in ONE_RUN else plan.get("reps", "?")
    reps = "quick: one repetition, shorter runs (a smoke run, not the figures)" if rec.get("quick") else \
        "one run of each measurement" if n == 1 else f"median of {n} repetitions"
    commit = rec.get("commit", "unknown")
    busy = max(m.get("load_at_start") or 0, rec.get("load_at_end") or 0) > 0.5
    return (f"*Measured {rec.get('measured', '?')} at commit {commit}"
            + (" (with uncommitted changes)" if rec.get("dirty") else "")
            + f" by `{rec.get('command', 'bench/run.py')}` ({reps}"
            + (f"; {rec['wall_s'] / 60:.1f} min" if rec.get("wall_s") else "") + "). "
            + f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {'GPU' if m.get('gpu') else 'no GPU'}; "
            + f"torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}. Load average "
            + f"{(m.get('load_at_start') or 0):.2f} at start, {(rec.get('load_at_end') or 0):.2f} at end"
            + (": **a busy machine, timings are noisy**" if busy else "") + ".*")


def report_targets(records: dict) -> dict:
    """Every target whose section has results, judged from that section alone, with the section's name."""
    out = {}
    for name, rec in records.items():
        for key, t in targets({name: rec["data"]}).items():
            out[key] = {**t, "section": name}
    return out


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


def _multinode(results: dict) -> list[str]:
    from sections.multinode import render as multinode_lines  # its own section file renders it (issue 27)

    return multinode_lines(results)


def _defaults(results: dict) -> list[str]:
    """The GPT-2 fine-tune preset on a generated corpus: where the wall time goes, and the resume's start-up."""
    d = results.get("defaults")
    if not d:
        return []
    f = d["fresh"]
    shape = d["shape"]
    changed = ", ".join(f"{k} {v}" for k, v in d.get("overrides", {}).items())
    lines = ["## " + TITLES["defaults"], "",
             f"examples/gpt2-finetune.yaml on {d['text_bytes'] / 1e9:.2f} GB of generated text (lines of random "
             f"words), changed only in the model shape ({d['model']}: {shape['n_layer']} layers x {shape['n_embd']}, "
             f"context {shape['n_positions']}, a new model with GPT-2's vocabulary size) and the step count"
             + (f", and for this quick run {changed}" if changed else "")
             + f"; SIGTERM at step {d['sigterm_at']}. Otherwise as shipped: block 512, batch 4 x 8, "
             "validation_fraction 0.02 (at most data.validation_max_blocks blocks), an evaluation of data.eval_batches "
             "batches at every save (save_steps 200), every_minutes 30, keep_last 3.", "",
             "| from process start | seconds | share of the run |", "|---|---:|---:|"]
    total = sum(d["wall_shares_s"].values())
    for what, secs in d["wall_shares_s"].items():
        lines.append(f"| {what} | {fmt(secs, '.1f')} | {fmt(secs / total * 100 if total else None, '.1f')}% |")
    lines += ["", f"{f['steps']} steps at {fmt(f.get('tokens_per_s'), ',.0f')} tokens/s; {f['evaluations']} "
                  f"evaluation(s), {f['saves']} save(s) before the stop: evaluation {fmt(f['eval_s'], '.1f')} s "
                  f"({fmt((f['eval_share'] or 0) * 100, '.1f')}% of training), saving {fmt(f['save_s'], '.1f')} s "
                  f"({fmt((f['save_share'] or 0) * 100, '.1f')}%), together "
                  f"{fmt((f['eval_save_share'] or 0) * 100, '.1f')}% of the training time.", "",
              "| start | to first step s |", "|---|---:|",
              f"| new run (tokenises and packs the corpus) | {fmt(f['start_to_first_step_s'], '.1f')} |",
              f"| fresh start, data cached | {fmt(d['fresh_cached']['start_to_first_step_s'], '.1f')} |",
              f"| resume after the SIGTERM (step {d['resume']['first_step']}) | "
              f"{fmt(d['resume']['start_to_first_step_s'], '.1f')} |", "",
              f"The resume read the data cache: {'yes' if d['resume']['cache_hit'] else '**no**'}; packed again: "
              f"{'**yes**' if d['resume']['packed_again'] else 'no'}. Resume / fresh start (data cached): "
              f"{fmt(d['resume_vs_fresh'], '.3f')}.", ""]
    return lines


RENDERERS = {"peak": _peak, "throughput": _throughput, "checkpoint": _checkpoint, "checkpoint_ddp": _checkpoint_ddp,
             "verify": _verify, "resume": _resume, "streaming_resume": _streaming_resume, "goodput": _goodput,
             "packing": _packing, "interval": lambda results: _intervals(results.get("interval")),
             "remote": _remote, "defaults": _defaults, "step_cost": _step_cost, "ledger": _ledger,
             "multinode": _multinode}


def write_section(out: Path, name: str, record: dict) -> None:
    """OUT/results/NAME.json: one section's record (written as soon as the section is done)."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    path = out / "results" / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)


def read_sections(out: Path) -> dict[str, dict]:
    from sections import SECTIONS

    found = {p.stem: json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))}
    return {name: found[name] for name in SECTIONS if name in found}


def write_report(out: Path) -> dict:
    """OUT/RESULTS.md from every section's record in OUT/results/; returns the records and the judged targets."""
    records = read_sections(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.md").write_text(render_report(records) + "\n")
    return {"records": records, "targets": report_targets(records)}
