"""`python -m gptresume.launch [torchrun options] -m gptresume train CONFIG`: torchrun that keeps exit codes.

torchrun (torch 2.13) exits 1 whenever a worker exits non-zero, so a stop that committed a checkpoint (75)
and bad input (2) look the same as a crash to a scheduler or a retry loop; and on SIGTERM it forwards the
signal, waits `--shutdown-timeout` (30 s by default), then SIGKILLs the workers, even mid-save.

This runs torchrun's own launcher in-process, with the same options, and differs in two ways:
- SIGTERM, SIGINT and SIGUSR1 are forwarded to the workers (each worker's process group) and the launcher
  keeps waiting for them: they finish the step, commit a checkpoint and exit 75 however long the save takes.
- The exit code is the workers': the one positive code they exited with (75 after a committed stop, 2 for
  refused input, 130 after a second Ctrl-C), workers killed by the launcher after another one exited not
  counting; 1 when they disagree or crashed.
"""

from __future__ import annotations

import os
import signal
import sys

FORWARDED = ("SIGTERM", "SIGINT", "SIGUSR1")
EXIT_CRASH = 1


def _forward(signum, frame) -> None:
    import psutil  # a dependency of accelerate

    for child in psutil.Process().children():
        try:
            pgid = os.getpgid(child.pid)
            # torchrun starts each worker in a session of its own: signal the group (its dataloader workers too)
            if pgid == child.pid:
                os.killpg(pgid, signum)
            else:
                os.kill(child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def exit_code(codes: list[int]) -> int:
    """The launcher's exit code from the workers' (negative: killed by that signal)."""
    positive = {c for c in codes if c > 0}
    if len(positive) == 1:
        return positive.pop()
    if not positive and codes:  # only signals: the launcher's own SIGTERMs count last
        killed = sorted({-c for c in codes}, key=lambda s: s == signal.SIGTERM)
        return 128 + killed[0]
    return EXIT_CRASH


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    # torchrun's agent handles only the signals listed here (it ends the workers on them); ours are forwarded.
    # (--signals-to-handle is checked with torch 2.13; a torch without it handles SIGTERM and SIGINT itself.)
    if hasattr(args, "signals_to_handle"):
        handled = [s.strip() for s in (args.signals_to_handle or "").split(",") if s.strip()]
        args.signals_to_handle = ",".join(s for s in handled if s not in FORWARDED) or "SIGHUP"
    for name in FORWARDED:
        signal.signal(getattr(signal, name), _forward)
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        code = exit_code(codes)
        if code == EXIT_CRASH:
            print(e.format_msg() if hasattr(e, "format_msg") else str(e), file=sys.stderr)
        print(f"gptresume.launch: workers exited with {sorted(codes)}; exit {code}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
