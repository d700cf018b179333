"""rundir.py: the run lock (exclusive across processes, re-entrant within one), history.jsonl and metrics.jsonl,
clearing a run for --overwrite."""

from __future__ import annotations

import fcntl
import json
import math
import multiprocessing
import os
import socket

import pytest

from gptresume import rundir
from gptresume.errors import UsageError
from gptresume.rundir import (
    DATA_CACHE_DIR,
    HISTORY_NAME,
    LOCK_NAME,
    METRICS_NAME,
    RUN_FILES,
    append_history,
    clear_run,
    perplexity,
    read_history,
    read_jsonl,
    read_metrics,
    resume_steps,
    run_lock,
    trim_metrics,
)


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


# ---------------------------------------------------------------- the run lock


def held_elsewhere(run_dir, who: str = "pid 4242 on otherhost"):
    """What another process's lock looks like to this one: flock works per open file, so a second open of the
    lock file in this process conflicts exactly as another process's would."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, who.encode(), 0)
    return fd


def test_the_lock_records_who_holds_it(tmp_path):
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text() == f"pid {os.getpid()} on {socket.gethostname()}"


def test_a_run_in_use_is_refused_naming_the_holder(tmp_path):
    fd = held_elsewhere(tmp_path / "run")
    try:
        with pytest.raises(UsageError, match="in use by another gptresume process \\(pid 4242 on otherhost\\)"):
            with run_lock(tmp_path / "run"):
                pass  # pragma: no cover
    finally:
        os.close(fd)
    assert rundir._held == {}


def test_the_lock_is_re_entrant_within_a_process(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        with run_lock(run / ".." / "run"):  # the same directory, spelt differently
            assert list(rundir._held.values())[0][1] == 2
        assert list(rundir._held.values())[0][1] == 1
        with pytest.raises(BlockingIOError):  # still held after the inner exit
            os.close(held_elsewhere(run))
    os.close(held_elsewhere(run))  # released after the outer exit
    assert rundir._held == {}


def test_the_lock_is_released_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "run"):
            raise RuntimeError("boom")
    os.close(held_elsewhere(tmp_path / "run"))


def _try_lock(run_dir, locked, done, results):
    locked.wait(10)
    try:
        with run_lock(run_dir):
            results.put("acquired")
    except UsageError as e:
        results.put(str(e))
    done.set()


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    ctx = multiprocessing.get_context("fork")  # forked before the lock is taken: a fresh process's view
    locked, done, results = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    child = ctx.Process(target=_try_lock, args=(tmp_path / "run", locked, done, results))
    child.start()
    try:
        with run_lock(tmp_path / "run"):
            locked.set()
            assert done.wait(10)
        message = results.get()
    finally:
        child.join(10)
    assert f"in use by another gptresume process (pid {os.getpid()} on {socket.gethostname()})" in message


# ---------------------------------------------------------------- history and metrics


def test_history_lines_in_order_with_time_host_and_pid(tmp_path):
    append_history(tmp_path, "start", step=0)
    append_history(tmp_path, "resume", step=20, checkpoint=tmp_path / "checkpoint-20")  # a Path is written as text
    append_history(tmp_path, "resume", step=40)
    rows = read_history(tmp_path)
    assert [(r["event"], r["step"]) for r in rows] == [("start", 0), ("resume", 20), ("resume", 40)]
    assert rows[1]["checkpoint"] == str(tmp_path / "checkpoint-20")
    assert all(r["pid"] == os.getpid() and r["host"] == socket.gethostname() and r["time"] for r in rows)
    assert resume_steps(rows) == [20, 40]


def test_read_jsonl_skips_torn_blank_and_non_object_lines(tmp_path):
    (tmp_path / HISTORY_NAME).write_text('{"event": "start"}\n\n[1, 2]\n{"event": "resume", "st')
    assert read_history(tmp_path) == [{"event": "start"}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []
    assert read_metrics(tmp_path) == []


def write_metrics(tmp_path, *lines: str):
    path = tmp_path / METRICS_NAME
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_trim_metrics_drops_steps_after_the_checkpoint(tmp_path):
    path = write_metrics(tmp_path, *(json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 8)))
    trim_metrics(path, 4)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_trim_metrics_drops_a_torn_line(tmp_path):
    path = write_metrics(tmp_path, '{"step": 1}', '{"step": 2}', '{"step": 3, "lo')
    trim_metrics(path, 10)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_trim_metrics_leaves_an_untouched_file_alone(tmp_path):
    path = write_metrics(tmp_path, '{"step": 1}', '{"step": 2}')
    inode = path.stat().st_ino
    trim_metrics(path, 2)
    assert path.stat().st_ino == inode  # not rewritten


def test_trim_metrics_without_a_file(tmp_path):
    trim_metrics(tmp_path / METRICS_NAME, 3)
    assert not (tmp_path / METRICS_NAME).exists()


# ---------------------------------------------------------------- clear_run and small helpers


def test_clear_run_removes_what_a_run_left_but_keeps_the_data_cache(tmp_path):
    for name in ("checkpoint-10", "checkpoint-20", "final", "tokenizer", "tensorboard", DATA_CACHE_DIR,
                 "checkpoint-10.replaced-x", "ledger"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    for name in ("config.yaml", METRICS_NAME, HISTORY_NAME, "notes.txt", "protected.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "remote-uploads.json").write_text("{}")  # checkpoint.remote's ledger of the cleared checkpoints
    assert {"config.yaml", METRICS_NAME, HISTORY_NAME, "final", "tokenizer", "tensorboard", "trackers.json",
            "remote-uploads.json", "protected.json", "ledger"} == set(RUN_FILES)
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10.replaced-x", DATA_CACHE_DIR, "notes.txt"]


def test_clear_run_unlinks_links_and_never_follows_them(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (outside / "checkpoint-6").mkdir(parents=True)
    (outside / "checkpoint-6" / "keep.txt").write_text("mine")
    run.mkdir()
    (run / "checkpoint-6").symlink_to(outside / "checkpoint-6")
    (run / "checkpoint-9").symlink_to(tmp_path / "nowhere")
    (run / "final").symlink_to(outside)
    clear_run(run)
    assert list(run.iterdir()) == []
    assert (outside / "checkpoint-6" / "keep.txt").read_text() == "mine"


def test_remove_leftovers_removes_what_a_kill_left_and_nothing_else(tmp_path):
    from gptresume.rundir import remove_leftovers

    for name in (".final.tmp", ".final.tmp-123", ".final.old-77", f"{DATA_CACHE_DIR}/abc.tmp-9"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("config.yaml.tmp", ".metrics.jsonl.tmp-5", "config.yaml", METRICS_NAME, ".lock"):
        (tmp_path / name).write_text("x")
    (tmp_path / DATA_CACHE_DIR / "abc").mkdir()
    removed = remove_leftovers(tmp_path)
    assert len(removed) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.yaml", DATA_CACHE_DIR, METRICS_NAME]
    assert [p.name for p in (tmp_path / DATA_CACHE_DIR).iterdir()] == ["abc"]


def test_clear_run_of_an_empty_directory(tmp_path):
    clear_run(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(2.0) == pytest.approx(math.e**2)
    assert perplexity(50.0) == math.inf
