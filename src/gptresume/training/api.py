"""`gptresume.train(trainer)`: a script's own Trainer as the source of a run (`ScriptSource`), through the start
pipeline (training/start.py, the one the CLI runs) and the protected session (training/session.py).

The Trainer is read, never rebuilt: its `TrainingArguments` and model config are what checkpoints record, its
dataset's content hash is the data fingerprint. A script ends like the CLI: a refusal or bad input prints the
message on stderr and exits 2 (no traceback) unless the caller asked for exceptions (`raise_errors=True`), a
committed stop exits 75 unless `exit_on_stop=False`, and the lines the CLI prints reach the "gptresume" logger.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

from gptresume.errors import UsageError
from gptresume.logs import known_noise_filtered
from gptresume.options import API, Options
from gptresume.resume.plan import ResumePlan, RunSpec
from gptresume.training import distributed
from gptresume.training.outcome import Outcome
from gptresume.training.script import resume_mode, spec_for_trainer
from gptresume.training.start import Inputs, Start, announce, announce_start, finish_complete, start

log = logging.getLogger("gptresume")


def train_protected(trainer, resume="auto", *, exit_on_stop: bool = True, raise_errors: bool = False,
                    data_fingerprint: str | None = None, **keywords) -> Outcome:
    """`gptresume.train`'s body (its docstring is the API's)."""
    with lines_shown():
        try:
            outcome = _train(trainer, resume, data_fingerprint, keywords)
        except UsageError as e:
            if raise_errors:
                raise
            _exit_like_the_cli(e)
    if outcome.status in ("stopped", "rollback", "unhealthy") and exit_on_stop:
        distributed.teardown()  # a live process group can abort the interpreter's exit
        raise SystemExit(outcome.exit_code)
    return outcome


def _train(trainer, resume, data_fingerprint: str | None, keywords: dict) -> Outcome:
    from gptresume.compat import warn_if_unchecked

    _check_is_trainer(trainer)
    options = script_options(trainer, resume, keywords)
    _check_trainer(trainer, options)
    warn_if_unchecked(log)
    source = ScriptSource(trainer, options, data_fingerprint)
    with known_noise_filtered() as noise, start(source, options) as s:  # Transformers' noise, for this call
        noise.resuming = s.checkpoint is not None
        if s.complete:
            return finish_complete(s, source)
        from gptresume.training.session import Session

        session = Session(s, source.say)
        session.attach(trainer)
        announce_start(s, source)
        args = trainer.args
        original_limit = args.save_total_limit
        args.save_total_limit = None  # Trainer's own rotation deletes before the new save is committed
        try:
            outcome = session.run(trainer)
        finally:
            args.save_total_limit = original_limit
        if outcome.status == "complete":
            session.record_complete(outcome)
            if distributed.is_main():
                source.say(f"Training complete at step {outcome.step}; newest checkpoint {outcome.checkpoint}")
        else:
            announce(outcome, source)
    return outcome


def script_options(trainer, resume, keywords: dict) -> Options:
    """The Options of `gptresume.train(trainer, resume, **keywords)`: the keywords checked against the declaration,
    and what the Trainer implies for those not given: keep_last from `save_total_limit` (Transformers' meaning: a
    limit of 0 or less, or None, keeps every checkpoint)."""
    mode, adopt = resume_mode(resume, trainer.args)
    limit = trainer.args.save_total_limit
    keep_last = keywords.get("keep_last", "save_total_limit")
    defaults = {"keep_last": limit if isinstance(limit, int) and limit > 0 else None}
    given = {k: v for k, v in keywords.items() if not (k == "keep_last" and keep_last == "save_total_limit")}
    given["resume"] = mode
    given["adopt"] = bool(adopt or given.get("adopt"))
    return Options.from_keywords(given, defaults)


class ScriptSource:
    """A script's Trainer as the source of a run (training/start.py `Source`): read, never rebuilt."""

    rerun = "Run the same script again"

    def __init__(self, trainer, options: Options, data_fingerprint: str | None = None):
        self.trainer, self.options, self.data_fingerprint = trainer, options, data_fingerprint
        self.run_dir = Path(trainer.args.output_dir)
        self._spec: RunSpec | None = None

    def spec(self) -> RunSpec:
        o = self.options
        keep_best = o.keeps_best({"load_best_model_at_end": self.trainer.args.load_best_model_at_end})
        self._spec = spec_for_trainer(self.trainer, self.data_fingerprint, o.keep_last, keep_best)
        return self._spec

    def load_inputs(self, plan: ResumePlan) -> Inputs:
        from gptresume.modeling import has_dropout

        spec = self._spec
        return Inputs(self.trainer.model, spec.data_fingerprint, spec.train_samples, has_dropout(self.trainer.model))

    def follow(self, plan: ResumePlan) -> Inputs:
        """Nothing to load: every rank holds the script's Trainer (the spec came from rank 0)."""
        return Inputs(self.trainer.model, None, None, False)

    def check(self, plan: ResumePlan, inputs: Inputs) -> None:
        pass

    def write_files(self, plan: ResumePlan, inputs: Inputs) -> None:
        pass  # the script's data and model are its own; the run's books are written by the pipeline

    def complete(self, s: Start) -> None:
        """The trainer gets the final checkpoint's weights and state (a script saves or evaluates `trainer.model`
        next), and the log entry Trainer adds at the end of training, so `trainer.save_state()` writes what an
        uninterrupted run's would."""
        from gptresume.training.outcome import recorded_train_output
        from gptresume.training.trainer import load_finished_checkpoint

        load_finished_checkpoint(self.trainer, s.checkpoint)
        output = recorded_train_output(s.run_dir, s.checkpoint, s.spec.config)
        state = self.trainer.state
        if not any("train_runtime" in e for e in state.log_history):
            state.log_history.append({**output.metrics, "step": state.global_step})

    def complete_hint(self, s: Start) -> str:
        return ("The trainer holds its final model. To train longer: raise max_steps and pass "
                "allow_change=['max_steps'] (the schedule is re-planned); to start over: resume='never', "
                "overwrite=True.")

    def say(self, text: str, level: int = logging.INFO) -> None:
        log.log(level, text)


