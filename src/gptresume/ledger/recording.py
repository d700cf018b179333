"""The training side of the sample ledger: what `Session.attach` sets up when `checkpoint.ledger` is on.

- Packed data: process 0's `PackedRecorder` observes the training sampler (a `StreamSampler`, offset 0 unless a
  changed resume or a rollback shifted it) and attributes each step's samples at the step's end (`LedgerCallback`).
- Streaming: every process's stream remembers the identity of each block it yields (data/streaming.py
  `StreamLedger`) and writes its segment beside its state at each save.
- At each commit (`LedgerCommit`, called by CommitCallback): process 0 writes the packed segment into the
  checkpoint before the manifest (so the manifest hashes it), and after the manifest copies the checkpoint's segment
  (every process's, merged) into RUN_DIR/ledger/ (books.py).

Cost per step: process 0 keeps a dict entry per sample between its yield and its step's end, and converts the step's
indices to arrays at each save; no device work, no synchronisation between processes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from gptresume.errors import UsageError
from gptresume.ledger.books import book_checkpoint
from gptresume.ledger.packed import PackedRecorder
from gptresume.ledger.segment import CHECKPOINT_SEGMENT, Segment
from gptresume.resume.position import Geometry, StreamSampler

log = logging.getLogger(__name__)


def ledger_problems(trainer) -> list[str]:
    """Why the samples of this Trainer's steps cannot be recorded (empty: they can). Packed data needs the default
    random training sampler (gptresume replaces it with the same seeded order it records) and accelerate's default
    batch split across processes."""
    from transformers import Trainer

    from gptresume.training.trainer import ResumableTrainerMixin

    if not hasattr(trainer.train_dataset, "__len__"):
        return []  # a stream records its own blocks (data/streaming.py)
    out = []
    for name in ("_get_train_sampler", "get_train_dataloader"):
        owner = next((c for c in type(trainer).__mro__ if name in c.__dict__ and c is not ResumableTrainerMixin), None)
        if owner is not None and owner is not Trainer:
            out.append(f"ledger: {owner.__name__}.{name} is overridden: the samples its loader yields cannot be "
                       "attributed to steps; remove the ledger option, or the override")
    args = trainer.args
    strategy = getattr(args, "train_sampling_strategy", "random")
    if strategy not in (None, "random") or getattr(args, "group_by_length", False):
        out.append(f"ledger: train_sampling_strategy={strategy!r}: only the default random order is recorded")
    if args.world_size > 1:
        accelerator = getattr(trainer, "accelerator", None)
        if getattr(accelerator, "split_batches", False):
            out.append("ledger: accelerator_config.split_batches is on: only whole batches per process are recorded")
        if not getattr(accelerator, "even_batches", True):
            out.append("ledger: accelerator_config.even_batches is off: processes then train different numbers of "
                       "batches at an epoch's end, which the ledger does not model")
    return out


class LedgerCallback(TrainerCallback):
    """Process 0, packed data: each optimizer step's samples, attributed when the step ends."""

    def __init__(self, recorder: PackedRecorder):
        self.recorder = recorder

    def on_step_end(self, args, state, control, **kwargs):
        self.recorder.step_done(state.global_step)


class LedgerCommit:
    """CommitCallback's hook: `capture(step)` on the training thread when a save is committed; the job it returns
    writes the packed segment before the manifest and books the checkpoint's segment after it (process 0)."""

    def __init__(self, run_dir: Path, recorder: PackedRecorder | None, is_main: bool):
        self.run_dir, self.recorder, self.is_main = Path(run_dir), recorder, is_main

    def capture(self, step: int) -> LedgerJob | None:
        if not self.is_main:
            return None
        return LedgerJob(self.run_dir, self.recorder.take() if self.recorder is not None else None)


class LedgerJob:
    def __init__(self, run_dir: Path, segment: Segment | None):
        self.run_dir, self.segment = run_dir, segment

    def before_manifest(self, ckpt: Path) -> None:
        if self.segment is not None:
            self.segment.write(Path(ckpt) / CHECKPOINT_SEGMENT)

    def after_manifest(self, ckpt: Path) -> None:
        """The checkpoint is committed whatever happens here: a failure to book its segment is logged, the segment
        stays in the checkpoint, the next start books it again, and `gptresume ledger` reports what is missing."""
        try:
            book_checkpoint(self.run_dir, Path(ckpt))
        except Exception:
            log.exception("ledger: could not copy %s's segment into %s (the checkpoint holds it; the next start "
                          "books it again)", Path(ckpt).name, self.run_dir / "ledger")


def start_ledger(trainer, plan, spec, sampler: StreamSampler | None, seed: int):
    """Set the ledger up for `trainer` (before train()): returns (the training sampler to use, the callbacks to add
    before the commit callback, the commit hook). Refuses (UsageError) a Trainer whose samples cannot be recorded."""
    problems = ledger_problems(trainer)
    if problems:
        raise UsageError("\n".join(problems))
    args = trainer.args
    is_main = args.process_index == 0
    if not hasattr(trainer.train_dataset, "__len__"):  # streaming: every process records its own blocks
        stream = getattr(trainer.train_dataset, "inner", None)
        if stream is None or not hasattr(stream, "record_ledger"):
            raise UsageError("ledger: the training dataset has no length and is not gptresume's stream "
                             "(data.streaming): its samples cannot be recorded")
        stream.record_ledger()
        return sampler, [], LedgerCommit(spec.run_dir, None, is_main)
    n = len(trainer.train_dataset)
    sampler = sampler if sampler is not None else StreamSampler(n, seed, 0)  # Trainer's own order, observable
    recorder = None
    if is_main:
        geometry = Geometry(args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size,
                            bool(args.dataloader_drop_last))
        recorder = PackedRecorder(sampler, geometry, plan.step, plan.skip_samples,
                                  meta={"data_fingerprint": spec.data_fingerprint, "offset": sampler.offset,
                                        "seed": seed}, restarts_epoch=bool(args.ignore_data_skip))
        if plan.skip_samples:
            log.info("Ledger: %d sample(s) skipped by the rollback to %s recorded as skipped", plan.skip_samples,
                     plan.checkpoint.name)
    return sampler, [LedgerCallback(recorder)] if recorder else [], LedgerCommit(spec.run_dir, recorder, is_main)
