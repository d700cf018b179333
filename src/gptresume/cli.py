"""Argument parsing only: one small function per subcommand; the work lives in the modules they call.

Exit codes: 0 done; 1 unexpected internal error; 2 bad input, bad config or refused resume (nothing changed);
75 stopped by a signal after committing a checkpoint (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import textwrap

from gptresume.errors import EXIT_INTERNAL, EXIT_USAGE, UsageError

TRAIN_EXAMPLES = """\
examples:
  gptresume train examples/demo.yaml
  gptresume train examples/demo.yaml --set train.max_steps=50 --set model.from_scratch.n_layer=2
  gptresume train examples/demo.yaml --resume must             # fail unless there is a checkpoint
  gptresume train examples/demo.yaml --resume runs/demo/checkpoint-60
  gptresume train examples/demo.yaml --set train.learning_rate=5e-4 --allow-change learning_rate
  gptresume train examples/demo.yaml --set train.max_steps=320 --allow-change max_steps   # train longer
  gptresume train my.yaml --resume old_script_out/checkpoint-500 --adopt  # take over a plain Trainer checkpoint
  torchrun --nproc_per_node 2 -m gptresume train examples/demo.yaml

exit codes: 0 done (or already complete), 2 bad input or refused resume (nothing changed),
            75 stopped by SIGTERM/SIGINT/SIGUSR1 after committing a checkpoint: run the same command again."""

VERIFY_EXAMPLES = """\
examples:
  gptresume verify runs/demo                   # every checkpoint of a run
  gptresume verify runs/demo/checkpoint-60     # one checkpoint

exit code 0 when every checkpoint checked is valid, 2 otherwise (each fault names the file)."""

DIFF_EXAMPLES = """\
examples:
  gptresume diff runs/demo/checkpoint-40 runs/demo/checkpoint-120
  gptresume diff runs/demo runs/demo-lr-sweep          # the newest valid checkpoint of each run
  gptresume diff runs/demo examples/demo.yaml          # what resuming runs/demo with this config would change

