"""Durable writes and file hashing: what makes a file either absent or complete and checkable after a crash.

Shared by checkpoint commits, the run directory's books and the tools (nothing here imports torch or HF).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HASH_CHUNK = 8 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file, fsync, rename, fsync of the directory: the file is either absent or complete."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def hash_file(path: Path, fsync: bool = False) -> tuple[int, str]:
    """(size, sha256) streamed in chunks; with fsync=True also forces the bytes to disk first."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
