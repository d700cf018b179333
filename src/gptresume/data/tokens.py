"""Text documents -> one flat file of int32 token ids (each document followed by EOS), written as it is produced.

Why a file and not an in-memory table: the token stream of a large corpus does not fit in memory (9B tokens of
OpenWebText are 36 GB as int32). Documents arrive in batches (read lazily, data/sources.py `text_batches`), are
tokenized in this process or in `num_proc` forked workers (each returns one numpy array per batch), and appended in
document order; at most a few batches are in flight, so memory stays bounded by the batch size, not the corpus.
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


def processes_for(text_bytes: int, num_proc: int | None) -> int:
    """data.num_proc, or by default the usable cores when the text is large enough to pay for the workers."""
    if num_proc is not None:
        return num_proc
    return usable_cores() if text_bytes >= PARALLEL_MIN_BYTES else 1


def encode_batch(tokenizer, docs: list[str], eos: int) -> np.ndarray:
    """The token ids of `docs`, each followed by EOS, as one int32 array (the call packing always made)."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids) + len(ids)
    return np.fromiter(chain.from_iterable(x + [eos] for x in ids), dtype=TOKEN_DTYPE, count=total)


def _encode(docs: list[str]) -> np.ndarray:
    return encode_batch(_WORK["tokenizer"], docs, _WORK["eos"])


def tokenize_to_file(batches, text_bytes: int, tokenizer, path: Path, num_proc: int | None = None,
                     max_tokens: int | None = None) -> int:
    """Append the token stream of `batches` (lists of documents, in order) to `path`; returns the tokens written.

    `max_tokens` stops reading the documents once that many tokens are written (the stream is cut there)."""
    eos = tokenizer.eos_token_id
    procs = processes_for(text_bytes, num_proc)
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
            for docs in batches:
                if not write(encode_batch(tokenizer, docs, eos)):
                    break
        else:
            _tokenize_in_workers(batches, tokenizer, eos, procs, write)
    log.debug("Tokenized %d tokens (%d process(es))", written, procs)
    return written


def _tokenize_in_workers(batches, tokenizer, eos, procs, write) -> None:
    """Forked workers tokenize batches sent to them; results are written in document order, at most 2 x procs
    batches in flight (memory bounded by the batch size, not the corpus)."""
    import multiprocessing

    _WORK.update(tokenizer=tokenizer, eos=eos)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked: the tokenizer's own threads are off anyway
    try:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            pending: deque = deque()
            for docs in batches:
                pending.append(pool.apply_async(_encode, (docs,)))
                if len(pending) >= 2 * procs:
                    if not write(pending.popleft().get()):
                        return
            while pending:
                if not write(pending.popleft().get()):
                    return
    finally:
        _WORK.clear()
