"""Shared fixtures: tiny configs in tmp_path, and a helper that runs the real CLI in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32}


def corpus_texts(n_docs: int = 12) -> list[str]:
    """Real prose from CPython's bundled docs: the same kind of text the demo trains on."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)[:n_docs]]


def write_config(tmp_path: Path, name: str = "config.yaml", corpus_chars: int | None = None, **sections) -> Path:
    """A tiny from-scratch config (2 layers, 32 wide) training on a small text file in tmp_path.

    corpus_chars cuts the corpus short, for runs that must cross epoch boundaries in a few steps."""
    data_file = tmp_path / "corpus.txt"
    if not data_file.exists():
        data_file.write_text("\n\n".join(corpus_texts())[:corpus_chars])
    config = {
        "model": {"from_scratch": dict(TINY_MODEL), "tokenizer": {"train_vocab_size": 400}},
        "data": {"source": str(data_file), "text_unit": "paragraph", "block_size": 32,
                 "validation_fraction": 0.1},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 12, "per_device_train_batch_size": 4,
                  "learning_rate": 3e-3, "logging_steps": 1, "save_steps": 4, "seed": 7,
                  "warmup_steps": 2, "lr_scheduler_type": "linear"},
        "checkpoint": {"keep_last": 2},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def make_base_model(where: Path) -> Path:
    """A tiny pretrained GPT-2 (save_pretrained, with its tokenizer) for LoRA to adapt."""
    import transformers
    from transformers import AutoModelForCausalLM, GPT2Config

    from gptresume.modeling import train_tokenizer

    tok = train_tokenizer(corpus_texts(), 400)
    transformers.set_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return where


def fake_checkpoint(run_dir: Path, step: int, files: dict[str, bytes | str], commit: bool = True,
                    **manifest) -> Path:
    """RUN_DIR/checkpoint-STEP holding `files` (relative path -> bytes or text), committed by a manifest unless
    `commit` is false; `manifest` overrides the write_manifest fields (defaults: no epoch, an empty config)."""
    from gptresume.checkpoint import write_manifest
    from gptresume.checkpoint.files import checkpoint_name

    ckpt = run_dir / checkpoint_name(step)
    ckpt.mkdir(parents=True)
    for rel, data in files.items():
        (ckpt / rel).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    if commit:
        write_manifest(ckpt, **{"step": step, "epoch": None, "config": {}, "config_fingerprint": "c",
                                "data_fingerprint": None, "world_size": 1, **manifest})
    return ckpt


# One Hugging Face cache per test process (offline: nothing is downloaded). Libraries read HF_HOME when imported,
# so every child of this process, forked or fresh, sees the same one.
HF_HOME = tempfile.mkdtemp(prefix="gptresume-tests-hf-")
_FORK_SERVER = None


def fork_server():
    """This test process's fork server (forking.py), started on first use and stopped at exit."""
    global _FORK_SERVER
    if _FORK_SERVER is None:
        import atexit

        from forking import ForkServer

        _FORK_SERVER = ForkServer(child_env(Path(HF_HOME)))
        atexit.register(_FORK_SERVER.close)
    return _FORK_SERVER


def child_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    # One thread per child: `make test` runs two test workers on two cores (a run and its reference always train
    # with the same thread count, so exactness is compared like with like).
    env.update(HF_HOME=HF_HOME, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def run_cli(tmp_path: Path, *args: str, timeout: float = 300, env: dict | None = None, fresh: bool = False,
            fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run `gptresume ARGS` in a child process, as a user would (`env`: extra variables). The child is forked from
    the fork server (forking.py: the imports are paid once) unless `fresh` or `env` changes what an interpreter
    reads at import time; then it is a new `python -m gptresume`."""
    return _finish(start_command(tmp_path, args, env=env, fresh=fresh, fsize_limit=fsize_limit), args, timeout)


def run_script(tmp_path: Path, script: Path, *args: str, timeout: float = 300, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` in a child process (forked like `run_cli`)."""
    return _finish(start_command(tmp_path, args, script=script, env=env), args, timeout)


def start_command(tmp_path: Path, args, script: Path | None = None, env: dict | None = None, fresh: bool = False,
                  stream: bool = False, fsize_limit: int | None = None):
    """A running child: `gptresume ARGS`, or `python SCRIPT ARGS`; a `forking.ForkedProcess` or a `Popen`.
    `stream`: stdout and stderr together, readable while it runs (`proc.stdout`); else collected at the end."""
    env = {**child_env(tmp_path), **(env or {})}
    args = [str(a) for a in args]
    if not fresh and fork_server().can_run(env):
        return fork_server().start(args, Path(tmp_path), env, script=str(script) if script else None,
                                   merge_stderr=stream, stream=stream, fsize_limit=fsize_limit)
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "gptresume"]

    def small_disk():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.Popen([*command, *args], cwd=tmp_path, env=env, text=True,
                            preexec_fn=small_disk if fsize_limit else None,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if stream else subprocess.PIPE)


def _finish(proc, args, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=60)
        raise
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err or "")


