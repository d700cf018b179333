"""`gptresume diff A B`: the config differences between two checkpoints, runs or config files (resume/diff.py)."""

from __future__ import annotations

EXAMPLES = """\
examples:
  gptresume diff runs/demo/checkpoint-40 runs/demo/checkpoint-120
  gptresume diff runs/demo runs/demo-lr-sweep          # the newest valid checkpoint of each run
  gptresume diff runs/demo examples/demo.yaml          # what resuming runs/demo with this config would change

exit code 0 (also when they differ), 2 when A or B is not a checkpoint, run or config."""


def add_parser(subparsers):
    p = subparsers.add_parser("diff", help="config differences between two checkpoints, runs or config files",
                              description="Print the table `train` prints on a changed resume: every differing "
                                          "field, its class and what a resume of A with B's config would need.",
                              epilog=EXAMPLES)
    p.add_argument("a", metavar="A", help="a checkpoint-N directory, a run directory or a YAML config")
    p.add_argument("b", metavar="B", help="the same kinds as A")
    return p


def run(args) -> int:
    from gptresume.resume.diff import describe_source, diff_table

    print(f"A: {describe_source(args.a)}\nB: {describe_source(args.b)}")
    print(diff_table(args.a, args.b))
    return 0
