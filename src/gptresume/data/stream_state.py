"""A streaming run's position as files, and the rule that re-splits it over another number of processes.

The unit of sharding is a *part* of the source: part s of V is `split_dataset_by_node(source, rank=s,
world_size=V)` (whole files when the file count is a multiple of V, else every V-th document), with V fixed when the
run starts (`data.stream_parts`, default: the process count of the first start). Each part is packed alone (its own
reader position, pass over the source, and tokens carried to its next block), so a block's identity is global and
stable: (part, number of the block within the part), encoded as one int64 (`block_id`). A process owns the parts
s with s % processes == rank, feeds its shuffle buffer from them in turn, and writes its own state file
(`data_state_<rank>.json` + `data_buffer_<rank>.npy`, the unnumbered names with one process).

On the process count the checkpoint was written with, each rank loads its own file: the stream continues bit for
bit. On another count the union of every rank's state is redistributed, each thing once: a part (reader position,
pass, carried tokens, blocks packed but not yet buffered) goes to the rank that now owns it, and each block in a
shuffle buffer goes to the rank that owns the block's part. Nothing is replayed or dropped, so every block of the
stream is trained exactly once; the order after the change is not the one an uninterrupted run would have drawn
(other buffers, generators seeded from the checkpoint). More processes than parts cannot be fed: refused.

Format 2 (this module) records the parts; format 1 (before parts existed: one reader per rank) is read as V = the
process count that wrote it, part = rank, its blocks without identity (`UNKNOWN_BLOCK`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from gptresume.errors import UsageError

STATE_NAME = "data_state.json"
BUFFER_NAME = "data_buffer.npy"
STATE_FORMAT = 2
PART_STRIDE = 1 << 40  # block id = part * PART_STRIDE + the block's number within its part
UNKNOWN_BLOCK = -1  # a block restored from a format-1 state: its identity was never recorded
_NUMBERED = re.compile(r"^data_state_(\d+)\.json$")


def block_id(part: int, number: int) -> int:
    return part * PART_STRIDE + number


def part_of(uid: int) -> int:
    return uid // PART_STRIDE


def state_names(rank: int, world_size: int) -> tuple[str, str]:
    """A rank's state and buffer file names in a checkpoint: one process keeps the unnumbered names."""
    if world_size == 1:
        return STATE_NAME, BUFFER_NAME
    return f"data_state_{rank}.json", f"data_buffer_{rank}.npy"


def owned_parts(parts_total: int, rank: int, world_size: int) -> list[int]:
    return [s for s in range(parts_total) if s % world_size == rank]


def fresh_part(part: int) -> dict:
    return {"part": part, "reader": None, "passes": 0, "carry": np.zeros(0, np.int64), "pending": [], "produced": 0}


# ---------------------------------------------------------------- writing


def write_state(directory: Path, rank: int, world_size: int, snap: dict, block_size: int) -> None:
    """One rank's state after a yielded block (`snap`, PackedStream's snapshot) into a checkpoint directory."""
    rows = [b for _, b in snap["buffer"]]
    parts = []
    for p in snap["parts"]:
        rows += [b for _, b in p["pending"]]
        parts.append({"part": p["part"], "reader": p["reader"], "passes": p["passes"],
                      "carry": [int(x) for x in p["carry"]], "produced": p["produced"],
                      "pending": [uid for uid, _ in p["pending"]]})
    record = {"format": STATE_FORMAT, "world_size": world_size, "parts_total": snap["parts_total"],
              "yielded": snap["yielded"], "cursor": snap["cursor"], "rng": snap["rng"],
              "buffer": [uid for uid, _ in snap["buffer"]], "parts": parts}
    state_name, buffer_name = state_names(rank, world_size)
    np.save(directory / buffer_name, np.stack(rows) if rows else np.zeros((0, block_size), np.int64))
    (directory / state_name).write_text(json.dumps(record))


# ---------------------------------------------------------------- reading


