"""The commit of a checkpoint whose parts were uploaded by several nodes (`checkpoint.shared_filesystem: false`).

Global rank 0 commits, from its upload thread, after its own part is uploaded and verified:
1. it waits until the bucket holds the part list (remote/parts.py) of every node of this attempt: a node writes
   its list only after its files are uploaded and verified, so the lists are the nodes' agreement, and nothing
   on the training path waits for them (no collective, no extra reduction per step);
2. it merges them: every file listed once (a file listed by two nodes with different contents refuses the
   commit), every rank's RNG file present, every listed file in the bucket with its recorded size;
3. it writes URL/checkpoint-N/manifest.json: the manifest a local save writes (the same schema and fields, plus
   `attempt` and `nodes`, which node wrote which ranks' files), in one PUT. That object is the commit.

A node that dies before its part list is written leaves checkpoint-N without a manifest: discovery skips it and
resumes from the previous commit, and remote retention removes it once a newer one commits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from gptresume.checkpoint.files import MANIFEST_NAME
from gptresume.checkpoint.manifest import manifest_problems, manifest_record
from gptresume.remote.parts import PartError, rank_of, read_parts
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)

POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0


def wait_for_parts(remote: Remote, name: str, attempt: str, nodes, stopped: Callable[[], bool],
                   poll: tuple[float, float] = (POLL_FIRST_S, POLL_MAX_S)) -> dict[int, dict] | None:
    """Every node's part list of `attempt` for checkpoint NAME (node -> part), polled from the bucket (listing
    first every 50 ms, backing off to once a second); None when `stopped()` says to give up. A listing that fails
    (the storage down) is retried like an absent part."""
    wait, expected = poll[0], set(nodes)
    while True:
        try:
            parts = read_parts(remote, name, attempt)
        except Exception as e:  # the storage's own errors: the next poll tries again
            log.debug("Listing the parts of %s failed (%s); trying again", remote.label(name), e)
            parts = {}
        if expected <= set(parts):
            return {n: parts[n] for n in sorted(expected)}
        if stopped():
            return None
        time.sleep(wait)
        wait = min(wait * 2, poll[1])


def merge_parts(parts: dict[int, dict], nodes: dict[int, list[int]], world_size: int) -> dict:
    """The manifest's `files` from every node's part. PartError when the parts do not make one checkpoint: a node
    missing, a file two nodes wrote differently, a part naming ranks that are not that node's, a rank whose RNG
    file no node sent (a save that lost a rank's state must not commit)."""
    missing = sorted(set(nodes) - set(parts))
    if missing:
        raise PartError(f"no part from node(s) {', '.join(map(str, missing))}")
    files, owner = {}, {}
    for node, part in sorted(parts.items()):
        if sorted(part["ranks"]) != sorted(nodes[node]):
            raise PartError(f"node {node}'s part names ranks {part['ranks']}, the node has {nodes[node]}")
        for rel, meta in part["files"].items():
            rank = rank_of(rel)
            if rank is not None and rank not in nodes[node]:
                raise PartError(f"{rel} (rank {rank}'s file) came from node {node}, whose ranks are {nodes[node]}")
            if rel in files and files[rel] != meta:
                raise PartError(f"{rel} was written differently by node {owner[rel]} and node {node}; with separate "
                                "disks each file of a checkpoint must come from one node (is save_on_each_node set?)")
            files[rel], owner[rel] = meta, node
    if world_size > 1:
        lost = [r for r in range(world_size) if f"rng_state_{r}.pth" not in files]
        if lost and any(rel.startswith("rng_state") for rel in files):
            raise PartError(f"no RNG file of rank(s) {', '.join(map(str, lost))}")
    return files


def commit_checkpoint(remote: Remote, name: str, fields: dict, parts: dict[int, dict],
                      nodes: dict[int, list[int]], attempt: str) -> dict:
    """Merge the parts, check every file is in the bucket with its size, and write URL/NAME/manifest.json (the
    commit). `fields`: what `write_manifest` takes besides the files (step, epoch, config, ...). Returns the
    manifest. PartError when the parts do not make a checkpoint; the storage's errors propagate (retried)."""
    files = merge_parts(parts, nodes, fields["world_size"])
    present = remote.storage.sizes(name)
    absent = [f"{rel}: missing" if rel not in present else f"{rel}: {present[rel]} bytes, its part says {m['bytes']}"
              for rel, m in sorted(files.items()) if present.get(rel) != m["bytes"]]
    if absent:
        raise PartError("the bucket does not hold what the parts list: " + "; ".join(absent[:5]))
    digests = {p.get("digest") for p in parts.values()}
    manifest = manifest_record(files, **fields, digest=digests.pop() if len(digests) == 1 else "sha256")
    manifest["attempt"] = attempt
    manifest["nodes"] = {str(n): {"host": p.get("host"), "ranks": p["ranks"]} for n, p in sorted(parts.items())}
    problems = manifest_problems(manifest)
    if problems:
        raise PartError("the merged manifest is malformed: " + "; ".join(problems[:3]))
    remote.storage.write_bytes(f"{name}/{MANIFEST_NAME}", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def committed_by(remote: Remote, name: str, attempt: str) -> bool:
    """Whether URL/NAME/manifest.json is this attempt's commit (what a node other than rank 0's waits for at a
    stop, so that its exit 75 also means "committed")."""
    try:
        manifest = json.loads(remote.storage.read_bytes(f"{name}/{MANIFEST_NAME}"))
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("attempt") == attempt
