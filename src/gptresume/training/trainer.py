"""Every private Transformers behaviour gptresume overrides or writes into, in one place (listed, with the checked
versions, in gptresume/compat.py; a Transformers upgrade is re-checked here).

- `ResumableTrainerMixin`, mixed in before the script's own Trainer class (`make_resumable` swaps the instance's
  class, so a script keeps its Trainer subclass): the training sampler after a changed resume, the RNG file of
  each rank after a change of process count, `_save_checkpoint` for asynchronous saves, and
  `_maybe_log_save_evaluate` to commit the step whose evaluation a stop signal cut short.
- `ResumeOverrides`: writes allowed optimizer and schedule changes, and the new logging/eval/save cadence, into the
  optimizer, the scheduler (`LambdaLR.lr_lambdas`, `base_lrs`, `_last_lr`) and the restored `TrainerState`.
- `ResumableTensorBoardCallback`: Trainer's TensorBoardCallback with a fixed directory and `purge_step`
  (`_init_summary_writer`).
- `load_finished_checkpoint`: a run that is already complete gets its weights and state without a train() call.
- Run health (training/health.py): `training_step` (public) and `_get_grad_norm` (private) hand each micro-batch's
  loss and each step's gradient norm to a `HealthMonitor`; `compute_loss` (public) applies the test-only fault hook
  (health/faults.py, GPTRESUME_TEST_FAULT).

All checked with transformers 5.24.0, accelerate 1.15, torch 2.13.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback

from gptresume.checkpoint.async_save import BackgroundSaver, cpu_copy, delay_for_tests, finish_device_copies, save_job
from gptresume.resume.position import StreamSampler
from gptresume.resume.rng import DERIVED, derived_seed, rng_file_name, rng_source
from gptresume.resume.schedule import SchedulePlan, replan

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

    def _save_checkpoint(self, model, trial):
        reason = self._async_unsupported(trial) if self.async_saver is not None else "off"
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
        output_dir, model_state, optimizer_state, scheduler_state = self._snapshot_checkpoint()
        commit = self.async_commit.commit_later(self.args, self.state) if self.async_commit is not None else None
        timings["blocked_s"] = time.perf_counter() - t0
        name = os.path.basename(output_dir)

        def write():
            self._write_snapshot(output_dir, step, model_state, optimizer_state, scheduler_state)

        job = save_job(name, write, commit, agree=lambda ok: distributed.all_ranks_ok(ok, group),
                       is_main=self.args.process_index == 0)
        self.async_saver.submit(name, job, timings)

    def _async_unsupported(self, trial) -> str | None:
        from transformers import PreTrainedModel
        from transformers.trainer import is_sagemaker_mp_enabled, is_torch_xla_available

        checks = (
            (self.is_deepspeed_enabled or self.is_fsdp_enabled,
             "DeepSpeed/FSDP: their sharded saves gather state across ranks inside the save"),
            (getattr(self, "is_distributed_loading_by_transformers", False),
             "the model was loaded sharded across ranks by Transformers"),
            (is_torch_xla_available() or is_sagemaker_mp_enabled(), "XLA/SageMaker model parallel"),
            (not isinstance(self.model, PreTrainedModel), "the model is not a transformers PreTrainedModel"),
            (self.args.push_to_hub, "push_to_hub"),
            (trial is not None or self.hp_search_backend is not None, "hyper-parameter search"),
            (self.args.save_total_limit is not None, "save_total_limit"),
        )
        return next((why for bad, why in checks if bad), None)

    def _snapshot_checkpoint(self):
        """The training-thread part: Trainer's bookkeeping, the small files, and CPU copies of the large state this
        rank saves (Trainer: the model, optimizer and scheduler on the process that `should_save`; the RNG file and
        scaler on every rank). Device copies are finished before this returns, so the writer reads whole tensors."""
        from transformers.trainer import (
            PREFIX_CHECKPOINT_DIR,
            TRAINER_STATE_NAME,
            ExportableState,
            SaveStrategy,
            reissue_pt_warnings,
        )

        self.store_flos()
        run_dir = self._get_output_dir(trial=None)
        output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(output_dir, exist_ok=True)
        if (self.args.save_strategy in [SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST]
                and self.state.best_global_step):
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if os.path.exists(best):
                self.state.best_model_checkpoint = best
        memo, pool = {}, self.async_saver.staging  # no write is in flight: the last save's copies are free
        saves = self.args.should_save
        model_state = cpu_copy(self.model.state_dict(), memo, pool) if saves else None
        optimizer_state = scheduler_state = None
        if not self.args.save_only_model:
            if saves:
                optimizer_state = cpu_copy(self.optimizer.state_dict(), memo, pool)
                with warnings.catch_warnings(record=True) as caught:
                    scheduler_state = cpu_copy(self.lr_scheduler.state_dict(), memo, pool)
                reissue_pt_warnings(caught)
            self._save_scaler(output_dir)
            self._save_rng_state(output_dir)
        if self.args.should_save:
            for cb in [cb for cb in self.callback_handler.callbacks + [self.control]
                       if isinstance(cb, ExportableState)]:
                name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks[name], list):
                    self.state.stateful_callbacks[name].append(cb.state())
                else:
                    self.state.stateful_callbacks[name] = cb.state()
            self.state.save_to_json(os.path.join(output_dir, TRAINER_STATE_NAME))
        finish_device_copies(memo)  # one synchronisation (GPU), before any writer reads the copies
        self.async_saver.staging = memo
        return output_dir, model_state, optimizer_state, scheduler_state

    def _write_snapshot(self, output_dir, step, model_state, optimizer_state, scheduler_state) -> None:
        """The background part: the files Trainer's save_model and _save_optimizer_and_scheduler write."""
        import torch
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        if model_state is None:  # a rank that saves no model (DDP rank > 0): its RNG file is already written
            return
        self._save(output_dir, state_dict=model_state)  # config, weights, tokenizer, training args
        delay_for_tests(step)
        if optimizer_state is not None:
            torch.save(optimizer_state, os.path.join(output_dir, OPTIMIZER_NAME))
            torch.save(scheduler_state, os.path.join(output_dir, SCHEDULER_NAME))


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


