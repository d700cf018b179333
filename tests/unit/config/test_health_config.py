"""The `health:` section and `checkpoint.every: auto`: defaults, every bad value reported together (exit 2
material), and health/checkpoint changes free on resume (they never change what is trained)."""

import pytest

from gptresume.config.load import check_without_transformers
from gptresume.config.schema import HealthConfig
from gptresume.errors import ConfigError
from gptresume.resume.changes import FREE, classify

BASE = {"model": {"name_or_path": "gpt2"}, "train": {"output_dir": "runs/x"}}


def problems(**sections) -> list[str]:
    try:
        check_without_transformers({**BASE, **sections})
    except ConfigError as e:
        return e.problems
    return []


def test_defaults_stop_on_nan_and_watch_no_spikes():
    h = HealthConfig()
    assert (h.on_nan, h.spike.enabled, h.max_rollbacks, h.skip_batches) == ("stop", False, 3, 0)
    assert problems(health={"on_nan": "rollback", "spike": {"enabled": True, "factor": 3}},
                    checkpoint={"every": "auto"}) == []


def test_bad_values_are_all_named():
    found = problems(health={"on_nan": "retry", "skip_batches": -1, "spike": {"enabled": True, "std": None,
                                                                              "confirm": 0}},
                     checkpoint={"every": "sometimes", "auto_min_seconds": 0})
    text = "\n".join(found)
    for fragment in ("health.on_nan: 'retry'", "health.skip_batches", "health.spike: set std or factor",
                     "health.spike.confirm", "checkpoint.every: 'sometimes'", "auto_min_seconds"):
        assert fragment in text, text


def test_unknown_health_key_suggests_the_closest():
    assert any("rollback_steps" in p for p in problems(health={"rollback_step": 5}))


def test_every_auto_may_replace_step_saves():
    assert problems(train={"output_dir": "runs/x", "save_strategy": "no"}, checkpoint={"every": "auto"}) == []


@pytest.mark.parametrize("key", ["health.on_nan", "health.spike.enabled", "checkpoint.every"])
def test_health_and_interval_changes_are_free_on_resume(key):
    assert classify(key) == FREE