def train_on_a_small_disk(tmp_path: Path, config: Path, run_dir: Path, checkpoint: Path) -> subprocess.CompletedProcess:
    """Resume RUN_DIR with a file size limit (RLIMIT_FSIZE: EFBIG, standing in for a full disk) just above the
    size of CHECKPOINT's model.safetensors: the next save's optimizer.pt, which is larger, fails part-way."""
    limit = (checkpoint / "model.safetensors").stat().st_size + 4096
    return run_cli(tmp_path, "train", config, "--set", f"train.output_dir={run_dir}", fsize_limit=limit)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2 with exactly one error message containing every fragment, and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert ("\n" + result.stderr).count("\nerror: ") == 1  # one message (warnings may precede it)
    for f in fragments:
        assert f in result.stderr, result.stderr


def start_cli(tmp_path: Path, *args: str, env: dict | None = None):
    """`gptresume ARGS` running in a child (forked, see run_cli); stdout and stderr together in `proc.stdout`."""
    return start_command(tmp_path, args, env=env, stream=True)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert bool((a[k] == b[k]).all()), f"tensor {k} differs"


def snapshot(path: Path) -> dict:
    """Every file under path with its size and mtime: to prove a refused command changed nothing."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (s3server.py: moto on 127.0.0.1) for the unit tests of one pytest process, with
    the bucket `unit-bucket`, and the credentials it accepts in this process's environment while it runs. Its state
    lives in this process: a module that needs a bucket to itself creates one."""
    from s3server import CREDENTIALS, S3Server

    from unittest import mock

    with mock.patch.dict(os.environ, CREDENTIALS):  # restored as it was afterwards
        server = S3Server().start()
        server.create_bucket("unit-bucket")
        yield server
        server.stop()


def byte_snapshot(path: Path) -> dict:
    """Every entry under path (itself included) with its mode, and for a file its size, mtime and sha256: to prove
    a directory was not written at all, not even rewritten with the same bytes."""
    import hashlib

    out = {}
    for p in sorted([path, *path.rglob("*")]):
        st = p.stat()
        content = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else ()
        out[str(p.relative_to(path))] = (st.st_mode, *content)
    return out


@pytest.fixture
def no_fsync(monkeypatch):
    """Durability is not what these tests check: fsync (tens of ms per file on a busy disk) is a no-op here. A test
    module opts in with `pytestmark = pytest.mark.usefixtures("no_fsync")`."""
    monkeypatch.setattr("os.fsync", lambda fd: None)


@pytest.fixture(autouse=True)
def _weights_only_env_kept():
    """`gptresume.cli.main` sets TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 for its process (nothing read from a run executes
    code). A test that calls `main` in-process would leave it set for every later test of its pytest worker (one
    of them reads a Trainer's `training_args.bin` with weights_only=False): put it back after each test."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    yield
    if before is None:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    else:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


@pytest.fixture
def tiny_config(tmp_path):
    return write_config(tmp_path)


# ---------------------------------------------------------------- several processes, sample order


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(kind: str) -> list[str]:
    """The command that starts 2 local processes: torchrun, gptresume.launch or `accelerate launch`."""
    port = str(free_port())
    if kind == "accelerate":  # --multi_gpu is accelerate's name for "several processes through torchrun"
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", port]
    module = {"torchrun": "torch.distributed.run", "gptresume.launch": "gptresume.launch"}[kind]
    return [sys.executable, "-m", module, "--nproc_per_node", "2", "--master_port", port]


def ddp_env(tmp):
    return {**child_env(tmp), "OMP_NUM_THREADS": "1"}


def split_ids(run_dir: Path) -> tuple[list[str], set]:
    """The sample ids (data.sample_id) of a run's cached training blocks, in order, and of its validation blocks."""
    from gptresume.data import sample_id
    from gptresume.data.packing import open_cache

    (meta,) = (run_dir / "data-cache").glob("*/meta.json")
    data = open_cache(meta.parent, json.loads(meta.read_text())["block_size"])
    return ([sample_id(r["input_ids"]) for r in data.train], {sample_id(r["input_ids"]) for r in data.validation})


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> bool:
    """Wait until metrics.jsonl shows `step` (True), or the process ended first (False)."""
    deadline = time.monotonic() + timeout
    path = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if path.is_file():
            steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()
                     and line.endswith("}")]
            if steps and max(steps) >= step:
                return True
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def wait_until(condition, proc, timeout: float = 300, poll: float = 0.002) -> bool:
    """True once `condition()` holds (checked every `poll` seconds), False if `proc` ended first. What a test keys a
    signal or a kill to: observed progress (a step logged, a file appearing), never a sleep; `timeout` only bounds
    a run that hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _ in range(10):
            if condition():
                return True
            time.sleep(poll)
        if proc.poll() is not None:
            return condition()
    raise AssertionError(f"the awaited condition did not hold within {timeout} s")


def logged_step(run_dir: Path) -> int:
    """The newest training step in RUN_DIR/metrics.jsonl (0 before the first; a line being written is skipped)."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row:
            steps.append(row["step"])
    return max(steps, default=0)


def uncommitted_checkpoints(run_dir: Path) -> list[str]:
    """checkpoint-N directories without a manifest: a save in progress (or one a kill cut short)."""
    return sorted(p.name for p in Path(run_dir).glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and not (p / "manifest.json").is_file())
