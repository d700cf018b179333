"""Start the CLI (or a Trainer script) in a real child process without paying for the imports each time.

A subprocess of `python -m gptresume` spends about 7 CPU-seconds importing torch, Transformers and datasets before
it does anything; the end-to-end tests start a few hundred. A fork server (one per test worker) imports them once,
then forks one child per command. Each child is an ordinary process of its own: its own pid, signals (SIGTERM,
SIGINT, SIGKILL at any instant), run lock, working directory, environment, stdout and stderr. It runs
`gptresume.cli.main(argv)` (what `python -m gptresume` runs) or a script with `runpy` (what `python SCRIPT` runs).

`ForkedProcess` looks like `subprocess.Popen` (pid, poll, wait, send_signal, kill, communicate, returncode, a
streaming `stdout`), so tests use either. What the fork cannot reproduce is what an interpreter reads at import
time from the environment (`CI`, `OMP_NUM_THREADS`, ...): `IMPORT_TIME_ENV` lists those, and a command whose
environment changes one of them runs in a fresh interpreter instead (conftest.run_cli decides).

Nothing is computed in the server before a fork (imports only), and it runs with OMP_NUM_THREADS=1, so no thread
pool exists to be copied half-way.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Variables that libraries read when they are imported: a child must see the server's value of each.
IMPORT_TIME_ENV = ("CI", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TRANSFORMERS_VERBOSITY", "HF_HUB_OFFLINE",
                   "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "PYTORCH_CUDA_ALLOC_CONF",
                   "TORCH_LOGS", "ACCELERATE_USE_CPU", "PYTHONHASHSEED")


class ForkServer:
    """The test side of one server process."""

    def __init__(self, env: dict):
        self.env = dict(env)
        self.dir = Path(tempfile.mkdtemp(prefix="gptresume-forkserver-"))
        self.proc = subprocess.Popen([sys.executable, __file__], cwd=self.dir, env=self.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buffer = b""
        self._count = 0
        assert self._call(None, timeout=300) == {"ready": True}

    def can_run(self, env: dict) -> bool:
        """Whether a child with `env` sees what a fresh interpreter would (the import-time variables match)."""
        return all(env.get(k) == self.env.get(k) for k in IMPORT_TIME_ENV)

    def start(self, argv: list[str], cwd: Path, env: dict, script: str | None = None, merge_stderr: bool = False,
              stream: bool = False, fsize_limit: int | None = None) -> ForkedProcess:
        """Fork a child running `gptresume ARGV` (or `python SCRIPT ARGV`) in `cwd` with `env`. `stream`: stdout
        is a FIFO the test reads while the child runs (as `Popen(stdout=PIPE)`); else files read at the end."""
        self._count += 1
        out = self.dir / f"child-{self._count}.out"
        err = out if merge_stderr else self.dir / f"child-{self._count}.err"
        reader = None
        if stream:
            os.mkfifo(out)
            reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)  # a reader exists before the child opens it
        request = {"op": "start", "argv": [str(a) for a in argv], "script": script, "cwd": str(cwd),
                   "env": {k: str(v) for k, v in env.items()}, "stdout": str(out), "stderr": str(err),
                   "fsize_limit": fsize_limit}
        pid = self._call(request)["pid"]
        return ForkedProcess(self, pid, out, None if merge_stderr else err, reader)

    def status(self, pid: int) -> int | None:
        return self._call({"op": "poll", "pid": pid})["exit"]

    def _call(self, request: dict | None, timeout: float = 60) -> dict:
        if request is not None:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the fork server did not answer in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the fork server exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


class ForkedProcess:
    """A forked child, with the parts of the `subprocess.Popen` interface the tests use."""

    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path | None, reader: int | None):
        self.server, self.pid, self.returncode = server, pid, None
        self._out, self._err = out, err
        self.stdout = None
        if reader is not None:
            os.set_blocking(reader, True)
            self.stdout = os.fdopen(reader, "r", errors="replace")

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        if self.stdout is not None:  # drain the FIFO to its end (the child exited), as Popen does
            out = self.stdout.read()
            self.stdout.close()
            self.wait(timeout)
        else:
            self.wait(timeout)
            out = self._out.read_text(errors="replace")
        return out, (self._err.read_text(errors="replace") if self._err is not None else None)


# ---------------------------------------------------------------- the server process


def serve() -> None:
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, Trainer  # noqa: F401

    import gptresume.cli
    import gptresume.tools.evaluate
    import gptresume.tools.export
    import gptresume.tools.generate
    import gptresume.training.api
    import gptresume.training.run

    finished: dict[int, int] = {}
    reply = sys.stdout.buffer
    reply.write(b'{"ready": true}\n')
    reply.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if request["op"] == "start":
            # Opened here, before the fork: a streamed stdout (a FIFO) has its writer by the time the test reads,
            # so the test never sees an early end of file.
            out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = out if request["stderr"] == request["stdout"] else os.open(
                request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            pid = os.fork()
            if pid == 0:
                _child(request, out, err, gptresume.cli.main)
            os.close(out)
            if err != out:
                os.close(err)
            answer = {"pid": pid}
        else:
            pid = request["pid"]
            if pid not in finished:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    finished[pid] = os.waitstatus_to_exitcode(status)
            answer = {"exit": finished.get(pid)}
        reply.write(json.dumps(answer).encode() + b"\n")
        reply.flush()


def _child(request: dict, out: int, err: int, main) -> None:
    """In the forked child: become the command (cwd, environment, stdio, argv), run it, exit with its code."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        if request.get("fsize_limit"):
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize_limit"], request["fsize_limit"]))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in {out, err, null}:
            os.close(fd)
        if request["script"]:
            import runpy

            sys.argv = [request["script"], *request["argv"]]
            sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        else:
            sys.argv = ["gptresume", *request["argv"]]
            sys.path[0] = request["cwd"]  # as `python -m gptresume` run there
            code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # as an interpreter would end: the traceback on stderr, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    serve()
