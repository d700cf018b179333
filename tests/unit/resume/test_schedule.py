"""resume/schedule.py: the re-planned learning-rate schedule is continuous at the resume step, warms up where it
must, ends at 0 at the new max_steps, and survives the trip through a checkpoint (to_dict/from_dict)."""

from __future__ import annotations

import json
import math

import pytest

from gptresume.resume.schedule import REWARM_FRACTION, SHAPES, SchedulePlan, replan

DECAYING = [s for s in SHAPES if SHAPES[s](1.0) == 0.0]  # linear, cosine: end at 0
FLAT = [s for s in SHAPES if s not in DECAYING]  # constant, constant_with_warmup

# (resume step, factor the old schedule would use next, new warmup_steps, new max_steps)
CASES = {
    "mid-decay": (50, 0.6, 10, 200),
    "inside-warmup": (4, 0.4, 10, 100),
    "finished-run-extended": (100, 0.0, 0, 300),
    "finished-run-explicit-rewarm": (100, 0.0, 20, 300),
}


def steps(plan: SchedulePlan, start: int, end: int) -> list[float]:
    return [plan.factor(k) for k in range(start, end + 1)]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_factor_never_jumps_and_never_reaches_zero_before_the_end(shape, case):
    step, factor, warmup, max_steps = CASES[case]
    plan = replan(step, factor, shape, warmup, max_steps)
    values = steps(plan, step, max_steps - 1)
    assert all(v > 0 for v in values), (case, shape, values)
    # the largest legitimate slope: a ramp over the shortest warmup, or a cosine over the decay span
    ramp = max(1, plan.peak_step - plan.from_step)
    bound = max(1.0 / ramp, math.pi / 2 / max(1, plan.end_step - plan.peak_step)) + 1e-9
    jumps = [abs(b - a) for a, b in zip(values, values[1:])]
    assert max(jumps) <= bound, (case, shape, max(jumps), bound)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("case", ["mid-decay", "inside-warmup"])
def test_factor_at_the_resume_step_is_the_old_schedules_factor(shape, case):
    step, factor, warmup, max_steps = CASES[case]
    assert replan(step, factor, shape, warmup, max_steps).factor(step) == pytest.approx(factor, abs=1e-12)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_finished_run_warms_up_again_from_zero(shape):
    step, max_steps = 100, 300
    plan = replan(step, 0.0, shape, 0, max_steps)
    ramp = math.ceil(REWARM_FRACTION * (max_steps - step))  # 10
    assert plan.factor(step - 1) == 0.0  # where the old schedule ended
    assert plan.factor(step) == pytest.approx(1 / ramp)  # the first resumed step already trains
    assert plan.factor(step - 1 + ramp) == pytest.approx(1.0)  # peak
    ramp_values = steps(plan, step - 1, step - 1 + ramp)
    assert ramp_values == sorted(ramp_values)


def test_a_finished_run_warms_up_over_the_given_warmup_steps():
    plan = replan(100, 0.0, "linear", 20, 300)
    assert (plan.from_step, plan.peak_step, plan.end_step) == (99, 119, 300)
    assert plan.factor(100) == pytest.approx(1 / 20)
    assert plan.factor(119) == pytest.approx(1.0)


def test_rewarm_is_at_least_one_step_and_never_past_the_end():
    assert replan(100, 0.0, "linear", 0, 101).peak_step == 100  # 5% of 1 added step -> 1 step
    assert replan(100, 0.0, "linear", 50, 120).peak_step == 120  # clipped at max_steps


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_inside_warmup_the_ramp_reaches_one_at_the_new_warmup_end(shape):
    plan = replan(4, 0.4, shape, 10, 100)
    assert plan.peak_step == 10
    assert plan.factor(7) == pytest.approx(0.4 + 0.6 * 3 / 6)  # linear from (4, 0.4) to (10, 1)
    assert plan.factor(10) == pytest.approx(1.0)
    ramp = steps(plan, 4, 10)
    assert ramp == sorted(ramp)


def test_past_warmup_no_ramp_is_added():
    plan = replan(50, 0.6, "linear", 10, 200)
    assert plan.peak_step == plan.from_step == 50
    assert plan.factor(125) == pytest.approx(0.6 * 0.5)  # halfway through the decay: half the factor


@pytest.mark.parametrize("shape", DECAYING)
@pytest.mark.parametrize("case", sorted(CASES))
def test_decaying_shapes_end_at_zero_at_the_new_max_steps(shape, case):
    step, factor, warmup, max_steps = CASES[case]
    plan = replan(step, factor, shape, warmup, max_steps)
    assert plan.end_step == max_steps
    assert plan.factor(max_steps) == pytest.approx(0.0, abs=1e-12)
    assert plan.factor(max_steps + 5) == pytest.approx(0.0, abs=1e-12)  # clipped, never negative
    tail = steps(plan, plan.peak_step, max_steps)
    assert tail == sorted(tail, reverse=True)


@pytest.mark.parametrize("shape", FLAT)
def test_constant_shapes_keep_the_factor_they_resumed_at(shape):
    plan = replan(50, 0.6, shape, 10, 200)
    assert steps(plan, 50, 250) == [pytest.approx(0.6)] * 201


def test_cosine_follows_its_formula():
    plan = replan(0, 1.0, "cosine", 0, 100)
    for k in (0, 25, 50, 75, 100):
        assert plan.factor(k) == pytest.approx(0.5 * (1 + math.cos(math.pi * k / 100)))


def test_unknown_scheduler_type_is_refused_with_the_supported_ones():
    with pytest.raises(ValueError) as e:
        replan(10, 0.5, "polynomial", 0, 100)
    assert "'polynomial'" in str(e.value) and all(s in str(e.value) for s in SHAPES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_round_trips_through_a_checkpoint(case):
    plan = replan(*CASES[case][:2], "cosine", *CASES[case][2:])
    saved = json.loads(json.dumps(plan.to_dict()))  # as in gptresume_state.json
    again = SchedulePlan.from_dict(saved)
    assert again == plan
    domain = range(plan.from_step, plan.end_step + 10)  # a plan covers the steps from its from_step on
    assert [again(k) for k in domain] == [plan.factor(k) for k in domain]
