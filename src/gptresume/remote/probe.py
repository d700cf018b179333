"""The storage check before training: write a small probe object under the remote URL, read it back, delete it.

A wrong bucket, endpoint or credentials (or a missing write permission) is found here, before anything is written
to the run directory, and reported as bad input (exit 2) in one message naming the URL; otherwise it would be
found only by the first upload, after the first checkpoint."""

from __future__ import annotations

import os
import socket
import uuid

from gptresume.errors import UsageError
from gptresume.remote.url import Remote


def check_remote(remote: Remote) -> None:
    """Raise UsageError naming the URL when the remote cannot be written, read back and cleaned."""
    name = f".gptresume-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    payload = f"gptresume storage check {uuid.uuid4().hex}".encode()
    step = "connect to"
    try:
        fs = remote.fs
        path = remote.path(name)
        step = "write a probe object to"
        fs.pipe_file(path, payload)
        step = "read the probe object back from"
        back = fs.cat_file(path)
        if back != payload:
            raise OSError(f"read back {len(back)} bytes that differ from the {len(payload)} written")
        step = "delete the probe object from"
        fs.rm_file(path)
    except UsageError:
        raise
    except Exception as e:  # every backend raises its own types; the message is what matters
        raise UsageError(f"checkpoint.remote: could not {step} {remote.url}: {_describe(e)}. Check the bucket "
                         "name, the endpoint (checkpoint.remote_options.endpoint_url, or AWS_ENDPOINT_URL) and the "
                         "credentials (environment variables); nothing was written to the run directory") from None


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:300]