# ---------------------------------------------------------------- checks before anything is read or written


def _check_is_trainer(trainer) -> None:
    from transformers import Trainer

    if not isinstance(trainer, Trainer):
        raise UsageError(f"{API}(trainer): expects a transformers.Trainer (or a subclass), got "
                         f"{type(trainer).__name__}; build one with Trainer(model=..., args=..., train_dataset=...) "
                         "and pass it instead of calling trainer.train()")


def _check_trainer(trainer, options: Options) -> None:
    """What would make a protected run impossible, refused before anything is read or written."""
    args = trainer.args
    strategy = getattr(args.save_strategy, "value", args.save_strategy)
    if strategy == "no" and not options.saves_by_clock:
        raise UsageError("TrainingArguments(save_strategy='no') never saves a checkpoint, so the run could not be "
                         "resumed; set save_steps (or save_strategy='steps'/'epoch'), or pass every_minutes=")
    from gptresume.config.values import output_dir_problem, train_value_problems

    problems = train_value_problems(args.to_dict(), options.saves_by_clock, prefix="TrainingArguments.")
    from gptresume.remote.url import output_dir_url_problem

    why = (output_dir_url_problem(args.output_dir, "TrainingArguments.output_dir")
           or output_dir_problem(args.output_dir, "TrainingArguments.output_dir"))
    problems += [why] if why else []
    if options.shared_filesystem is False:  # nodes with separate disks: what needs one directory is refused
        from gptresume.remote.url import separate_disks_problems

        problems += separate_disks_problems(args.to_dict(), options.health, train_prefix="TrainingArguments.")
    if options.ledger:  # the sample ledger needs Trainer's own sampler (gptresume/ledger/recording.py)
        from gptresume.ledger.recording import ledger_problems

        problems += ledger_problems(trainer)
    if problems:
        raise UsageError("\n".join(problems))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != args.world_size:
        raise UsageError(f"{launched} processes were launched but the Trainer trains with {args.world_size}: each "
                         "process would train alone on all the data and write the same checkpoint. On a machine "
                         "without a GPU pass TrainingArguments(use_cpu=True) so accelerate sets up DDP over gloo")


# ---------------------------------------------------------------- ending like the CLI


def _exit_like_the_cli(e: UsageError):
    """The CLI's bad-input ending for a script: the message on stderr (rank 0 only: the other ranks got the same
    decision), exit 2, no traceback."""
    if not isinstance(e, distributed.DecidedOnRankZero):
        print("error: " + textwrap.indent(str(e), "  ").lstrip(), file=sys.stderr, flush=True)
    distributed.teardown()
    raise SystemExit(e.exit_code) from None


@contextmanager
def lines_shown():
    """For the length of a `gptresume.train` call, the lines the CLI prints reach a script's console through the
    "gptresume" logger: its level is INFO on rank 0 (WARNING on the others) unless the script set one, and when
    the script configured no logging at all (no handler on the root logger or on "gptresume") a handler on stderr
    shows them. A script silences them with `logging.getLogger("gptresume").setLevel(logging.WARNING)`."""
    logger = logging.getLogger("gptresume")
    level_set = logger.level == logging.NOTSET
    handler = None
    if level_set:
        logger.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        if level_set:
            logger.setLevel(logging.NOTSET)