exit code 0 (also when they differ), 2 when A or B is not a checkpoint, run or config."""

# Storage failures (full disk, quota, file size limit, read-only file system, permissions): a clear message, no
# traceback; they are not bugs and not bad input.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
# torch.save loses the errno: a short write surfaces as one of these RuntimeErrors (torch 2.13).
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "] . unexpected pos ")


def storage_error(exc: BaseException) -> str | None:
    """Describe a full disk / read-only / permission failure, also when torch or safetensors wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
        text = str(exc)
        if any(marker in text for marker in TORCH_WRITE_FAILURES):
            return "torch.save could not write a checkpoint file (full disk or file size limit)"
        for errnum in WRITE_ERRNOS:
            if os.strerror(errnum) in text:
                return f"{os.strerror(errnum)} ({text.splitlines()[0][:200]})"
        exc = exc.__cause__ or exc.__context__
    return None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptresume",
        description="Train or fine-tune GPT-2 with Hugging Face Transformers; stop at any instant "
                    "(Ctrl-C, SIGTERM, kill -9) and resume exactly by re-running the same command.",
        formatter_class=_Formatter)
    from gptresume import __version__

    parser.add_argument("--version", action="version", version=f"gptresume {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train or resume a run described by a YAML config",
                       description="Train or resume. By default the newest valid checkpoint in "
                                   "train.output_dir is resumed; otherwise a new run starts.",
                       epilog=TRAIN_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("config", metavar="CONFIG", help="YAML config (see examples/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.learning_rate=1e-4")
    p.add_argument("--resume", default="auto", metavar="auto|never|must|PATH",
                   help="auto (default): newest valid checkpoint, else start fresh; never: start fresh, refuse "
                        "if checkpoints exist; must: fail if there is none; PATH: that checkpoint directory")
    p.add_argument("--overwrite", action="store_true",
                   help="with --resume never: delete the run's checkpoints, metrics and final model first")
    p.add_argument("--allow-partial", action="store_true",
                   help="resume from a checkpoint that lacks optimizer, scheduler or RNG state (the run will "
                        "differ from an uninterrupted one; the warning says how)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="accept a changed field on resume and apply it correctly (repeatable): a field "
                        "(learning_rate, max_steps, per_device_train_batch_size, ...), or a class: optimizer, "
                        "schedule, batch, data. Without it such a change is refused with a table of differences")
    p.add_argument("--adopt", action="store_true",
                   help="with --resume PATH: take over a checkpoint written by a plain Transformers script (no "
                        "manifest) after checking that its files load")
    p.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                   help="save and commit a checkpoint at step N, then exit 75 as if preempted (for splitting a "
                        "run into chunks and for testing resume)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("verify", help="check checkpoints against their manifests",
                       description="Re-hash every file of a checkpoint (or of every checkpoint in a run) and "
                                   "compare with its manifest.", epilog=VERIFY_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("path", metavar="PATH", help="a run directory or a checkpoint-N directory")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="config differences between two checkpoints, runs or config files",
                       description="Print the table `train` prints on a changed resume: every differing field, "
                                   "its class and what a resume of A with B's config would need.",
                       epilog=DIFF_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("a", metavar="A", help="a checkpoint-N directory, a run directory or a YAML config")
    p.add_argument("b", metavar="B", help="the same kinds as A")
    p.set_defaults(func=cmd_diff)
    _add_tool_parsers(sub)
    return parser


def cmd_train(args) -> int:
    from gptresume.config import load_config
    from gptresume.training import run_training

    if args.overwrite and args.resume != "never":
        raise UsageError("--overwrite only goes with --resume never (it deletes the run's checkpoints)")
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise UsageError("--stop-at-step: must be at least 1")
    from gptresume import distributed
    from gptresume.allocator import keep_freed_memory

    keep_freed_memory()  # faster CPU steps, the same numbers (allocator.py)
    distributed.setup()  # several processes: rank 0 loads and checks the config, every rank gets its verdict
    try:
        config = distributed.on_main(load_config, args.config, args.overrides)
        return run_training(config, resume=args.resume, overwrite=args.overwrite, stop_at_step=args.stop_at_step,
                            allow_partial=args.allow_partial, allow_change=args.allow_change,
                            adopt_checkpoint=args.adopt)
    finally:
        distributed.teardown()


def cmd_verify(args) -> int:
    from pathlib import Path

    from gptresume.checkpoint import CHECKPOINT_RE, MANIFEST_NAME, list_checkpoints, verify_checkpoint

    path = Path(args.path)
    if not path.is_dir():
        raise UsageError(f"verify: {path} is not a directory; give a run directory or a checkpoint-N directory")
    single = CHECKPOINT_RE.match(path.name) or (path / MANIFEST_NAME).is_file()
    targets = [path] if single else list_checkpoints(path)
    if not targets:
        raise UsageError(f"verify: {path} holds no checkpoint-N directory")
    bad = 0
    for ckpt in targets:
        info = verify_checkpoint(ckpt)
        if info.valid:
            n = len(info.manifest["files"])
            size = sum(f["bytes"] for f in info.manifest["files"].values())
            print(f"ok       {ckpt}  (step {info.step}, {n} files, {size / 1e6:.1f} MB)")
        else:
            bad += 1
            print(f"INVALID  {ckpt}: " + "; ".join(info.faults))
    return 0 if bad == 0 else EXIT_USAGE


# ---------------------------------------------------------------- tools around a run (src/gptresume/tools/)

STATUS_EXAMPLES = """\
examples:
  gptresume status runs/demo          # checkpoints, what `train` would resume from, resume history
  gptresume status runs/demo --json   # the same as JSON

exit code 0 (also when checkpoints are invalid: the table names each fault), 2 when RUN_DIR is not a run."""

EXPORT_EXAMPLES = """\
examples:
  gptresume export runs/demo/checkpoint-120 models/demo-120
  gptresume export runs/demo models/demo --force   # final/ (or the newest valid checkpoint); replace models/demo
  python -c "from transformers import pipeline; print(pipeline('text-generation', model='models/demo')('The'))"

exit code 0 done, 2 invalid checkpoint or OUT exists and is not empty (without --force); OUT is never half-written."""

GENERATE_EXAMPLES = """\
examples:
  gptresume generate runs/demo --prompt "The"                       # final/ or the newest valid checkpoint
  gptresume generate runs/demo/checkpoint-120 --prompt "def" --num-samples 3 --seed 1
  gptresume generate models/demo --prompt "A list" --greedy --max-new-tokens 20

The same command prints the same text (sampling is seeded; --seed changes it)."""

EVAL_EXAMPLES = """\
examples:
  gptresume eval runs/demo/checkpoint-120     # the run's validation split: the eval_loss Trainer logged at step 120
  gptresume eval runs/demo --data notes/*.txt --batch-size 16
  gptresume eval models/demo --data test.txt --block-size 128

Prints loss and perplexity (exp(loss)); --json for a JSON object."""

PLOT_EXAMPLES = """\
examples:
  gptresume plot runs/demo -o demo.png

Top: training loss and eval loss; bottom: learning rate; dashed red lines: resumes (from history.jsonl)."""


def _add_tool_parsers(sub) -> None:
    p = sub.add_parser("status", help="checkpoints of a run, what train would resume from, its history",
                       description="List a run's checkpoints (step, epoch, loss, eval loss, learning rate, size, "
                                   "time, valid or the fault), the checkpoint `train --resume auto` would resume "
                                   "from and why, the run's start/resume/stop history and whether it is complete.",
                       epilog=STATUS_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.output_dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write a from_pretrained-ready model directory from a checkpoint",
                       description="Copy a verified checkpoint's model and tokenizer files (safetensors weights, "
                                   "config.json, generation_config.json, tokenizer) to OUT, without optimizer, "
                                   "scheduler, RNG or trainer state. A run directory exports its final/ model, or "
                                   "its newest valid checkpoint.", epilog=EXPORT_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint-N directory (or a run directory)")
    p.add_argument("out", metavar="OUT", help="directory to create")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="sample text from a checkpoint, a run or an exported model",
                       description="Sample text. PATH is a checkpoint-N directory, a run directory (its final/ "
                                   "model if present, else its newest valid checkpoint) or a directory written by "
                                   "export or save_pretrained.", epilog=GENERATE_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("path", metavar="PATH", help="checkpoint, run or model directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, metavar="N",
                   help="tokens to add (default 50; capped at the model's context)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=50, metavar="K", help="sample from the K likeliest tokens (default "
                                                                       "50; 0 turns it off)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default 1.0: off)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to print (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0: the same text every time)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="validation loss and perplexity of a checkpoint, a run or a model",
                       description="Loss and perplexity on the run's validation split (the same blocks Trainer "
                                   "evaluated, computed the way Trainer computes eval_loss), or on text files "
                                   "packed into blocks the way training packs them.",
                       epilog=EVAL_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("path", metavar="PATH", help="checkpoint, run or model directory")
    p.add_argument("--data", nargs="+", metavar="FILE", help="evaluate on these files (.txt, .jsonl, .csv, "
                                                               ".parquet; globs allowed) instead")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="blocks per forward pass (default: the run's per_device_eval_batch_size, else 8)")
    p.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="with --data: tokens per block (default: the run's data.block_size, else the model's context)")
    p.add_argument("--text-unit", choices=("document", "paragraph", "line"), default=None,
                   help="with --data: how .txt files split into documents (default: the run's, else document)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="plot loss and learning rate of a run, resumes marked",
                       description="Training loss, eval loss and learning rate against step from metrics.jsonl, "
                                   "one continuous curve across resumes, each resume marked by a vertical line.",
                       epilog=PLOT_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.output_dir)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write (.png, .pdf, .svg)")
    p.set_defaults(func=cmd_plot)


def cmd_status(args) -> int:
    from gptresume.tools.status import collect_status, format_status, status_json

    status = collect_status(args.run_dir)
    print(status_json(status) if args.json else format_status(status))
    return 0


def cmd_export(args) -> int:
    from gptresume.tools.export import export

    out, source = export(args.checkpoint, args.out, force=args.force)
    print(f"Exported {source.label} to {out}")
    return 0


def cmd_generate(args) -> int:
    from gptresume.tools.generate import GenerateOptions, generate

    options = GenerateOptions(prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, num_samples=args.num_samples, seed=args.seed,
                              greedy=args.greedy)
    samples, source = generate(args.path, options)
    logging.getLogger("gptresume").info("Model: %s", source.label)
    for i, text in enumerate(samples, 1):
        if len(samples) > 1:
            print(f"--- sample {i} ---")
        print(text)
    return 0


def cmd_eval(args) -> int:
    import json

    from gptresume.allocator import keep_freed_memory
    from gptresume.tools.evaluate import evaluate

    keep_freed_memory()
    result = evaluate(args.path, data_files=args.data, batch_size=args.batch_size, block_size=args.block_size,
                      text_unit=args.text_unit)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"eval_loss {result.loss:.6f}  perplexity {result.perplexity:.4f}  (as Trainer computes eval_loss)")
        if abs(result.token_loss - result.loss) > 1e-6 * abs(result.loss):
            print(f"token loss {result.token_loss:.6f}  perplexity {result.token_perplexity:.4f}  (per predicted "
                  "token; Trainer divides GPT-2's summed loss by every label position, see README)")
        print(f"  data:  {result.blocks} blocks of {result.block_size} tokens: {result.data}")
        print(f"  model: {result.model}")
    return 0


def cmd_plot(args) -> int:
    from gptresume.tools.plot import plot_run

    resumes = plot_run(args.run_dir, args.output)
    marks = f"; resumes marked at step {', '.join(map(str, resumes))}" if resumes else ""
    print(f"Wrote {args.output}{marks}")
    return 0


def cmd_diff(args) -> int:
    from gptresume.diff import describe_source, diff_table

    print(f"A: {describe_source(args.a)}\nB: {describe_source(args.b)}")
    print(diff_table(args.a, args.b))
    return 0


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    _quiet_known_noise(interactive=sys.stderr.isatty())


# Messages that are wrong or irrelevant for what gptresume does (checked with transformers 5.24, torch 2.13):
# the lm_head of GPT-2 is tied to the input embedding, so it is never in a checkpoint and Trainer's "missing
# keys" warning on resume is spurious; pin_memory has no effect on CPU; GPT2Config's loss_type=None is the default;
# packed training and eval blocks are never padded (the EOS token that is also GPT-2's pad id separates documents),
# so the advice to pass an attention_mask does not apply.
NOISE = ("missing keys in the checkpoint model loaded: ['lm_head.weight']", "`loss_type=None` was set in the config",
         "We strongly recommend passing in an `attention_mask` since your input_ids may be padded")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def _quiet_known_noise(interactive: bool) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    # With CI=true (set by most CI systems) Transformers also propagates its records to the root logger, which
    # would print each warning twice; its own handler is enough. Filters go on handlers, not loggers: a logger's
    # filter never sees the records of its children.
    hf_logging.disable_propagation()
    for handler in hf_logging.get_logger().handlers + logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    if not interactive:  # progress bars in logs and pipes are noise; our progress lines remain
        import datasets

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except UsageError as e:
        from gptresume.distributed import DecidedOnRankZero

        if not isinstance(e, DecidedOnRankZero):  # rank 0 prints a decision taken for every rank
            print("error: " + textwrap.indent(str(e), "  ").lstrip(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        storage = storage_error(e)
        if storage:
            print(f"error: could not write to disk: {storage}. Committed checkpoints are intact (a save cut "
                  "short here has no manifest and is skipped on resume); free space or fix permissions, then "
                  "re-run the same command to resume.", file=sys.stderr)
            return EXIT_INTERNAL
        logging.getLogger("gptresume").exception("internal error (please report it with the traceback above)")
        return EXIT_INTERNAL
