"""`Options`: how a run resumes, commits and stops, declared once for every entry point.

- The `checkpoint:` section of a YAML config is the part Options inherits from `config.schema.CheckpointConfig`
  (the same names and defaults: what config.yaml and every manifest record), and `health:` is its `health` field.
- The flags of `gptresume train` are the fields declared with `flag(...)`: cli/train.py builds them from here, the
  field's docstring being the flag's help.
- The keywords of `gptresume.train(trainer, resume, **options)` are every field, checked against this declaration
  (`from_keywords`: an unknown name gets the closest one, a wrong type names the keyword).
- `problems()` is the one validation, worded for whichever of them the option came from.

Adding an option is one edit: its field with a docstring (in CheckpointConfig when the YAML should have it), and
its check in the `problems` of that class; the API keyword, the flag (if declared with one), the YAML key and the
README table (generated: `python -m gptresume.options`, checked by tests/unit/test_options.py) follow.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass, field
from functools import cache

from gptresume.config.schema import CheckpointConfig, HealthConfig
from gptresume.errors import UsageError, resolve_stop_exit_code

API = "gptresume.train"
_MISSING = object()


def flag(name: str, metavar: str | None = None, type: type | None = None) -> dict:
    """Field metadata: this option is also the `gptresume train` flag `name`."""
    return {"flag": name, "metavar": metavar, "type": type}


@dataclass
class Options(CheckpointConfig):
    """How a run resumes, commits and stops. The fields inherited from CheckpointConfig are the YAML `checkpoint:`
    section (same names, same defaults); the others are flags of `gptresume train` or keywords of
    `gptresume.train` only."""

    resume: str = field(default="auto", metadata=flag("--resume", "auto|never|must|PATH"))
    """Where training starts: auto (the newest valid checkpoint, else a new run), never (a new run; refused if the
    run has checkpoints, unless overwrite), must (refused unless there is a valid checkpoint), or a checkpoint
    directory."""
    allow_change: list[str] = field(default_factory=list, metadata=flag("--allow-change", "KEY"))
    """Changed fields to accept on resume and apply correctly (learning_rate, max_steps,
    per_device_train_batch_size, ...), or classes of them: optimizer, schedule, batch, data. Without it such a change
    is refused with a table of differences."""
    allow_partial: bool = field(default=False, metadata=flag("--allow-partial"))
    """Resume from a checkpoint that lacks optimizer, scheduler or RNG state (the run will differ from an
    uninterrupted one; the warning says how)."""
    overwrite: bool = field(default=False, metadata=flag("--overwrite"))
    """With resume never: delete the run's checkpoints, metrics and final model first."""
    adopt: bool = field(default=False, metadata=flag("--adopt"))
    """With resume PATH: take over a checkpoint written by a plain Transformers script (no manifest) after checking
    that its files load; PATH is copied into the run, never written."""
    stop_at_step: int | None = field(default=None, metadata=flag("--stop-at-step", "N", int))
    """Commit a checkpoint at this step, then stop as if preempted (exit 75): for splitting a run into chunks and
    for testing resume."""
    stop_exit_code: int | None = field(default=None, metadata=flag("--stop-exit-code", "N", int))
    """The exit code after a committed stop, instead of 75 (default: $GPTRESUME_STOP_EXIT_CODE, else 75); e.g. 143
    for Kubeflow's restartPolicy: ExitCode, which restarts only codes >= 128."""
    health: HealthConfig = field(default_factory=HealthConfig)
    """What a NaN or a loss spike does (the YAML `health:` section; in Python a HealthConfig or a dict of its
    fields)."""

    # ------------------------------------------------------------ derived values

    def keeps_best(self, train: dict) -> bool:
        """keep_best, implied by TrainingArguments.load_best_model_at_end: the checkpoint Trainer loads at the end
        must survive keep_last retention."""
        return bool(self.keep_best or train.get("load_best_model_at_end") is True)

    def stop_code(self) -> int:
        """The exit code of a committed stop: stop_exit_code, else $GPTRESUME_STOP_EXIT_CODE, else 75."""
        return resolve_stop_exit_code(self.stop_exit_code)

    @property
    def saves_by_clock(self) -> bool:
        """every_minutes or every: auto: step saves may be off (save_strategy "no")."""
        return bool(self.every_minutes) or self.every == "auto"

    # ------------------------------------------------------------ validation

    def problems(self, api: bool = False) -> list[str]:
        """Every problem, worded for the source: YAML keys and flags (`checkpoint.keep_last`, `--stop-at-step`), or
        the keywords of gptresume.train (`api`)."""
        out = [_for_source(p, self, api) for p in CheckpointConfig.problems(self, "checkpoint")]
        health = self.health if isinstance(self.health, HealthConfig) else HealthConfig()
        out += [_for_source(p, self, api) for p in health.problems("health")]
        name = (lambda f, v=_MISSING: _api_name(f, v)) if api else _cli_name
        if not isinstance(self.resume, str) or not self.resume:
            out.append(f"{name('resume', self.resume)}: give auto, never, must or a checkpoint directory")
        if self.overwrite and self.resume != "never":
            never = "resume='never'" if api else "--resume never"
            out.append(f"{name('overwrite', True)} only goes with {never} (it deletes the run's checkpoints)")
        if self.stop_at_step is not None and (not _is_int(self.stop_at_step) or self.stop_at_step < 1):
            out.append(f"{name('stop_at_step', self.stop_at_step)}: must be at least 1")
        try:
            resolve_stop_exit_code(self.stop_exit_code, name("stop_exit_code", self.stop_exit_code))
        except UsageError as e:
            out.append(str(e))
        out += self._allow_change_problems(api)
        return out

    def _allow_change_problems(self, api: bool) -> list[str]:
        value = self.allow_change
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) for v in value):
            example = [value] if isinstance(value, str) else ["learning_rate"]
            return [f"{_api_name('allow_change', value) if api else '--allow-change'}: give a list of field or class "
                    f"names, e.g. allow_change={example!r}"]
        if not value:
            return []
        from gptresume.resume.changes import allow_keys

        try:  # every name checked now, also on a new run: a typo never allows nothing in silence
            allow_keys(list(value), set(), where=f"{API}(allow_change=[{{!r}}])" if api else "--allow-change {}")
        except UsageError as e:
            return [str(e)]
        return []

    # ------------------------------------------------------------ the sources

    @classmethod
    def of(cls, checkpoint: CheckpointConfig, health: HealthConfig | None = None, **flags) -> Options:
        """The options of a YAML config's `checkpoint:` and `health:` sections, with the flags given."""
        values = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(CheckpointConfig)}
        return cls(**values, health=health if health is not None else HealthConfig(), **flags)

    @classmethod
    def from_keywords(cls, keywords: dict, defaults: dict | None = None) -> Options:
        """The options of `gptresume.train(trainer, **keywords)`: unknown names (with the closest one), types and
        values checked, every problem reported together as one UsageError. `defaults` replace the declared defaults
        of keywords not given (a script's Trainer implies some: keep_last from save_total_limit)."""
        hints = option_types()
        names = sorted(hints)
        problems, values = [], dict(defaults or {})
        for key, value in keywords.items():
            if key not in hints:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                problems.append(f"{API}(): unknown keyword {key!r}" + (f"; did you mean {close[0]!r}?" if close
                                                                      else f"; the options are {', '.join(names)}"))
                continue
            value, why = _checked(key, value, hints[key])
            if why:
                problems.append(why)
            else:
                values[key] = value
        if problems:
            raise UsageError("\n".join(problems))
        options = cls(**values)
        problems = options.problems(api=True)
        if problems:
            raise UsageError("\n".join(problems))
        return options


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _api_name(name: str, value=_MISSING) -> str:
    return f"{API}({name}={value!r})" if value is not _MISSING else f"{name}="


