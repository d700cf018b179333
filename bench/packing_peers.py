"""The packing bench's three ways to turn the same text files into training blocks, each run in a fresh worker
process (`worker.py pack --peer ...`): gptresume's bounded-memory packing, run_clm.py's (`datasets.map` tokenize,
then `group_texts`), and nanoGPT's prepare.py (tokenize with num_proc, then write a uint16 `np.memmap` in shards).

Each reports the tokens packed, its wall time and the peak resident memory of the process and of its largest
worker (ru_maxrss of self and children)."""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

BLOCK = 1024


def make_corpus(root: Path, megabytes: int, seed: int = 0, file_bytes: int = 64 << 20) -> list[str]:
    """Lines of random words from CPython's docs, in .txt files of `file_bytes` (generated: nothing downloaded)."""
    from pydoc_data.topics import topics

    words = sorted({w for t in topics.values() for w in t.split() if w.isalpha() and len(w) < 12})
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files, left, i = [], megabytes << 20, 0
    while left > 0:
        path = root / f"part-{i:05d}.txt"
        size = min(left, file_bytes)
        with open(path, "w") as f:
            written = 0
            while written < size:
                line = " ".join(rng.choices(words, k=rng.randint(50, 400))) + "\n"
                f.write(line)
                written += len(line)
        files.append(str(path))
        left -= size
        i += 1
    return files


def _texts(files: list[str], cache: Path):
    import datasets

    return datasets.load_dataset("text", data_files=files, split="train", cache_dir=str(cache))


def pack_gptresume(files, tokenizer_dir, work: Path) -> int:
    from transformers import AutoTokenizer

    from gptresume.config import DataConfig
    from gptresume.data import prepare_data, save_to_cache

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = DataConfig(source=files, text_unit="line", block_size=BLOCK, validation_fraction=0.0005)
    data = prepare_data(cfg, tok, work / "run")  # reads the files itself, lazily (as `gptresume train` does)
    save_to_cache(data, cfg, tok, work / "run")
    return data.num_tokens


def pack_run_clm(files, tokenizer_dir, work: Path) -> int:
    """transformers/examples/pytorch/language-modeling/run_clm.py: tokenize_function, then group_texts."""
    from itertools import chain

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = _texts(files, work / "hf")
    procs = len(os.sched_getaffinity(0))
    tokenized = raw.map(lambda ex: tok(ex["text"]), batched=True, num_proc=procs, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = (len(concatenated[list(examples.keys())[0]]) // BLOCK) * BLOCK
        result = {k: [t[i:i + BLOCK] for i in range(0, total, BLOCK)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=procs)
    return len(grouped) * BLOCK


def pack_nanogpt(files, tokenizer_dir, work: Path) -> int:
    """nanoGPT data/openwebtext/prepare.py: map(process, num_proc) -> ids + eot, then a uint16 memmap in shards."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eot = tok.eos_token_id
    raw = _texts(files, work / "hf")
    procs = len(os.sched_getaffinity(0))

    def process(example):
        ids = tok(example["text"], add_special_tokens=False)["input_ids"] + [eot]
        return {"ids": ids, "len": len(ids)}

    tokenized = raw.map(process, remove_columns=["text"], num_proc=procs)
    arr_len = np.sum(tokenized["len"], dtype=np.uint64)
    arr = np.memmap(work / "train.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
    shards = min(1024, len(tokenized))
    idx = 0
    for i in range(shards):
        batch = tokenized.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
        arr_batch = np.concatenate(batch["ids"])
        arr[idx: idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    return int(arr_len)


PEERS = {"gptresume": pack_gptresume, "run_clm": pack_run_clm, "nanogpt": pack_nanogpt}


def run(peer: str, files: list[str], tokenizer_dir: str, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokens = PEERS[peer](files, tokenizer_dir, work)
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB (Linux)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peer": peer, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall, "peak_rss_mb": own,
            "peak_worker_rss_mb": workers, "text_bytes": sum(os.path.getsize(f) for f in files)}
