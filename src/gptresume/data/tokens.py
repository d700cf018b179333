"""Text documents -> one flat file of int32 token ids (each document followed by EOS), written as it is produced.

Why a file and not an in-memory table: the token stream of a large corpus does not fit in memory (9B tokens of
OpenWebText are 36 GB as int32). Documents are tokenized in batches, in this process or in `num_proc` forked
workers (each worker reads its documents from the memory-mapped Arrow table it inherited and returns one numpy
array per batch), and appended in document order; at most a few batches are in flight, so memory stays bounded by
the batch size, not by the corpus.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from itertools import chain
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TOKEN_DTYPE = np.int32
BATCH_DOCS = 1000
# Below this much text, worker processes cost more to start than they save (the demo corpus is ~3 MB).
PARALLEL_MIN_BYTES = 64 << 20

_WORK: dict = {}  # what forked workers inherit: the tokenizer, the documents, EOS


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def processes_for(texts, num_proc: int | None) -> int:
    """data.num_proc, or by default the usable cores when the text is large enough to pay for the workers."""
    if num_proc is not None:
        return num_proc
    try:
        size = texts.data.nbytes
    except AttributeError:
        size = 0
    return usable_cores() if size >= PARALLEL_MIN_BYTES else 1


def encode_batch(tokenizer, docs: list[str], eos: int) -> np.ndarray:
    """The token ids of `docs`, each followed by EOS, as one int32 array (the call packing always made)."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids) + len(ids)
    return np.fromiter(chain.from_iterable(x + [eos] for x in ids), dtype=TOKEN_DTYPE, count=total)


def _encode_range(bounds: tuple[int, int]) -> np.ndarray:
    start, stop = bounds
    return encode_batch(_WORK["tokenizer"], _WORK["texts"][start:stop]["text"], _WORK["eos"])


def tokenize_to_file(texts, tokenizer, path: Path, num_proc: int | None = None,
                     max_tokens: int | None = None) -> int:
    """Append the token stream of `texts` (a Dataset with column `text`) to `path`; returns the tokens written.

    `max_tokens` stops reading the documents once that many tokens are written (the stream is cut there)."""
    eos = tokenizer.eos_token_id
    n_docs = len(texts)
    ranges = [(s, min(s + BATCH_DOCS, n_docs)) for s in range(0, n_docs, BATCH_DOCS)]
    procs = min(processes_for(texts, num_proc), max(1, len(ranges)))
    written = 0
    with open(path, "ab") as out:

        def write(arr: np.ndarray) -> bool:
            nonlocal written
            if max_tokens is not None and written + len(arr) >= max_tokens:
                arr = arr[: max_tokens - written]
                out.write(arr.tobytes())
                written += len(arr)
                return False
            out.write(arr.tobytes())
            written += len(arr)
            return True

        if procs <= 1:
            for bounds in ranges:
                if not write(encode_batch(tokenizer, texts[bounds[0]:bounds[1]]["text"], eos)):
                    break
        else:
            _tokenize_in_workers(texts, tokenizer, eos, ranges, procs, write)
    log.debug("Tokenized %d documents into %d tokens (%d process(es))", n_docs, written, procs)
    return written


def _tokenize_in_workers(texts, tokenizer, eos, ranges, procs, write) -> None:
    """Forked workers tokenize batches; results are written in document order, at most 2 x procs in flight."""
    import multiprocessing

    _WORK.update(tokenizer=tokenizer, texts=texts, eos=eos)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked: the tokenizer's own threads are off anyway
    try:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            pending: deque = deque()
            todo = iter(ranges)
            for bounds in todo:
                pending.append(pool.apply_async(_encode_range, (bounds,)))
                if len(pending) >= 2 * procs:
                    if not write(pending.popleft().get()):
                        return
            while pending:
                if not write(pending.popleft().get()):
                    return
    finally:
        _WORK.clear()
