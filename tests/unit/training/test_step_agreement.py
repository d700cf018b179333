"""training/agreement.py with the real callbacks (stop, timed save, health) and two ranks run as two threads: only
the transport of the one reduction is replaced (an element-wise maximum through a barrier), so these check the
protocol itself: one reduction per step, no read of the health values where nothing needs them, every rank taking
the same save and stop decisions, and the same verdicts as a read at every step."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from gptresume.health.detect import NONFINITE, SPIKE, Detector, SpikeRule
from gptresume.training import distributed
from gptresume.training.agreement import StepAgreement, StepFlags
from gptresume.training.health import HealthCallback, HealthMonitor
from gptresume.training.preemption import StopCallback, StopRequest, TimedSaveCallback

ARGS = TrainingArguments("unused", report_to="none", use_cpu=True)


class Rank:
    """One rank's gptresume callbacks and a tiny model, driven step by step as Trainer drives them."""

    def __init__(self, max_steps: int, spike: SpikeRule | None = None, every_minutes: float | None = None):
        self.model = torch.nn.Linear(2, 2)
        self.monitor = HealthMonitor()
        self.health = HealthCallback(self.monitor, Detector(spike))
        self.stop = StopCallback(StopRequest())
        callbacks = [self.stop, self.health] + ([TimedSaveCallback(every_minutes)] if every_minutes else [])
        self.timed = callbacks[2] if every_minutes else None
        self.agreement = StepAgreement(callbacks)
        self.state = TrainerState(max_steps=max_steps)
        self.saved, self.logged, self.read_at = [], [], []
        self.stopped = False

    def step(self, loss: float, grad: float = 1.0, log: bool = False, save: bool = False) -> TrainerControl:
        self.monitor.add_loss(torch.tensor(loss))
        self.monitor.set_grad_norm(torch.tensor(grad))
        self.state.global_step += 1
        control = TrainerControl(should_log=log, should_save=save)
        self.agreement.on_step_end(ARGS, self.state, control, model=self.model)
        if self.monitor.unread == 0:  # every step up to this one was read here
            self.read_at.append(self.state.global_step)
        if self.state.global_step >= self.state.max_steps:
            control.should_save = True  # CommitCallback's final save
        self.health.on_step_end(ARGS, self.state, control)
        if control.should_log:
            self.logged.append(self.state.global_step)
        if control.should_save:
            self.saved.append(self.state.global_step)
            if self.timed is not None:
                self.timed.on_save(ARGS, self.state, control)
        self.stopped = control.should_training_stop
        return control


class Transport:
    """The reduction between rank threads: element-wise max through a barrier; counts the calls per rank."""

    def __init__(self, ranks: int = 2):
        self.barrier, self.slots, self.calls = threading.Barrier(ranks), [None] * ranks, [0] * ranks
        self.local = threading.local()

    def agree(self, values):
        rank = getattr(self.local, "rank", 0)
        self.calls[rank] += 1
        self.slots[rank] = list(values)
        self.barrier.wait()
        out = [max(column) for column in zip(*self.slots)]
        self.barrier.wait()
        return out


