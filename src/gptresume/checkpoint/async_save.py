"""Asynchronous checkpoint saves (`checkpoint.async_save: true`).

Training pauses only to copy its state into CPU memory: model weights, optimizer and scheduler state (tensors
cloned, shared tensors kept shared), plus the small files Trainer writes from live state (RNG state, scaler,
`trainer_state.json`), which are written at once. A background thread then writes the same Trainer-format files
a synchronous save writes (`model.safetensors`, `optimizer.pt`, `scheduler.pt`, config, tokenizer, training
args), hashes and fsyncs every file and commits the manifest (`CommitCallback`), and only then applies retention.

On a GPU the copies go into pinned host buffers kept from one save to the next, queued without waiting
(`non_blocking`), with one synchronisation before the writer starts: the pause is the device-to-host copy.

Several processes (DDP): each rank copies what it saves (rank 0 the model, optimizer and scheduler; every rank
its RNG file) and runs its own writer thread; the writers agree (`save_job`: every rank's files are written),
rank 0 commits the manifest, and the writers agree again, so no rank's save is over before the commit is: a
stop waits for the in-flight save on every rank. A rank that fails or dies during the write means no commit.

At most one save is in flight: the next save waits for the previous one. Training end and graceful stops wait
for it before the process exits (`finishing_saves`). A crash or `kill -9` during the background write leaves a
directory without a manifest: the previous checkpoint stays the newest valid one. A write error in the
background is raised in the training thread at the next save or at the end of training.

DeepSpeed, FSDP (their sharded saves gather across ranks inside the save), XLA, SageMaker MP, a model loaded
sharded by Transformers, push_to_hub and hyper-parameter search stay synchronous, with one warning saying why.

This module is the Trainer-free part (state copies, the writer thread); the `_save_checkpoint` override that uses
it lives with every other private Trainer override in gptresume/training/trainer.py, and the snapshot and write it
runs in gptresume/training/async_snapshot.py.
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
    kernel must first map page by page.

    A CUDA tensor is copied into pinned host memory (allocated once, then reused through `pool` like the CPU
    copies) with `non_blocking=True`: the copies are only queued. Call `finish_device_copies(memo)` before
    anything reads them (the writer thread)."""
    import torch

    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr(), storage.nbytes())
        copied = memo.get(key)
        if copied is None:
            copied = pool.pop(key, None) if pool else None
            if t.device.type == "cuda":
                if copied is None:
                    copied = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=True).untyped_storage()
                copied.copy_(storage, non_blocking=True)
            elif copied is not None:
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


def finish_device_copies(memo: dict) -> None:
    """Wait for the non-blocking device-to-host copies `cpu_copy` queued into `memo` (one synchronisation per
    CUDA device); nothing to do for CPU tensors."""
    devices = {key[0] for key in memo if key[0].startswith("cuda")}
    if devices:
        import torch

        for device in sorted(devices):
            torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the writer thread


class NotCommitted(RuntimeError):
    """This rank's part of an asynchronous save was written, but another rank's failed: nothing was committed."""


def save_job(name: str, write, commit, agree=lambda ok: ok, is_main: bool = True):
    """The writer thread's job for one save (the `job` of `BackgroundSaver.submit`): `write()` this rank's files;
    `agree(ok) -> bool` (true iff true on every rank) that every rank wrote; rank 0 runs `commit()` (the manifest,
    then retention); `agree` again that it committed. Every rank sees the same outcome of each agreement, so all
    take part in the same ones and no writer is left waiting; a rank whose part succeeded raises `NotCommitted`
    when another's did not."""

    def job(timings: dict) -> None:
        w0 = time.perf_counter()
        error = None
        try:
            write()
        except BaseException as e:
            error = e
        timings["write_s"] = time.perf_counter() - w0
        if not agree(error is None):
            raise error or NotCommitted(f"{name} was not committed: another process could not write its part "
                                        "(its error is in its own output)")
        c0 = time.perf_counter()
        if is_main and commit is not None:
            try:
                commit()
            except BaseException as e:
                error = e
        if not agree(error is None):
            raise error or NotCommitted(f"{name} was not committed: rank 0 could not commit its manifest (its "
                                        "error is in rank 0's output)")
        timings["commit_s"] = time.perf_counter() - c0
        log.debug("Committed %s in the background: training paused %.3fs, written in %.3fs, hashed, fsynced "
                  "and committed in %.3fs", name, timings.get("blocked_s", 0.0), timings["write_s"],
                  timings["commit_s"])

    return job


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
