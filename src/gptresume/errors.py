"""Exceptions that carry the CLI exit code, so every layer can refuse cleanly without printing tracebacks."""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_STOPPED = 75  # EX_TEMPFAIL: a checkpoint was committed; re-run the same command to resume.


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
