"""`gptresume plot RUN_DIR -o FILE`: loss and learning-rate curves, resumes marked (tools/plot.py)."""

from __future__ import annotations

EXAMPLES = """\
examples:
  gptresume plot runs/demo -o demo.png

Top: training loss and eval loss; bottom: learning rate; dashed red lines: resumes (from history.jsonl)."""


def add_parser(subparsers):
    p = subparsers.add_parser("plot", help="plot loss and learning rate of a run, resumes marked",
                              description="Training loss, eval loss and learning rate against step from "
                                          "metrics.jsonl, one continuous curve across resumes, each resume marked "
                                          "by a vertical line.", epilog=EXAMPLES)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.output_dir)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write (.png, .pdf, .svg)")
    return p


def run(args) -> int:
    from gptresume.tools.plot import plot_run

    resumes = plot_run(args.run_dir, args.output)
    marks = f"; resumes marked at step {', '.join(map(str, resumes))}" if resumes else ""
    print(f"Wrote {args.output}{marks}")
    return 0
