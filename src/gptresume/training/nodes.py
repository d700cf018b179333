"""Several nodes: where each node's run directory is, and what each node does at the start when the nodes share no
file system (`checkpoint.shared_filesystem: false`, with `checkpoint.remote`).

Calls from the start pipeline (training/start.py `start`), each on every rank:
- `start_nodes` (before the resume plan): which ranks run on which node (torchrun's GROUP_RANK), the attempt
  token of this start (drawn by global rank 0), and a probe of the run directory: global rank 0 writes a file
  beside it and every other node's leader looks for it at its own run directory's path. A node that does not see
  it has its own disk: with the default `shared_filesystem: true` that is refused (exit 2: no node could commit
  a checkpoint), and with `false` a run directory every node sees is refused too (the nodes would overwrite each
  other's caches). One all-gather and one more with several nodes; nothing per step.
- `join_nodes` (after rank 0 planned the resume and wrote the run directory): every node's leader drops its local
  checkpoint directories but the one resumed from (caches; the bucket holds every commit); the leaders of the
  other nodes download their part of the chosen checkpoint (remote/materialize.py) and the run's tokenizer;
  a failure on any node ends every rank with its message.
- `load_on_nodes` (the other ranks' inputs): the other nodes' leaders receive rank 0's tokenizer, prepare the data
  on their own disk first and keep the cache; then their node's other ranks read it; `same_data` checks every node
  packed the same data.

The save protocol itself (each node's part, rank 0's commit in the bucket) is remote/node_uploader.py; the
commit of a save calls `CommitCallback` with the node's uploader (training/callbacks.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from gptresume.errors import UsageError
from gptresume.training import distributed

log = logging.getLogger(__name__)

PROBE_PREFIX = ".gptresume-node-probe-"


@dataclass
class Nodes:
    """This process's place among the nodes (returned by `start_nodes` when the nodes share no file system)."""

    node: int
    """This node's index (torchrun's GROUP_RANK)."""
    leader: bool
    """Local rank 0: uploads its node's part of every save, downloads its node's part at a start."""
    nodes: dict[int, list[int]]
    """Node index -> the global ranks on it."""
    hosts: dict[int, str]
    attempt: str
    """Drawn by global rank 0 at this start: which parts in the bucket belong to this process's saves."""
    run_dir: Path
    """This node's own run directory (train.output_dir on this node's disk)."""
    world_size: int = 1
    shared: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> list[int]:
        return self.nodes[self.node]

    def role(self):
        from gptresume.remote.node_uploader import NodeRole

        return NodeRole(self.node, self.ranks, self.nodes, self.attempt, distributed.is_main(), self.world_size)


def node_index() -> int:
    """This process's node: GROUP_RANK (torchrun, accelerate launch), else the rank's block of LOCAL_WORLD_SIZE."""
    if "GROUP_RANK" in os.environ:
        return int(os.environ["GROUP_RANK"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
    return distributed.rank() // max(per_node, 1)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def several_nodes() -> bool:
    return int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size())) < distributed.world_size()


def start_nodes(shared_filesystem: bool, run_dir: Path) -> Nodes | None:
    """Every rank, before the resume plan. Returns the layout when the nodes share no file system, None when they
    do (the one-machine path runs unchanged). UsageError (exit 2 on every rank, one message on rank 0) when the
    probe contradicts `shared_filesystem`. Writes nothing but the probe, which rank 0 removes at once."""
    run_dir = Path(run_dir)
    if shared_filesystem and not several_nodes():
        return None
    probe = _write_probe(run_dir) if distributed.is_main() and several_nodes() else None
    mine = {"rank": distributed.rank(), "node": node_index(), "local_rank": local_rank(),
            "host": socket.gethostname(), "token": secrets.token_hex(8) if distributed.is_main() else None,
            "probe": probe}
    everyone = distributed.all_gather_objects(mine)
    main = everyone[0]
    nodes, hosts = {}, {}
    for r in everyone:
        nodes.setdefault(r["node"], []).append(r["rank"])
        hosts.setdefault(r["node"], r["host"])
    nodes = {n: sorted(ranks) for n, ranks in sorted(nodes.items())}
    if main["probe"] is not None:
        sees = _sees_probe(run_dir, main["probe"]) if local_rank() == 0 and not distributed.is_main() else None
        seen = distributed.all_gather_objects({"node": node_index(), "sees": sees})
        if distributed.is_main():
            _remove_probe(run_dir, main["probe"])
        verdicts = {s["node"]: s["sees"] for s in seen if s["sees"] is not None}
        why = probe_problem(shared_filesystem, verdicts, hosts, main["node"])
        if why:
            if distributed.is_main():
                raise UsageError(why)
            raise distributed.DecidedOnRankZero(why, UsageError.exit_code)
    if shared_filesystem:
        return None
    me = node_index()
    return Nodes(node=me, leader=local_rank() == 0, nodes=nodes, hosts=hosts, attempt=main["token"],
                 run_dir=run_dir, world_size=distributed.world_size())


