"""One node's part of a checkpoint, when the nodes share no file system (`checkpoint.shared_filesystem: false`).

Each node's ranks write their files into the node's own RUN_DIR/checkpoint-N: on global rank 0's node Trainer's
model, optimizer, scheduler, trainer state and tokenizer plus the RNG file (and streaming state) of each of its
ranks; on every other node only its ranks' RNG files (and streaming state). No node holds the whole checkpoint, so
none can commit it locally. Instead each node's leader (its local rank 0) uploads its part to the bucket:

    URL/checkpoint-N/<each file of the part>           uploaded first
    (read back and verified: every file downloaded again and hashed against the part's list)
    URL/checkpoint-N/.parts/node-K.json                 the part list, written last: "node K's files are there"

The part list names the node, its ranks, the files (bytes and digest, as a manifest lists them) and the *attempt*:
a token global rank 0 draws at each start, so a part left by an earlier process (a save of the same step that
never committed) is never mistaken for this one's. Global rank 0 commits the checkpoint once every node's part of
its attempt is there (remote/commit.py). Until then URL/checkpoint-N has no manifest.json, which discovery and
retention already read as "an upload that never finished".

Which files a node needs to resume (`needed_files`): every file of the checkpoint except the per-rank files of
ranks on other nodes. Trainer loads the model, optimizer, scheduler and trainer state on every rank, so every node
downloads those; each rank restores only its own RNG file and streaming position.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from gptresume.checkpoint.files import MANIFEST_NAME
from gptresume.checkpoint.manifest import checkpoint_file_entries, file_digest, path_problem
from gptresume.durable import DEFAULT_DIGEST, DIGESTS, hash_file
from gptresume.remote.transfer import delay_upload_for_tests
from gptresume.remote.url import Remote

log = logging.getLogger(__name__)

PARTS_DIR = ".parts"
PART_FORMAT = 1
# Files one rank writes for itself (checkpoint/files.py RNG_STATE_PATTERN, data/streaming.py `state_names`): a node
# downloads these only for its own ranks. The names without a rank (one process) belong to rank 0.
PER_RANK_RE = re.compile(r"^(?:rng_state|data_state|data_buffer)_(\d+)\.(?:pth|json|npy)$")


class PartError(RuntimeError):
    """A part cannot be uploaded or committed as it is (a retry would not help)."""


def part_path(name: str, node: int) -> str:
    """Where node `node`'s part list of checkpoint NAME lives in the bucket."""
    return f"{name}/{PARTS_DIR}/node-{node}.json"


def part_record(ckpt: Path, *, step: int, node: int, ranks: list[int], attempt: str,
                digest: str = DEFAULT_DIGEST) -> dict:
    """Node `node`'s part of `ckpt`: every file its ranks wrote into its local checkpoint directory, hashed."""
    return {"format": PART_FORMAT, "step": step, "node": node, "ranks": sorted(ranks), "attempt": attempt,
            "host": socket.gethostname(), "digest": digest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": checkpoint_file_entries(Path(ckpt), digest)}


def part_problems(part) -> list[str]:
    """What makes a part list unusable (a torn or foreign object under .parts/): the commit ignores it."""
    if not isinstance(part, dict):
        return ["not a JSON object"]
    out = []
    for key, ok in (("format", lambda v: v == PART_FORMAT), ("step", lambda v: isinstance(v, int)),
                    ("node", lambda v: isinstance(v, int)), ("attempt", lambda v: isinstance(v, str)),
                    ("ranks", lambda v: isinstance(v, list) and all(isinstance(r, int) for r in v)),
                    ("files", lambda v: isinstance(v, dict))):
        if key not in part or not ok(part[key]):
            out.append(f"'{key}' missing or of the wrong type")
    for rel, meta in (part.get("files") or {}).items() if isinstance(part.get("files"), dict) else ():
        why = path_problem(rel)
        if why or rel == MANIFEST_NAME:
            out.append(f"files: {rel!r} {why or 'is the manifest'}")
        elif not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int)
                  and any(isinstance(meta.get(d), str) for d in DIGESTS)):
            out.append(f"files: {rel}: needs bytes and a digest")
    return out


