"""health/goodput.py on crafted books: sessions and their wall time (a killed one ends at the next launch),
interruptions (a rollback in the same process and the complete end are not), goodput's numerator counting only
metrics rows up to the newest committed step."""

import pytest

from gptresume.health.goodput import goodput, interruptions, sessions, stops


HISTORY = [
    {"event": "start", "t": 110.0, "launched": 100.0, "pid": 1},
    {"event": "stopped", "t": 200.0, "pid": 1},                       # SIGTERM: a stop, nothing lost
    {"event": "resume", "t": 215.0, "launched": 210.0, "pid": 2},     # then killed: an interruption
    {"event": "resume", "t": 305.0, "launched": 300.0, "pid": 3},
    {"event": "rollback", "t": 350.0, "pid": 3},
    {"event": "resume", "t": 352.0, "launched": 300.0, "pid": 3},     # same process after its rollback
    {"event": "complete", "t": 400.0, "pid": 3},
]


def test_sessions_and_their_ends():
    ss = sessions(HISTORY)
    assert [(s.start, s.end, s.ended_by) for s in ss] == [
        (100.0, 200.0, "stopped"), (210.0, 300.0, None), (300.0, 350.0, "rollback"), (350.0, 400.0, "complete")]


def test_interruptions_count_kills_only_and_stops_apart():
    count, hours = interruptions(HISTORY)
    assert count == 1 and stops(HISTORY) == 1  # the kill lost work; the SIGTERM committed first
    assert hours == pytest.approx((100 + 90 + 50 + 50) / 3600)


def test_goodput_counts_training_time_up_to_the_newest_commit():
    metrics = [{"step": 10, "train_s": 40.0}, {"step": 20, "train_s": 50.0}, {"step": 30, "train_s": 60.0},
               {"step": 30, "eval_loss": 3.0}]
    g = goodput(HISTORY, metrics, committed_step=20)
    assert g.wall_s == pytest.approx(290.0)
    assert g.useful_s == pytest.approx(90.0)
    assert g.ratio == pytest.approx(90.0 / 290.0)


def test_a_running_session_ends_now_and_a_killed_last_one_at_its_last_row():
    history = [{"event": "start", "t": 10.0, "launched": 0.0, "pid": 1}]
    assert goodput(history, [], 0, running=True, now=50.0).wall_s == pytest.approx(50.0)
    assert goodput(history, [{"step": 5, "time": 30.0, "train_s": 20.0}], 5).ratio == pytest.approx(
        20.0 / 30.0)
