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
from dataclasses import dataclass, field
from pathlib import Path

from gptresume.checkpoint.files import checkpoint_name
from gptresume.errors import EXIT_OK, EXIT_STOPPED, EXIT_UNHEALTHY
from gptresume.resume.plan import RunSpec, ResumePlan, check_inputs, data_stream, loads, plan_resume, report_changes
from gptresume.rundir import (
    COMPLETE_EVENT,
    LOCK_NAME,
    METRICS_NAME,
    RESUME_EVENT,
    START_EVENT,
    STOPPED_EVENT,
    announce_lock_holder,
    append_history,
    clear_run,
    remove_leftovers,
    run_lock,
    trim_metrics,
)
from gptresume.health.goodput import process_start_time
from gptresume.stopping import StopSignal
from gptresume.training import distributed

log = logging.getLogger(__name__)


@dataclass
class Options:
    """How a run resumes, commits and stops; the CLI fills it from its flags and `checkpoint:` section, the Python
    API from its keyword arguments."""

    resume: str = "auto"
    """auto (newest valid checkpoint, else start), never, must, or a checkpoint directory."""
    allow_change: list[str] = field(default_factory=list)
    """Changed fields (or classes: optimizer, schedule, batch, data) to apply instead of refusing."""
    allow_partial: bool = False
    """Resume from a checkpoint that lacks optimizer, scheduler or RNG state."""
    overwrite: bool = False
    """With resume='never': delete the run's checkpoints and books first."""
    adopt: bool = False
    """With resume=PATH: take over a checkpoint without a manifest (written by a plain Trainer script)."""
    keep_last: int | None = 3
    """Committed checkpoints to keep (deleted only after a newer one commits); None keeps all."""
    keep_best: bool = False
    """Also keep the checkpoint with the lowest eval loss."""
    every_minutes: float | None = None
    """Also save when this many minutes passed since the last save."""
    async_save: bool = False
    """Write checkpoints in a background thread (single process)."""
    stop_at_step: int | None = None
    """Commit a checkpoint at this step and stop as if preempted."""
    health: object = None
    """config.schema.HealthConfig: what a NaN or a loss spike does (None: the defaults, stop on NaN)."""
    auto_interval: object = None
    """config.schema.CheckpointConfig when `checkpoint.every: auto` (the save interval from Daly's formula)."""
    stop_exit_code: int = EXIT_STOPPED
    """The exit code that reports a committed stop (75; e.g. 143 where a scheduler restarts only codes >= 128)."""
    remote: str | None = None
    """checkpoint.remote: an fsspec URL every committed checkpoint is uploaded to (gptresume/remote/)."""
    remote_options: dict = field(default_factory=dict)
    """fsspec options of the remote's file system (endpoint_url, ...)."""
    remote_keep_last: int | None = None
    """Remote checkpoints to keep; None keeps all."""
    remote_wait_seconds: float = 120.0
    """How long the end of training (or a stop) waits for pending uploads."""
    ledger: bool = False
    """Record which samples each optimizer step trained (RUN_DIR/ledger/, committed with each checkpoint), for
    `gptresume ledger RUN_DIR` to check that each was trained exactly once (gptresume/ledger/)."""
    shared_filesystem: bool = True
    """checkpoint.shared_filesystem: false when the nodes of a multi-node run have separate disks: each node's part
    of a checkpoint goes to `remote`, where global rank 0 commits it (training/nodes.py, remote/node_uploader.py)."""


