"""What a remote location is: an fsspec URL (`s3://bucket/prefix`, `gs://`, `az://`, `file:///...`) and the fsspec
options for its file system. Credentials come from the usual environment variables (AWS_ACCESS_KEY_ID,
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*...) or the provider's files, never from the config: the config is
copied into config.yaml and into every checkpoint's manifest, and uploaded with them (credentials.py checks the
options at every depth and redacts what is written)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gptresume.credentials import secret_problems, url_secret_problem

# scheme://..., as fsspec reads it (a Windows drive letter "C:\" is not a scheme: at least two letters)
URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def scheme(text) -> str | None:
    """The URL scheme of `text` (`s3`), or None for a plain path."""
    m = URL_RE.match(text) if isinstance(text, str) else None
    return m.group(1).lower() if m else None


def output_dir_url_problem(value, field_name: str = "train.output_dir") -> str | None:
    """A URL as the run directory would be trained into a local directory named after it (`s3:/bucket/run`)."""
    if scheme(value if isinstance(value, str) else None):
        return (f"{field_name}: {value} is a URL; the run directory must be a local path (training writes, locks "
                f"and fsyncs it). Keep train.output_dir local and set checkpoint.remote: {value} to upload every "
                "committed checkpoint there (and resume from it when the local directory is gone)")
    return None


def remote_problems(url, options, keep_last, prefix: str = "checkpoint") -> list[str]:
    """Problems with `checkpoint.remote`, `remote_options`, `remote_keep_last` that need no network."""
    out = []
    if url is not None:
        if not isinstance(url, str) or not scheme(url):
            out.append(f"{prefix}.remote: {url!r} is not a URL; give an fsspec URL such as s3://bucket/runs/demo "
                       "(or file:///mnt/shared/runs/demo)")
        elif not url.split("://", 1)[1].strip("/"):
            out.append(f"{prefix}.remote: {url} names no bucket or directory")
        elif why := url_secret_problem(url, f"{prefix}.remote"):
            out.append(why)
    if options is not None:
        if not isinstance(options, dict):
            out.append(f"{prefix}.remote_options: must be a mapping of fsspec options (e.g. endpoint_url)")
        else:
            out.extend(secret_problems(options, f"{prefix}.remote_options"))  # at every depth (credentials.py)
        if url is None:
            out.append(f"{prefix}.remote_options: set without checkpoint.remote")
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        out.append(f"{prefix}.remote_keep_last: must be at least 1, or null to keep every remote checkpoint")
    return out


@dataclass
class Remote:
    """A remote run directory: `url` and the fsspec options of its file system. The file system is created on
    first use (fsspec and the backend, e.g. s3fs, are imported then)."""

    url: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self._fs = None
        self._root = None
        self._storage = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._root = open_fs(self.url, self.options)
        return self._fs

    @property
    def root(self) -> str:
        self.fs  # noqa: B018 (resolves the root)
        return self._root

    @property
    def storage(self):
        """This remote as a `checkpoint.storage.FsspecStorage` (the same file system): what discovery, retention
        and the transfers go through."""
        if self._storage is None:
            from gptresume.checkpoint.storage import FsspecStorage

            self._storage = FsspecStorage(self.fs, self.root, self.url)
        return self._storage

    def path(self, *parts: str) -> str:
        """The backend path (no scheme) of RUN/parts."""
        return "/".join([self.root.rstrip("/"), *parts])

    def label(self, *parts: str) -> str:
        """The URL of RUN/parts, for messages."""
        return "/".join([self.url, *parts])


def open_fs(url: str, options: dict | None = None):
    """(file system, root path) for `url`, with fsspec's instance cache off: a process that forked (the tests'
    fork server, DataLoader workers) must not share a cached client's event loop or connections."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec is a dependency of datasets
        from gptresume.errors import UsageError

        raise UsageError("checkpoint.remote needs fsspec: pip install 'gptresume[remote]'") from None
    import logging

    for name in ("botocore.credentials", "aiobotocore.credentials"):  # "Found credentials in ..." on every client
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return url_to_fs(url, skip_instance_cache=True, **dict(options or {}))
    except ImportError as e:
        from gptresume.errors import UsageError

        raise UsageError(f"checkpoint.remote: {url}: the file system for {scheme(url)}:// is not installed ({e}); "
                         "for s3:// pip install 'gptresume[remote]' (s3fs), for gs:// gcsfs, for az:// adlfs") from None
    except ValueError as e:
        from gptresume.errors import UsageError

        raise UsageError(f"checkpoint.remote: {url}: {e}") from None


def shared_filesystem_problems(shared_filesystem, remote, prefix: str = "checkpoint") -> list[str]:
    """`checkpoint.shared_filesystem` itself: a bool, and false (the nodes of a multi-node run have separate disks)
    only with a bucket to commit in."""
    if not isinstance(shared_filesystem, bool):
        return [f"{prefix}.shared_filesystem: must be true or false (got {shared_filesystem!r})"]
    if shared_filesystem or remote is not None:
        return []
    return [f"{prefix}.shared_filesystem: false needs {prefix}.remote: no node's disk holds a whole checkpoint, so "
            f"each node uploads its part and the checkpoint is committed in the bucket (set {prefix}.remote: "
            "s3://bucket/run, or keep the run directory on a file system every node mounts)"]


def separate_disks_problems(train: dict | None = None, health=None, train_prefix: str = "train.") -> list[str]:
    """With `checkpoint.shared_filesystem: false`: the settings that need one directory holding every checkpoint,
    found before anything is written (`train`: TrainingArguments values; `health`: a HealthConfig)."""
    out = []
    train = train if isinstance(train, dict) else {}
    if train.get("load_best_model_at_end") is True:
        out.append(f"{train_prefix}load_best_model_at_end: not with checkpoint.shared_filesystem: false (Trainer "
                   "would load the best checkpoint from a local directory, which holds one node's part only); keep "
                   "checkpoint.keep_best: true and export the best checkpoint from the bucket instead")
    if train.get("save_on_each_node") is True:
        out.append(f"{train_prefix}save_on_each_node: not with checkpoint.shared_filesystem: false: global rank 0's "
                   "node writes the model and optimizer once and every other node downloads them from the bucket; "
                   "remove it")
    if health is not None:
        actions = [("on_nan", health.on_nan)] + ([("on_spike", health.on_spike)] if health.spike.enabled else [])
        for name, action in actions:
            if action == "rollback":
                out.append(f"health.{name}: rollback is not available with checkpoint.shared_filesystem: false (a "
                           "rollback sets later checkpoints aside in one run directory); use stop, and resume "
                           "from the bucket's newest commit with changed settings")
    return out