def run_ranks(monkeypatch, bodies):
    """Run each body(rank) in its own thread, with the two-rank transport; returns the transport."""
    transport = Transport(len(bodies))
    monkeypatch.setattr(distributed, "agree", transport.agree)
    errors = []

    def target(r, body):
        transport.local.rank = r
        try:
            body()
        except BaseException as e:  # re-raised below, on the test's thread
            errors.append(e)
            transport.barrier.abort()

    threads = [threading.Thread(target=target, args=(r, b)) for r, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return transport


def test_flags_survive_the_encoding_and_the_maximum_is_any_rank_and_the_earliest_bad_step():
    a = StepFlags(stop=True, bad=True, bad_step=7)
    b = StepFlags(timed=True, suspect=True, unjudged=True, bad=True, bad_step=5)
    assert StepFlags.decode(a.encode()) == a and StepFlags.decode(StepFlags().encode()) == StepFlags()
    both = StepFlags.decode([max(x, y) for x, y in zip(a.encode(), b.encode())])
    assert both == StepFlags(stop=True, timed=True, bad=True, suspect=True, unjudged=True, bad_step=5)


def test_one_reduction_per_step_and_no_read_where_nothing_needs_one(monkeypatch):
    ranks = [Rank(max_steps=12), Rank(max_steps=12)]

    def body(rank):
        def run():
            for s in range(1, 13):
                rank.step(2.0, log=s % 4 == 0, save=s % 6 == 0)
        return run

    transport = run_ranks(monkeypatch, [body(r) for r in ranks])
    assert transport.calls == [12, 12]  # exactly one reduction per optimizer step on each rank
    for rank in ranks:
        assert rank.read_at == [4, 6, 8, 12]  # log and save steps (and the last): Trainer syncs there anyway
        assert rank.saved == [6, 12] and rank.logged == [4, 8, 12]


def test_a_stop_one_rank_saw_stops_every_rank_at_the_same_step(monkeypatch):
    ranks = [Rank(max_steps=20), Rank(max_steps=20)]

    def body(r):
        def run():
            for s in range(1, 21):
                if r == 1 and s == 3:
                    ranks[1].stop.request.request("SIGTERM")  # arrives on rank 1 only, during step 3
                if ranks[r].step(2.0).should_training_stop:
                    return
        return run

    transport = run_ranks(monkeypatch, [body(0), body(1)])
    # rank 0 had no reason to judge its values at step 3: the save waits one step, at which every rank reads
    assert [r.saved for r in ranks] == [[4], [4]] and [r.stop.stopped_at for r in ranks] == [4, 4]
    assert all(r.state.global_step == 4 and r.stopped for r in ranks)
    assert transport.calls == [4, 4]


def test_a_timed_save_due_on_one_rank_is_saved_by_every_rank(monkeypatch):
    ranks = [Rank(max_steps=20, every_minutes=60), Rank(max_steps=20, every_minutes=60)]

    def body(r):
        def run():
            for s in range(1, 9):
                if r == 0 and s == 5:
                    ranks[0].timed.last_save -= 3600  # rank 0's clock says the hour has passed
                ranks[r].step(2.0)
        return run

    run_ranks(monkeypatch, [body(0), body(1)])
    assert [r.saved for r in ranks] == [[6], [6]]  # due at 5 on rank 0 only: saved by both at 6


def test_a_nan_on_one_rank_is_found_at_the_next_read_and_named_by_every_rank(monkeypatch):
    ranks = [Rank(max_steps=20), Rank(max_steps=20)]

    def body(r):
        def run():
            for s in range(1, 21):
                loss = math.nan if (r == 1 and s == 5) else 2.0
                if ranks[r].step(loss, log=s % 4 == 0, save=s % 8 == 0).should_training_stop:
                    return
        return run

    run_ranks(monkeypatch, [body(0), body(1)])
    events = [r.health.event for r in ranks]
    assert [(e.kind, e.step, e.first_step) for e in events] == [(NONFINITE, 5, 5)] * 2
    assert events[0].detail == "a non-finite value on another rank at step 5"
    assert "training loss nan at step 5" == events[1].detail
    for r in ranks:  # read at step 8 (log and save): the save of step 8 is cancelled, nothing after 5 is logged
        assert r.saved == [] and r.logged == [4] and r.state.global_step == 8 and r.stopped


# ---------------------------------------------------------------- one rank: a read at every step or rarely, the same


def _series(seed: int, n: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    losses = (3.0 + 0.05 * torch.randn(n, generator=g)).tolist()
    kind = seed % 3
    at = 10 + seed % 17
    if kind == 0:
        losses[at] = math.nan
    elif kind == 1:
        for i in range(at, min(n, at + 1 + seed % 4)):  # a spike of 1..4 steps: an outlier or a confirmed spike
            losses[i] *= 5
    else:
        losses[at] = 15.0  # an isolated outlier, then normal
    return losses


def _run(losses, log_every: int, save_every: int):
    rank = Rank(max_steps=len(losses), spike=SpikeRule(window=8, std=4.0, confirm=2))
    for s, loss in enumerate(losses, 1):
        if rank.step(loss, log=s % log_every == 0, save=s % save_every == 0).should_training_stop:
            break
    e = rank.health.event
    return (e.kind, e.step, e.first_step, e.detail) if e else None, rank.saved, rank.monitor, rank.state.global_step


@pytest.mark.parametrize("seed", range(12))
def test_reading_rarely_decides_what_reading_every_step_decides(seed, monkeypatch):
    monkeypatch.setattr(distributed, "agree", lambda values: list(values))
    losses = _series(seed, 48)
    event, saved, _, stopped_at = _run(losses, log_every=1, save_every=5)
    rare_event, rare_saved, _, rare_stopped_at = _run(losses, log_every=9, save_every=5)
    assert rare_event == event
    assert rare_saved == saved  # every save is a read point: the same saves, none at or after a bad step
    if event is not None:
        assert event[0] in (NONFINITE, SPIKE) and all(s < event[2] for s in saved)
        assert stopped_at == event[1] <= rare_stopped_at  # found at the next read point at the latest
    else:
        assert rare_stopped_at == stopped_at == len(losses)


def test_the_monitor_gives_back_every_steps_values_exactly_and_the_weights_check(monkeypatch):
    monitor = HealthMonitor()
    monkeypatch.setattr(monitor, "COMPACT_AT", 4)  # several concatenated chunks, then single values
    expected = []
    for s in range(1, 12):
        losses = [torch.tensor(1 / 3 + s, dtype=torch.bfloat16), torch.tensor(1 / 7, dtype=torch.float32)]
        for loss in losses:
            monitor.add_loss(loss)
        grad = torch.tensor(s / 3, dtype=torch.float64) if s % 3 else 2.5  # a float as DeepSpeed returns it
        monitor.set_grad_norm(grad)
        monitor.end_step(s)
        expected.append((s, float(losses[0] + losses[1]), float(grad)))
    model = torch.nn.Linear(2, 2)
    rows, finite = monitor.take(model)
    assert rows == expected and finite is True  # what float() of each value gives, bit for bit
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    monitor.end_step(12)  # a step without a loss or gradient norm (none handed over)
    assert monitor.take(model) == ([(12, None, None)], False) and monitor.take() == ([], None)