def remove_stale_manifest(remote: Remote, name: str, attempt: str) -> bool:
    """Before a node uploads its part of NAME: a manifest already there is another attempt's commit of this name
    (an earlier timeline saved the same step), and it must go before any of its files is overwritten, so no
    instant shows it over files of another save. This attempt's own commit (a part re-sent after a failure
    that came after the commit) is kept. True when one was removed."""
    storage, marker = remote.storage, f"{name}/{MANIFEST_NAME}"
    try:
        old = json.loads(storage.read_bytes(marker))
    except FileNotFoundError:
        return False
    except ValueError:
        old = None
    if isinstance(old, dict) and old.get("attempt") == attempt:
        return False
    storage.remove(marker)
    log.info("Removed %s (a commit of this step by an earlier process) before uploading this one",
             remote.label(marker))
    return True


def upload_part(remote: Remote, ckpt: Path, part: dict, scratch_parent: Path) -> None:
    """Send node `part["node"]`'s files of `ckpt`, read them back and verify them, then write the part list (the
    node's statement that its files are in the bucket, verified). Raises on any failure (the caller retries)."""
    storage, name = remote.storage, Path(ckpt).name
    remove_stale_manifest(remote, name, part["attempt"])
    for i, rel in enumerate(sorted(part["files"])):
        storage.put_file(Path(ckpt) / rel, f"{name}/{rel}")
        if i == 0:
            delay_upload_for_tests(name)
    faults = verify_files(remote, name, part["files"], scratch_parent)
    if faults:
        raise RuntimeError("the remote copy does not match the part: " + "; ".join(faults))
    storage.write_bytes(part_path(name, part["node"]), json.dumps(part, indent=1, sort_keys=True).encode())


def verify_files(remote: Remote, name: str, files: dict, scratch_parent: Path) -> list[str]:
    """Faults of URL/NAME/<rel> against `files` (rel -> {bytes, digest}): each downloaded to a scratch directory
    under `scratch_parent` and hashed (the way `verify_checkpoint` checks a local file), then removed."""
    scratch = Path(tempfile.mkdtemp(prefix=f".node-verify-{name}.tmp-", dir=scratch_parent))
    faults = []
    try:
        for rel, meta in sorted(files.items()):
            local = scratch / "file"
            try:
                remote.storage.get_file(f"{name}/{rel}", local)
            except FileNotFoundError:
                faults.append(f"{rel}: missing")
                continue
            faults.extend(f"{rel}: {f}" for f in file_faults(local, meta))
            local.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return faults


def file_faults(path: Path, meta: dict) -> list[str]:
    """[] when `path` has the size and digest `meta` (a manifest or part entry) records."""
    size = path.stat().st_size
    if size != meta["bytes"]:
        return [f"wrong size ({size} bytes, expected {meta['bytes']})"]
    algorithm, expected = file_digest(meta)
    if hash_file(path, digest=algorithm)[1] != expected:
        return [f"wrong {algorithm}"]
    return []


def read_parts(remote: Remote, name: str, attempt: str) -> dict[int, dict]:
    """The part lists of `attempt` under URL/NAME/.parts (node -> part). Lists of other attempts, torn or
    malformed ones are left out (a node re-sends its own until it is there)."""
    storage, found = remote.storage, {}
    for entry in storage.listdir(f"{name}/{PARTS_DIR}"):
        try:
            part = json.loads(storage.read_bytes(f"{name}/{PARTS_DIR}/{entry}"))
        except (FileNotFoundError, ValueError):
            continue
        if not part_problems(part) and part["attempt"] == attempt and entry == f"node-{part['node']}.json":
            found[part["node"]] = part
    return found


def rank_of(rel: str) -> int | None:
    """The rank a per-rank file belongs to (None: a file every rank needs)."""
    m = PER_RANK_RE.match(rel)
    return int(m.group(1)) if m else None


def needed_files(files: dict, ranks, every_rank: bool = False) -> list[str]:
    """The files of a checkpoint (a manifest's `files`) that a node with these global ranks resumes from.
    `every_rank`: the checkpoint was written by another number of processes (an elastic resume): a rank's stream
    position is then re-split from every writer's, so every per-rank file is needed."""
    ranks = set(ranks)
    return sorted(rel for rel in files if every_rank or rank_of(rel) is None or rank_of(rel) in ranks)
