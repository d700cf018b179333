"""The protected run: everything gptresume does around `trainer.train()` once a start is accepted
(training/start.py), for every source alike: the callbacks (stop, timed saves, metrics, overrides, commit, health),
the resumable Trainer behaviour, signal handlers, uploads, and what a health event leads to.

    session = Session(start, say)   # start: the accepted Start; say: the source's way to print a line
    session.attach(trainer)         # callbacks and the resumable Trainer class (trainer.py)
    outcome = session.run(trainer)  # trainer.train(resume_from_checkpoint=...), every save committed
    session.record_complete(outcome)

The health decision itself is health/decide.py (pure); `_conclude` here performs it: set aside, protect,
history.jsonl, the remote copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gptresume.checkpoint.files import checkpoint_name
from gptresume.resume.plan import data_stream, loads
from gptresume.rundir import COMPLETE_EVENT, METRICS_NAME, STOPPED_EVENT, append_history
from gptresume.stopping import StopSignal
from gptresume.training import distributed
from gptresume.training.outcome import Outcome, train_output_record

log = logging.getLogger(__name__)


class Session:
    """One protected run of one Trainer, from an accepted Start (which holds the run lock until it closes)."""

    def __init__(self, start, say=print):
        self.start = start
        self.spec, self.plan, self.options = start.spec, start.plan, start.options
        self.say = say
        self._stop = None
        self._commit = None
        self._health = None
        self._uploader = None
        self._remote = None

    @property
    def checkpoint(self) -> Path | None:
        return self.start.checkpoint

    @property
    def remote(self):
        if self._remote is None and self.options.remote:
            from gptresume.remote.url import Remote

            self._remote = Remote(self.options.remote, dict(self.options.remote_options or {}))
        return self._remote

    # ------------------------------------------------------------ the Trainer

    def attach(self, trainer, tokens_per_step: int | None = None) -> None:
        """Add gptresume's callbacks to `trainer` and give it the resumable Trainer behaviour (trainer.py)."""
        from gptresume.checkpoint.async_save import BackgroundSaver
        from gptresume.training.agreement import StepAgreement
        from gptresume.resume.position import StreamSampler
        from gptresume.training.callbacks import CommitCallback, MetricsCallback
        from gptresume.training.health import AutoInterval, HealthCallback, HealthMonitor, make_detector
        from gptresume.training.preemption import StopCallback, StopRequest, TimedSaveCallback
        from gptresume.training.tensorboard import use_run_tensorboard
        from gptresume.training.resume_overrides import ResumeOverrides
        from gptresume.training.trainer import make_resumable

        args, plan, o = trainer.args, self.plan, self.options
        # A streamed dataset has no length and keeps its own position (data/streaming.py): no StreamSampler.
        n = len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else None
        self._stop = StopCallback(StopRequest(), o.stop_at_step)
        keep_best = o.keeps_best(self.spec.train)
        auto = AutoInterval(o, self.spec.run_dir) if o.every == "auto" else None  # its bounds are Options fields
        callbacks = [auto] if auto else []  # first: it replaces the step saves; stops and the final save still save
        callbacks += [self._stop, MetricsCallback(self.spec.run_dir / METRICS_NAME, tokens_per_step)]
        if o.every_minutes:
            callbacks.append(TimedSaveCallback(o.every_minutes))
        stream = data_stream(plan, self.spec, n, args.world_size) if n is not None else None
        monitor, detector = HealthMonitor(), make_detector(o.health, plan.resume_state.get("health"))
        overrides = ResumeOverrides(plan.step, plan.optimizer_values(), plan.schedule_replanned(),
                                    plan.schedule_plan(), set(trainer.get_decay_parameter_names(trainer.model)))
        callbacks.append(overrides)

        def resume_state() -> dict | None:  # what later checkpoints carry so the next resume continues the same
            state = {}
            if overrides.plan is not None:
                state["schedule_plan"] = overrides.plan.to_dict()
            if stream is not None:
                state["stream"] = stream
            if detector.spike is not None:  # the loss window, so a resumed run judges spikes as an unbroken one
                state["health"] = detector.state()
            return state or None

        nodes = self.start.nodes
        if o.remote and nodes is not None and nodes.leader:  # separate disks: every node sends its part
            from gptresume.remote.node_uploader import NodeUploader

            self._uploader = NodeUploader(self.remote, nodes.run_dir, nodes.role(), o.remote_keep_last,
                                          keep_best=keep_best).start()
        elif o.remote and distributed.is_main():
            from gptresume.remote.uploader import Uploader

            self._uploader = Uploader(self.remote, self.spec.run_dir, o.remote_keep_last,
                                      keep_best=keep_best).start()
        seed = args.data_seed if args.data_seed is not None else args.seed
        sampler = StreamSampler(n, seed, stream["offset"]) if stream else None
        ledger = None
        if o.ledger:  # the sample ledger (gptresume/ledger/): its step callback before the commit sees the save
            from gptresume.ledger.recording import start_ledger

            sampler, ledger_callbacks, ledger = start_ledger(trainer, plan, self.spec, sampler, seed)
            callbacks += ledger_callbacks
        self._commit = CommitCallback(self.spec, o.keep_last, keep_best, resume_state, self._uploader, ledger)
        callbacks.append(self._commit)  # sees every other save decision
        if auto:
            callbacks.append(auto.probe)  # after the commit: the pause it measures includes it
        self._health = HealthCallback(monitor, detector)
        callbacks.append(self._health)  # the very last: it vetoes a save of a bad step
        callbacks.insert(0, StepAgreement(callbacks))  # first: each step's one cross-rank agreement (agreement.py)
        for cb in callbacks:
            trainer.add_callback(cb)
        make_resumable(trainer, stream=sampler,
                       async_saver=BackgroundSaver() if o.async_save else None,
                       async_commit=self._commit if o.async_save else None, streaming=n is None,
                       health=monitor)
        use_run_tensorboard(trainer, self.spec.run_dir)  # one TensorBoard curve across resumes
        from gptresume.training.trackers import tracker_resume, use_continued_trackers

        use_continued_trackers(trainer, self.spec.run_dir, tracker_resume(plan))  # one wandb / MLflow run

    def run(self, trainer) -> Outcome:
        """Train (or resume) until done or stopped; every save committed, an in-flight async save finished."""
        from gptresume.checkpoint.async_save import finishing_saves

        ckpt = self.checkpoint
        stop = self._stop.request
        stop.install()
        try:
            with finishing_saves(trainer):  # an asynchronous save in flight is committed before we go on
                output = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        except StopSignal as early:  # before this process's first step (a stream's start-up, eval_on_start):
            self._finish_uploads()   # nothing new to commit; the resumed checkpoint stays the newest (stopping.py)
            if distributed.is_main():
                append_history(self.spec.run_dir, STOPPED_EVENT, step=trainer.state.global_step, reason=early.reason)
            return Outcome("stopped", trainer.state.global_step, ckpt, ckpt, early.reason, None,
                           self.options.stop_code())
        except BaseException:
            if self._uploader is not None:  # a crash or a second Ctrl-C does not wait for uploads
                self._uploader.close()
            raise
        finally:
            stop.uninstall()
        self._finish_uploads()  # done or stopped: the uploads of the newest checkpoints, then retention
        step = trainer.state.global_step
        run_dir = self.spec.run_dir
        newest = run_dir / checkpoint_name(step)
        if self._health is not None and self._health.event is not None:
            return self._conclude(trainer, self._health.event, stop.reason, output)
        if self._stop.stopped_at is not None:
            if distributed.is_main():
                append_history(run_dir, STOPPED_EVENT, step=step, reason=stop.reason)
            return Outcome("stopped", step, newest, ckpt, stop.reason, output, self.options.stop_code())
        return Outcome("complete", step, newest, ckpt, None, output)

    def _finish_uploads(self) -> None:
        """Wait (up to remote_wait_seconds) for pending uploads, then let retention delete the local checkpoints
        whose uploads were verified meanwhile."""
        uploader, self._uploader = self._uploader, None
        if uploader is None:
            return
        from gptresume.checkpoint import apply_retention, list_checkpoints
        from gptresume.checkpoint.files import MANIFEST_NAME

        o = self.options
        if uploader.pending:
            self.say(f"Waiting up to {o.remote_wait_seconds:g}s for uploads to {o.remote}: "
                     f"{', '.join(uploader.pending)}")
        if not uploader.drain(o.remote_wait_seconds):
            log.warning("Uploads to %s still pending after %gs: %s. They stay committed locally and are uploaded "
                        "by the next start of this run.", o.remote, o.remote_wait_seconds, ", ".join(uploader.pending))
        uploader.close()
        committed = [p for p in list_checkpoints(self.spec.run_dir) if (p / MANIFEST_NAME).is_file()]
        if committed:
            apply_retention(self.spec.run_dir, o.keep_last, committed[-1], o.keeps_best(self.spec.train),
                            uploader.may_delete)

    def record_complete(self, outcome: Outcome) -> None:
        """history.jsonl's "complete" line, with what `trainer.train()` returned: a re-run of the finished run gives
        it back (training/outcome.py `recorded_train_output`)."""
        if distributed.is_main():
            record = train_output_record(outcome.train_output)
            append_history(self.spec.run_dir, COMPLETE_EVENT, step=outcome.step,
                           **({"train_output": record} if record else {}))

    # ------------------------------------------------------------ after a health event

    def _conclude(self, trainer, event, stop_reason: str | None, output) -> Outcome:
        """Stop (exit 1, the last good checkpoint named and protected) or roll back (history.jsonl records it; the
        caller resumes), per health.on_nan / on_spike and max_rollbacks (health/decide.py decides). Rank 0 reads,
        decides and writes; every rank gets the same Outcome."""
        status, step, checkpoint, reason = distributed.on_main(self._conclude_on_main, trainer, event, stop_reason)
        return Outcome(status, step, Path(checkpoint) if checkpoint else None, self.checkpoint, reason, output,
                       self.options.stop_code())  # a rollback left for a re-run reports like a stop

    def _conclude_on_main(self, trainer, event, stop_reason: str | None) -> tuple:
        from gptresume.checkpoint import protect
        from gptresume.health.decide import (
            ROLLBACK,
            STOPPED,
            Candidate,
            decide,
            first_step,
            rollback_wanted,
        )
        from gptresume.health.rollback import (
            ROLLBACK_EVENT,
            UNHEALTHY_EVENT,
            newest_good,
            rollback_target,
            set_aside_after,
        )
        from gptresume.rundir import read_history

        health, run_dir = self.options.health, self.spec.run_dir
        history = read_history(run_dir)
        target = good = None
        if rollback_wanted(event, health, history):
            found = rollback_target(run_dir, first_step(event), health.rollback_steps, check=loads(self.spec))
            target = Candidate(found.path, found.step) if found is not None else None
        if target is None:
            good = newest_good(run_dir, first_step(event))
        args = trainer.args
        d = decide(event, health, history, target=target, good=good, stop_reason=stop_reason,
                   global_batch=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)
        if d.status in (ROLLBACK, STOPPED):
            moved = [p.name for p in set_aside_after(run_dir, d.target_step)]
            protect(run_dir, d.checkpoint, d.protect_reason)
            append_history(run_dir, ROLLBACK_EVENT, **d.rollback_record(moved))
            if self.remote is not None:  # the bucket must not give back what was set aside (remote/rollback.py)
                from gptresume.remote.rollback import after_rollback

                after_rollback(self.remote, run_dir, [run_dir / name for name in moved])
            message = d.message(moved)
            self.say(message)
            if d.status == STOPPED:  # a stop was asked for as well: the rollback is recorded, the re-run continues it
                append_history(run_dir, STOPPED_EVENT, **d.stopped_record)
                return STOPPED, d.step, str(d.checkpoint), stop_reason
            return ROLLBACK, d.step, str(d.checkpoint), message
        if d.checkpoint is not None:
            protect(run_dir, d.checkpoint, d.protect_reason)
            if self.remote is not None:  # the bucket keeps it too, even if this disk is lost (remote/books.py)
                from gptresume.remote.books import after_protect

                after_protect(self.remote, run_dir)
        append_history(run_dir, UNHEALTHY_EVENT, **d.unhealthy_record)
        return d.status, d.step, str(d.checkpoint) if d.checkpoint else None, d.message()
