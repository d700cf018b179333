"""Where a run's checkpoints live, behind one small interface, so that retention and discovery are written once
and hold the same on the local run directory and in a bucket (torchtitan's `CheckpointStorage`).

Two implementations: `LocalStorage` (a directory: the run directory) and `FsspecStorage` (any fsspec file system
under a root: `s3://bucket/runs/demo`, `gs://`, `az://`, `file://`; `remote.url.Remote.storage` builds it).

Paths are strings relative to the storage's root, `/`-separated: `checkpoint-6`, `checkpoint-6/manifest.json`,
`protected.json` ("" is the root). Strings, not `Path`: an object store has no `Path`, and the root of a bucket
survives whole as `storage.url` (`label(path)` gives the full location for messages). An object store has no
directories: a "directory" is a prefix with objects under it, and removing a directory removes every object under
the prefix.

What the interface is used for (and what a new backend must get right):
- discovery (`checkpoint.manifest.checkpoint_names`, `newest_valid_in`): `listdir`, `isdir`;
- the cheap validity check of retention (`checkpoint.manifest.quick_faults`): `read_text` of the manifest and
  trainer_state.json, `sizes` of every file under a checkpoint, `islink`;
- retention (`checkpoint.retention.retain`): the above, and `remove` (the manifest first: no instant shows a
  committed checkpoint with files missing);
- the run's books in the bucket (history.jsonl, protected.json) and whole checkpoints up and down
  (`remote/transfer.py`): `write_bytes`, `put_file`, `get_file`, `read_bytes`.

Every file of a checkpoint is addressed by its relative path, whoever wrote it, so files written by several
processes (one RNG file per rank, or each node's part of a checkpoint uploaded by that node) are listed, sized and
removed like any other; the manifest, written last, is the commit wherever the storage is.

Errors: reading a missing path raises FileNotFoundError; `remove` raises OSError (a backend's own error types are
wrapped), so a caller can log a failed delete and go on (torchtitan's purge: "failed to delete ... Skipping").
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

from gptresume.durable import atomic_write_bytes, fsync_dir


@runtime_checkable
class CheckpointStorage(Protocol):
    """A run's checkpoints and books, addressed by '/'-separated paths relative to the root (see the module)."""

    url: str
    """The root, for messages: a local directory or a URL such as s3://bucket/runs/demo."""

    def label(self, path: str = "") -> str:
        """The full location of `path`, for messages (`s3://bucket/run/checkpoint-6`)."""

    def isdir(self, path: str) -> bool:
        """A directory (locally, a link to one counts: it is listed, and found invalid by `islink`)."""

    def isfile(self, path: str) -> bool: ...

    def islink(self, path: str) -> bool:
        """A symbolic link (never on an object store). Links are removed, never followed, by `remove`."""

    def listdir(self, path: str = "") -> list[str]:
        """Names directly under `path`, sorted; [] when it does not exist."""

    def sizes(self, path: str) -> dict[str, int]:
        """Every regular file under `path` (links not followed), as relative path -> bytes; {} when absent."""

    def read_bytes(self, path: str) -> bytes: ...

    def read_text(self, path: str) -> str: ...

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create or replace one file whole (locally: temp file, fsync, rename; on an object store one PUT)."""

    def put_file(self, local: Path, path: str) -> None:
        """Copy a local file to `path` (its parents created)."""

    def get_file(self, path: str, local: Path) -> None:
        """Copy `path` to a local file."""

    def remove(self, path: str) -> None:
        """Delete a file, a link (itself) or a directory with everything under it; OSError on failure."""


def _join(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{path}" if path else root


class LocalStorage:
    """A local directory (the run directory). Durable like the rest of the run: a write is atomic, and removing a
    file (a checkpoint's manifest, before its directory goes) is fsynced before anything else happens."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.url = str(self.root)

    def _p(self, path: str) -> Path:
        return self.root / path if path else self.root

    def label(self, path: str = "") -> str:
        return str(self._p(path))

    def isdir(self, path: str) -> bool:
        return self._p(path).is_dir()

    def isfile(self, path: str) -> bool:
        return self._p(path).is_file()

    def islink(self, path: str) -> bool:
        return self._p(path).is_symlink()

    def listdir(self, path: str = "") -> list[str]:
        try:
            return sorted(os.listdir(self._p(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def sizes(self, path: str) -> dict[str, int]:
        top = self._p(path)
        if top.is_symlink() or not top.is_dir():
            return {}
        found = {}
        for here, _dirs, files in os.walk(top):  # links to directories are listed, never entered
            for name in files:
                full = os.path.join(here, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[Path(full).relative_to(top).as_posix()] = st.st_size
        return found

    def read_bytes(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    def read_text(self, path: str) -> str:
        return self._p(path).read_text()

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self._p(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)

    def put_file(self, local: Path, path: str) -> None:
        target = self._p(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)

    def get_file(self, path: str, local: Path) -> None:
        shutil.copyfile(self._p(path), local)

    def remove(self, path: str) -> None:
        target = self._p(path)
        if target.is_symlink() or not target.is_dir():
            target.unlink()
            fsync_dir(target.parent)
        else:
            shutil.rmtree(target)


class FsspecStorage:
    """Everything under `root` of an fsspec file system (`remote.url.Remote.storage` builds it with the options and
    credentials of `checkpoint.remote`). Listings are read fresh (the file system's listing cache is dropped first):
    another process, or another node, may have written since."""

    def __init__(self, fs, root: str, url: str):
        self.fs, self.root, self.url = fs, root.rstrip("/"), url.rstrip("/")

    def _p(self, path: str) -> str:
        return _join(self.root, path)

    def label(self, path: str = "") -> str:
        return _join(self.url, path)

    def isdir(self, path: str) -> bool:
        self.fs.invalidate_cache(self._p(path))
        return bool(self.fs.isdir(self._p(path)))

    def isfile(self, path: str) -> bool:
        self.fs.invalidate_cache(self._p(path))
        return bool(self.fs.isfile(self._p(path)))

    def islink(self, path: str) -> bool:
        return False

    def listdir(self, path: str = "") -> list[str]:
        target = self._p(path)
        self.fs.invalidate_cache(target)
        try:
            entries = self.fs.ls(target, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = target.rstrip("/") + "/"
        names = {e.rstrip("/")[len(prefix):] if e.startswith(prefix) else e.rstrip("/").rsplit("/", 1)[-1]
                 for e in entries}
        return sorted(n for n in names if n and "/" not in n)

    def sizes(self, path: str) -> dict[str, int]:
        target = self._p(path)
        self.fs.invalidate_cache(target)
        try:
            found = self.fs.find(target, detail=True)
        except FileNotFoundError:
            return {}
        prefix = target.rstrip("/") + "/"
        return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
                if name.startswith(prefix) and info.get("type", "file") == "file"}

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self._p(path))

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(path), data)
        self.fs.invalidate_cache(self._p(path))

    def put_file(self, local: Path, path: str) -> None:
        target = self._p(path)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), target)
        self.fs.invalidate_cache(target)

    def get_file(self, path: str, local: Path) -> None:
        self.fs.get_file(self._p(path), str(local))

    def remove(self, path: str) -> None:
        target = self._p(path)
        try:
            if self.fs.isdir(target):
                self.fs.rm(target, recursive=True)
            else:
                self.fs.rm_file(target)
        except OSError:
            raise
        except Exception as e:  # the backend's own types (botocore's ClientError...): one contract for callers
            raise OSError(f"{type(e).__name__}: {e}") from e
        finally:
            self.fs.invalidate_cache(target)
