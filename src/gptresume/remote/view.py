"""Read-only local copies of a remote run or checkpoint, for `status`, `verify`, `export` and `eval`
(`gptresume verify s3://bucket/runs/demo`).

The tools read local directories; for a URL they get a temporary copy of what they read (a checkpoint's files;
for a run, every `checkpoint-N` and the books history.jsonl, metrics.jsonl, config.yaml, protected.json), removed
afterwards.
Nothing is written to the remote. The file system's endpoint and credentials come from the environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), or from GPTRESUME_REMOTE_OPTIONS (a JSON object of fsspec options).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME
from gptresume.errors import UsageError
from gptresume.remote.url import Remote, scheme

REMOTE_OPTIONS_ENV = "GPTRESUME_REMOTE_OPTIONS"
BOOKS = ("history.jsonl", "metrics.jsonl", "config.yaml", "protected.json")


def readable(path: str, command: str):
    """A context giving a local path for PATH: PATH itself, or a temporary copy when it is a URL."""
    if not scheme(path):
        return nullcontext(path)
    return _local_copy(path, command)


def remote_options_from_env() -> dict:
    text = os.environ.get(REMOTE_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{REMOTE_OPTIONS_ENV}: not a JSON object ({e})") from None
    if not isinstance(options, dict):
        raise UsageError(f"{REMOTE_OPTIONS_ENV}: must be a JSON object of fsspec options")
    return options


@contextmanager
def _local_copy(url: str, command: str):
    remote = Remote(url, remote_options_from_env())
    tmp = Path(tempfile.mkdtemp(prefix="gptresume-remote-"))
    try:
        try:
            local = _download(remote, tmp)
        except UsageError:
            raise
        except Exception as e:  # the backend's own error types
            raise UsageError(f"{command}: could not read {url}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             "; check the URL, the endpoint (AWS_ENDPOINT_URL or GPTRESUME_REMOTE_OPTIONS) and "
                             "the credentials") from None
        yield str(local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(remote: Remote, tmp: Path) -> Path:
    fs = remote.fs
    name = remote.url.rsplit("/", 1)[-1]
    if CHECKPOINT_RE.match(name) or fs.exists(remote.path(MANIFEST_NAME)):
        _get_tree(remote, remote.root, tmp / name)
        return tmp / name
    from gptresume.remote.transfer import remote_checkpoints

    names = remote_checkpoints(remote)
    books = [b for b in BOOKS if fs.exists(remote.path(b))]
    if not names and not books:
        raise UsageError(f"{remote.url} holds no checkpoint-N and no run books; give the URL of a run "
                         "(checkpoint.remote) or of one of its checkpoints")
    run = tmp / "run"
    run.mkdir()
    for n in names:
        _get_tree(remote, remote.path(n), run / n)
    for b in books:
        fs.get_file(remote.path(b), str(run / b))
    return run


def _get_tree(remote: Remote, root: str, dest: Path) -> None:
    """Every file under `root` into `dest`, as it is (verification is the tool's job)."""
    fs = remote.fs
    dest.mkdir(parents=True, exist_ok=True)
    prefix = root.rstrip("/") + "/"
    files = [f for f in fs.find(root) if f.startswith(prefix)]
    if not files:
        raise UsageError(f"{remote.url}: nothing there")
    for f in files:
        rel = f[len(prefix):]
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f, str(dest / rel))
