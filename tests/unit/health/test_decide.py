"""The health decision after an event (health/decide.py): rollback or stop, which checkpoint, what is skipped and
recorded, as a pure function of the event, the config, the history and the candidates found."""

from pathlib import Path

from gptresume.config.schema import HealthConfig
from gptresume.health.decide import (
    ROLLBACK,
    STOPPED,
    UNHEALTHY,
    Candidate,
    decide,
    rollback_wanted,
    target_search,
)
from gptresume.health.detect import NONFINITE, SPIKE, Verdict

NAN = Verdict(NONFINITE, 8, "non-finite loss (nan) at step 8")
SPIKED = Verdict(SPIKE, 20, "loss spike", first_step=17)
TARGET = Candidate(Path("run/checkpoint-4"), 4)
GOOD = Path("run/checkpoint-6")


def test_on_nan_stop_names_and_protects_the_newest_good_checkpoint():
    health = HealthConfig()  # on_nan: stop
    assert not rollback_wanted(NAN, health, [])
    d = decide(NAN, health, [], target=None, good=GOOD, global_batch=4)
    assert (d.status, d.step, d.checkpoint) == (UNHEALTHY, 8, GOOD)
    assert d.protect_reason == "newest checkpoint before the non-finite at step 8"
    assert d.unhealthy_record == {"step": 8, "kind": NONFINITE, "reason": NAN.detail, "checkpoint": str(GOOD)}
    assert "(health.on_nan is stop)" in d.message() and str(GOOD) in d.message()
    alone = decide(NAN, health, [], target=None, good=None, global_batch=4)
    assert alone.checkpoint is None and alone.protect_reason is None and "No earlier checkpoint" in alone.message()


def test_a_rollback_skips_its_batches_on_top_of_an_earlier_rollback_to_the_same_checkpoint():
    health = HealthConfig(on_nan="rollback", skip_batches=2, rollback_steps=3)
    history = [{"event": "start"}, {"event": "rollback", "to_step": 4, "skip_samples": 8}]
    assert rollback_wanted(NAN, health, history) and target_search(NAN, health) == 5
    d = decide(NAN, health, history, target=TARGET, good=None, global_batch=4)
    assert (d.status, d.step, d.checkpoint, d.target_step) == (ROLLBACK, 8, TARGET.path, 4)
    assert (d.skip_samples, d.number) == (8 + 2 * 4, 2)
    assert d.protect_reason == "rollback 2 at step 8 resumed from it"
    record = d.rollback_record(["checkpoint-6.rolled-back-x"])
    assert record == {"step": 8, "reason": NAN.detail, "checkpoint": str(TARGET.path), "to_step": 4,
                      "skip_batches": 2, "skip_samples": 16, "set_aside": ["checkpoint-6.rolled-back-x"],
                      "rollback": 2}
    assert d.message(["checkpoint-6.rolled-back-x"]).startswith("Rollback 2 of at most 3: ")


def test_a_spike_counts_back_from_its_first_suspect_step_and_a_pending_stop_stops_at_the_target():
    health = HealthConfig(rollback_steps=2)  # on_spike: rollback
    assert target_search(SPIKED, health) == 15
    d = decide(SPIKED, health, [], target=Candidate(Path("c-12"), 12), good=None, global_batch=4,
               stop_reason="SIGTERM")
    assert (d.status, d.step, d.stopped_record) == (STOPPED, 12, {"step": 12, "reason": "SIGTERM"})


def test_no_target_or_no_rollbacks_left_stops_and_says_why():
    health = HealthConfig(on_nan="rollback", max_rollbacks=1, rollback_steps=5)
    d = decide(NAN, health, [], target=None, good=GOOD, global_batch=4)
    assert d.status == UNHEALTHY and "no verified checkpoint at least 5 step(s) before step 8" in d.message()
    used = [{"event": "rollback", "to_step": 2}]
    assert not rollback_wanted(NAN, health, used)
    d = decide(NAN, health, used, target=TARGET, good=GOOD, global_batch=4)  # a target found anyway is not used
    assert d.status == UNHEALTHY and "health.max_rollbacks (1) rollbacks already done" in d.message()
    # a fresh start resets the count
    assert rollback_wanted(NAN, health, used + [{"event": "start"}])
