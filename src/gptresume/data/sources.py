"""Where training text comes from: the built-in corpus, a hub dataset, or local files (paths and globs)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from pathlib import Path

from gptresume.config import BUILTIN_PREFIX, HUB_PREFIX, DataConfig, fingerprint_of
from gptresume.errors import UsageError
from gptresume.rundir import DATA_CACHE_DIR

FILE_LOADERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
                ".parquet": "parquet"}


CONFIG_FIELD = "data.source"


def resolve_files(cfg: DataConfig, field: str = CONFIG_FIELD) -> list[Path]:
    """Expand paths and globs in data.source, in sorted order; each pattern must match at least one file.
    `field` names where the files were given in messages (`eval --data` passes its own option)."""
    files: list[Path] = []
    for pattern in cfg.sources:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            fix = "in the config or with --set data.source=..." if field == CONFIG_FIELD else f"given to {field}"
            raise UsageError(f"{field}: no file matches {pattern!r} (paths are relative to {os.getcwd()}); "
                             f"fix the path or glob {fix}")
        files.extend(Path(m) for m in matches)
    suffixes = {f.suffix.lower() for f in files}
    unknown = suffixes - set(FILE_LOADERS)
    if unknown:
        raise UsageError(f"{field}: unsupported file type {', '.join(sorted(unknown))}; "
                         f"use {', '.join(sorted(FILE_LOADERS))}")
    loaders = {FILE_LOADERS[s] for s in suffixes}
    if len(loaders) > 1:
        raise UsageError(f"{field}: mixes file types ({', '.join(sorted(suffixes))}); use one type at a time")
    return files


def local_files(cfg: DataConfig) -> list[Path]:
    """The local files a source reads (text files, one token file, or every file of a saved dataset)."""
    from gptresume.data.pretokenized import pretokenized_kind, token_file

    kind = pretokenized_kind(cfg.sources)
    if kind == "saved":
        root = Path(os.path.expanduser(cfg.sources[0]))
        return sorted(p for p in root.rglob("*") if p.is_file())
    if kind == "tokens":
        return [token_file(cfg.sources, "data.source")]
    return resolve_files(cfg)


def source_fingerprint(cfg: DataConfig, run_dir: Path | None = None) -> str:
    """Identity of the raw source, for the data cache key: a content hash of local files (their paths and bytes).

    With `run_dir`, the hash is taken from RUN_DIR/data-cache/sources.json when every file has the path, size,
    mtime_ns and inode it had when it was hashed (`remember_source_fingerprint`), so a resume does not read the
    corpus again; any of those changed, the files are hashed again."""
    first = cfg.sources[0]
    if first.startswith(BUILTIN_PREFIX):
        return fingerprint_of([first, sys.version_info[:3]])
    if first.startswith(HUB_PREFIX):
        return fingerprint_of([first, cfg.hub_config, cfg.hub_split])
    files = local_files(cfg)
    stat_key = _stat_key(files)
    if run_dir is not None:
        known = _read_stat_cache(run_dir).get(stat_key)
        if known:
            return known
    h = hashlib.sha256()
    progress = _hashing_progress(files)
    for f in files:
        h.update(str(f).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                progress.update(progress.done + len(chunk))
    progress.close()
    fp = h.hexdigest()[:16]
    _PENDING[stat_key] = fp
    return fp


def _hashing_progress(files: list[Path]):
    """Lines while a large source is hashed on its first start (a resume reads the stat cache instead)."""
    from gptresume.progress import Progress, size

    return Progress("hashing the source files", sum(os.stat(f).st_size for f in files) or None, unit=size)


STAT_CACHE_NAME = "sources.json"
_PENDING: dict[str, str] = {}  # hashed in this process, written to the stat cache once the run is accepted


def _stat_key(files: list[Path]) -> str:
    rows = []
    for f in files:
        st = os.stat(f)
        rows.append([os.path.abspath(f), st.st_size, st.st_mtime_ns, st.st_ino])
    return fingerprint_of(rows)


def _read_stat_cache(run_dir: Path) -> dict:
    path = Path(run_dir) / DATA_CACHE_DIR / STAT_CACHE_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def remember_source_fingerprint(run_dir: Path) -> None:
    """Record the content hashes taken in this process under their files' (path, size, mtime_ns, inode)."""
    if not _PENDING:
        return
    from gptresume.durable import atomic_write_text

    known = _read_stat_cache(run_dir)
    known.update(_PENDING)
    _PENDING.clear()
    (Path(run_dir) / DATA_CACHE_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / DATA_CACHE_DIR / STAT_CACHE_NAME, json.dumps(known, indent=0))


