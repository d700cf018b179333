"""Two nodes without a shared file system (checkpoint.shared_filesystem: false), on loopback: two
`python -m gptresume.launch --nnodes 2 --nproc_per_node 1 --node_rank K --master_addr 127.0.0.1` members (torchrun's
static rendezvous), each started in its own working directory with a relative train.output_dir, so each node's run
directory is its own "disk"; the checkpoints meet in an S3-compatible server (moto on 127.0.0.1).

- An uninterrupted run: every save is committed in the bucket by global rank 0 from both nodes' parts (the
  manifest lists both ranks' RNG files), while neither local directory ever holds a whole checkpoint.
- One run through three failures: SIGKILL of node 1 while its part of checkpoint-8 is being uploaded (checkpoint-8
  is never committed; the re-run on the same disks resumes from checkpoint-4); SIGTERM to both nodes (both exit
  75 with the stop's checkpoint committed in the bucket); both local directories deleted and the resume started
  with the node ranks swapped (the other machine is global rank 0 now): each node downloads what it needs and the
  run ends bitwise equal to the uninterrupted one, the loss curve continuous (metrics.jsonl from the bucket).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    assert_bitwise_equal,
    ddp_env,
    final_weights,
    free_port,
    read_metrics,
    run_cli,
    train_losses,
    wait_for_step,
    write_config,
)
from gptresume.ledger.books import lineage
from s3server import CREDENTIALS, S3Server, serving

pytestmark = pytest.mark.slow

BUCKET = "nodes"
MAX_STEPS = 12
TIMEOUT = 300
NODE_DIRS = ("machine-a", "machine-b")  # machine-a is node 0 unless a test swaps them


@pytest.fixture(scope="module")
def s3():
    yield from serving(BUCKET)


def config_for(tmp: Path, server: S3Server, prefix: str) -> Path:
    # about 42 training blocks: epochs of 5 steps, so the run and its resumes cross epochs; whole global batches only
    # (drop_last), so the ledger can prove each completed epoch exactly once (no even_batches padding)
    return write_config(tmp, f"{prefix}.yaml", corpus_chars=3600, train={
        "max_steps": MAX_STEPS, "save_steps": 4, "eval_steps": 6, "output_dir": "run",  # relative: one per node
        "dataloader_drop_last": True},
        checkpoint={"keep_last": 1, "remote": f"s3://{BUCKET}/{prefix}", "remote_keep_last": 1, "ledger": True,
                    "remote_options": {"endpoint_url": server.endpoint}, "shared_filesystem": False})


class Node:
    """One node: `python -m gptresume.launch` for node rank `rank`, in its own directory, output to a log file."""

    def __init__(self, tmp: Path, machine: str, rank: int, port: int, config: Path, server: S3Server, *args,
                 env: dict | None = None):
        self.dir = tmp / machine
        self.dir.mkdir(exist_ok=True)
        self.rank = rank
        self.log = self.dir / f"node{rank}-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "gptresume.launch", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
               str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "gptresume", "train",
               str(config), *args]
        full_env = {**ddp_env(tmp), **CREDENTIALS, "AWS_ENDPOINT_URL": server.endpoint, **(env or {})}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=full_env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def output(self) -> str:
        return self.log.read_text()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node {self.rank} did not finish:\n{self.output()}") from None

    def kill(self) -> None:
        """SIGKILL the whole node: the launcher and every worker (torchrun gives each worker its own session)."""
        import psutil

        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=60)

    def wait_for_output(self, fragment: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while fragment not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never printed {fragment!r}:\n{self.output()}")
            time.sleep(0.05)


def start_two(tmp, config, server, *args, swap=False, env1=None) -> tuple[Node, Node]:
    """Node 0 and node 1 of one job (machine-b is node 0 when `swap`)."""
    port = free_port()
    a, b = (NODE_DIRS[1], NODE_DIRS[0]) if swap else NODE_DIRS
    return (Node(tmp, a, 0, port, config, server, *args),
            Node(tmp, b, 1, port, config, server, *args, env=env1))


def finish(nodes) -> list[int]:
    return [n.wait() for n in nodes]


def bucket_checkpoints(server, prefix) -> dict[str, set[str]]:
    """checkpoint-N -> the names under it in the bucket."""
    fs, out = server.fs(), {}
    for path in fs.find(f"{BUCKET}/{prefix}"):
        rel = path.split(f"{BUCKET}/{prefix}/", 1)[1]
        if rel.startswith("checkpoint-"):
            name, _, rest = rel.partition("/")
            out.setdefault(name, set()).add(rest)
    return out


def committed(server, prefix) -> list[str]:
    return sorted((n for n, files in bucket_checkpoints(server, prefix).items() if "manifest.json" in files),
                  key=lambda n: int(n.split("-")[1]))


def per_step(run_dir: Path) -> dict[int, list[int]]:
    """step -> the sample ids the ledger books say it trained."""
    segments, _ = lineage(run_dir)
    return {int(s.steps[i]): s.step_ids(i).tolist() for s in segments for i in range(len(s.steps))}


def local_files(run_dir: Path) -> dict[str, set[str]]:
    return {p.name: {f.name for f in p.iterdir()} for p in sorted(run_dir.glob("checkpoint-*"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, s3):
    """One uninterrupted 2-node run through the bucket, shared by the tests."""
    tmp = tmp_path_factory.mktemp("nodes-ref")
    nodes = start_two(tmp, config_for(tmp, s3, "ref"), s3)
    codes = finish(nodes)
    assert codes == [0, 0], "\n".join(n.output() for n in nodes)
    return tmp, nodes


def test_every_save_is_committed_in_the_bucket_from_both_nodes_parts(reference, s3, tmp_path):
    tmp, (node0, node1) = reference
    assert "Training complete at step 12" in node0.output()
    assert committed(s3, "ref") == ["checkpoint-12"]  # remote_keep_last 1: the older commits went after it
    manifest = json.loads(s3.fs().cat_file(f"{BUCKET}/ref/checkpoint-12/manifest.json"))
    assert manifest["world_size"] == 2 and {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors",
                                            "optimizer.pt"} <= set(manifest["files"])
    assert manifest["nodes"] == {"0": {"host": manifest["nodes"]["0"]["host"], "ranks": [0]},
                                 "1": {"host": manifest["nodes"]["1"]["host"], "ranks": [1]}}
    out0 = node0.output()
    assert all(f"checkpoint-{s} committed in s3://{BUCKET}/ref by 2 node(s)" in out0 for s in (4, 8, 12)), out0
    # separate disks: no local directory holds a whole checkpoint or a manifest; node 1 holds only its own files
    assert local_files(node1.run_dir) == {"checkpoint-12": {"rng_state_1.pth"}}
    assert "rng_state_1.pth" not in local_files(node0.run_dir)["checkpoint-12"]
    assert not list(node0.run_dir.glob("checkpoint-*/manifest.json"))
    # the bucket's commit verifies as a whole (every file downloaded and hashed by the read-only tools)
    checked = run_cli(tmp_path, "verify", f"s3://{BUCKET}/ref", env={**CREDENTIALS, "AWS_ENDPOINT_URL": s3.endpoint})
    assert checked.returncode == 0 and f"ok       s3://{BUCKET}/ref/checkpoint-12" in checked.stdout, checked.stdout


def test_a_node_killed_mid_upload_then_a_stop_then_fresh_disks_resume_bitwise(reference, s3, tmp_path):
    """One run through three failures: node 1 SIGKILLed while its part of checkpoint-8 is being uploaded (never
    committed; the re-run on the same disks resumes from checkpoint-4), then SIGTERM to both nodes (both exit 75,
    one committed checkpoint in the bucket), then both disks lost and the nodes swapped (the other machine is
    global rank 0): the end is bitwise equal to the uninterrupted run, the loss curve continuous."""
    ref = reference[1][0].run_dir
    config = config_for(tmp_path, s3, "run")
    # node 1's upload of its part of checkpoint-8 holds after its first file, until node 1 is killed
    nodes = start_two(tmp_path, config, s3, "--set", "checkpoint.remote_wait_seconds=2",
                      env1={"GPTRESUME_TEST_UPLOAD_DELAY": "8:600"})
    nodes[1].wait_for_output("the upload of checkpoint-8 sleeps")
    wait_until(lambda: committed(s3, "run") == ["checkpoint-4"], nodes[0])
    nodes[1].kill()
    assert nodes[0].wait() not in (0, 75), nodes[0].output()  # the job cannot go on without node 1
    held = bucket_checkpoints(s3, "run")
    assert "rng_state_1.pth" in held["checkpoint-8"]  # node 1's upload had begun...
    assert "manifest.json" not in held["checkpoint-8"] and ".parts/node-1.json" not in held["checkpoint-8"]
    assert committed(s3, "run") == ["checkpoint-4"]  # ...and checkpoint-8 was never committed

    nodes = start_two(tmp_path, config, s3)  # the same machines, their disks kept
    nodes[0].wait_for_output("Resuming from run/checkpoint-4")  # the previous commit
    assert f"skipping remote s3://{BUCKET}/run/checkpoint-8: no manifest.json" in nodes[0].output()
    wait_for_step(nodes[0].run_dir, 6, nodes[0].proc, timeout=TIMEOUT)
    for n in nodes:  # a preemption of both machines (a stop of one alone is agreed by every rank as well)
        n.proc.send_signal(signal.SIGTERM)
    codes = finish(nodes)
    out = "\n".join(n.output() for n in nodes)
    assert codes == [75, 75], out
    stopped = max(r["step"] for r in read_metrics(nodes[0].run_dir))
    assert 6 <= stopped < MAX_STEPS
    assert committed(s3, "run") == [f"checkpoint-{stopped}"], out  # one committed checkpoint: the stop's
    assert f"checkpoint-{stopped} committed in s3://{BUCKET}/run (this node's part included)" in nodes[1].output()

    manifest = json.loads(s3.fs().cat_file(f"{BUCKET}/run/checkpoint-{stopped}/manifest.json"))
    for n in nodes:  # both machines are gone
        shutil.rmtree(n.run_dir)
    resumed = start_two(tmp_path, config, s3, swap=True)  # machine-b is global rank 0 now
    codes = finish(resumed)
    out = "\n".join(n.output() for n in resumed)
    assert codes == [0, 0], out
    assert f"Resuming from run/checkpoint-{stopped}" in resumed[0].output()
    wanted = len(manifest["files"]) - 1  # every file but rank 0's RNG file
    assert f"this node's {wanted} files are in run/checkpoint-{stopped} ({wanted} downloaded" in resumed[1].output()
    assert local_files(resumed[1].run_dir) == {"checkpoint-12": {"rng_state_1.pth"}}
    run = resumed[0].run_dir
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, MAX_STEPS + 1))
    assert train_losses(run) == train_losses(ref)  # metrics.jsonl came from the bucket, then went on
    assert_bitwise_equal(final_weights(run), final_weights(ref))
    assert committed(s3, "run") == ["checkpoint-12"]
    # the sample ledger, kept by three processes on two machines and carried by the bucket: every step's samples
    # once, none twice, across the kill, the stop and the move of rank 0 (and the same steps as the reference's)
    ledger = run_cli(tmp_path, "ledger", run)
    assert ledger.returncode == 0 and "exactly once" in ledger.stdout, ledger.stdout + ledger.stderr
    assert f"steps 1-{MAX_STEPS}" in ledger.stdout, ledger.stdout
    assert per_step(run) == per_step(ref)


def wait_until(condition, node: Node) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if node.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"condition never met:\n{node.output()}")
        time.sleep(0.1)


def test_one_process_with_async_saves_commits_through_the_bucket(s3, tmp_path):
    """shared_filesystem: false with one node and checkpoint.async_save: the background writer's commit sends the
    node's part and the bucket's manifest commits it (no local manifest ever); after the disk is lost the bucket's
    commit resumes bitwise like a plain local run."""
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": s3.endpoint}
    ref_config = write_config(tmp_path, "plain.yaml", train={"output_dir": str(tmp_path / "plain")})
    plain = run_cli(tmp_path, "train", ref_config)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    config = write_config(tmp_path, "one.yaml", checkpoint={
        "keep_last": 1, "async_save": True, "remote": f"s3://{BUCKET}/one", "shared_filesystem": False,
        "remote_options": {"endpoint_url": s3.endpoint}})
    stopped = run_cli(tmp_path, "train", config, "--stop-at-step", "8", env=env)
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 75, out
    assert f"checkpoint-8 committed in s3://{BUCKET}/one by 1 node(s)" in out
    assert committed(s3, "one") == ["checkpoint-4", "checkpoint-8"]
    assert not list((tmp_path / "run").glob("checkpoint-*/manifest.json"))  # the bucket's manifest is the commit
    shutil.rmtree(tmp_path / "run")
    dry = run_cli(tmp_path, "train", config, "--dry-run", env=env)  # the same start pipeline, writing off
    out = dry.stdout + dry.stderr
    predicted = f"train would: resume from s3://{BUCKET}/one/checkpoint-8 (step 8, downloaded first)"
    assert dry.returncode == 0 and predicted in out, out
    assert not (tmp_path / "run").exists() and committed(s3, "one") == ["checkpoint-4", "checkpoint-8"]
    resumed = run_cli(tmp_path, "train", config, env=env)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert "Resuming from" in out and "checkpoint-8" in out
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "plain")  # steps 1-8 from the bucket's books
    assert_bitwise_equal(final_weights(tmp_path / "run"), final_weights(tmp_path / "plain"))


def test_separate_disks_without_the_setting_are_refused_before_anything_is_written(s3, tmp_path):
    """shared_filesystem left at true while each node has its own directory: the probe finds it at start, every
    node exits 2 with one message (on global rank 0's), and neither run directory is created."""
    config = config_for(tmp_path, s3, "refused")
    nodes = start_two(tmp_path, config, s3, "--set", "checkpoint.shared_filesystem=true")
    codes = finish(nodes)
    out = "\n".join(n.output() for n in nodes)
    assert codes == [2, 2], out
    assert nodes[0].output().count("error: train.output_dir: node 1 (") == 1, out
    assert "does not see the run directory" in out and "error:" not in nodes[1].output()
    assert "Traceback" not in out
    assert not any((tmp_path / d / "run").exists() for d in NODE_DIRS)
    assert not [p for d in NODE_DIRS for p in (tmp_path / d).iterdir() if p.name.startswith(".gptresume-node")]
