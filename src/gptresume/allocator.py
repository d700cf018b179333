"""Keep freed CPU tensor memory for reuse instead of handing it back to the OS after every step.

glibc serves every allocation above its mmap threshold (128 KB, rising to at most 32 MB) with a fresh mmap and
returns it with munmap on free. A training step allocates and frees the same large tensors each time (GPT-2's
logits alone are batch x block x vocab floats: 33 MB for the demo, 51 MB for GPT-2 124M at batch 2 x 128), so
every step pays for zero-filling those pages again: measured here, 2.7 million page faults in 70 demo steps of a
plain Trainer, which ran about 15% slower than the same steps in a hand-written loop. With mmap off and the heap
never trimmed, freed chunks are reused: 15x fewer page faults, the same peak memory, and steps 1.2x (demo) to
1.6x (GPT-2 124M shape) faster than the plain Trainer's (bench/RESULTS.md).

The allocator never changes what is computed (PyTorch aligns every CPU tensor to 64 bytes either way), so resumes
stay bitwise exact; tests/test_allocator.py checks the losses with and without it. This is the fix PyTorch's CPU
tuning guides get from preloading jemalloc or tcmalloc, done with glibc's own `mallopt`. Other C libraries (musl,
macOS) are left alone. GPTRESUME_MALLOC=system keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV = "GPTRESUME_MALLOC"
M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes an int
_applied = False


def applied() -> bool:
    """Whether this process keeps freed memory (for reports such as the benchmark's)."""
    return _applied


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and heap trimming in this process; True if applied."""
    global _applied
    if os.environ.get(ENV, "").strip().lower() == "system":
        log.debug("%s=system: glibc's default allocator settings are kept", ENV)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    except (OSError, AttributeError):
        return False
    if _applied:
        log.debug("CPU allocator: freed memory is kept for reuse (glibc mmap and trimming off; %s=system to "
                 "keep the defaults)", ENV)
    return _applied