def _cli_name(name: str, value=_MISSING) -> str:
    """How the CLI names an option: its flag, else its YAML key."""
    return OPTION_FIELDS[name].metadata.get("flag") or f"checkpoint.{name}"


def _for_source(problem: str, options: Options, api: bool) -> str:
    """A problem found by CheckpointConfig / HealthConfig (worded for YAML) as the API names the keyword."""
    if not api:
        return problem
    lead = re.match(r"(checkpoint|health)\.(\w+)", problem)
    if lead and lead.group(1) == "checkpoint" and lead.group(2) in OPTION_FIELDS:
        problem = _api_name(lead.group(2), getattr(options, lead.group(2))) + problem[lead.end():]
    elif lead:  # a health field: health=dict(...)
        problem = f"{API}(health=...): {lead.group(2)}" + problem[lead.end():]
    problem = re.sub(r"\bcheckpoint\.(\w+)", lambda m: f"{m.group(1)}=", problem)
    return re.sub(r"\bnull\b", "None", problem)


def _checked(key: str, value, hint) -> tuple[object, str | None]:
    """(value, None) when `value` fits the field's annotation (a tuple for a list is taken as one), else
    (value, the problem naming the keyword)."""
    from gptresume.config.types import _type_name, check_type

    if key == "health":
        if isinstance(value, HealthConfig):
            return value, None
        if isinstance(value, dict):
            from gptresume.config.load import _build_dataclass

            built, errs = _build_dataclass(HealthConfig, value, "health")
            return built, (f"{API}(health=...): " + "; ".join(e.removeprefix("health.") for e in errs)) if errs \
                else None
        return value, f"{_api_name(key, value)}: give a gptresume.config.schema.HealthConfig or a dict of its fields"
    if key == "allow_change" and isinstance(value, tuple):
        value = list(value)
    if key == "allow_change" and isinstance(value, str):
        return value, (f"{_api_name(key, value)}: give a list of field or class names, e.g. "
                       f"allow_change={[value]!r} (a string would be read character by character)")
    ok, coerced = check_type(value, hint)
    if not ok:
        return value, f"{_api_name(key, value)}: expected {_type_name(hint)}".replace("null", "None")
    return coerced, None


