"""The Trainer side of `checkpoint.async_save`: what `ResumableTrainerMixin._save_checkpoint` (trainer.py) runs
instead of Trainer's own save, split in two.

- `snapshot_checkpoint(trainer)`, on the training thread: Trainer's bookkeeping, the small files written from
  live state (RNG file, scaler, trainer_state.json) and CPU copies of the model, optimizer and scheduler state;
- `write_snapshot(trainer, ...)`, on the writer thread (checkpoint/async_save.py): the files Trainer's
  `save_model` and `_save_optimizer_and_scheduler` write, from those copies.

Together they mirror `Trainer._save_checkpoint` of transformers 5.24 for plain PyTorch (one process or DDP); the
private Trainer methods and names they call are listed in compat.py under this module (the copied method's source
is pinned by its sha256), and `async_unsupported` names the setups that stay synchronous.
"""

from __future__ import annotations

import os
import warnings

from gptresume.checkpoint.async_save import cpu_copy, delay_for_tests, finish_device_copies
from gptresume.checkpoint.files import checkpoint_name


def async_unsupported(trainer, trial) -> str | None:
    """Why this save must be synchronous (None: it can be asynchronous)."""
    from transformers import PreTrainedModel
    from transformers.trainer import is_sagemaker_mp_enabled, is_torch_xla_available

    checks = (
        (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled,
         "DeepSpeed/FSDP: their sharded saves gather state across ranks inside the save"),
        (getattr(trainer, "is_distributed_loading_by_transformers", False),
         "the model was loaded sharded across ranks by Transformers"),
        (is_torch_xla_available() or is_sagemaker_mp_enabled(), "XLA/SageMaker model parallel"),
        (not isinstance(trainer.model, PreTrainedModel), "the model is not a transformers PreTrainedModel"),
        (trainer.args.push_to_hub, "push_to_hub"),
        (trial is not None or trainer.hp_search_backend is not None, "hyper-parameter search"),
        (trainer.args.save_total_limit is not None, "save_total_limit"),
    )
    return next((why for bad, why in checks if bad), None)


def snapshot_checkpoint(trainer):
    """The training-thread part: Trainer's bookkeeping, the small files, and CPU copies of the large state this
    rank saves (Trainer: the model, optimizer and scheduler on the process that `should_save`; the RNG file and
    scaler on every rank). Device copies are finished before this returns, so the writer reads whole tensors.
    Returns (output_dir, model_state, optimizer_state, scheduler_state)."""
    from transformers.trainer import TRAINER_STATE_NAME, ExportableState, SaveStrategy, reissue_pt_warnings

    t, args, state = trainer, trainer.args, trainer.state
    t.store_flos()
    run_dir = t._get_output_dir(trial=None)
    output_dir = os.path.join(run_dir, checkpoint_name(state.global_step))
    os.makedirs(output_dir, exist_ok=True)
    if args.save_strategy in [SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST] and state.best_global_step:
        best = os.path.join(run_dir, checkpoint_name(state.best_global_step))
        if os.path.exists(best):
            state.best_model_checkpoint = best
    memo, pool = {}, t.async_saver.staging  # no write is in flight: the last save's copies are free
    saves = args.should_save
    model_state = cpu_copy(t.model.state_dict(), memo, pool) if saves else None
    optimizer_state = scheduler_state = None
    if not args.save_only_model:
        if saves:
            optimizer_state = cpu_copy(t.optimizer.state_dict(), memo, pool)
            with warnings.catch_warnings(record=True) as caught:
                scheduler_state = cpu_copy(t.lr_scheduler.state_dict(), memo, pool)
            reissue_pt_warnings(caught)
        t._save_scaler(output_dir)
        t._save_rng_state(output_dir)
    if saves:
        for cb in [cb for cb in t.callback_handler.callbacks + [t.control] if isinstance(cb, ExportableState)]:
            name = cb.__class__.__name__
            if isinstance(state.stateful_callbacks[name], list):
                state.stateful_callbacks[name].append(cb.state())
            else:
                state.stateful_callbacks[name] = cb.state()
        state.save_to_json(os.path.join(output_dir, TRAINER_STATE_NAME))
    finish_device_copies(memo)  # one synchronisation (GPU), before any writer reads the copies
    t.async_saver.staging = memo
    return output_dir, model_state, optimizer_state, scheduler_state


def write_snapshot(trainer, output_dir, step, model_state, optimizer_state, scheduler_state) -> None:
    """The background part: the files Trainer's save_model and _save_optimizer_and_scheduler write."""
    import torch
    from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

    if model_state is None:  # a rank that saves no model (DDP rank > 0): its RNG file is already written
        return
    trainer._save(output_dir, state_dict=model_state)  # config, weights, tokenizer, training args
    delay_for_tests(step)
    if optimizer_state is not None:
        torch.save(optimizer_state, os.path.join(output_dir, OPTIMIZER_NAME))
        torch.save(scheduler_state, os.path.join(output_dir, SCHEDULER_NAME))
