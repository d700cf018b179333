"""health/detect.py on crafted loss series: a non-finite loss or gradient norm at once, a single outlier ignored,
a spike confirmed after `confirm` steps (std and factor rules), and a restored detector judging like an unbroken
one (what a resumed run relies on)."""

import math

from gptresume.health.detect import NONFINITE, OK, SPIKE, SUSPECT, Detector, SpikeRule


def flat(n, base=3.0):
    return [base + 0.01 * ((i * 7) % 5 - 2) for i in range(n)]  # small, bounded noise around base


def feed(detector, losses, start=1):
    return [detector.observe(start + i, loss).kind for i, loss in enumerate(losses)]


def test_non_finite_loss_and_grad_norm_are_caught_without_spike_rules():
    d = Detector()
    assert d.observe(1, 3.0, 1.0).kind == OK
    assert d.observe(2, math.nan).kind == NONFINITE
    assert d.observe(3, math.inf).kind == NONFINITE
    v = d.observe(4, 3.0, math.inf)
    assert v.kind == NONFINITE and "gradient norm" in v.detail and v.bad


def test_a_single_outlier_is_ignored_and_kept_out_of_the_window():
    d = Detector(SpikeRule(window=20, std=4.0, confirm=3))
    assert set(feed(d, flat(20))) == {OK}
    assert feed(d, [30.0], 21) == [SUSPECT]
    assert feed(d, flat(5), 22) == [OK] * 5
    assert 30.0 not in d.window and d.suspects == []


def test_a_spike_is_confirmed_after_confirm_steps_and_names_its_first_step():
    d = Detector(SpikeRule(window=20, std=4.0, confirm=3))
    feed(d, flat(20))
    kinds = feed(d, [9.0, 9.5, 10.0], 21)
    assert kinds == [SUSPECT, SUSPECT, SPIKE]
    v = d.observe(24, 10.0)
    assert v.kind == SPIKE and v.first_step == 21


def test_no_judgement_before_the_window_has_a_baseline():
    d = Detector(SpikeRule(window=50, std=1.0, confirm=1))
    assert feed(d, [3.0, 3.0, 30.0]) == [OK, OK, OK]  # fewer than MIN_WINDOW losses: no baseline yet


def test_factor_rule():
    d = Detector(SpikeRule(window=10, std=None, factor=2.0, confirm=2))
    feed(d, [3.0] * 10)
    assert feed(d, [5.0, 7.0, 7.2], 11) == [OK, SUSPECT, SPIKE]  # 5.0 joins the window: limit 6.4


def test_a_restored_detector_judges_like_an_unbroken_one():
    series = flat(30) + [9.0, 3.0, 9.0, 9.5, 9.7, 3.0]
    rule = SpikeRule(window=12, std=4.0, confirm=2)
    unbroken = feed(Detector(rule), series)
    first = Detector(rule)
    head = feed(first, series[:25])
    resumed = Detector(rule)
    resumed.restore(first.state())
    assert head + feed(resumed, series[25:], 26) == unbroken
    assert SPIKE in unbroken
