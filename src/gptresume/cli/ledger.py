"""`gptresume ledger RUN_DIR`: check a run's sample ledger (checkpoint.ledger) -- every sample of each completed
epoch trained exactly once, none twice, across stops, kills, rollbacks, batch re-splits and elastic changes."""

from __future__ import annotations

from gptresume.errors import EXIT_USAGE, UsageError

EXAMPLES = """\
examples:
  gptresume ledger runs/demo          # the verdict, and what the ledger covers
  gptresume ledger runs/demo --json   # the same as JSON

exit code 0 when exactly-once is proved, 2 otherwise (the first duplicate or missing samples are named), or when
RUN_DIR has no readable ledger."""


def add_parser(subparsers):
    p = subparsers.add_parser("ledger", help="check a run's sample ledger: each sample trained exactly once",
                              description="Read RUN_DIR/ledger/ (written with checkpoint.ledger: true) along the run's "
                                          "lineage (up to its newest committed checkpoint) and check that every "
                                          "sample of each completed epoch was trained exactly once and none twice; "
                                          "samples a rollback skipped or dataloader_drop_last dropped are listed as "
                                          "such.", epilog=EXAMPLES)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.output_dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args) -> int:
    import json
    from pathlib import Path

    from gptresume.ledger.books import lineage
    from gptresume.ledger.check import check
    from gptresume.ledger.segment import SegmentError
    from gptresume.rundir import read_history

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"ledger: {run_dir} is not a directory; give a run directory (train.output_dir)")
    try:
        segments, notes = lineage(run_dir)
    except SegmentError as e:
        raise UsageError(f"ledger: {e}") from None
    verdict = check(segments)
    history = _history_line(read_history(run_dir))
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "exactly_once": verdict.ok, "claim": verdict.claim,
                          "facts": verdict.lines, "violations": verdict.violations, "notes": notes,
                          "history": history}, indent=1))
        return 0 if verdict.ok else EXIT_USAGE
    print(f"{run_dir}: sample ledger")
    for line in verdict.lines + ([history] if history else []) + notes:
        print(f"  {line}")
    if verdict.ok:
        print(f"exactly once: {verdict.claim}")
        return 0
    for line in verdict.violations:
        print(f"VIOLATION: {line}")
    return EXIT_USAGE


def _history_line(history: list[dict]) -> str:
    resumes = [e for e in history if e.get("event") == "resume"]
    rollbacks = [e for e in history if e.get("event") == "rollback"]
    if not resumes and not rollbacks:
        return ""
    worlds = []
    for e in resumes:
        for c in e.get("changes") or []:
            if c.get("key") == "world_size":
                worlds.append(f"{c.get('old')} -> {c.get('new')}")
    text = f"history: {len(resumes)} resume(s)"
    if worlds:
        text += f" (process count {', '.join(worlds)})"
    if rollbacks:
        text += f", {len(rollbacks)} rollback(s) ({sum(int(e.get('skip_samples') or 0) for e in rollbacks)} " \
                "samples skipped)"
    return text
