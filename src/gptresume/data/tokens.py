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

_WORK: dict = {}  # what forked workers inherit: the encoding function and EOS


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


CHECK_DOCS = 64  # documents encoded both ways before the backend's fast call is trusted


def ids_encoder(tokenizer, sample: list[str]):
    """A function docs -> their token id lists, equal to `tokenizer(docs, add_special_tokens=False)["input_ids"]`.

    Why not always that call: for a fast tokenizer it asks the Rust backend for offsets and word ids and wraps each
    document in a Python object, ~30% of the tokenizing time packing does. `backend_tokenizer.encode_batch_fast`
    (public `tokenizers` API) returns the same ids without them. The transformers call is made first on `sample`
    (which leaves the backend without truncation or padding and with the special-token handling that call uses),
    and the fast call is used only when it gives the same ids for that sample: a tokenizer where the two differ
    keeps the transformers call, so the token stream, and the data fingerprint, never depend on the path."""

    def full(docs):
        return tokenizer(docs, add_special_tokens=False)["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    call = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    if call is None:
        return full
    expected = full(sample[:CHECK_DOCS])

    def fast(docs):
        return [e.ids for e in call(docs, add_special_tokens=False)]

    return fast if fast(sample[:CHECK_DOCS]) == expected else full


def encode_batch(encode, docs: list[str], eos: int) -> np.ndarray:
    """The token ids of `docs` (by `encode`, from `ids_encoder`), each followed by EOS, as one int32 array."""
    end = np.array([eos], dtype=TOKEN_DTYPE)
    parts = []
    for ids in encode(docs):
        parts += (np.array(ids, dtype=TOKEN_DTYPE), end)
    return np.concatenate(parts) if parts else np.empty(0, dtype=TOKEN_DTYPE)


def _encode(docs: list[str]) -> np.ndarray:
    return encode_batch(_WORK["encode"], docs, _WORK["eos"])


def tokenize_to_file(batches, text_bytes: int, tokenizer, path: Path, num_proc: int | None = None,
                     max_tokens: int | None = None, progress=None) -> int:
    """Append the token stream of `batches` (lists of documents, in order) to `path`; returns the tokens written.

    `max_tokens` stops reading the documents once that many tokens are written (the stream is cut there).
    `progress`: a gptresume.progress.Progress over the text's bytes (default: one for this packing)."""
    eos = tokenizer.eos_token_id
    procs = processes_for(text_bytes, num_proc)
    progress = progress if progress is not None else packing_progress(text_bytes)
    counter = {"tokens": 0}
    batches = _reported(batches, progress, counter)
    first = next(batches, None)
    if first is None:
        return 0
    encode = ids_encoder(tokenizer, first)
    batches = chain([first], batches)
    written = 0
    with open(path, "ab") as out:

        def write(arr: np.ndarray) -> bool:
            nonlocal written
            if max_tokens is not None and written + len(arr) >= max_tokens:
                arr = arr[: max_tokens - written]
                out.write(arr.tobytes())
                written += len(arr)
                counter["tokens"] = written
                return False
            out.write(arr.tobytes())
            written += len(arr)
            counter["tokens"] = written
            return True

        if procs <= 1:
            for docs in batches:
                if not write(encode_batch(encode, docs, eos)):
                    break
        else:
            _tokenize_in_workers(batches, encode, eos, procs, write)
    log.debug("Tokenized %d tokens (%d process(es))", written, procs)
    finish_packing_progress(progress, written, procs)
    return written


# ---------------------------------------------------------------- progress (gptresume/progress.py)


def packing_progress(text_bytes: int, **options):
    """A Progress over the text's bytes: lines with MB/s, tokens so far and an ETA (a log), or one redrawn line
    (a terminal); quiet for a quick packing. `options`: Progress's (interactive, emit, clock_s)."""
    from gptresume.progress import Progress, size

    return Progress("packing", text_bytes or None, unit=size, **options)


def _reported(batches, progress, counter: dict):
    """`batches` as they are, telling `progress` the bytes of text read so far and the tokens written."""
    done = 0
    for docs in batches:
        done += sum(len(d.encode("utf-8", "replace")) for d in docs if isinstance(d, str))
        yield docs
        progress.update(done, f"{counter['tokens']:,} tokens")


def finish_packing_progress(progress, tokens: int, procs: int) -> None:
    from gptresume.progress import duration, size

    seconds = progress.elapsed
    rate = f" ({size(progress.done / seconds)}/s, {tokens / seconds:,.0f} tokens/s)" if seconds > 0 else ""
    progress.finish(f"packing: {size(progress.done)} of text -> {tokens:,} tokens in {duration(seconds)}{rate}, "
                    f"{procs} process(es)")


def _tokenize_in_workers(batches, encode, eos, procs, write) -> None:
    """Forked workers tokenize batches sent to them; results are written in document order, at most 2 x procs
    batches in flight (memory bounded by the batch size, not the corpus)."""
    import multiprocessing

    _WORK.update(encode=encode, eos=eos)
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
