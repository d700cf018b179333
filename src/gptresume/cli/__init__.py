"""The command line: `main`, the parser built from the command registry, and the exception -> exit code mapping.

Each subcommand is one module here (the module's name is the command's name) with `add_parser(subparsers)`,
which declares its arguments, help and examples, and `run(args) -> int`, which calls the library and prints
(the commands that load models set up Transformers' logging first, `logs.quiet_transformers`). `COMMANDS` lists
them in the order `--help` shows them; tests/unit/test_cli_imports.py checks that every module here is registered.
Nothing heavy is imported before a command needs it: `--help`, status, verify, diff, config errors and a `train`
refused because its run is busy never import torch or transformers.

Exit codes: 0 done; 1 unexpected internal error; 2 bad input, bad config or refused resume (nothing changed);
75 stopped by a signal after committing a checkpoint (re-run the same command, or `gptresume resume RUN_DIR`, to
resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from gptresume.cli import diff, eval, export, generate, ledger, plot, resume, status, train, verify
from gptresume.errors import EXIT_INTERNAL, UsageError, storage_error
from gptresume.logs import setup_logging

COMMANDS = (train, resume, verify, ledger, diff, status, export, generate, eval, plot)


def command_name(module) -> str:
    return module.__name__.rpartition(".")[2]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts after its name too (`gptresume status RUN -v`); SUPPRESS as the default
    keeps a `-v` given before the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptresume",
        description="Train or fine-tune GPT-2 with Hugging Face Transformers; stop at any instant "
                    "(Ctrl-C, SIGTERM, kill -9) and resume exactly by re-running the same command.",
        formatter_class=_Formatter)
    from gptresume import __version__

    parser.add_argument("--version", action="version", version=f"gptresume {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = _common_options()

    class CommandParser(argparse.ArgumentParser):  # what every subcommand's parser shares
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("formatter_class", _Formatter)
            kwargs.setdefault("parents", [common])
            super().__init__(*args, **kwargs)

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for module in COMMANDS:
        module.add_parser(sub).set_defaults(func=module.run)
    return parser


def no_code_from_files() -> None:
    """Every `torch.load` in this process (ours, Trainer's, Transformers' .bin weights) is weights-only, whatever a
    caller asks: nothing read from a run or checkpoint directory runs code (TORCH_FORCE_WEIGHTS_ONLY_LOAD, torch
    >= 2.6; inherited by torchrun's workers)."""
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    no_code_from_files()
    try:
        return args.func(args)
    except UsageError as e:
        from gptresume.training.distributed import DecidedOnRankZero

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
