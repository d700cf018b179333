"""Exit codes, the exceptions that carry them (so every layer can refuse cleanly without a traceback), and the
classification of storage failures (full disk, read-only, permissions), which are neither bugs nor bad input."""

import errno
import os

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_UNHEALTHY = 1  # a NaN or a loss spike stopped training (health.on_nan: stop); issue 16 asks for exit 1
EXIT_STOPPED = 75  # EX_TEMPFAIL: a checkpoint was committed; re-run the same command to resume.
# Another code for a committed stop, for schedulers that restart only some codes (Kubeflow: >= 128).
STOP_EXIT_CODE_ENV = "GPTRESUME_STOP_EXIT_CODE"
# Codes a committed stop may not take: success, an internal error, bad input (a scheduler must tell them apart).
RESERVED_EXIT_CODES = {EXIT_OK: "success", EXIT_INTERNAL: "an internal error", EXIT_USAGE: "bad input"}


class UsageError(Exception):
    """Bad input, bad config or a refused resume: exit 2, one clear message, nothing changed on disk."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """One or more config problems, reported together."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source}: {len(self.problems)} {noun}:\n{lines}")


class ResumeRefused(UsageError):
    """The config (or data) differs from what the checkpoint was trained with in a way that would make the resumed
    run differ from an uninterrupted one. `changes` holds every differing field (gptresume.resume.changes.Change);
    the message is the table `gptresume train` prints, with the `allow_change` names that would accept them."""

    def __init__(self, message: str, changes: list | None = None):
        super().__init__(message)
        self.changes = list(changes or [])


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




def resolve_stop_exit_code(value: int | None, where: str = "stop_exit_code") -> int:
    """The exit code of a committed stop: `value`, else $GPTRESUME_STOP_EXIT_CODE, else 75. Must be 3-255 (0, 1
    and 2 mean success, a crash and bad input to every scheduler)."""
    if value is None:
        text = os.environ.get(STOP_EXIT_CODE_ENV, "").strip()
        if not text:
            return EXIT_STOPPED
        where = STOP_EXIT_CODE_ENV
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{where}={text!r}: not an integer; give an exit code from 3 to 255") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise UsageError(f"{where}: {value!r} is not an exit code; give one from 3 to 255")
    if value in RESERVED_EXIT_CODES:
        raise UsageError(f"{where}: {value} already means {RESERVED_EXIT_CODES[value]}; a committed stop needs its "
                         "own code (75 by default; 143 for schedulers that restart only codes >= 128)")
    return value
