"""The start pipeline: everything a run decides before training, once, in one order, for every entry point.

    source (where the run's spec, inputs and Trainer come from)      pipeline (rank 0 decides, every rank follows)
      cli:    YAML + --set; builds tokenizer, data, model, Trainer   start(source, options, write=True|False)
              (training/run.py ConfigSource)                           lock -> plan (local / bucket / rollback skip)
      script: the user's Trainer, read, never rebuilt                  -> complete? -> inputs -> checks -> run dir
              (training/api.py ScriptSource)                         -> Start(spec, plan, action, inputs, options)
      next:   an Accelerate loop, a Lightning module: a new Source

`start(..., write=False)` is `gptresume train --dry-run`: the same function with writing off (no lock file, no
run directory, nothing downloaded into it; a remote is only listed and read, into a temporary directory), so what
the dry run predicts (`Start.action`) is what `train` then does. A refusal is the same exception in both.

A new entry point implements `Source` (a module of its own, like run.py and api.py) and calls `start`, then
`Session` (training/session.py) to train, `finish_complete` for a finished run and `announce` for the outcome; it
never repeats the sequence. The lines a start prints exist here once (`Source.say` sends them to stdout for the
CLI, to the "gptresume" logger for a script).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from gptresume.checkpoint.files import list_checkpoints
from gptresume.checkpoint.manifest import newest_valid
from gptresume.errors import UsageError
from gptresume.options import Options
from gptresume.resume.plan import ResumePlan, RunSpec, check_inputs, loads, plan_resume, report_changes
from gptresume.rundir import (
    TOKENIZER_DIR,
    LOCK_NAME,
    METRICS_NAME,
    RESUME_EVENT,
    START_EVENT,
    announce_lock_holder,
    append_history,
    clear_run,
    read_history,
    remove_leftovers,
    remove_path,
    run_lock,
    trim_metrics,
)
from gptresume.training import distributed
from gptresume.training.outcome import Outcome

log = logging.getLogger(__name__)

NEW, RESUME, COMPLETE = "new", "resume", "complete"

# Test hook: a file path; a `train` that has just taken the run lock waits until that file exists (a test holds the
# winner of two simultaneous starts there while it checks the other is refused and nothing is staged yet).
TEST_HOLD_ENV = "GPTRESUME_TEST_HOLD_AFTER_LOCK"


# ---------------------------------------------------------------- what a start decides


@dataclass(frozen=True)
class Action:
    """What `train` does (or, in a dry run, would do), as data: the dry run's prediction and the run's decision
    compare equal, and history.jsonl records it with each start."""

    kind: str
    """"new" (a new run), "resume" (from `checkpoint`) or "complete" (the checkpoint reached max_steps: nothing
    to train)."""
    step: int
    """The step training starts from (0 for a new run), or the step a complete run reached."""
    checkpoint: str | None = None
    """Where the checkpoint resumed from is (or, when downloaded first, will be) on local disk."""
    downloaded_from: str | None = None
    """The remote URL of that checkpoint when no local one was usable (checkpoint.remote)."""
    skipped: tuple[str, ...] = ()
    """Newer checkpoints passed over (invalid, or their state does not load), newest first."""
    skip_samples: int = 0
    """Samples skipped after the checkpoint: a rollback to it recorded in history.jsonl."""
    overwrite: bool = False
    adopt: bool = False

    def to_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step, "checkpoint": self.checkpoint,
                "downloaded_from": self.downloaded_from, "skipped": list(self.skipped),
                "skip_samples": self.skip_samples, "overwrite": self.overwrite, "adopt": self.adopt}

    @classmethod
    def from_dict(cls, d: dict) -> Action:
        return cls(**{**d, "skipped": tuple(d.get("skipped") or ())})

    def describe(self) -> str:
        if self.kind == NEW:
            return "start a new run" + (" after deleting the run's checkpoints, metrics and final model (overwrite)"
                                        if self.overwrite else "")
        where = self.downloaded_from or self.checkpoint
        how = [f"step {self.step}"] + (["downloaded first"] if self.downloaded_from else []) + (
            [f"skipping {self.skip_samples} samples after it (a rollback)"] if self.skip_samples else [])
        if self.kind == COMPLETE:
            return f"nothing: {where} already reached max_steps ({', '.join(how)})"
        return f"resume from {where} ({', '.join(how)})" + (", adopting it" if self.adopt else "")


def action_of(plan: ResumePlan, run_dir: Path, complete: bool, origin: tuple[str, str] | None = None) -> Action:
    """The Action of a plan; `origin`: (name, remote URL) of a checkpoint fetched (or to be fetched) from a remote."""
    skipped = tuple(s.path.name for s in plan.skipped)
    if plan.checkpoint is None:
        return Action(NEW, 0, skipped=skipped, overwrite=plan.overwrite)
    name = plan.checkpoint.path.name
    downloaded = origin[1] if origin and origin[0] == name else None
    where = str(Path(run_dir) / name) if downloaded else str(plan.checkpoint.path)
    return Action(COMPLETE if complete else RESUME, plan.step, where, downloaded, skipped, plan.skip_samples,
                  adopt=plan.adopt)


@dataclass
class Inputs:
    """What a source gives the pipeline once the plan is known: the model the checkpoint will be loaded into and
    the identity of the training data (what `check_inputs` compares with the checkpoint's)."""

    model: object
    data_fingerprint: str | None
    train_samples: int | None
    """Samples per epoch (None for a stream)."""
    dropout: bool
    """The model has dropout on (then a changed eval cadence changes training)."""

    def discard(self) -> None:
        """Drop what loading staged in the run directory (a refused or dry start leaves none)."""


class Source(Protocol):
    """Where a run comes from. The CLI (run.py `ConfigSource`) and a script's Trainer (api.py `ScriptSource`) are
    the two; each method runs where its docstring says, called by `start`, `finish_complete` and `announce` only."""

    run_dir: Path
    rerun: str
    """How to continue after a stop: "Re-run the same command", "Run the same script again"."""

    def spec(self) -> RunSpec:
        """Rank 0, right after the lock: what the run is (the config its checkpoints record and compare)."""

    def load_inputs(self, plan: ResumePlan) -> Inputs:
        """Rank 0, after the plan: tokenizer, data, model; everything that can be wrong with them fails here."""

    def check(self, plan: ResumePlan, inputs: Inputs) -> None:
        """Rank 0: refusals only this source knows (the CLI: a streaming resume it cannot position)."""

    def write_files(self, plan: ResumePlan, inputs: Inputs) -> None:
        """Rank 0, once accepted, lock held: the source's own run files (the CLI: data cache, tokenizer, config)."""

    def follow(self, plan: ResumePlan) -> Inputs:
        """The other ranks, after rank 0 accepted the start: their inputs, from what rank 0 wrote."""

    def complete(self, start: Start) -> None:
        """Every rank, when the run already reached max_steps: the source's end (final/, the trainer's model)."""

    def complete_hint(self, start: Start) -> str:
        """Where the finished model is and how to train longer, in this source's words."""

    def say(self, text: str, level: int = logging.INFO) -> None:
        """Rank 0: one line of what the run does (stdout for the CLI, the "gptresume" logger for a script)."""


@dataclass
class Start:
    """A start that passed every check: the run's spec, the plan, the action, the options, and this rank's inputs
    (None for a complete run). Holds the run lock (rank 0, when writing) until closed; use it as a context manager
    around training."""

    spec: RunSpec
    plan: ResumePlan
    action: Action
    options: Options
    inputs: Inputs | None
    write: bool = True
    held: ExitStack = field(default_factory=ExitStack, repr=False)
    nodes: object = None
    """training/nodes.py `Nodes`: this process's node, when the nodes share no file system
    (checkpoint.shared_filesystem: false); None otherwise."""

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint training resumes from (or that a complete run reached)."""
        return self.plan.checkpoint.path if self.plan.checkpoint else None

    @property
    def complete(self) -> bool:
        return self.action.kind == COMPLETE

    def close(self) -> None:
        self.held.close()

    def __enter__(self) -> Start:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the pipeline


def start(source: Source, options: Options, write: bool = True) -> Start:
    """Run the start sequence for `source` on rank 0 (every rank gets its decision, or its refusal as the same
    UsageError) and return the Start; the other ranks then load their inputs from what rank 0 wrote.

    Order: the run lock (first: before data staging), the remote's check, the plan (the newest verified local
    checkpoint, else the newest valid remote one, fetched; a rollback's data skip from history.jsonl), the
    completeness check, the inputs, their checks against the checkpoint, then the run directory's books. With
    `write=False` nothing is locked, written or downloaded into the run directory."""
    from gptresume.training import nodes

    layout = nodes.start_nodes(options.shared_filesystem, source.run_dir) if write else None  # which node, which disk
    decision = _RankZero(source, options, write)
    spec, plan, action = distributed.on_main(decision)
    nodes.join_nodes(layout, plan, _remote(options))  # separate disks: each node's part of the checkpoint
    main = distributed.is_main()
    if action.kind == COMPLETE:
        inputs = decision.inputs if main else None
    else:  # separate disks: each other node's leader loads first (its own data cache), then its node's ranks
        inputs = nodes.load_on_nodes(layout, decision.inputs if main else None, lambda: source.follow(plan),
                                     getattr(source, "keep_on_node", None), share=(TOKENIZER_DIR,))
        nodes.same_data(layout, inputs.data_fingerprint)
    return Start(spec, plan, action, options, inputs, write, decision.held, layout)


def _remote(options: Options):
    if not options.remote:
        return None
    from gptresume.remote.url import Remote

    return Remote(options.remote, dict(options.remote_options or {}))


class _RankZero:
    """The decision, on rank 0: returns what every rank needs (spec, plan, action: all picklable); keeps what only
    rank 0 has (the lock, its inputs, temporary directories) for `start` to hand over."""

    def __init__(self, source: Source, options: Options, write: bool):
        self.source, self.options, self.write = source, options, write
        self.held = ExitStack()
        self.inputs: Inputs | None = None

    def __call__(self) -> tuple[RunSpec, ResumePlan, Action]:
        claim = self.held.enter_context(RunClaim(self.source.run_dir)) if self.write else None
        try:
            _hold_for_tests()
            return self._decide()
        except BaseException:
            if claim is not None:
                claim.abandon()
            self.held.close()
            raise

    def _decide(self) -> tuple[RunSpec, ResumePlan, Action]:
        o, source, write = self.options, self.source, self.write
        run_dir = Path(source.run_dir)
        spec = source.spec()
        check = loads(spec)  # a checkpoint whose state would not load (resume/plan.py) is skipped like an invalid one
        plan_dir, origin = run_dir, None
        if o.remote:
            from gptresume.remote.url import Remote

            remote = Remote(o.remote, dict(o.remote_options or {}))
            plan_dir, origin = self._from_remote(remote, run_dir, check)
            if not o.shared_filesystem:  # separate disks: only the bucket's commit is resumed (remote/materialize.py)
                from gptresume.remote.materialize import bucket_check

                check = bucket_check(remote, check)
        world_size = distributed.world_size()
        planned = replace(spec, run_dir=plan_dir)
        try:
            plan = plan_resume(planned, o.resume, o.overwrite, o.allow_partial, o.allow_change, o.adopt, world_size,
                               check=check)
        except UsageError as e:
            if plan_dir == run_dir:
                raise
            raise type(e)(str(e).replace(str(plan_dir), str(run_dir))) from None  # a dry run's scratch copy
        spec.config = planned.config  # defaults that changed since the run began, resolved to what it recorded
        if plan_dir != run_dir:
            self._skipped_as_in_the_run_dir(plan, run_dir, check)
        if plan.checkpoint is not None and not plan.adopt:  # a rollback to it skips data (health/rollback.py)
            from gptresume.health.rollback import pending_skip

            plan.skip_samples = pending_skip(read_history(plan_dir), plan.step)
        complete = plan.is_complete(spec)
        action = action_of(plan, run_dir, complete, origin)
        if complete:
            if write:
                self._tidy_complete(run_dir, plan, spec)
            return spec, plan, action
        inputs = source.load_inputs(plan)
        if not write:
            self.held.callback(inputs.discard)  # the dry run's staged data, dropped when the Start closes
        try:
            if inputs.data_fingerprint is not None:
                spec.data_fingerprint = inputs.data_fingerprint
            if inputs.train_samples is not None:
                spec.train_samples = inputs.train_samples
            check_inputs(plan, spec.data_fingerprint, inputs.dropout)
            source.check(plan, inputs)
            if write:
                prepare_run_dir(spec, plan, action, world_size, lambda: source.write_files(plan, inputs))
        except BaseException:
            inputs.discard()  # packed blocks staged in data-cache/: a refused run leaves none
            raise
        self.inputs = inputs
        return spec, plan, action

    def _from_remote(self, remote, run_dir: Path, check) -> tuple[Path, tuple[str, str] | None]:
        """The remote checked (train: write, read back, delete a probe; dry run: listed), and, with no usable local
        checkpoint, the newest valid remote one fetched: into the run directory (train), or into a scratch copy
        of what the plan reads (dry run). Returns (the directory the plan reads, (name, URL) of what was fetched)."""
        from gptresume.remote.fetch import fetch_newest_valid

        names = _checked_remote(remote, self.write)
        if not self.options.shared_filesystem and self.write:  # separate disks: the bucket's newest commit, always
            from gptresume.remote.materialize import fetch_committed

            if self.options.resume not in ("auto", "must") or not names:
                return run_dir, None
            fetched, _ = fetch_committed(remote, run_dir, check)
            return run_dir, (fetched.path.name, remote.label(fetched.path.name)) if fetched else None
        if self.options.resume not in ("auto", "must") or newest_valid(run_dir, check)[0] is not None or not names:
            return run_dir, None
        if self.write:
            fetched, _ = fetch_newest_valid(remote, run_dir)
            return run_dir, (fetched.name, remote.label(fetched.name)) if fetched else None
        scratch = Path(self.held.enter_context(tempfile.TemporaryDirectory(prefix="gptresume-dry-run-")))
        for ckpt in list_checkpoints(run_dir):  # what train would not replace: a local checkpoint of that step
            (scratch / ckpt.name).mkdir()
        from gptresume.rundir import HISTORY_NAME

        if (run_dir / HISTORY_NAME).is_file():  # train keeps the local history; the remote one only fills a gap
            shutil.copyfile(run_dir / HISTORY_NAME, scratch / HISTORY_NAME)
        fetched, _ = fetch_newest_valid(remote, scratch)
        if fetched is None:
            return run_dir, None
        return scratch, (fetched.name, remote.label(fetched.name))

    @staticmethod
    def _skipped_as_in_the_run_dir(plan: ResumePlan, run_dir: Path, check) -> None:
        """In a dry run's scratch copy the local checkpoints are empty stand-ins: name them as train would."""
        _, local = newest_valid(run_dir, check)
        by_name = {s.path.name: s for s in local}
        plan.skipped = [by_name.get(s.path.name, s) for s in plan.skipped]

    def _tidy_complete(self, run_dir: Path, plan: ResumePlan, spec: RunSpec) -> None:
        """A run that reached max_steps: what a kill during its last commit's retention left is finished (under the
        lock this start holds)."""
        from gptresume.checkpoint import apply_retention

        o = self.options
        remove_leftovers(run_dir)
        guard = None
        if o.remote:  # a checkpoint without a verified upload stays (remote/ledger.py)
            from gptresume.remote.ledger import Ledger

            guard = Ledger(run_dir, o.remote.rstrip("/")).may_delete
        apply_retention(run_dir, o.keep_last, plan.checkpoint.path, o.keeps_best(spec.train), guard)


def _checked_remote(remote, write: bool) -> list[str]:
    """The remote's checkpoint names, after the storage check: train writes, reads back and deletes a probe
    (remote/probe.py); a dry run only lists (a wrong bucket, endpoint or credentials fail the listing too, but a
    missing write permission is found by train alone)."""
    from gptresume.remote.transfer import remote_checkpoints

    if write:
        from gptresume.remote.probe import check_remote

        check_remote(remote)
        return remote_checkpoints(remote)
    try:
        bucket = remote.root.split("/", 1)[0]
        if bucket and not remote.fs.exists(bucket):
            raise FileNotFoundError(f"{bucket}: no such bucket or directory")
        return remote_checkpoints(remote)
    except Exception as e:  # every backend raises its own types; the message is what matters
        text = str(e).splitlines()[0] if str(e) else ""
        raise UsageError(f"checkpoint.remote: could not list {remote.url}: {type(e).__name__}: {text[:300]}. Check "
                         "the bucket name, the endpoint (checkpoint.remote_options.endpoint_url, or "
                         "AWS_ENDPOINT_URL) and the credentials (environment variables)") from None


def prepare_run_dir(spec: RunSpec, plan: ResumePlan, action: Action, world_size: int, write_files) -> None:
    """The run directory of an accepted start (rank 0, lock held): the lock holder named, leftovers of a killed
    process removed, changes reported, --overwrite, adoption, the source's own files, metrics trimmed to the
    resumed step, and the history line."""
    from gptresume.health.goodput import process_start_time

    run_dir = spec.run_dir
    announce_lock_holder(run_dir)
    remove_leftovers(run_dir)  # temporaries of a killed process (rundir.TEMPORARIES)
    report_changes(plan)
    if plan.overwrite:
        clear_run(run_dir)
    if plan.adopt:
        from gptresume.resume.adopt import adopt

        adopt(plan.checkpoint, spec, world_size)
    write_files()
    trim_metrics(run_dir / METRICS_NAME, plan.step)
    from gptresume.ledger.books import prepare_for_resume

    prepare_for_resume(run_dir, plan.step, plan.checkpoint.path if plan.checkpoint else None)  # the sample ledger
    append_history(
        run_dir, RESUME_EVENT if plan.checkpoint else START_EVENT,
        checkpoint=str(plan.checkpoint.path) if plan.checkpoint else None, step=plan.step,
        skipped={s.name: s.faults for s in plan.skipped},
        changes=[{"key": c.key, "old": c.old, "new": c.new, "class": c.kind, "note": c.note}
                 for c in plan.changes],
        adopted=plan.adopt, config_fingerprint=spec.fingerprint(), data_fingerprint=spec.data_fingerprint,
        argv=sys.argv[1:], launched=process_start_time(), action=action.to_dict(),
        **({"skip_samples": plan.skip_samples} if plan.skip_samples else {}))


class RunClaim:
    """The run lock, the first thing a writing start takes: before any data is staged in the run directory, so of
    two starts at the same instant the second is refused ("in use", exit 2) instead of racing the first.

    A start refused after taking it removes what taking it created: the new run directory (and any parent it
    created), or the lock file in an existing directory, whose times are restored. So bad input on a new run
    leaves nothing behind, and an existing run directory stays as it was."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.created: Path | None = None
        self.lock_created = False
        self.times: tuple[int, int] | None = None
        self._lock = None

    def __enter__(self) -> RunClaim:
        run_dir = self.run_dir
        missing = None
        for d in (run_dir, *run_dir.parents):
            if d.exists():
                break
            missing = d
        if missing is None:
            st = run_dir.stat()
            self.times = (st.st_atime_ns, st.st_mtime_ns)
            self.lock_created = not (run_dir / LOCK_NAME).exists()
        lock = run_lock(run_dir, announce=False)
        lock.__enter__()  # a busy run: UsageError "in use", nothing of ours to remove
        self.created, self._lock = missing, lock
        return self

    def abandon(self) -> None:
        """The start was refused: remove what the claim created (the lock is still held)."""
        try:
            if self.created is not None:
                remove_path(self.created)
            elif self.lock_created:
                (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
                if self.times is not None:
                    os.utime(self.run_dir, ns=self.times)
        except OSError as e:
            log.warning("Could not remove %s after the refused start (%s)", self.created or self.run_dir / LOCK_NAME, e)

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None


def _hold_for_tests() -> None:
    path = os.environ.get(TEST_HOLD_ENV)
    while path and not os.path.exists(path):
        time.sleep(0.05)


# ---------------------------------------------------------------- the endings, said once


def announce_start(start: Start, source: Source) -> None:
    """The line before training: where it starts."""
    if not distributed.is_main():
        return
    if start.plan.checkpoint is not None:
        epoch = start.plan.checkpoint.manifest.get("epoch")
        at = f"step {start.plan.step}" + (f", epoch {epoch:.2f}" if epoch is not None else "")
        source.say(f"Resuming from {start.checkpoint} ({at})")
    else:
        source.say(f"Starting a new run in {start.run_dir}")


def finish_complete(start: Start, source: Source) -> Outcome:
    """The run already reached max_steps (its retention leftovers were finished by the start): the source's own
    end on every rank, one message, and an Outcome whose `train_output` is rebuilt from the run's books."""
    from gptresume.training.outcome import recorded_train_output

    ckpt = start.checkpoint
    source.complete(start)
    if distributed.is_main():
        source.say(f"Run complete: {start.run_dir} reached step {start.plan.step} ({ckpt.name}); nothing to train. "
                   + source.complete_hint(start))
    output = recorded_train_output(start.run_dir, ckpt, start.spec.config)
    return Outcome("already complete", start.plan.step, ckpt, ckpt, train_output=output)


def announce(outcome: Outcome, source: Source) -> None:
    """The line after training, for every ending but a plain completion (the source says where its model is)."""
    if not distributed.is_main():
        return
    if outcome.stopped and outcome.checkpoint is None:
        source.say(f"Stopped ({outcome.reason}) before the first step: nothing to commit. {source.rerun} to start.")
    elif outcome.stopped:
        source.say(f"Stopped ({outcome.reason}) at step {outcome.step}: checkpoint {outcome.checkpoint} is "
                   f"committed. {source.rerun} to resume.")
    elif outcome.status == "rollback":  # for a source that does not rebuild its Trainer (the CLI does, at once)
        source.say(f"{source.rerun} to continue from {outcome.checkpoint}.", logging.WARNING)
    elif outcome.status == "unhealthy":
        source.say(outcome.reason, logging.ERROR)
