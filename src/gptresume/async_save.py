"""Asynchronous checkpoint saves (`checkpoint.async_save: true`).

Training pauses only to copy its state into CPU memory: model weights, optimizer and scheduler state (tensors
cloned, shared tensors kept shared), plus the small files Trainer writes from live state (RNG state, scaler,
`trainer_state.json`), which are written at once. A background thread then writes the same Trainer-format files
a synchronous save writes (`model.safetensors`, `optimizer.pt`, `scheduler.pt`, config, tokenizer, training
args), hashes and fsyncs every file and commits the manifest (`CommitCallback`), and only then applies retention.

At most one save is in flight: the next save waits for the previous one. Training end and graceful stops wait
for it before the process exits (`finishing_saves`). A crash or `kill -9` during the background write leaves a
directory without a manifest: the previous checkpoint stays the newest valid one. A write error in the
background is raised in the training thread at the next save or at the end of training.

Single-process runs only: with several processes (or DeepSpeed, FSDP, XLA, SageMaker MP, push_to_hub, a
hyper-parameter search) saves stay synchronous, with one warning saying why.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager

log = logging.getLogger(__name__)

# Test hook: "STEP:SECONDS" makes the writer of checkpoint-STEP sleep SECONDS after writing model.safetensors and
# before the optimizer state, so a test can kill the process while a background write is observably in progress.
TEST_WRITE_DELAY_ENV = "GPTRESUME_TEST_ASYNC_WRITE_DELAY"


# ---------------------------------------------------------------- state copies


def cpu_copy(obj, memo: dict | None = None, pool: dict | None = None):
    """Deep copy of a state structure (dicts, lists, tuples, tensors, plain values) with every tensor copied
    into CPU memory. Tensors that share storage in `obj` share storage in the copy (tied weights stay tied, which
    `save_pretrained` relies on to drop the alias).

    `memo` collects the copied storages; passed back as `pool` on the next save (when no write uses them any
    more), a storage of the same tensor is copied into in place: about 3x faster than fresh memory, which the
    kernel must first map page by page."""
    import torch

    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr(), storage.nbytes())
        copied = memo.get(key)
        if copied is None:
            copied = pool.pop(key, None) if pool else None
            if copied is not None:
                copied.copy_(storage)
            else:
                copied = storage.clone() if t.device.type == "cpu" else storage.cpu()
            memo[key] = copied
        out = torch.empty(0, dtype=t.dtype)
        out.set_(copied, t.storage_offset(), t.size(), t.stride())
        return out
    if type(obj) in (dict, OrderedDict):
        return type(obj)((k, cpu_copy(v, memo, pool)) for k, v in obj.items())
    if isinstance(obj, list):
        return [cpu_copy(v, memo, pool) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(cpu_copy(v, memo, pool) for v in obj)
    return copy.deepcopy(obj)


# ---------------------------------------------------------------- the writer thread


class BackgroundSaver:
    """Runs one save job at a time in a background thread; `wait()` joins it and re-raises its error."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.staging: dict = {}
        """The CPU copies of the last save, reused by the next (`cpu_copy` pool) once that save is done."""
        self.history: list[dict] = []
        """Per committed save: step, blocked_s (training paused), write_s, commit_s, total_s."""

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, name: str, job, timings: dict) -> None:
        self.wait()

        def run():
            t0 = time.perf_counter()
            try:
                job(timings)
            except BaseException as e:  # re-raised in the training thread by wait()
                self._error = e
                return
            timings["total_s"] = timings.get("blocked_s", 0.0) + time.perf_counter() - t0
            self.history.append(timings)

        # Not a daemon: should the main thread end without wait(), the interpreter still lets the save finish.
        self._thread = threading.Thread(target=run, name=f"gptresume-save-{name}")
        self._thread.start()

    def wait(self, reraise: bool = True) -> float:
        """Block until no save is in flight; returns the seconds waited. Re-raises a failed save's error."""
        t0 = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            if reraise:
                raise error
            log.error("The background checkpoint save failed: %s", error)
        return time.perf_counter() - t0


@contextmanager
def finishing_saves(trainer):
    """Around `trainer.train()`: when training returns (done or stopped) wait until the in-flight save is
    committed, so the process never exits before its newest checkpoint is durable; its error is raised here.
    When training fails, still wait (a save that was under way is kept) but let the original error through."""
    saver = getattr(trainer, "async_saver", None)
    try:
        yield
    except BaseException:
        if saver is not None:
            saver.wait(reraise=False)
        raise
    if saver is not None:
        saver.wait()


