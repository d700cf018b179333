"""SIGTERM stops every phase of a run promptly with nothing half-written, each signal keyed to observed progress
(a file appearing, a line printed, a step logged), never to a sleep:

- during packing (a 20 MB corpus, signalled once the first tokens reach the staged cache): exit 75, the staging
  directory removed, the new run directory gone as if never started;
- during a streaming run's start-up (a shuffle buffer far larger than the source, signalled once the run starts):
  exit 75 before step 1, no checkpoint;
- during an evaluation (a validation split many times a step's work, signalled once the step before it is
  logged): the evaluation is cut, that step is committed, exit 75, and the run resumes to the end;
- a streamed file that turns out not to be UTF-8 part-way (bytes appended while it trains): exit 2 naming the file
  and the byte offset; the committed checkpoints verify, and with the file restored the run resumes to the end.
"""

from __future__ import annotations

import json
import signal

import pytest

from conftest import (
    corpus_texts,
    logged_step,
    read_metrics,
    run_cli,
    start_cli,
    uncommitted_checkpoints,
    wait_until,
    write_config,
)
from gptresume.checkpoint import newest_valid, verify_checkpoint

pytestmark = pytest.mark.slow


def tokenizer_dir(tmp_path):
    """A small trained tokenizer (so a run reads no corpus to train one)."""
    from gptresume.modeling import train_tokenizer

    where = tmp_path / "tok"
    if not where.is_dir():
        train_tokenizer(corpus_texts(), 400).save_pretrained(where)
    return where


def with_tokenizer(tmp_path, **sections):
    model = {"from_scratch": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32},
             "tokenizer": {"name_or_path": str(tokenizer_dir(tmp_path))}}
    config = write_config(tmp_path, **sections)
    import yaml

    raw = yaml.safe_load(config.read_text())
    raw["model"] = model
    config.write_text(yaml.safe_dump(raw))
    return config


def stopped_output(proc) -> str:
    out, _ = proc.communicate(timeout=300)
    return out


def test_sigterm_during_packing_ends_at_once_and_leaves_no_run(tmp_path):
    text = "\n\n".join(corpus_texts(200))
    corpus = tmp_path / "big.txt"
    corpus.write_text((text + "\n\n") * (20_000_000 // len(text) + 1))  # ~20 MB: seconds of tokenizing
    config = with_tokenizer(tmp_path, data={"source": str(corpus)})
    run = tmp_path / "run"
    proc = start_cli(tmp_path, "train", config)

    def packing():
        return any(p.stat().st_size > 0 for p in run.glob("data-cache/*.staging-*/tokens.bin"))

    assert wait_until(packing, proc), stopped_output(proc)
    proc.send_signal(signal.SIGTERM)
    out = stopped_output(proc)
    assert proc.returncode == 75, out
    assert "Stopped (SIGTERM) outside a training step" in out and "Traceback" not in out
    assert "Data:" not in out  # packing never finished: the signal landed in it
    assert not run.exists(), sorted(str(p) for p in run.rglob("*"))  # the staged cache and the new directory gone


def test_sigterm_during_streaming_start_up_ends_before_the_first_step(tmp_path):
    # one pass over the corpus is ~20k tokens; 50,000 blocks of 32 fill the buffer in ~80 passes. TensorBoard's
    # event file is created at on_train_begin: trainer.train() has begun (the graceful handler is installed) and
    # the stream is filling its buffer for the first batch.
    config = with_tokenizer(tmp_path, data={"streaming": True, "validation_fraction": 0, "shuffle_buffer": 50_000},
                            train={"max_steps": 4, "save_steps": 2, "report_to": "tensorboard"})
    run = tmp_path / "run"
    proc = start_cli(tmp_path, "train", config)
    assert wait_until(lambda: any((run / "tensorboard").rglob("events.*")), proc), stopped_output(proc)
    proc.send_signal(signal.SIGTERM)
    out = stopped_output(proc)
    assert proc.returncode == 75, out
    assert "Stopped (SIGTERM) before the first step" in out and "Traceback" not in out
    assert newest_valid(run)[0] is None and not list(run.glob("checkpoint-*"))
    assert logged_step(run) == 0  # no step was trained: the buffer's filling was cut
    events = [json.loads(x)["event"] for x in (run / "history.jsonl").read_text().splitlines()]
    assert events == ["start", "stopped"]


def test_sigterm_during_an_evaluation_cuts_it_and_commits_the_step(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(corpus_texts(40)))  # ~70k tokens: ~1000 validation blocks
    config = with_tokenizer(tmp_path, data={"validation_fraction": 0.5},
                            train={"max_steps": 6, "save_steps": 3, "eval_steps": 3, "per_device_eval_batch_size": 1})
    run = tmp_path / "run"
    proc = start_cli(tmp_path, "train", config)
    # step 3 logged: its evaluation (1000 batches, ~1000 steps' worth of forward passes) runs next
    assert wait_until(lambda: logged_step(run) >= 3, proc), stopped_output(proc)
    proc.send_signal(signal.SIGTERM)
    out = stopped_output(proc)
    assert proc.returncode == 75, out
    assert "checkpoint-3 is committed" in out and "Traceback" not in out
    assert logged_step(run) == 3  # no further step
    assert not any("eval_loss" in r for r in read_metrics(run))  # the evaluation was cut, not finished
    info, _ = newest_valid(run)
    assert info.step == 3 and verify_checkpoint(info.path).valid
    resumed = run_cli(tmp_path, "train", config)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, 7))
    assert [r["step"] for r in read_metrics(run) if "eval_loss" in r] == [6]


def test_a_file_that_stops_being_utf8_mid_stream_ends_the_run_naming_the_offset(tmp_path):
    corpus = tmp_path / "corpus.txt"
    text = "\n\n".join(corpus_texts())[:3000]
    corpus.write_text(text)  # ~900 tokens: a pass every few steps
    config = with_tokenizer(tmp_path, data={"source": str(corpus), "streaming": True, "validation_fraction": 0,
                                            "shuffle_buffer": 4}, train={"max_steps": 400, "save_steps": 2})
    run = tmp_path / "run"
    proc = start_cli(tmp_path, "train", config)
    assert wait_until(lambda: newest_valid(run)[0] is not None, proc), stopped_output(proc)
    with open(corpus, "ab") as f:  # what a file rewritten on a shared file system can look like to a reader
        f.write(b"\n\ncaf\xe9 au lait\n")
    out = stopped_output(proc)
    assert proc.returncode == 2, out
    offset = len(text.encode()) + 5
    assert f"error: data.source: {corpus} is not valid UTF-8 at byte {offset}" in out, out
    assert "Traceback" not in out and "Training stopped here" in out
    assert uncommitted_checkpoints(run) == []
    info, skipped = newest_valid(run)
    assert info is not None and not skipped and verify_checkpoint(info.path).valid
    corpus.write_text(text)  # the file as it was: the same content hash, so the stream may resume
    resumed = run_cli(tmp_path, "train", config, "--set", "train.max_steps=" + str(info.step + 2),
                      "--allow-change", "max_steps")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"checkpoint-{info.step}" in resumed.stdout
    assert logged_step(run) == info.step + 2