# ---------------------------------------------------------------- writes into restored optimizer, scheduler, state


class ResumeOverrides(TrainerCallback):
    """On the first resumed step's `on_train_begin`: new optimizer hyperparameters and a re-planned (or
    inherited) schedule. `plan` is what later checkpoints record, so the next resume follows the same curve."""

    def __init__(self, resume_step: int, optimizer_values: dict[str, tuple], replan_schedule: bool,
                 plan: SchedulePlan | None, decay_names: set[str]):
        self.resume_step = resume_step
        self.optimizer_values = optimizer_values  # TrainingArguments field -> (old, new)
        self.replan_schedule = replan_schedule
        self.plan = plan
        self.decay_names = decay_names

    @property
    def active(self) -> bool:
        return self.resume_step > 0 and bool(self.optimizer_values or self.replan_schedule or self.plan)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.resume_step <= 0 or state.global_step != self.resume_step:
            return
        self._apply_cadence(args, state)
        if not self.active:
            return
        sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        step = state.global_step
        lr_before = optimizer.param_groups[0]["lr"]
        factor = sched.get_last_lr()[0] / sched.base_lrs[0] if sched.base_lrs[0] else 0.0
        if self.replan_schedule:
            kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
            self.plan = replan(step, factor, kind, args.get_warmup_steps(state.max_steps), state.max_steps)
            log.info("Schedule re-planned at step %d: factor %.4g -> peak at step %d, %s decay to 0 at step %d",
                     step, factor, self.plan.peak_step, self.plan.shape, self.plan.end_step)
        if self.plan is not None:
            sched.lr_lambdas = [self.plan] * len(optimizer.param_groups)
        for i, group in enumerate(optimizer.param_groups):
            sched.base_lrs[i] = args.learning_rate
            group["initial_lr"] = args.learning_rate
        lrs = [base * fn(step) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs
        self._apply_hyperparameters(args, model, optimizer)
        if self.optimizer_values or self.replan_schedule:
            log.info("Learning rate of the next step (%d): %.6g before the change, %.6g now", step + 1,
                     lr_before, lrs[0])

    @staticmethod
    def _apply_cadence(args, state) -> None:
        """Trainer restores logging/eval/save steps from the checkpoint's trainer_state.json (transformers 5.24
        `_init_training_state`), so a changed cadence would be ignored: recompute them from the current args."""
        before = (state.logging_steps, state.eval_steps, state.save_steps)
        state.compute_steps(args, state.max_steps)
        after = (state.logging_steps, state.eval_steps, state.save_steps)
        if before != after:
            log.info("Logging / eval / save every %s / %s / %s steps (the checkpoint had %s / %s / %s)", *after,
                     *before)

    def _apply_hyperparameters(self, args, model, optimizer) -> None:
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        for key, (old, new) in self.optimizer_values.items():
            for group in optimizer.param_groups:
                if key == "weight_decay" and any(names.get(id(p)) in self.decay_names for p in group["params"]):
                    group["weight_decay"] = args.weight_decay
                elif key in ("adam_beta1", "adam_beta2") and "betas" in group:
                    group["betas"] = (args.adam_beta1, args.adam_beta2)
                elif key == "adam_epsilon" and "eps" in group:
                    group["eps"] = args.adam_epsilon
            if key != "learning_rate":
                log.info("%s: %r -> %r (applied to the restored optimizer)", key, old, new)


# ---------------------------------------------------------------- TensorBoard


def tensorboard_callback_class():
    from transformers.integrations import TensorBoardCallback

    class ResumableTensorBoardCallback(TensorBoardCallback):
        """Trainer's TensorBoardCallback, with a fixed log directory and purge_step on resume."""

        def __init__(self, logging_dir: Path):
            super().__init__()
            if self.logging_dir is None:  # TENSORBOARD_LOGGING_DIR, when set, still wins
                self.logging_dir = str(logging_dir)
            self.purge_step = None

        def on_train_begin(self, args, state, control, **kwargs):
            # Trainer has restored the checkpoint's state here: global_step is the step training resumes from.
            self.purge_step = state.global_step + 1 if state.global_step > 0 else None
            return super().on_train_begin(args, state, control, **kwargs)

        def _init_summary_writer(self, args):
            if self._SummaryWriter is not None:
                self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)

    return ResumableTensorBoardCallback


