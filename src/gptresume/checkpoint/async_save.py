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

This module is the Trainer-free part (state copies, the writer thread); the `_save_checkpoint` override that uses
it lives with every other private Trainer override in gptresume/training/trainer.py.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
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


def delay_for_tests(step: int) -> None:
    spec = os.environ.get(TEST_WRITE_DELAY_ENV)
    if not spec:
        return
    at, _, seconds = spec.partition(":")
    if int(at) == step:
        log.warning("%s: the writer of checkpoint-%d sleeps %ss", TEST_WRITE_DELAY_ENV, step, seconds)
        time.sleep(float(seconds))