@cache
def option_types() -> dict:
    return typing.get_type_hints(Options)


OPTION_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
FLAG_FIELDS = {name: f for name, f in OPTION_FIELDS.items() if "flag" in f.metadata}


@cache
def option_docs() -> dict[str, str]:
    """Field name -> its docstring (the string literal after it in the class body), for Options and the classes
    it inherits from; one paragraph, whitespace normalized."""
    docs = {}
    for klass in reversed(Options.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def add_flags(parser, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> None:
    """The `gptresume train` flags of the options declared with one (`only` those, less `skip`); help from the
    field's docstring."""
    docs = option_docs()
    for name, f in FLAG_FIELDS.items():
        if (only is not None and name not in only) or name in skip:
            continue
        meta, help_text = f.metadata, docs[name].replace("%", "%%")
        if f.type in ("bool",) or f.default is False:
            parser.add_argument(meta["flag"], dest=name, action="store_true", help=help_text)
        elif f.default_factory is list:
            parser.add_argument(meta["flag"], dest=name, action="append", default=[], metavar=meta["metavar"],
                                help=help_text)
        else:
            parser.add_argument(meta["flag"], dest=name, default=f.default, metavar=meta["metavar"],
                                type=meta["type"] or str, help=help_text)


def flag_values(args) -> dict:
    """The options among parsed `gptresume train` arguments."""
    return {name: getattr(args, name) for name in FLAG_FIELDS}


def _default_text(f) -> str:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "defaults" if dataclasses.is_dataclass(value) else repr(value)
    return repr(f.default)


def options_table() -> str:
    """The README's table of options (Markdown), generated from the declaration."""
    docs = option_docs()
    rows = ["| option | default | YAML / flag | what it does |", "|---|---|---|---|"]
    for name, f in OPTION_FIELDS.items():
        where = f.metadata.get("flag") or ("`health:`" if name == "health" else f"`checkpoint.{name}`")
        where = f"`{where}`" if not where.startswith("`") else where
        rows.append(f"| `{name}` | `{_default_text(f)}` | {where} | {docs[name].replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(options_table())