# ---------------------------------------------------------------- wandb and MLflow: one tracker run across resumes


def continued_tracker_classes():
    """(wandb callback class, MLflow callback class): Trainer's own, continuing the run RUN_DIR/trackers.json names.

    Both rely on behaviour the callbacks document (WandbCallback uses a `wandb.run` created before its setup;
    MLflowCallback re-attaches to MLFLOW_RUN_ID and logs at most MLFLOW_MAX_LOG_PARAMS parameters) and on two
    private details listed in compat.py: setup runs from on_train_begin, and MLflow metric names are sanitised
    with Trainer's regex before logging."""
    from transformers.integrations import MLflowCallback, WandbCallback

    from gptresume.rundir import read_trackers, write_tracker

    class ContinuedWandbCallback(WandbCallback):
        """WandbCallback that opens (first start) or re-opens (resume) one wandb run per RUN_DIR, and skips the
        steps the run already holds past the resumed checkpoint (logged by the interrupted process)."""

        def __init__(self, run_dir: Path, resume: TrackerResume):
            super().__init__()
            self.run_dir, self.resume = Path(run_dir), resume
            self.skip_through = 0
            self.logged_through = 0
            self.opened = False  # this callback opened the wandb run (else the script did: it closes it)

        def setup(self, args, state, model, **kwargs):
            import wandb

            if state.is_world_process_zero and wandb.run is None:
                record = read_trackers(self.run_dir).get("wandb") if self.resume.step > 0 else None
                init = {"project": os.getenv("WANDB_PROJECT", "huggingface")}
                if args.run_name is not None and args.run_name != args.output_dir:
                    init["name"] = args.run_name
                if isinstance(record, dict) and isinstance(record.get("run_id"), str):
                    wandb.init(id=record["run_id"], resume="allow", **init)
                    held = max(int(record.get("logged_through") or 0), int(getattr(wandb.run, "step", 0) or 0) - 1)
                    self.logged_through = held
                    if self.resume.exact:
                        self.skip_through = held
                    else:
                        wandb.run.summary[f"gptresume/resumed_with_changes_at_step_{self.resume.step}"] = \
                            self.resume.changes
                    log.info("wandb: continuing run %s from step %d%s", wandb.run.id, self.resume.step,
                             f" (steps up to {held} are already logged)" if held > self.resume.step else "")
                else:
                    wandb.init(**init)
                self.opened = True
                self._record()
            return super().setup(args, state, model, **kwargs)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if state.global_step <= self.skip_through and state.global_step > self.resume.step:
                return  # the run holds this step already, with the same values (the resume is exact)
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)
            if state.is_world_process_zero and state.global_step > self.logged_through:
                self.logged_through = state.global_step
                self._record()

        def on_train_end(self, args, state, control, **kwargs):
            import wandb

            super().on_train_end(args, state, control, **kwargs)
            if state.is_world_process_zero and wandb.run is not None and self.opened:
                wandb.finish()  # flushed and closed now, not at interpreter exit (which a forked or killed
                self.opened = False  # process may never reach)

        def _record(self) -> None:
            import wandb

            write_tracker(self.run_dir, "wandb", {"run_id": wandb.run.id, "project": wandb.run.project,
                                                  "logged_through": self.logged_through})

    class ContinuedMLflowCallback(MLflowCallback):
        """MLflowCallback that re-attaches a resumed process to the run it logged to (MLFLOW_RUN_ID), logs the
        parameters once (MLflow refuses a changed parameter value), and skips the metric steps the run already
        holds past the resumed checkpoint."""

        def __init__(self, run_dir: Path, resume: TrackerResume):
            super().__init__()
            self.run_dir, self.resume = Path(run_dir), resume
            self.held: dict[str, int] = {}

        def setup(self, args, state, model):
            import mlflow

            record = read_trackers(self.run_dir).get("mlflow") if self.resume.step > 0 else None
            env = {}
            if state.is_world_process_zero and isinstance(record, dict) and isinstance(record.get("run_id"), str):
                if record.get("tracking_uri") == mlflow.get_tracking_uri():
                    env = {"MLFLOW_RUN_ID": record["run_id"], "MLFLOW_MAX_LOG_PARAMS": "0"}
                else:
                    log.warning("MLflow: the tracking URI changed (%s -> %s): a new run is started",
                                record.get("tracking_uri"), mlflow.get_tracking_uri())
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                super().setup(args, state, model)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            if not state.is_world_process_zero or mlflow.active_run() is None:
                return
            run_id = mlflow.active_run().info.run_id
            if env:
                client = mlflow.MlflowClient()
                for key in client.get_run(run_id).data.metrics:
                    self.held[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=0)
                if not self.resume.exact:
                    mlflow.set_tag(f"gptresume.resumed_with_changes_at_step_{self.resume.step}",
                                   self.resume.changes[:5000])
                log.info("MLflow: continuing run %s from step %d", run_id, self.resume.step)
            write_tracker(self.run_dir, "mlflow", {"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri()})

        def on_log(self, args, state, control, logs, model=None, **kwargs):
            if self.held and self.resume.exact and logs:
                import re

                step = state.global_step
                logs = {k: v for k, v in logs.items()
                        if not (self.resume.step < step <= self.held.get(re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", k), -1))}
                if not logs:
                    return  # every value of this step is in the run already (the resume is exact)
            return super().on_log(args, state, control, logs=logs, model=model, **kwargs)

    return ContinuedWandbCallback, ContinuedMLflowCallback


class TrackerResume:
    """What a tracker callback needs to know about the resume: the step, whether it is exact (no change that alters
    training: then the steps the tracker already holds are the ones this process would log again), and the
    changes applied otherwise (marked on the tracker run)."""

    def __init__(self, step: int, exact: bool = True, changes: str = ""):
        self.step, self.exact, self.changes = step, exact, changes
