"""The protected run: everything gptresume does around `trainer.train()`, for the Python API (`gptresume.train`)
and the CLI (`gptresume train CONFIG`) alike. One implementation of the lock, the resume plan, the commit of
every save, retention, preemption and the run directory's books.

The phases, in order (rank 0 takes each decision before training and shares it with every rank):

1. `lock()`      the run lock, before any heavy work: a second trainer on the same run is refused at once.
2. `decide()`    the resume plan: newest verified checkpoint (or the one asked for), the config compared with
                 the checkpoint's, refusals with the table of differences.
3. `check_inputs(data_fingerprint, dropout)`   what needs loaded data and model: changed data, eval cadence.
4. `prepare_run_dir()`   --overwrite, adoption, history.jsonl, metrics.jsonl trimmed to the resumed step.
5. `attach(trainer)`     callbacks (stop, timed saves, metrics, overrides, commit) and the resumable Trainer class.
6. `run(trainer)`        signal handlers installed, `trainer.train(resume_from_checkpoint=...)`, saves finished.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from gptresume.resume.plan import RunSpec, ResumePlan, check_inputs, data_stream, loads, plan_resume, report_changes
from gptresume.rundir import (
    LOCK_NAME,
    METRICS_NAME,
    announce_lock_holder,
    append_history,
    clear_run,
    remove_leftovers,
    run_lock,
    trim_metrics,
)
from gptresume.health.goodput import process_start_time
from gptresume.training import distributed
from gptresume.training.outcome import Outcome
from gptresume.options import Options

log = logging.getLogger(__name__)


class Session:
    """One protected run of one Trainer. Use as a context manager: the run lock is released on exit."""

    def __init__(self, spec: RunSpec, options: Options):
        self.spec = spec
        self.options = options
        self.plan: ResumePlan | None = None
        self._held = ExitStack()
        self._locked = False
        self._stop = None
        self._commit = None
        self._health = None
        self._uploader = None
        self._remote = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()

    @property
    def checkpoint(self) -> Path | None:
        return self.plan.checkpoint.path if self.plan and self.plan.checkpoint else None

    # ------------------------------------------------------------ phases before training (rank 0 only: the callers
    # run them inside `distributed.on_main`, so the other ranks get the verdict)

    def lock(self) -> None:
        """Take the run lock (held until the session ends) before any heavy work, so a second trainer on a busy
        run is refused at once. A run that never held the lock (no lock file yet: a new run directory, or one a
        plain Trainer wrote) is locked when it is first written (`prepare_run_dir`), so bad input leaves its
        directory exactly as it was."""
        if (self.spec.run_dir / LOCK_NAME).is_file():
            self._take_lock()

    def _take_lock(self) -> None:
        if not self._locked:
            self._held.enter_context(run_lock(self.spec.run_dir, announce=False))
            self._locked = True

    def decide(self, world_size: int) -> ResumePlan:
        o = self.options
        # a checkpoint whose state would not load (resume/plan.py) is skipped like an invalid one
        check = loads(self.spec)
        if o.remote:
            self._check_remote()
            self._fetch_remote(check)
        self.plan = plan_resume(self.spec, o.resume, o.overwrite, o.allow_partial, o.allow_change, o.adopt,
                                world_size, check=check)
        if self.plan.checkpoint is not None and not self.plan.adopt:  # a rollback to it skips data (health/)
            from gptresume.health.rollback import pending_skip
            from gptresume.rundir import read_history

            self.plan.skip_samples = pending_skip(read_history(self.spec.run_dir), self.plan.step)
        return self.plan

    @property
    def remote(self):
        if self._remote is None and self.options.remote:
            from gptresume.remote.url import Remote

            self._remote = Remote(self.options.remote, dict(self.options.remote_options or {}))
        return self._remote

    def _check_remote(self) -> None:
        """The storage check (write, read back, delete a probe), before anything is written locally."""
        from gptresume.remote.probe import check_remote

        check_remote(self.remote)

    def _fetch_remote(self, check) -> None:
        """No usable local checkpoint (a new machine, a wiped disk): download the newest valid remote one."""
        from gptresume.checkpoint import newest_valid
        from gptresume.remote.fetch import fetch_newest_valid
        from gptresume.remote.transfer import remote_checkpoints

        if self.options.resume not in ("auto", "must") or newest_valid(self.spec.run_dir, check)[0] is not None:
            return
        if not remote_checkpoints(self.remote):
            return
        self._take_lock()
        fetch_newest_valid(self.remote, self.spec.run_dir)

    def check_inputs(self, dropout: bool) -> None:
        """Changed data (by `spec.data_fingerprint`) and, with dropout on, a changed eval cadence."""
        check_inputs(self.plan, self.spec.data_fingerprint, dropout)

    def is_complete(self) -> bool:
        return self.plan.is_complete(self.spec)

    def prepare_run_dir(self, world_size: int, write_inputs=None) -> None:
        """Report changes, clear (--overwrite), adopt, the caller's own files (`write_inputs`: the CLI's
        config.yaml, tokenizer and data cache), metrics trimmed to the resumed step, and the history line."""
        plan, spec = self.plan, self.spec
        self._take_lock()
        announce_lock_holder(spec.run_dir)
        remove_leftovers(spec.run_dir)  # temporaries of a killed process (rundir.TEMPORARIES)
        report_changes(plan)
        if plan.overwrite:
            clear_run(spec.run_dir)
        if plan.adopt:
            from gptresume.resume.adopt import adopt

            adopt(plan.checkpoint, spec, world_size)
        if write_inputs is not None:
            write_inputs()
        trim_metrics(spec.run_dir / METRICS_NAME, plan.step)
        append_history(
            spec.run_dir, "resume" if plan.checkpoint else "start",
            checkpoint=str(plan.checkpoint.path) if plan.checkpoint else None, step=plan.step,
            skipped={s.name: s.faults for s in plan.skipped},
            changes=[{"key": c.key, "old": c.old, "new": c.new, "class": c.kind, "note": c.note}
                     for c in plan.changes],
            adopted=plan.adopt, config_fingerprint=spec.fingerprint(), data_fingerprint=spec.data_fingerprint,
            argv=sys.argv[1:], launched=process_start_time(), **({"skip_samples": plan.skip_samples}
                                                                  if plan.skip_samples else {}))

    # ------------------------------------------------------------ the Trainer

    def attach(self, trainer, tokens_per_step: int | None = None) -> None:
        """Add gptresume's callbacks to `trainer` and give it the resumable Trainer behaviour (trainer.py)."""
        from gptresume.checkpoint.async_save import BackgroundSaver
        from gptresume.resume.position import StreamSampler
        from gptresume.training.callbacks import CommitCallback, MetricsCallback
        from gptresume.training.health import AutoInterval, HealthCallback, HealthMonitor, make_detector
        from gptresume.training.preemption import StopCallback, StopRequest, TimedSaveCallback
        from gptresume.training.tensorboard import use_run_tensorboard
        from gptresume.training.trainer import ResumeOverrides, make_resumable

        args, plan, o = trainer.args, self.plan, self.options
        # A streamed dataset has no length and keeps its own position (data/streaming.py): no StreamSampler.
        n = len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else None
        self._stop = StopCallback(StopRequest(), o.stop_at_step)
        auto = AutoInterval(o.auto_interval, self.spec.run_dir) if o.auto_interval is not None else None
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

        if o.remote and distributed.is_main():
            from gptresume.remote.uploader import Uploader

            self._uploader = Uploader(self.remote, self.spec.run_dir, o.remote_keep_last).start()
        self._commit = CommitCallback(self.spec, o.keep_last, o.keep_best, resume_state, self._uploader)
        callbacks.append(self._commit)  # sees every other save decision
        if auto:
            callbacks.append(auto.probe)  # after the commit: the pause it measures includes it
        self._health = HealthCallback(monitor, detector)
        callbacks.append(self._health)  # the very last: it vetoes a save of a bad step
        for cb in callbacks:
            trainer.add_callback(cb)
        seed = args.data_seed if args.data_seed is not None else args.seed
        make_resumable(trainer, stream=StreamSampler(n, seed, stream["offset"]) if stream else None,
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
        except BaseException:
            if self._uploader is not None:  # a crash or a second Ctrl-C does not wait for uploads
                self._uploader.close()
            raise
        finally:
            stop.uninstall()
        self._finish_uploads()  # done or stopped: the uploads of the newest checkpoints, then retention
        step = trainer.state.global_step
        run_dir = self.spec.run_dir
        newest = run_dir / f"checkpoint-{step}"
        if self._health is not None and self._health.event is not None:
            from gptresume.training.health import conclude

            return conclude(self, trainer, self._health.event, stop.reason, output)
        if self._stop.stopped_at is not None:
            if distributed.is_main():
                append_history(run_dir, "stopped", step=step, reason=stop.reason)
            return Outcome("stopped", step, newest, ckpt, stop.reason, output, self.options.stop_exit_code)
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
            print(f"Waiting up to {o.remote_wait_seconds:g}s for uploads to {o.remote}: "
                  f"{', '.join(uploader.pending)}", flush=True)
        if not uploader.drain(o.remote_wait_seconds):
            log.warning("Uploads to %s still pending after %gs: %s. They stay committed locally and are uploaded "
                        "by the next start of this run.", o.remote, o.remote_wait_seconds, ", ".join(uploader.pending))
        uploader.close()
        committed = [p for p in list_checkpoints(self.spec.run_dir) if (p / MANIFEST_NAME).is_file()]
        if committed:
            apply_retention(self.spec.run_dir, o.keep_last, committed[-1], o.keep_best, uploader.may_delete)

    def record_complete(self, step: int) -> None:
        if distributed.is_main():
            append_history(self.spec.run_dir, "complete", step=step)