def written_by(checkpoint: Path) -> int:
    """How many processes wrote the stream state in `checkpoint` (its state files say; format 1 files are counted
    by name, the manifest's world_size deciding when it is there)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / STATE_NAME).is_file():
        return 1
    numbered = sorted(int(m.group(1)) for p in checkpoint.glob("data_state_*.json") if (m := _NUMBERED.match(p.name)))
    if not numbered:
        raise UsageError(f"streaming: {checkpoint} has no {STATE_NAME} or data_state_<rank>.json (not written by a "
                         "streaming run); resume it as it was started, or start a new run")
    try:
        first = json.loads((checkpoint / f"data_state_{numbered[0]}.json").read_text())
        if isinstance(first, dict) and isinstance(first.get("world_size"), int):
            return first["world_size"]
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        return int(manifest["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return max(numbered[-1] + 1, 2)  # numbered names: written by several processes


def parts_in(checkpoint: Path) -> int:
    """The number of parts the stream in `checkpoint` is split into (format 1: the process count that wrote it)."""
    writers = written_by(checkpoint)
    state = _read_json(Path(checkpoint), state_names(0, writers)[0])
    return int(state.get("parts_total", writers))


def _read_json(checkpoint: Path, name: str) -> dict:
    path = checkpoint / name
    if not path.is_file():
        raise UsageError(f"streaming: {checkpoint} has no {name} (the checkpoint is incomplete, or was not written by "
                         "a streaming run with this many processes); resume another checkpoint, or start a new run")
    try:
        state = json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"streaming: {path} is unreadable ({e})") from None
    if not isinstance(state, dict):
        raise UsageError(f"streaming: {path} is not a JSON object")
    return state


def read_state(checkpoint: Path, rank: int, world_size: int) -> dict:
    """Rank `rank`'s state as written (world_size = the writers' count), converted to the format-2 layout."""
    checkpoint = Path(checkpoint)
    state_name, buffer_name = state_names(rank, world_size)
    state = _read_json(checkpoint, state_name)
    rows = [row for row in np.load(checkpoint / buffer_name, allow_pickle=False).astype(np.int64)]
    if state.get("format") != STATE_FORMAT:  # format 1: one reader per rank, blocks without identity
        buffered = int(state["buffered"])
        part = fresh_part(rank)
        part.update(reader=state["reader"], passes=int(state["epoch"]), carry=np.asarray(state["carry"], np.int64),
                    pending=[(UNKNOWN_BLOCK, b) for b in rows[buffered:]])
        return {"parts_total": world_size, "yielded": state["yielded"], "cursor": 0, "rng": state["rng"],
                "buffer": [(UNKNOWN_BLOCK, b) for b in rows[:buffered]], "parts": [part]}
    at = len(state["buffer"])
    buffer = list(zip(state["buffer"], rows[:at]))
    parts = []
    for p in state["parts"]:
        pending = list(zip(p["pending"], rows[at:at + len(p["pending"])]))
        at += len(p["pending"])
        parts.append({"part": p["part"], "reader": p["reader"], "passes": p["passes"],
                      "carry": np.asarray(p["carry"], np.int64), "pending": pending, "produced": p["produced"]})
    return {"parts_total": state["parts_total"], "yielded": state["yielded"], "cursor": state["cursor"],
            "rng": state["rng"], "buffer": buffer, "parts": parts}


def resharded(checkpoint: Path, rank: int, world_size: int, seed: int) -> dict:
    """Rank `rank` of `world_size`'s state from a checkpoint written by another number of processes: the parts it now
    owns (with their readers, carried tokens and pending blocks) and the buffered blocks of those parts, from every
    writer's file. Its generator is seeded from (seed, the checkpoint's position, rank, world_size); `yielded` is
    left for the trainer to set (its step x blocks per step on this process count)."""
    checkpoint = Path(checkpoint)
    writers = written_by(checkpoint)
    states = [read_state(checkpoint, r, writers) for r in range(writers)]
    parts_total = int(states[0]["parts_total"])
    if world_size > parts_total:
        raise UsageError(too_many_processes(parts_total, writers, world_size))
    mine = set(owned_parts(parts_total, rank, world_size))
    parts, buffer = {}, []
    for writer, state in enumerate(states):
        for p in state["parts"]:
            if p["part"] in parts or not 0 <= p["part"] < parts_total:
                raise UsageError(f"streaming: the stream state in {checkpoint} lists part {p['part']} twice or out "
                                 f"of range (parts 0..{parts_total - 1})")
            parts[p["part"]] = p
        for uid, block in state["buffer"]:  # a format-1 block belongs to its writer's part (part = rank)
            if (part_of(uid) if uid != UNKNOWN_BLOCK else writer) in mine:
                buffer.append((uid, block))
    missing = sorted(set(range(parts_total)) - set(parts))
    if missing:
        raise UsageError(f"streaming: the stream state in {checkpoint} lacks part(s) {missing}; resume another "
                         "checkpoint, or start a new run")
    position = sum(int(s["yielded"] or 0) for s in states)
    rng = np.random.default_rng([seed, position, rank, world_size]).bit_generator.state
    return {"parts_total": parts_total, "yielded": None, "cursor": 0, "rng": rng, "buffer": buffer,
            "parts": [parts[s] for s in sorted(mine)], "resharded_from": writers}


def too_many_processes(parts_total: int, writers: int, world_size: int) -> str:
    return (f"the stream of this run has {parts_total} part(s) (data.stream_parts, default: the process count it "
            f"started with), and each part is read by one process, so it cannot feed {world_size} processes "
            f"(checkpoint written by {writers}); resume on at most {parts_total} process(es), or start a new run with "
            f"data.stream_parts: {world_size} or more")