def probe_problem(shared_filesystem: bool, sees: dict[int, bool], hosts: dict[int, str], main_node: int) -> str | None:
    """The refusal when the probe (node -> saw rank 0's file at its own run directory) contradicts the config."""
    apart = sorted(n for n, seen in sees.items() if not seen and n != main_node)
    together = sorted(n for n, seen in sees.items() if seen and n != main_node)
    if shared_filesystem and apart:
        names = ", ".join(f"node {n} ({hosts.get(n, '?')})" for n in apart)
        return (f"train.output_dir: {names} does not see the run directory global rank 0 writes (a file written "
                "beside it on rank 0's node is not there at the same path): the nodes have separate disks, so no "
                "node could commit a checkpoint. Set checkpoint.shared_filesystem: false with checkpoint.remote "
                "(each node keeps its own run directory and the checkpoints are committed in the bucket), or put "
                "train.output_dir on a file system every node mounts")
    if not shared_filesystem and together:
        names = ", ".join(f"node {n} ({hosts.get(n, '?')})" for n in together)
        return (f"checkpoint.shared_filesystem: false, but {names} sees global rank 0's run directory (the same "
                "directory on a shared file system): the nodes would overwrite each other's copies. Remove the "
                "setting (a shared run directory commits locally), or give each node a local train.output_dir")
    return None


def _probe_site(run_dir: Path) -> tuple[Path, int]:
    """(the nearest existing directory at or above the run directory, how many levels above it that is)."""
    path, up = Path(os.path.abspath(run_dir)), 0
    while not path.is_dir() and path != path.parent:
        path, up = path.parent, up + 1
    return path, up


def _write_probe(run_dir: Path) -> dict | None:
    site, up = _probe_site(run_dir)
    name = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    try:
        (site / name).write_text(socket.gethostname())
    except OSError as e:  # a read-only parent: the config is trusted
        log.debug("No probe of %s (%s): trusting checkpoint.shared_filesystem", site, e)
        return None
    return {"name": name, "up": up}


def _sees_probe(run_dir: Path, probe: dict) -> bool:
    path = Path(os.path.abspath(run_dir))
    for _ in range(probe["up"]):
        path = path.parent
    return (path / probe["name"]).is_file()


def _remove_probe(run_dir: Path, probe: dict) -> None:
    site, _ = _probe_site(run_dir)
    try:
        (site / probe["name"]).unlink()
    except OSError:
        pass


