"""`gptresume status RUN_DIR`: a run's checkpoints, what `train` would resume from, its history (tools/status.py)."""

from __future__ import annotations

EXAMPLES = """\
examples:
  gptresume status runs/demo          # checkpoints, what `train` would resume from, resume history
  gptresume status runs/demo --json   # the same as JSON
  gptresume status s3://bucket/runs/demo   # a run's remote copy (checkpoint.remote), read-only

exit code 0 (also when checkpoints are invalid: the table names each fault), 2 when RUN_DIR is not a run."""


def add_parser(subparsers):
    p = subparsers.add_parser("status", help="checkpoints of a run, what train would resume from, its history",
                              description="List a run's checkpoints (step, epoch, loss, eval loss, learning rate, "
                                          "size, time, valid or the fault), the checkpoint `train --resume auto` "
                                          "would resume from and why, the run's start/resume/stop history and "
                                          "whether it is complete.",
                              epilog=EXAMPLES)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.output_dir), or the URL of its "
                                                      "remote copy (checkpoint.remote)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args) -> int:
    from gptresume.remote.view import readable
    from gptresume.tools.status import collect_status, format_status, status_json

    with readable(args.run_dir, "status") as local:
        status = collect_status(local)
    if local != args.run_dir:  # a remote run: name its URL, not the temporary copy
        status.run_dir = args.run_dir
    print(status_json(status) if args.json else format_status(status))
    return 0
