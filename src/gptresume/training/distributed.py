"""Several processes (torchrun, accelerate launch, srun): one process per rank; rank 0 keeps the books.

Rules every multi-process path follows:
- A decision that can end the run before training (a refused resume, bad input, a complete run, a held run
  lock) is taken once, on rank 0, and broadcast: every rank then exits with the same code, and none is left
  waiting in a collective for a rank that has already gone.
- Run-directory files (config.yaml, history.jsonl, metrics.jsonl, tokenizer/, data-cache/, final/, the lock,
  manifests) are written by rank 0 only; the other ranks wait at a barrier, then read them.
- With one process every function here is a plain call: no process group is created.
"""

from __future__ import annotations

import os
import pickle
from typing import TypeVar
from collections.abc import Callable

from gptresume.errors import UsageError

T = TypeVar("T")

_CONTROL_GROUP = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 of the job (also true with one process, and before a process group exists)."""
    return rank() == 0


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def setup() -> None:
    """Create the process group before anything else runs, so rank 0 can decide for every rank.

    On a machine without an accelerator, accelerate 1.15 (checked with transformers 5.24) initialises a process
    group under torchrun but reports `DistributedType.NO` unless told to use the CPU: every rank would then train
    alone on all the data, without DDP or a distributed sampler, and write the same checkpoint files.
    `accelerate launch` without `--cpu` even exports ACCELERATE_USE_CPU=False. So: CPU + gloo, explicitly.
    """
    if world_size() <= 1:
        return
    dist = _dist()
    if dist.is_initialized():
        return
    if not has_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"
        dist.init_process_group("gloo")
    else:  # what TrainingArguments would do: accelerate picks the backend (nccl, ...) and the device
        from accelerate import PartialState

        PartialState()


# The other ranks wait at most this long for rank 0's decision: preparing a large corpus (tokenizing, packing)
# can take far longer than the 30-minute default of a process group.
CONTROL_TIMEOUT_S = 24 * 3600


def _control_group():
    """A gloo group for decisions and barriers (pickled objects), whatever the training backend is."""
    global _CONTROL_GROUP
    if _CONTROL_GROUP is None:
        from datetime import timedelta

        _CONTROL_GROUP = _dist().new_group(backend="gloo", timeout=timedelta(seconds=CONTROL_TIMEOUT_S))
    return _CONTROL_GROUP


def barrier() -> None:
    if active():
        _dist().barrier(group=_control_group())


# ---------------------------------------------------------------- the per-step agreement


def agree(values: list[int]) -> list[int]:
    """The element-wise maximum of `values` over every rank, the same list on every rank: ONE all_reduce of a few
    int64s per optimizer step, carrying every flag the ranks must agree on (training/agreement.py). It runs on the
    gloo control group, in CPU memory, whatever the training backend: no device synchronisation (an NCCL reduction
    would have to be read back from the GPU, stalling its queue). With one process: `values`, no collective."""
    if not active():
        return list(values)
    import torch

    flags = torch.tensor(values, dtype=torch.int64)
    _dist().all_reduce(flags, op=_dist().ReduceOp.MAX, group=_control_group())
    return flags.tolist()


# ---------------------------------------------------------------- asynchronous saves: the writers' agreement


# A background write of a large model can take long: the ranks with little to write wait this long at most for the
# others (a rank that dies is noticed at once: gloo fails the collective when its connection closes).
WRITER_TIMEOUT_S = 6 * 3600


def writer_group():
    """A gloo group used only by the writer threads of asynchronous saves (checkpoint/async_save.py), created by
    every rank from its training thread at the first asynchronous save; None with one process.

    Its own group: collectives of one group must be issued in the same order on every rank, and the training
    thread's (DDP's gradients, `barrier`, the per-step agreement) run at the same time as the writers'."""
    if not active():
        return None
    from datetime import timedelta

    return _dist().new_group(backend="gloo", timeout=timedelta(seconds=WRITER_TIMEOUT_S))


def all_ranks_ok(ok: bool, group) -> bool:
    """True on every rank iff `ok` is true on every rank (from a writer thread, on `writer_group()`)."""
    if group is None:
        return ok
    import torch

    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    _dist().all_reduce(flag, op=_dist().ReduceOp.MIN, group=group)
    return bool(flag.item())


class DecidedOnRankZero(UsageError):
    """Another rank's copy of a UsageError raised on rank 0 (rank 0 prints it; the others only exit)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class RankZeroFailed(RuntimeError):
    """Rank 0 failed with an unexpected error while the other ranks waited for its decision."""


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn` on rank 0 only and give every rank its result, or its UsageError (same message and exit code).

    Any other exception on rank 0 is re-raised there and makes the other ranks fail too (exit 1), instead of
    waiting until the launcher or a collective timeout ends them.
    """
    if not active():
        return fn(*args, **kwargs)
    box = [None]
    error = None
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except UsageError as e:
            box[0] = ("usage", (str(e), e.exit_code))
            error = e
        except BaseException as e:
            box[0] = ("crash", f"{type(e).__name__}: {e}")
            error = e
        try:
            pickle.dumps(box[0])
        except Exception as e:  # an unpicklable result is a bug here, not on the other ranks
            box[0], error = ("crash", f"unpicklable result: {e}"), e
    _dist().broadcast_object_list(box, src=0, group=_control_group())
    kind, value = box[0]
    if kind == "ok":
        return value
    if is_main():
        raise error
    if kind == "usage":
        raise DecidedOnRankZero(*value)
    raise RankZeroFailed(f"rank 0 failed: {value}")


def teardown() -> None:
    """Destroy the process group before the interpreter exits (left alive, gloo may abort the exit: SIGABRT)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def training_defaults(train: dict) -> dict:
    """TrainingArguments values gptresume sets when the config leaves them out (not part of the config).

    Trainer turns on DDP's find_unused_parameters for every PreTrainedModel without gradient checkpointing: an
    extra autograd traversal each step, and a warning from every rank. GPT-2 uses all its parameters; a model
    that does not fails with DDP's own message, and `train.ddp_find_unused_parameters: true` brings it back.
    """
    return {} if "ddp_find_unused_parameters" in train else {"ddp_find_unused_parameters": False}


def warn_if_not_sharded(trainer, train: dict) -> None:
    """accelerate 1.15 turns FSDP on only for accelerators (AcceleratorState keeps the FSDP plugin for MULTI_GPU,
    MULTI_XPU, MULTI_NPU, ... but not MULTI_CPU): on CPU a `train.fsdp` config silently trains as plain DDP."""
    if train.get("fsdp") and not getattr(trainer, "is_fsdp_enabled", False) and is_main():
        import logging

        logging.getLogger(__name__).warning(
            "train.fsdp is set, but FSDP is not active (accelerate enables it only on GPUs and other "
            "accelerators): this run trains as DDP, every rank holding the whole model and optimizer")


def whole_model(trainer, final_dir):
    """A model rank 0 can run alone: under FSDP the trained one is sharded, so reload the saved final/."""
    if getattr(trainer, "is_fsdp_enabled", False):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(final_dir))
    return trainer.model
