"""health/interval.py: Daly's optimum checkpoint interval against the worked cases of Daly (2006), Young's
first-order value, the pooled interruption rate and the bounds `checkpoint.every: auto` applies."""

import math

import pytest

from gptresume.health.interval import choose_interval, daly_interval, interruption_rate, young_interval


@pytest.mark.parametrize("mtbi_min, published_min", [(24 * 60, 117), (6 * 60, 57), (15, 9.1)])
def test_daly_matches_the_published_worked_cases(mtbi_min, published_min):
    # Daly 2006, figs. 3-5: dump time delta = 5 min; M = 24 h, 6 h, 15 min -> tau_opt = 117, 57, 9.1 min.
    tau = daly_interval(5.0, mtbi_min)
    digits = 1 if published_min < 10 else 0
    assert round(tau, digits) == published_min


def test_daly_is_m_once_the_save_costs_twice_m_or_more():
    assert daly_interval(10.0, 5.0) == 5.0
    assert daly_interval(10.0, 4.0) == 4.0


def test_daly_refines_young_for_a_small_save_cost():
    young, daly = young_interval(1.0, 3600.0), daly_interval(1.0, 3600.0)
    assert young == pytest.approx(math.sqrt(7200.0))
    assert abs(daly - young) / young < 0.02  # delta << M: the two agree to first order


def test_interruption_rate_pools_the_prior_with_the_run_history():
    assert interruption_rate(0, 0.0, 0.5) == pytest.approx(0.5)  # no history: the prior
    assert interruption_rate(2, 1.0, 0.5) == pytest.approx(1.25)  # one hour of each
    assert interruption_rate(100, 99.0, 0.5) == pytest.approx(1.005)  # the history dominates


def test_choose_interval_applies_the_bounds_and_says_so():
    free = choose_interval(2.0, 1.0, 1.0, 10_000.0)  # M = 1 h
    assert free.bounded is None and free.interval_s == pytest.approx(daly_interval(2.0, 3600.0))
    assert free.mtbi_s == pytest.approx(3600.0)
    low = choose_interval(0.001, 1.0, 30.0, 600.0)
    assert (low.interval_s, low.bounded) == (30.0, "min")
    high = choose_interval(2.0, 0.0, 30.0, 600.0)  # no interruptions expected: the maximum
    assert (high.interval_s, high.bounded) == (600.0, "max")
