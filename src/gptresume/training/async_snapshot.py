"""The asynchronous save's training-thread snapshot and background write (moved from trainer.py)."""

from __future__ import annotations

import os
import warnings

from gptresume.checkpoint.async_save import cpu_copy, delay_for_tests, finish_device_copies


class AsyncSnapshotMixin:
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

