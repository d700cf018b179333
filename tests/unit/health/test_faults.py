"""health/faults.py, the test-only hook: its grammar, once per process unless `!`, and a clear error."""

import math

import pytest

from gptresume.health import faults


def test_grammar_and_once_per_process(monkeypatch):
    monkeypatch.setattr(faults, "_fired", set())
    monkeypatch.setenv(faults.ENV, "nan@3, spike@5-6x8, inf@9!")
    assert faults.multiplier_for(2) is None
    assert math.isnan(faults.multiplier_for(3))
    assert faults.multiplier_for(3) is None  # a transient fault: once
    assert faults.multiplier_for(5) == faults.multiplier_for(6) == 8.0
    assert faults.multiplier_for(9) == faults.multiplier_for(9) == math.inf  # `!`: every time


def test_unset_means_no_fault_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.multiplier_for(1) is None
    with pytest.raises(ValueError, match="nan@7"):
        faults.parse("nan-7")
