"""The identity of a script's training dataset, recorded in every checkpoint and compared on resume, so a resume on
different data is refused instead of continuing silently at the same sample offset.

A content hash, not `datasets.Dataset._fingerprint`: that one is derived from the operations that built the
dataset and becomes a random value (with a warning) whenever a `.map` function cannot be hashed, which would
refuse every resume. Hashing the content costs one pass over the data at start-up (token ids hash at several
hundred MB/s); a caller with a cheaper identity it trusts passes `data_fingerprint=` instead.
"""

from __future__ import annotations

import hashlib

from gptresume.errors import UsageError

ARROW_BATCH_ROWS = 8192


def is_iterable_dataset(dataset) -> bool:
    """A streaming dataset (`datasets.IterableDataset` or `torch.utils.data.IterableDataset`): no length, no index."""
    try:
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            return True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    from torch.utils.data import IterableDataset

    return isinstance(dataset, IterableDataset)


def dataset_fingerprint(dataset) -> str:
    """16 hex digits identifying the dataset's content: equal rows in equal order give equal fingerprints."""
    if is_iterable_dataset(dataset):
        raise UsageError(
            "the training dataset is an IterableDataset (streaming): gptresume cannot yet record its position, so "
            "a resume would replay or skip data. Materialize it (e.g. datasets.Dataset.from_generator or "
            "load_dataset(..., streaming=False)), or train it with plain trainer.train()")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise UsageError(f"the training dataset ({type(dataset).__name__}) has no __len__/__getitem__; gptresume "
                         "needs a map-style dataset (datasets.Dataset or torch.utils.data.Dataset)")
    h = hashlib.sha256()
    try:
        import datasets
    except ImportError:  # pragma: no cover
        datasets = None
    if datasets is not None and isinstance(dataset, datasets.Dataset):
        _hash_arrow_dataset(dataset, h)
    else:
        h.update(f"{len(dataset)}\n".encode())
        for i in range(len(dataset)):
            _hash_value(dataset[i], h)
    return h.hexdigest()[:16]


def _hash_arrow_dataset(dataset, h) -> None:
    """Column by column in Arrow batches (the dataset's row order, indices mapping included); list columns of
    numbers hash as their flat values plus row lengths, so token ids never become Python objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    h.update(repr((len(dataset), dataset.column_names)).encode())
    for batch in dataset.with_format("arrow").iter(batch_size=ARROW_BATCH_ROWS):
        for name in batch.column_names:
            column = batch.column(name)
            h.update(name.encode())
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                values = pc.list_flatten(column)
                if _is_numeric(values.type):  # list of numbers (token ids): lengths, then the flat values
                    h.update(pc.list_value_length(column).to_numpy(zero_copy_only=False).tobytes())
                    column = values
            h.update(str(column.type).encode())
            if _is_numeric(column.type) and column.null_count == 0:
                h.update(column.to_numpy(zero_copy_only=False).tobytes())
            elif pa.types.is_string(column.type) and column.null_count == 0:  # texts: lengths, then the bytes
                h.update(pc.binary_length(column).to_numpy(zero_copy_only=False).tobytes())
                h.update("".join(column.to_pylist()).encode())
            else:  # strings, nested lists, nulls: their Python values
                _hash_value(column.to_pylist(), h)


def _is_numeric(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _hash_value(value, h) -> None:
    """Any row of a map-style dataset: tensors, arrays, mappings, sequences and scalars, type and shape included."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu()
        h.update(f"t{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    elif hasattr(value, "tobytes") and hasattr(value, "dtype"):  # numpy
        h.update(f"a{value.dtype}{getattr(value, 'shape', ())}".encode())
        h.update(value.tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _hash_value(value[k], h)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for v in value:
            _hash_value(v, h)
    else:
        h.update(repr(value).encode())


def _byte_dtype():
    import torch

    return torch.uint8
