"""The writer threads' agreement for asynchronous saves with several processes (async_save.save_job): rank 0
commits only when every rank wrote its part; every rank takes part in the same agreements whatever failed, so no
writer waits forever; a rank whose own part succeeded learns that the save was not committed.

Ranks are simulated by running each rank's job in its own thread, with `agree` a real all-ranks AND across them
(threading.Barrier): the rule under test, without a process group. The 2-process runs are in
tests/e2e/test_distributed.py."""

import threading

import pytest

from gptresume.checkpoint.async_save import NotCommitted, cpu_copy, finish_device_copies, save_job


class Ranks:
    """N ranks' agreement: each call blocks until every rank called, then returns the AND of their flags."""

    def __init__(self, n):
        self.n = n
        self.flags = {}
        self.calls = [0] * n
        self.barrier = threading.Barrier(n)
        self.lock = threading.Lock()

    def agree_for(self, rank):
        def agree(ok):
            with self.lock:
                round_ = self.calls[rank]
                self.calls[rank] += 1
                self.flags.setdefault(round_, []).append(ok)
            self.barrier.wait(timeout=10)
            return all(self.flags[round_])
        return agree


def run_ranks(n, write_fails=(), commit_fails=False):
    ranks = Ranks(n)
    committed, errors = [], {}

    def write_for(rank):
        def write():
            if rank in write_fails:
                raise OSError(28, "No space left on device")
        return write

    def commit():
        if commit_fails:
            raise OSError(28, "No space left on device")
        committed.append(True)

    def run(rank):
        job = save_job("checkpoint-4", write_for(rank), commit, agree=ranks.agree_for(rank), is_main=rank == 0)
        try:
            job({})
        except BaseException as e:
            errors[rank] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)  # nobody left waiting
    assert len(set(ranks.calls)) == 1  # every rank took part in the same agreements: nobody waits for another
    return committed, errors, ranks.calls[0]


def test_every_rank_wrote_then_rank_zero_commits_once():
    committed, errors, rounds = run_ranks(3)
    assert committed == [True] and errors == {} and rounds == 2


@pytest.mark.parametrize("failing", [0, 1])
def test_a_rank_that_could_not_write_means_no_commit_on_any_rank(failing):
    committed, errors, rounds = run_ranks(2, write_fails={failing})
    assert committed == [] and rounds == 1
    assert isinstance(errors[failing], OSError)  # its own error, for the storage message
    other = 1 - failing
    assert isinstance(errors[other], NotCommitted) and "another process could not write" in str(errors[other])


def test_a_failed_commit_is_raised_on_rank_zero_and_known_on_the_others():
    committed, errors, rounds = run_ranks(2, commit_fails=True)
    assert committed == [] and rounds == 2 and isinstance(errors[0], OSError)
    assert isinstance(errors[1], NotCommitted) and "rank 0 could not commit" in str(errors[1])


def test_one_process_writes_then_commits_and_records_the_timings():
    order = []
    timings = {"blocked_s": 0.01}
    save_job("checkpoint-2", lambda: order.append("write"), lambda: order.append("commit"))(timings)
    assert order == ["write", "commit"] and timings["write_s"] >= 0 and timings["commit_s"] >= 0


def test_device_copies_need_no_synchronisation_on_cpu():
    import torch

    memo = {}
    cpu_copy({"w": torch.ones(3)}, memo)
    assert all(key[0] == "cpu" for key in memo)
    finish_device_copies(memo)  # nothing queued: returns without touching CUDA (absent here)