# ---------------------------------------------------------------- the Trainer override


class AsyncSaveMixin:
    """Mixed into gptresume's Trainer subclass, before `Trainer`. With `async_saver` set (training.py sets it
    when `checkpoint.async_save` is on), `_save_checkpoint` copies the state and hands the writing to the
    background thread; otherwise, and wherever async saving is unsupported, it is Trainer's own.

    `Trainer._save_checkpoint` is private: this override mirrors it as of transformers 5.24 (checked against
    5.24.0), for the single-process, plain-PyTorch case. tests/test_async_save.py checks that it writes the same
    files with the same contents as Trainer's own, and that a run saved this way resumes exactly.
    """

    async_saver: BackgroundSaver | None = None
    async_commit = None
    """CommitCallback (or anything with `commit_later(args, state) -> callable`): the manifest commit job."""

    def _save_checkpoint(self, model, trial):
        reason = self._async_unsupported(trial) if self.async_saver is not None else "off"
        if reason:
            if reason != "off" and not getattr(self, "_async_warned", False):
                self._async_warned = True
                log.warning("checkpoint.async_save: saving synchronously (%s)", reason)
            return super()._save_checkpoint(model, trial)
        t0 = time.perf_counter()
        waited = self.async_saver.wait()  # at most one save in flight
        timings = {"step": self.state.global_step, "waited_s": waited}  # waited_s is part of blocked_s
        step = self.state.global_step
        output_dir, model_state, optimizer_state, scheduler_state = self._snapshot_checkpoint()
        commit = self.async_commit.commit_later(self.args, self.state) if self.async_commit is not None else None
        timings["blocked_s"] = time.perf_counter() - t0

        def job(t):
            w0 = time.perf_counter()
            self._write_snapshot(output_dir, step, model_state, optimizer_state, scheduler_state)
            t["write_s"] = time.perf_counter() - w0
            c0 = time.perf_counter()
            if commit is not None:
                commit()
            t["commit_s"] = time.perf_counter() - c0
            log.debug("Committed %s in the background: training paused %.3fs, written in %.3fs, hashed, fsynced "
                      "and committed in %.3fs", os.path.basename(output_dir), t["blocked_s"], t["write_s"],
                      t["commit_s"])

        self.async_saver.submit(os.path.basename(output_dir), job, timings)

    def _async_unsupported(self, trial) -> str | None:
        from transformers import PreTrainedModel
        from transformers.trainer import is_sagemaker_mp_enabled, is_torch_xla_available

        checks = (
            (self.args.world_size > 1, f"{self.args.world_size} processes"),
            (self.is_deepspeed_enabled or self.is_fsdp_enabled, "DeepSpeed/FSDP"),
            (is_torch_xla_available() or is_sagemaker_mp_enabled(), "XLA/SageMaker model parallel"),
            (not isinstance(self.model, PreTrainedModel), "the model is not a transformers PreTrainedModel"),
            (self.args.push_to_hub, "push_to_hub"),
            (trial is not None or self.hp_search_backend is not None, "hyper-parameter search"),
            (self.args.save_total_limit is not None, "save_total_limit"),
        )
        return next((why for bad, why in checks if bad), None)

    def _snapshot_checkpoint(self):
        """The training-thread part: Trainer's bookkeeping, the small files, and CPU copies of the large state."""
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
        model_state = cpu_copy(self.model.state_dict(), memo, pool)
        optimizer_state = scheduler_state = None
        if not self.args.save_only_model:
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
        self.async_saver.staging = memo
        return output_dir, model_state, optimizer_state, scheduler_state

    def _write_snapshot(self, output_dir, step, model_state, optimizer_state, scheduler_state) -> None:
        """The background part: the files Trainer's save_model and _save_optimizer_and_scheduler write."""
        import torch
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        self._save(output_dir, state_dict=model_state)  # config, weights, tokenizer, training args
        _test_delay(step)
        if optimizer_state is not None:
            torch.save(optimizer_state, os.path.join(output_dir, OPTIMIZER_NAME))
            torch.save(scheduler_state, os.path.join(output_dir, SCHEDULER_NAME))


def _test_delay(step: int) -> None:
    spec = os.environ.get(TEST_WRITE_DELAY_ENV)
    if not spec:
        return
    at, _, seconds = spec.partition(":")
    if int(at) == step:
        log.warning("%s: the writer of checkpoint-%d sleeps %ss", TEST_WRITE_DELAY_ENV, step, seconds)
        time.sleep(float(seconds))