def join_nodes(nodes: Nodes | None, plan, remote) -> Path | None:
    """Every rank, once rank 0 planned the resume (`plan`). With separate disks: the leaders drop their local
    checkpoint caches but the resumed one; the other nodes' leaders download their part of it; then every rank's
    `plan.checkpoint.path` is its own node's copy. Returns the checkpoint to resume from on this rank (None: a
    fresh start). Any node's failure raises on every rank."""
    ckpt = plan.checkpoint.path if plan.checkpoint is not None else None
    if nodes is None:
        return ckpt
    from gptresume.remote.materialize import drop_caches, fetch_part
    from gptresume.rundir import remove_leftovers

    main = distributed.is_main()
    error = None
    if nodes.leader:
        try:
            nodes.run_dir.mkdir(parents=True, exist_ok=True)
            if not main:
                remove_leftovers(nodes.run_dir)  # a killed process's scratch (rank 0 did this in its own start)
            drop_caches(nodes.run_dir, keep=ckpt.name if ckpt is not None else None, keep_newer_commits=main)
            if ckpt is not None and not main:
                fetch_part(remote, nodes.run_dir, ckpt.name, plan.checkpoint.manifest, nodes.ranks, nodes.world_size)
        except Exception as e:  # reported by every rank below
            error = f"node {nodes.node} ({socket.gethostname()}): {type(e).__name__}: {e}"
    errors = [e for e in distributed.all_gather_objects(error) if e]
    if errors:
        raise RuntimeError("the nodes could not get the checkpoint from the bucket: " + "; ".join(errors))
    if ckpt is not None and not main:
        plan.checkpoint.path = nodes.run_dir / ckpt.name
    return plan.checkpoint.path if plan.checkpoint is not None else None


def _read_dirs(run_dir: Path, names) -> dict[str, bytes]:
    """Files under RUN_DIR/<name> for each name, as relative path -> bytes (small: a tokenizer)."""
    out = {}
    for name in names:
        top = run_dir / name
        if top.is_dir():
            for p in sorted(top.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    out[p.relative_to(run_dir).as_posix()] = p.read_bytes()
    return out


def _write_dirs(run_dir: Path, files: dict[str, bytes]) -> None:
    from gptresume.durable import atomic_write_bytes

    for rel, data in files.items():
        target = run_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)


def load_on_nodes(nodes: Nodes | None, inputs, load, keep=None, share=()):
    """Every rank, after rank 0 loaded and checked its inputs (`inputs`) and wrote its run directory: the other
    ranks load theirs (`load()`). With separate disks each other node's leader first receives rank 0's run
    directories `share` that rank 0 has (the CLI's tokenizer/), loads, and keeps what it prepared on its disk
    (`keep(inputs)`: the CLI's packed data cache); then the node's other ranks load from it, as on rank 0's node."""
    if nodes is None:
        return inputs if distributed.is_main() else load()
    main = distributed.is_main()
    files = distributed.broadcast_object(_read_dirs(nodes.run_dir, share) if main else None)
    if nodes.leader and not main:
        _write_dirs(nodes.run_dir, files or {})
        inputs = load()
        if keep is not None:
            keep(inputs)
    distributed.barrier()
    return inputs if inputs is not None else load()


def same_data(nodes: Nodes | None, fingerprint: str | None) -> None:
    """Every rank: with separate disks every node reads data.source from its own disk; a node whose packed data
    differs from rank 0's would train on other samples, so the run is refused (exit 2 on every rank). A rank that
    computes no fingerprint (a script's: its dataset is its own) is not compared."""
    if nodes is None:
        return
    found = distributed.all_gather_objects((node_index(), fingerprint))
    differ = sorted({n for n, fp in found if fp is not None and fp != found[0][1]})
    if differ:
        theirs = ", ".join(sorted({str(fp) for _, fp in found if fp is not None and fp != found[0][1]}))
        why = (f"data.source: node(s) {', '.join(map(str, differ))} read other data than global rank 0 (data "
               f"fingerprint {found[0][1]}, theirs {theirs}): with checkpoint.shared_filesystem: false every node "
               "reads the source from its own disk; give every node the same files")
        if distributed.is_main():
            raise UsageError(why)
        raise distributed.DecidedOnRankZero(why, UsageError.exit_code)


def keep_node_data(config, data, tokenizer) -> None:
    """For the CLI (run.py `ConfigSource.keep_on_node`): another node's leader keeps the data it prepared in its own
    data-cache/ (the packed blocks; for a stream, the source's stat-cached hash), as rank 0 does for its node."""
    from gptresume.data.sources import remember_source_fingerprint

    if config.data.streaming:
        remember_source_fingerprint(config.run_dir)
    else:
        from gptresume.data import save_to_cache

        save_to_cache(data, config.data, tokenizer, config.run_dir)