@dataclass
class Outcome:
    """What a protected run ended with."""

    status: str
    """"complete" (trained to the end), "stopped" (a signal or stop_at_step: a checkpoint was committed),
    "already complete" (the newest checkpoint had reached max_steps; nothing was trained), "rollback" (a NaN or a
    spike: `checkpoint` is the one to resume from, recorded in history.jsonl) or "unhealthy" (a NaN or a spike
    stopped the run; `checkpoint` is the newest good one, `reason` the message)."""
    step: int
    """The global step training ended at."""
    checkpoint: Path | None
    """The newest committed checkpoint: the one a re-run resumes from."""
    resumed_from: Path | None = None
    """The checkpoint this run resumed from (None for a fresh start)."""
    reason: str | None = None
    """Why it stopped (SIGTERM, SIGINT, SIGUSR1, stop_at_step N)."""
    train_output: object = None
    """What `trainer.train()` returned (a `transformers.trainer_utils.TrainOutput`), when it ran."""
    stop_code: int = EXIT_STOPPED
    """The exit code of a committed stop (Options.stop_exit_code)."""

    @property
    def stopped(self) -> bool:
        return self.status == "stopped"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this outcome: 75 (or Options.stop_exit_code) after a committed stop (or a
        rollback a re-run continues), 1 after a health stop, else 0."""
        if self.status == "unhealthy":
            return EXIT_UNHEALTHY
        return self.stop_code if self.stopped or self.status == "rollback" else EXIT_OK


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
        self.nodes = None  # training/nodes.py: this node's place, when the nodes share no file system

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
            check = self._fetch_remote(check)
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

    def _fetch_remote(self, check):
        """No usable local checkpoint (a new machine, a wiped disk): download the newest valid remote one. Returns
        the check the plan applies to a checkpoint (with separate disks also: it is the bucket's commit)."""
        from gptresume.checkpoint import newest_valid
        from gptresume.remote.fetch import fetch_newest_valid
        from gptresume.remote.transfer import remote_checkpoints

        if not self.options.shared_filesystem:  # separate disks: only the bucket's commit counts (materialize.py)
            from gptresume.remote.materialize import resume_through_bucket

            return resume_through_bucket(self.remote, self.spec.run_dir, self.options.resume, check, self._take_lock)
        if self.options.resume not in ("auto", "must") or newest_valid(self.spec.run_dir, check)[0] is not None:
            return check
        if not remote_checkpoints(self.remote):
            return check
        self._take_lock()
        fetch_newest_valid(self.remote, self.spec.run_dir)
        return check

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
        from gptresume.ledger.books import prepare_for_resume

        prepare_for_resume(spec.run_dir, plan.step, plan.checkpoint.path if plan.checkpoint else None)  # the ledger
        append_history(
            spec.run_dir, RESUME_EVENT if plan.checkpoint else START_EVENT,
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

        if o.remote and self.nodes is not None and self.nodes.leader:  # separate disks: every node sends its part
            from gptresume.remote.node_uploader import NodeUploader

            self._uploader = NodeUploader(self.remote, self.nodes.run_dir, self.nodes.role(), o.remote_keep_last,
                                          keep_best=o.keep_best).start()
        elif o.remote and self.nodes is None and distributed.is_main():
            from gptresume.remote.uploader import Uploader

            self._uploader = Uploader(self.remote, self.spec.run_dir, o.remote_keep_last,
                                      keep_best=o.keep_best).start()
        seed = args.data_seed if args.data_seed is not None else args.seed
        sampler = StreamSampler(n, seed, stream["offset"]) if stream else None
        ledger = None
        if o.ledger:  # the sample ledger (gptresume/ledger/): its step callback before the commit sees the save
            from gptresume.ledger.recording import start_ledger

            sampler, ledger_callbacks, ledger = start_ledger(trainer, plan, self.spec, sampler, seed)
            callbacks += ledger_callbacks
        self._commit = CommitCallback(self.spec, o.keep_last, o.keep_best, resume_state, self._uploader, ledger)
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
                append_history(self.spec.run_dir, "stopped", step=trainer.state.global_step, reason=early.reason)
            return Outcome("stopped", trainer.state.global_step, ckpt, ckpt, early.reason, None,
                           self.options.stop_exit_code)
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
            from gptresume.training.health import conclude

            return conclude(self, trainer, self._health.event, stop.reason, output)
        if self._stop.stopped_at is not None:
            if distributed.is_main():
                append_history(run_dir, STOPPED_EVENT, step=step, reason=stop.reason)
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
            append_history(self.spec.run_dir, COMPLETE_EVENT, step=step)