def load_texts(cfg: DataConfig, field: str = CONFIG_FIELD):
    """The raw documents as a Dataset with one column `text`; `field` names the files' origin in messages."""
    import datasets

    first = cfg.sources[0]
    if first.startswith(BUILTIN_PREFIX):
        from pydoc_data.topics import topics

        ds = datasets.Dataset.from_dict({"text": [topics[k] for k in sorted(topics)]})
    elif first.startswith(HUB_PREFIX):
        name = first[len(HUB_PREFIX):]
        try:
            ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split)
        except Exception as e:  # offline, unknown id, unknown split: all user-fixable
            raise UsageError(f"data.source: could not load hub dataset {name!r} "
                             f"(config {cfg.hub_config!r}, split {cfg.hub_split!r}): {e}") from None
        ds = _text_column(ds, cfg.text_column, f"hub dataset {name!r}")
    else:
        files = resolve_files(cfg, field)
        if all(f.stat().st_size == 0 for f in files):
            raise UsageError(f"{field}: {cfg.source!r} holds no documents (every file is empty); "
                             "point it at files with text")
        loader = FILE_LOADERS[files[0].suffix.lower()]
        kwargs = {"sample_by": cfg.text_unit} if loader == "text" else {}
        try:
            ds = datasets.load_dataset(loader, data_files=[str(f) for f in files], split="train", **kwargs)
        except Exception as e:
            raise UsageError(f"{field}: could not read {', '.join(map(str, files))}: {e}") from None
        ds = _text_column(ds, "text" if loader == "text" else cfg.text_column, ", ".join(map(str, files)))
    if len(ds) == 0:
        raise UsageError(f"{field}: {cfg.source!r} holds no documents; point it at files with text")
    return ds


def text_batches(cfg: DataConfig, batch_docs: int):
    """(lists of documents, bytes of text): the documents `load_texts` gives, in the same order, read lazily.

    Local files are read through `datasets`' streaming mode (the same builders, so the same documents), without
    the Arrow copy `load_texts` writes and memory-maps: a corpus larger than memory is never resident. The
    built-in corpus and hub datasets come from `load_texts`."""
    first = cfg.sources[0]
    if first.startswith((BUILTIN_PREFIX, HUB_PREFIX)):
        ds = load_texts(cfg)
        return _batches_of(ds, batch_docs), getattr(ds.data, "nbytes", 0)
    import datasets

    files = resolve_files(cfg)
    loader = FILE_LOADERS[files[0].suffix.lower()]
    kwargs = {"sample_by": cfg.text_unit} if loader == "text" else {}
    column = "text" if loader == "text" else cfg.text_column
    where = ", ".join(map(str, files))
    total = sum(f.stat().st_size for f in files)
    if loader == "text" and cfg.text_unit == "document":
        batch_docs = documents_per_batch(total, len(files), batch_docs)
    try:
        ds = datasets.load_dataset(loader, data_files=[str(f) for f in files], split="train", streaming=True,
                                   **kwargs)
    except Exception as e:
        raise UsageError(f"data.source: could not read {where}: {e}") from None

    def batches():
        try:
            for batch in ds.iter(batch_size=batch_docs):
                if column not in batch:
                    raise UsageError(f"data.text_column: {where} has no column {column!r}; its columns are "
                                     f"{', '.join(batch)}; set data.text_column")
                yield batch[column]
        except UsageError:
            raise
        except Exception as e:  # a malformed line or file, found while reading
            raise UsageError(f"data.source: could not read {where}: {e}") from None

    return batches(), total


BATCH_TEXT_BYTES = 16 << 20  # about this much text per batch when every file is one document


def documents_per_batch(text_bytes: int, files: int, batch_docs: int) -> int:
    """Documents per batch when each .txt file is one document (text_unit: document): at most `batch_docs`, and
    about BATCH_TEXT_BYTES of text at the files' mean size, so a corpus of large files is neither held in memory a
    thousand files at a time nor tokenized by one worker in one batch, and packing reports its progress as it goes.
    The documents and their order are the same whatever the batch size (the token stream does not change)."""
    mean = text_bytes / max(1, files)
    return max(1, min(batch_docs, int(BATCH_TEXT_BYTES // max(mean, 1))))


def _batches_of(ds, batch_docs: int):
    for start in range(0, len(ds), batch_docs):
        yield ds[start:start + batch_docs]["text"]


def _text_column(ds, column: str, where: str):
    if column not in ds.column_names:
        raise UsageError(f"data.text_column: {where} has no column {column!r}; its columns are "
                         f"{', '.join(ds.column_names)}; set data.text_column")
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds
