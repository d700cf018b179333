"""Several nodes without a shared file system, in-process: each node's part (remote/parts.py), rank 0's commit
(remote/commit.py), the node uploaders (remote/node_uploader.py), a node's copy of a commit (remote/materialize.py),
the books in the bucket, the probe verdict and the config rules. Two "nodes" are two run directories and two
uploader threads on one bucket (file://, and a real S3-compatible server on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptresume.checkpoint import verify_checkpoint
from gptresume.checkpoint.files import MANIFEST_NAME
from gptresume.remote.books import NODE_BOOKS, download_books
from gptresume.remote.commit import commit_checkpoint, committed_by, merge_parts, wait_for_parts
from gptresume.remote.materialize import NOT_IN_BUCKET, bucket_check, drop_caches, fetch_committed, fetch_part
from gptresume.remote.node_uploader import NodeRole, NodeUploader
from gptresume.remote.parts import (PartError, needed_files, part_path, part_record, read_parts,
                                    remove_stale_manifest, upload_part)
from gptresume.remote.transfer import download_checkpoint
from gptresume.remote.url import Remote, separate_disks_problems, shared_filesystem_problems
from gptresume.training.nodes import probe_problem

pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py

NODES = {0: [0], 1: [1]}


def fields(step: int) -> dict:
    return dict(step=step, epoch=None, config={}, config_fingerprint="c", data_fingerprint=None, world_size=2,
                train_samples=None)


def node_save(run_dir: Path, node: int, step: int) -> Path:
    """What node `node`'s ranks write for a save at `step` (DDP: node 0 the model and optimizer, each its RNG)."""
    ckpt = run_dir / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / f"rng_state_{node}.pth").write_bytes(bytes([node, step]) * 50)
    if node == 0:
        (ckpt / "model.safetensors").write_bytes(bytes([step % 256]) * 1000)
        (ckpt / "optimizer.pt").write_bytes(b"o" * 300)
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return ckpt


@pytest.fixture
def remote(tmp_path):
    return Remote(f"file://{tmp_path}/bucket/run", {"auto_mkdir": True})


def uploader(remote, run_dir, node, attempt="a1", **kw) -> NodeUploader:
    role = NodeRole(node, NODES[node], NODES, attempt, commits=node == 0, world_size=2)
    return NodeUploader(remote, run_dir, role, backoff=(0.01, 0.05), **kw).start()


def manifest_in(remote, name) -> dict | None:
    try:
        return json.loads(remote.storage.read_bytes(f"{name}/{MANIFEST_NAME}"))
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("where", ["file", "s3"])
def test_both_parts_make_one_commit_that_verifies_and_local_caches_go(tmp_path, request, where):
    if where == "s3":  # a bucket of its own: the server is shared by the unit tests of this process
        s3 = request.getfixturevalue("s3")
        s3.create_bucket("node-parts")
        remote = Remote(f"s3://node-parts/{tmp_path.name}", {"endpoint_url": s3.endpoint})
    else:
        remote = Remote(f"file://{tmp_path}/bucket/run", {"auto_mkdir": True})
    a, b = tmp_path / "a", tmp_path / "b"
    up0, up1 = uploader(remote, a, 0), uploader(remote, b, 1)
    try:
        for step in (4, 8):
            c1 = node_save(b, 1, step)  # node 1 may be first: rank 0 waits for it either way
            up1.submit_part(c1, None, 0.0)
            c0 = node_save(a, 0, step)
            up0.submit_part(c0, fields(step), 0.0)
        assert up0.drain(60) and up1.drain(60)
    finally:
        up0.close(), up1.close()
    assert up0.committed == ["checkpoint-4", "checkpoint-8"] and up1.committed == []
    manifest = manifest_in(remote, "checkpoint-8")
    assert manifest["attempt"] == "a1" and manifest["world_size"] == 2
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_0.pth",
                                      "rng_state_1.pth"}
    assert {k: v["ranks"] for k, v in manifest["nodes"].items()} == {"0": [0], "1": [1]}
    got = download_checkpoint(remote, "checkpoint-8", tmp_path / "copy" / "checkpoint-8")
    assert got.valid, got.faults  # the merged manifest verifies like a local one: every file's size and digest
    # each node keeps only its newest part locally (the bucket holds the commits); never a manifest
    assert [p.name for p in a.iterdir()] == ["checkpoint-8"] and [p.name for p in b.iterdir()] == ["checkpoint-8"]
    assert not (a / "checkpoint-8" / MANIFEST_NAME).exists()
    assert committed_by(remote, "checkpoint-8", "a1") and not committed_by(remote, "checkpoint-8", "other")


def test_no_commit_while_a_node_part_is_missing(tmp_path, remote):
    """Node 1 never sends its part (it died): rank 0 never commits; once the part arrives it does."""
    a, b = tmp_path / "a", tmp_path / "b"
    up0 = uploader(remote, a, 0)
    try:
        up0.submit_part(node_save(a, 0, 4), fields(4), 0.0)
        up0.drain(0.5)  # whatever the time, a commit needs node 1's part
        assert manifest_in(remote, "checkpoint-4") is None and up0.pending == ["checkpoint-4"]
        assert remote.storage.isfile(part_path("checkpoint-4", 0))  # node 0's own part is there, verified
        assert wait_for_parts(remote, "checkpoint-4", "a1", NODES, stopped=lambda: True) is None
        up1 = uploader(remote, b, 1)
        up1.submit_part(node_save(b, 1, 4), None, 0.0)
        assert up1.drain(60) and up0.drain(60)
        up1.close()
        assert set(wait_for_parts(remote, "checkpoint-4", "a1", NODES, stopped=lambda: True)) == {0, 1}
    finally:
        up0.close()
    assert manifest_in(remote, "checkpoint-4")["attempt"] == "a1"


def test_a_part_of_another_attempt_is_never_merged(tmp_path, remote):
    """A part an earlier process left for the same step (another attempt) does not count."""
    a, b = tmp_path / "a", tmp_path / "b"
    old = node_save(b, 1, 4)
    upload_part(remote, old, part_record(old, step=4, node=1, ranks=[1], attempt="earlier"), tmp_path)
    assert read_parts(remote, "checkpoint-4", "a1") == {}
    up0 = uploader(remote, a, 0)
    try:
        up0.submit_part(node_save(a, 0, 4), fields(4), 0.0)
        up0.drain(0.5)
        assert manifest_in(remote, "checkpoint-4") is None
    finally:
        up0.close()


def part(node, files, ranks=None):
    return {"node": node, "ranks": NODES[node] if ranks is None else ranks, "files": files}


def entry(n, digest="0" * 32):
    return {"bytes": n, "xxh3_128": digest}


def test_merge_refuses_parts_that_do_not_make_one_checkpoint():
    ok = {0: part(0, {"model.safetensors": entry(5), "rng_state_0.pth": entry(2)}),
          1: part(1, {"rng_state_1.pth": entry(2)})}
    assert set(merge_parts(ok, NODES, 2)) == {"model.safetensors", "rng_state_0.pth", "rng_state_1.pth"}
    cases = {
        "no part from node(s) 1": {0: ok[0]},
        "written differently by node 0 and node 1": {**ok, 1: part(1, {"rng_state_1.pth": entry(2),
                                                                      "model.safetensors": entry(6)})},
        "rank 0's file) came from node 1": {**ok, 1: part(1, {"rng_state_1.pth": entry(2),
                                                             "rng_state_0.pth": entry(2)})},
        "no RNG file of rank(s) 1": {**ok, 1: part(1, {})},
        "names ranks [0, 1]": {**ok, 1: part(1, {"rng_state_1.pth": entry(2)}, ranks=[0, 1])},
    }
    for why, parts in cases.items():
        with pytest.raises(PartError, match=__import__("re").escape(why)):
            merge_parts(parts, NODES, 2)
    same = {**ok, 1: part(1, {"rng_state_1.pth": entry(2), "model.safetensors": entry(5)})}
    assert "model.safetensors" in merge_parts(same, NODES, 2)  # the same file from two nodes is one file


def test_the_commit_checks_the_bucket_holds_every_listed_file(tmp_path, remote):
    parts = {}
    for node, run in ((0, tmp_path / "a"), (1, tmp_path / "b")):
        ckpt = node_save(run, node, 4)
        parts[node] = part_record(ckpt, step=4, node=node, ranks=NODES[node], attempt="a1")
        upload_part(remote, ckpt, parts[node], tmp_path)
    remote.storage.remove("checkpoint-4/rng_state_1.pth")  # lost after node 1 said it was there
    with pytest.raises(PartError, match="rng_state_1.pth: missing"):
        commit_checkpoint(remote, "checkpoint-4", fields(4), parts, NODES, "a1")
    assert manifest_in(remote, "checkpoint-4") is None


def test_a_stale_manifest_goes_before_a_part_is_uploaded_and_this_attempts_stays(tmp_path, remote):
    remote.storage.write_bytes(f"checkpoint-4/{MANIFEST_NAME}", json.dumps({"attempt": "earlier"}).encode())
    assert remove_stale_manifest(remote, "checkpoint-4", "a1")
    assert not remote.storage.isfile(f"checkpoint-4/{MANIFEST_NAME}")
    remote.storage.write_bytes(f"checkpoint-4/{MANIFEST_NAME}", json.dumps({"attempt": "a1"}).encode())
    assert not remove_stale_manifest(remote, "checkpoint-4", "a1")  # a part re-sent after this attempt's commit
    assert remote.storage.isfile(f"checkpoint-4/{MANIFEST_NAME}")


def committed_checkpoint(tmp_path, remote, step=8) -> dict:
    a, b = tmp_path / "node-a", tmp_path / "node-b"
    parts = {}
    for node, run in ((0, a), (1, b)):
        ckpt = node_save(run, node, step)
        parts[node] = part_record(ckpt, step=step, node=node, ranks=NODES[node], attempt="a1")
        upload_part(remote, ckpt, parts[node], tmp_path)
    return commit_checkpoint(remote, f"checkpoint-{step}", fields(step), parts, NODES, "a1")


def count_downloads(monkeypatch, remote) -> list[str]:
    got, real = [], remote.storage.get_file
    monkeypatch.setattr(remote.storage, "get_file", lambda path, local: (got.append(path), real(path, local))[1])
    return got


def test_rank_zero_fetches_the_newest_commit_whole_and_reuses_what_it_has(tmp_path, remote, monkeypatch):
    manifest = committed_checkpoint(tmp_path, remote)
    node_save(tmp_path / "other", 0, 12)  # a newer save whose parts never all arrived: no manifest
    upload_part(remote, tmp_path / "other" / "checkpoint-12",
                part_record(tmp_path / "other" / "checkpoint-12", step=12, node=0, ranks=[0], attempt="a2"), tmp_path)
    run = tmp_path / "fresh"
    info, skipped = fetch_committed(remote, run)
    assert info.valid and info.path == run / "checkpoint-8" and verify_checkpoint(info.path).valid
    assert (run / "checkpoint-8" / MANIFEST_NAME).read_bytes() == remote.storage.read_bytes(
        f"checkpoint-8/{MANIFEST_NAME}")
    assert set(manifest["files"]) <= {p.name for p in (run / "checkpoint-8").iterdir()}  # every rank's files
    assert len(skipped) == 1 and "checkpoint-12: no manifest.json (not committed" in skipped[0]
    # the same commit on the same disk: nothing downloaded; one file damaged: that file alone
    downloads = count_downloads(monkeypatch, remote)
    fetch_committed(remote, run)
    assert downloads == []
    (run / "checkpoint-8" / "optimizer.pt").write_bytes(b"x" * 300)
    info, _ = fetch_committed(remote, run)
    assert info.valid and downloads == ["checkpoint-8/optimizer.pt"]


def test_a_local_commit_the_bucket_does_not_hold_is_never_resumed(tmp_path, remote):
    committed_checkpoint(tmp_path, remote)
    info, _ = fetch_committed(remote, tmp_path / "run")
    assert bucket_check(remote)(info) == []
    remote.storage.write_bytes(f"checkpoint-8/{MANIFEST_NAME}", b"{}")  # the bucket's commit of that name changed
    assert bucket_check(remote)(info) == [NOT_IN_BUCKET]


def test_another_node_fetches_only_what_its_ranks_resume_from(tmp_path, remote, monkeypatch):
    manifest = committed_checkpoint(tmp_path, remote)
    assert needed_files(manifest["files"], [1]) == ["model.safetensors", "optimizer.pt", "rng_state_1.pth",
                                                    "trainer_state.json"]
    run = tmp_path / "node-b"  # holds its own part (rng_state_1.pth) from the save
    downloads = count_downloads(monkeypatch, remote)
    path = fetch_part(remote, run, "checkpoint-8", manifest, [1])
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.pt", "rng_state_1.pth",
                                                      "trainer_state.json"]  # no manifest: not the whole checkpoint
    assert sorted(downloads) == ["checkpoint-8/model.safetensors", "checkpoint-8/optimizer.pt",
                                 "checkpoint-8/trainer_state.json"]  # its own RNG file was reused
    remote.storage.write_bytes("checkpoint-8/optimizer.pt", b"y" * 300)  # the bucket's copy went bad
    with pytest.raises(RuntimeError, match="optimizer.pt: wrong xxh3_128"):
        fetch_part(remote, tmp_path / "node-c", "checkpoint-8", manifest, [1])


def test_drop_caches_keeps_the_resumed_one_and_rank_zeros_newer_commits(tmp_path):
    for step in (2, 4, 6, 8):
        node_save(tmp_path, 1, step)
    (tmp_path / "checkpoint-8" / MANIFEST_NAME).write_text("{}")
    assert drop_caches(tmp_path, keep="checkpoint-4", keep_newer_commits=True) == ["checkpoint-2", "checkpoint-6"]
    assert drop_caches(tmp_path, below_step=8) == ["checkpoint-4"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-8"]


def test_books_from_the_bucket_replace_a_local_copy_unless_it_continues_them(tmp_path, remote):
    run = tmp_path / "run"
    run.mkdir()
    remote.storage.write_bytes("metrics.jsonl", b'{"step": 1}\n{"step": 2}\n{"step": 3')  # torn mid-append
    remote.storage.write_bytes("history.jsonl", b'{"event": "start"}\n')
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier start on this node: behind the bucket
    (run / "history.jsonl").write_text('{"event": "start"}\n{"event": "stopped"}\n')  # this node's continuation
    assert download_books(remote, run, NODE_BOOKS, extend=True) == ["metrics.jsonl"]
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert (run / "history.jsonl").read_text().count("\n") == 2
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 9}\n')  # diverged (another timeline): the bucket wins
    assert download_books(remote, run, NODE_BOOKS, extend=True) == ["metrics.jsonl"]
    assert download_books(remote, run, NODE_BOOKS) == []  # without extend, a present book is never replaced


def test_the_probe_verdict_against_the_setting():
    hosts = {0: "a", 1: "b", 2: "c"}
    assert probe_problem(True, {1: True, 2: True}, hosts, 0) is None
    assert probe_problem(False, {1: False, 2: False}, hosts, 0) is None
    apart = probe_problem(True, {1: True, 2: False}, hosts, 0)
    assert "node 2 (c) does not see the run directory" in apart and "shared_filesystem: false" in apart
    together = probe_problem(False, {1: True, 2: False}, hosts, 0)
    assert together.startswith("checkpoint.shared_filesystem: false, but node 1 (b) sees")


def test_config_rules_of_separate_disks():
    from gptresume.config.load import check_without_transformers
    from gptresume.config.schema import HealthConfig, SpikeConfig
    from gptresume.errors import ConfigError

    assert shared_filesystem_problems(True, None) == [] and shared_filesystem_problems(False, "s3://b/r") == []
    (need,) = shared_filesystem_problems(False, None)
    assert need.startswith("checkpoint.shared_filesystem: false needs checkpoint.remote")
    problems = separate_disks_problems({"load_best_model_at_end": True, "save_on_each_node": True},
                                       HealthConfig(on_nan="rollback", spike=SpikeConfig(enabled=True)))
    assert [p.split(":")[0] for p in problems] == ["train.load_best_model_at_end", "train.save_on_each_node",
                                                   "health.on_nan", "health.on_spike"]
    raw = {"model": {"from_scratch": {}, "tokenizer": {"train_vocab_size": 400}}, "train": {"output_dir": "run"},
           "checkpoint": {"shared_filesystem": False}}
    with pytest.raises(ConfigError, match="shared_filesystem: false needs checkpoint.remote"):
        check_without_transformers(raw)
    raw["checkpoint"] = {"shared_filesystem": False, "remote": "s3://b/r"}
    raw["health"] = {"on_nan": "rollback"}
    with pytest.raises(ConfigError, match="health.on_nan: rollback is not available"):
        check_without_transformers(raw)
    raw["checkpoint"] = {"shared_filesystem": "no"}
    raw.pop("health")
    with pytest.raises(ConfigError, match="checkpoint.shared_filesystem"):
        check_without_transformers(raw)


