"""`gptresume.train(trainer)`: the protected run (session.py) for a Trainer a script built itself."""

from __future__ import annotations

import logging
import os

from gptresume.errors import UsageError, resolve_stop_exit_code
from gptresume.remote.url import remote_problems
from gptresume.training import distributed
from gptresume.training.script import resume_mode, spec_for_trainer
from gptresume.options import Options
from gptresume.training.outcome import Outcome
from gptresume.training.session import Session

log = logging.getLogger("gptresume")


def train_protected(trainer, *, resume, allow_change, allow_partial, keep_last, keep_best, every_minutes,
                    async_save, stop_at_step, exit_on_stop, data_fingerprint, stop_exit_code=None, remote=None,
                    remote_options=None, remote_keep_last=None, remote_wait_seconds=120.0) -> Outcome:
    from gptresume.compat import warn_if_unchecked
    from gptresume.modeling import has_dropout

    args = trainer.args
    _check_trainer(trainer, every_minutes)
    stop_exit_code = resolve_stop_exit_code(stop_exit_code)
    problems = remote_problems(remote, remote_options, remote_keep_last, prefix="gptresume.train()")
    if problems:
        raise UsageError("\n".join(problems))
    warn_if_unchecked(log)
    if keep_last == "save_total_limit":
        keep_last = args.save_total_limit
    if keep_best is None:
        keep_best = bool(args.load_best_model_at_end)
    mode, adopt = resume_mode(resume, args)
    options = Options(resume=mode, allow_change=allow_change, allow_partial=allow_partial, adopt=adopt,
                      keep_last=keep_last, keep_best=keep_best, every_minutes=every_minutes, async_save=async_save,
                      stop_at_step=stop_at_step, stop_exit_code=stop_exit_code, remote=remote,
                      remote_options=dict(remote_options or {}), remote_keep_last=remote_keep_last,
                      remote_wait_seconds=remote_wait_seconds)
    world_size = args.world_size
    with Session(None, options) as session:

        def decide():  # rank 0: lock, plan, data and model checks, the run's books
            session.spec = spec_for_trainer(trainer, data_fingerprint, keep_last, keep_best)
            session.lock()
            session.decide(world_size)
            session.check_inputs(has_dropout(trainer.model))
            complete = session.is_complete()
            if not complete:
                session.prepare_run_dir(world_size)
            return session.spec, session.plan, complete

        session.spec, session.plan, complete = distributed.on_main(decide)
        if complete:
            return _already_complete(trainer, session)
        if session.checkpoint is not None:
            log.info("Resuming from %s (step %d)", session.checkpoint, session.plan.step)
        session.attach(trainer)
        original_limit = args.save_total_limit
        args.save_total_limit = None  # Trainer's own rotation deletes before the new save is committed
        try:
            outcome = session.run(trainer)
        finally:
            args.save_total_limit = original_limit
        if outcome.stopped:
            log.warning("Stopped (%s) at step %d: %s is committed. Run the same script again to resume.",
                        outcome.reason, outcome.step, outcome.checkpoint)
        elif outcome.status == "rollback":  # a script's Trainer is not rebuilt here: its re-run continues the rollback
            log.warning("%s. Run the same script again to continue from it.", outcome.reason)
        elif outcome.status == "unhealthy":
            log.error("%s", outcome.reason)
        else:
            session.record_complete(outcome.step)
    if (outcome.stopped or outcome.status in ("rollback", "unhealthy")) and exit_on_stop:
        distributed.teardown()  # a live process group can abort the interpreter's exit
        raise SystemExit(outcome.exit_code)
    return outcome


def _check_trainer(trainer, every_minutes) -> None:
    """What would make a protected run impossible, refused before anything is read or written."""
    from transformers import Trainer

    if not isinstance(trainer, Trainer):
        raise UsageError(f"gptresume.train expects a transformers.Trainer, got {type(trainer).__name__}")
    args = trainer.args
    strategy = getattr(args.save_strategy, "value", args.save_strategy)
    if strategy == "no" and not every_minutes:
        raise UsageError("TrainingArguments(save_strategy='no') never saves a checkpoint, so the run could not be "
                         "resumed; set save_steps (or save_strategy='steps'/'epoch'), or pass every_minutes=")
    from gptresume.config.values import output_dir_problem, train_value_problems

    problems = train_value_problems(args.to_dict(), every_minutes, prefix="TrainingArguments.")
    from gptresume.remote.url import output_dir_url_problem

    why = (output_dir_url_problem(args.output_dir, "TrainingArguments.output_dir")
           or output_dir_problem(args.output_dir, "TrainingArguments.output_dir"))
    problems += [why] if why else []
    if problems:
        raise UsageError("\n".join(problems))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != args.world_size:
        raise UsageError(f"{launched} processes were launched but the Trainer trains with {args.world_size}: each "
                         "process would train alone on all the data and write the same checkpoint. On a machine "
                         "without a GPU pass TrainingArguments(use_cpu=True) so accelerate sets up DDP over gloo")


def _already_complete(trainer, session: Session) -> Outcome:
    """The newest checkpoint reached max_steps: load it into the trainer (a script may save or evaluate
    `trainer.model` next) and train nothing."""
    from gptresume.checkpoint import apply_retention
    from gptresume.rundir import remove_leftovers, run_lock
    from gptresume.training.trainer import load_finished_checkpoint

    ckpt = session.checkpoint
    if distributed.is_main():  # finish what a kill during the last commit's retention left
        with run_lock(session.spec.run_dir):
            remove_leftovers(session.spec.run_dir)
            guard = None
            if session.options.remote:  # a checkpoint without a verified upload stays (remote/ledger.py)
                from gptresume.remote.ledger import Ledger

                guard = Ledger(session.spec.run_dir, session.remote.url).may_delete
            apply_retention(session.spec.run_dir, session.options.keep_last, ckpt, session.options.keep_best, guard)
    load_finished_checkpoint(trainer, ckpt)
    log.warning("%s already reached max_steps (step %d): nothing to train; the trainer holds its model. To train "
                "longer, raise max_steps and pass allow_change=['max_steps'].", ckpt, session.plan.step)
    return Outcome("already complete", session.plan.step, ckpt, ckpt)
