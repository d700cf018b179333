"""Every private Trainer method gptresume overrides, in one class (`ResumableTrainerMixin`), and the two functions
that make a Trainer resumable or load a finished run into it. Each override is listed, with the checked versions, in
gptresume/compat.py; a Transformers upgrade is re-checked here.

- `ResumableTrainerMixin`, mixed in before the script's own Trainer class (`make_resumable` swaps the instance's
  class, so a script keeps its Trainer subclass): the training sampler after a changed resume, the RNG file of
  each rank after a change of process count, a streamed training set's DataLoader and RNG timing,
  `_save_checkpoint` for asynchronous saves, and the run-health hooks: `training_step` (public) and
  `_get_grad_norm` (private) hand each micro-batch's loss and each step's gradient norm, as device tensors, to a
  `HealthMonitor` (training/health.py); `compute_loss` (public) applies the test-only fault hook (health/faults.py,
  GPTRESUME_TEST_FAULT); and `_maybe_log_save_evaluate` to commit the step whose evaluation a stop signal cut short.
- `load_finished_checkpoint`: a run that is already complete gets its weights and state without a train() call.

The other private Transformers behaviour lives beside what uses it, each module listed in compat.py:
- training/async_snapshot.py: the body of `Trainer._save_checkpoint`, split into a snapshot on the training thread
  and a background write (private Trainer methods called, the copied source pinned by its sha256);
- training/resume_overrides.py: `ResumeOverrides`, a callback that writes allowed changes into the restored
  optimizer, the scheduler (`LambdaLR.lr_lambdas`, `base_lrs`, `_last_lr`) and the restored `TrainerState`;
- training/tensorboard.py: `ResumableTensorBoardCallback` (overrides `TensorBoardCallback._init_summary_writer`);
- training/trackers.py: the wandb and MLflow callbacks that continue one tracker run across resumes.
- training/agreement.py: the step's one cross-rank reduction and the batched health read rely on Trainer's order
  (DefaultFlowCallback sets the step's log/eval/save flags first; `_run_epoch` calls on_step_end before
  `_maybe_log_save_evaluate`, which reads the loss only at logging steps).

All checked with transformers 5.24.0, accelerate 1.15, torch 2.13.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from gptresume.checkpoint.async_save import BackgroundSaver, save_job
from gptresume.resume.position import StreamSampler
from gptresume.resume.rng import DERIVED, derived_seed, rng_file_name, rng_source
from gptresume.training.async_snapshot import async_unsupported, snapshot_checkpoint, write_snapshot

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the Trainer mixin


class ResumableTrainerMixin:
    """Trainer with three changes, each inactive unless gptresume sets it up:

    - `_gptresume_stream`: after a resume that changed the global batch or the data, the training sampler is a
      `StreamSampler` positioned at the first untrained sample (resume/position.py); otherwise Trainer's own.
    - `_load_rng_state` on another process count: rank r restores the checkpoint's rank r, a new rank is seeded
      from (seed, step, rank); same process count: Trainer's own code.
    - `async_saver`: `_save_checkpoint` copies the state and hands the writing to a background thread (mirrors
      Trainer._save_checkpoint of transformers 5.24 for plain PyTorch, one process or DDP; the async tests
      check it writes the same files with the same contents as Trainer's own).
    """

    _gptresume_stream: StreamSampler | None = None
    async_saver: BackgroundSaver | None = None
    async_commit = None
    """CommitCallback (or anything with `commit_later(args, state) -> callable`): the manifest commit job."""
    _gptresume_health = None
    """training/health.py HealthMonitor: every step's loss and gradient norm, judged before any save."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._gptresume_health is not None:
            self._gptresume_health.add_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):  # checked with transformers 5.24 (called once per step)
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self._gptresume_health is not None:
            self._gptresume_health.set_grad_norm(grad_norm)
        return grad_norm

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self._gptresume_health is None or not model.training:
            return result
        from gptresume.health.faults import multiplier_for

        factor = multiplier_for(self.state.global_step + 1)  # TEST-ONLY: None unless GPTRESUME_TEST_FAULT is set
        if factor is None:
            return result
        log.warning("GPTRESUME_TEST_FAULT: the loss of step %d is multiplied by %s", self.state.global_step + 1,
                    factor)
        return (result[0] * factor, *result[1:]) if return_outputs else result * factor

    def _get_train_sampler(self, train_dataset=None):  # checked with transformers 5.24
        stream = self._gptresume_stream
        return stream if stream is not None else super()._get_train_sampler(train_dataset)

    def _run_epoch(self, *args, **kwargs):  # checked with transformers 5.24 (Trainer passes every argument by name)
        # A StreamSampler takes its epoch's permutation from set_epoch. In the epoch a resume skips into, Trainer
        # calls set_epoch on skip_first_batches' new DataLoader, and with several processes that reaches
        # SkipBatchSampler(BatchSamplerShard(...)) but never the sampler inside: the resumed epoch would replay
        # epoch 0's order (seen with the sample ledger on 2 processes). Trainer's epoch, set here, reaches it always.
        stream = self._gptresume_stream
        if stream is not None:
            stream.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    _gptresume_streaming = False
    """A streamed training set (data/streaming.py) restores its own position: Trainer skips nothing
    (ignore_data_skip), and the RNG state is restored after the epoch's DataLoader iterator exists."""
    _gptresume_rng_pending = None

    def get_train_dataloader(self):  # checked with transformers 5.24, accelerate 1.15
        """A streamed training set under several processes is already this rank's own part (data/streaming.py:
        each rank reads and saves its own position). With dispatch_batches off, accelerate still wraps an
        IterableDataset in IterableDatasetShard (read world_size batches, keep one): made a pass-through here, as
        Trainer itself does for its rank-aware BatchRebalanceSampler."""
        loader = super().get_train_dataloader()
        if self._gptresume_streaming and self.args.world_size > 1:
            from accelerate.data_loader import IterableDatasetShard

            shard = loader.dataset
            if not isinstance(shard, IterableDatasetShard):
                raise RuntimeError(f"streaming with {self.args.world_size} processes: expected accelerate's "
                                   f"IterableDatasetShard around the stream, got {type(shard).__name__}")
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # checked with transformers 5.24
        """A streaming resume: the checkpoint's RNG state is restored after the first batches are fetched, once
        the DataLoader iterator (created lazily by accelerate's DataLoaderShard on the first fetch) has drawn its
        seed from the global generator, as Trainer's own skip path does (`rng_to_sync`); restoring it before (what
        `ignore_data_skip` does) would shift every later dropout mask by that one draw."""
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        pending, self._gptresume_rng_pending = self._gptresume_rng_pending, None
        if pending is not None:
            self._load_rng_state(pending, deferred=True)
        return batches

    def _load_rng_state(self, checkpoint, deferred: bool = False):  # checked with transformers 5.24
        if self._gptresume_streaming and checkpoint is not None and not deferred:
            self._gptresume_rng_pending = checkpoint
            return None
        return self._load_rng_state_now(checkpoint)

    def _load_rng_state_now(self, checkpoint):  # (Trainer skips a missing file)
        """Resuming on another number of processes: rank r takes the RNG file of the checkpoint's rank r, and a
        rank the checkpoint did not have gets generators seeded from (seed, step, rank), so every rank's random
        stream is defined and a repeated resume is reproducible. Same process count: Trainer's own code."""
        if checkpoint is None:
            return super()._load_rng_state(checkpoint)
        source = rng_source(Path(checkpoint), self.args.world_size, self.args.process_index)
        if source is None or source == Path(checkpoint) / rng_file_name(self.args.world_size, self.args.process_index):
            return super()._load_rng_state(checkpoint)
        if source.name == DERIVED:
            from transformers import set_seed

            seed = derived_seed(self.args.seed, self.state.global_step, self.args.process_index)
            log.warning("Rank %d has no RNG state in %s (written by fewer processes): seeded with %d",
                        self.args.process_index, checkpoint, seed)
            set_seed(seed)
            return None
        with tempfile.TemporaryDirectory() as tmp:  # Trainer's loader, pointed at the mapped file
            os.symlink(source, Path(tmp) / rng_file_name(self.args.world_size, self.args.process_index))
            log.info("Rank %d restores the RNG state of %s", self.args.process_index, source.name)
            return super()._load_rng_state(tmp)

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, *args, **kwargs):
        # checked with transformers 5.24: called after each optimizer step (log, then evaluate, then save). A stop
        # signal during the evaluation cuts it (preemption.py `StopCallback.on_prediction_step` raises StopSignal at
        # the next eval batch); the step is fully trained, so it is saved and committed here, as Trainer's own tail
        # of this method would, and training stops: a scheduler's grace period is not spent on the evaluation.
        from gptresume.stopping import StopSignal

        try:
            return super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, *args, **kwargs)
        except StopSignal:
            log.info("Evaluation at step %d cut short by the stop; committing the step", self.state.global_step)
            self.control.should_evaluate = False
            self.control.should_training_stop = True
            self._save_checkpoint(model, trial)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _save_checkpoint(self, model, trial):  # checked with transformers 5.24 (async_snapshot.py mirrors it)
        reason = async_unsupported(self, trial) if self.async_saver is not None else "off"
        if reason:
            if reason != "off" and not getattr(self, "_async_warned", False):
                self._async_warned = True
                log.warning("checkpoint.async_save: saving synchronously (%s)", reason)
            return super()._save_checkpoint(model, trial)
        from gptresume.training import distributed

        t0 = time.perf_counter()
        waited = self.async_saver.wait()  # at most one save in flight (with several ranks: committed everywhere)
        timings = {"step": self.state.global_step, "waited_s": waited}  # waited_s is part of blocked_s
        step = self.state.global_step
        if self.args.world_size > 1 and getattr(self, "_gptresume_writers", None) is None:
            self._gptresume_writers = distributed.writer_group()  # every rank, same step: a collective
        group = getattr(self, "_gptresume_writers", None)
        output_dir, model_state, optimizer_state, scheduler_state = snapshot_checkpoint(self)
        commit = self.async_commit.commit_later(self.args, self.state) if self.async_commit is not None else None
        timings["blocked_s"] = time.perf_counter() - t0
        name = os.path.basename(output_dir)

        def write():
            write_snapshot(self, output_dir, step, model_state, optimizer_state, scheduler_state)

        job = save_job(name, write, commit, agree=lambda ok: distributed.all_ranks_ok(ok, group),
                       is_main=(self.async_commit.runs_commit(self.state) if self.async_commit is not None
                                else self.args.process_index == 0))
        self.async_saver.submit(name, job, timings)


def make_resumable(trainer, stream: StreamSampler | None = None, async_saver: BackgroundSaver | None = None,
                   async_commit=None, streaming: bool = False, health=None):
    """Give `trainer` (any Trainer subclass instance) the `ResumableTrainerMixin` behaviour by swapping its class
    for a subclass that puts the mixin first. Idempotent; the script's own overrides still run (super())."""
    cls = type(trainer)
    if not isinstance(trainer, ResumableTrainerMixin):
        trainer.__class__ = type(f"Resumable{cls.__name__}", (ResumableTrainerMixin, cls), {})
    trainer._gptresume_stream = stream
    trainer._gptresume_streaming = streaming
    trainer.async_saver, trainer.async_commit = async_saver, async_commit
    trainer._gptresume_health = health
    return trainer


def load_finished_checkpoint(trainer, checkpoint: Path) -> None:
    """A run already complete: load the checkpoint's weights and state into `trainer` without training, so a script
    that saves or evaluates `trainer.model` after `gptresume.train` gets the trained model."""
    from transformers.trainer_callback import TrainerState

    from gptresume.checkpoint.files import TRAINER_STATE_NAME

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