def test_the_api_names_its_keywords_for_separate_disks():
    from gptresume.options import Options

    with pytest.raises(Exception, match=r"gptresume.train\(shared_filesystem=False\): false needs remote="):
        Options.from_keywords({"shared_filesystem": False})
    assert Options.from_keywords({"shared_filesystem": False, "remote": "s3://b/r"}).shared_filesystem is False


def test_the_probe_is_looked_for_at_each_nodes_own_run_directory(tmp_path):
    """Rank 0 writes the probe at the nearest existing directory of its run directory; another node looks the same
    number of levels above its own run directory: found on a shared file system (the same path), not on another
    disk (loopback: another directory), and removed afterwards."""
    from gptresume.training.nodes import _remove_probe, _sees_probe, _write_probe

    mine, same, other = tmp_path / "a" / "runs" / "x", tmp_path / "a" / "runs" / "x", tmp_path / "b" / "runs" / "x"
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "runs").mkdir(parents=True)
    probe = _write_probe(mine)  # runs/x does not exist yet: the probe goes into a/, two levels up
    assert probe["up"] == 2 and (tmp_path / "a" / probe["name"]).is_file()
    assert _sees_probe(same, probe) and not _sees_probe(other, probe)
    _remove_probe(mine, probe)
    assert list((tmp_path / "a").iterdir()) == []  # nothing left behind


def test_a_node_with_other_data_refuses_the_run(monkeypatch, tmp_path):
    """`same_data` over the gathered (node, data fingerprint) pairs: another node's packed data refuses the run on
    every rank (rank 0 raises the message; the other ranks exit 2 without printing it)."""
    from gptresume.errors import UsageError
    from gptresume.training import distributed, nodes

    layout = nodes.Nodes(node=0, leader=True, nodes=NODES, hosts={0: "a", 1: "b"}, attempt="a1", run_dir=tmp_path)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [mine, (1, "other")])
    with pytest.raises(UsageError, match=r"node\(s\) 1 read other data than global rank 0 \(data fingerprint f0"):
        nodes.same_data(layout, "f0")
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [mine, (1, "f0")])
    nodes.same_data(layout, "f0")
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [(0, "f0"), mine])
    with pytest.raises(distributed.DecidedOnRankZero):
        nodes.same_data(layout, "other")


def test_the_sample_ledger_books_mirror_rank_zeros_in_the_bucket(tmp_path, remote):
    """URL/ledger/ is made equal to global rank 0's RUN_DIR/ledger/ after each commit; a new rank 0 takes the
    bucket's segments unless it holds them all, setting its own stale ones aside."""
    from gptresume.remote.books import download_ledger_books, upload_ledger_books

    a = tmp_path / "a" / "ledger"
    a.mkdir(parents=True)
    for name in ("steps-000000001-000000004.npz", "steps-000000005-000000008.npz"):
        (a / name).write_bytes(name.encode())
    assert upload_ledger_books(remote, tmp_path / "a") == ["steps-000000001-000000004.npz",
                                                          "steps-000000005-000000008.npz"]
    assert upload_ledger_books(remote, tmp_path / "a") == []  # nothing new
    (a / "steps-000000005-000000008.npz").unlink()  # a resume from checkpoint-4 set it aside locally
    upload_ledger_books(remote, tmp_path / "a")
    assert remote.storage.listdir("ledger") == ["steps-000000001-000000004.npz"]

    b = tmp_path / "b" / "ledger"  # another machine, global rank 0 now, with a stale segment of an old start
    b.mkdir(parents=True)
    (b / "steps-000000001-000000006.npz").write_bytes(b"stale")
    assert download_ledger_books(remote, tmp_path / "b") == ["steps-000000001-000000004.npz"]
    assert sorted(p.name for p in b.glob("*.npz")) == ["steps-000000001-000000004.npz"]
    assert list((b / "abandoned").glob("steps-000000001-000000006.*.npz"))
    assert download_ledger_books(remote, tmp_path / "b") == []  # holds them all: kept as it is
