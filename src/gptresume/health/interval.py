"""The optimum checkpoint interval (Young 1974, Daly 2006) and the interruption rate it needs, estimated from the
run's own history with a prior.

Why Daly and not Young: Young's sqrt(2 delta M) is the first-order optimum; Daly's higher-order estimate stays
accurate when the save pause delta is not small against the mean time between interruptions M (and says: when
delta >= 2M, save every M). Both minimise the expected wall time of a run interrupted by a Poisson process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIOR_HOURS = 1.0
"""Weight of the configured prior rate, in training hours: after one hour of the run's own history, its observed
rate and the prior count equally; after ten, the observation dominates."""


def young_interval(delta: float, mtbi: float) -> float:
    """Young's first-order optimum: sqrt(2 delta M) (same time unit for all three)."""
    return math.sqrt(2.0 * delta * mtbi)


def daly_interval(delta: float, mtbi: float) -> float:
    """Daly (2006), eq. 37: tau = sqrt(2 delta M) [1 + 1/3 sqrt(delta/2M) + 1/9 (delta/2M)] - delta for delta < 2M,
    else M. `delta`: the pause each save costs; `mtbi`: the mean time between interruptions (same unit)."""
    if delta <= 0:
        return float("inf") if mtbi == float("inf") else 0.0
    if delta >= 2.0 * mtbi:
        return mtbi
    x = delta / (2.0 * mtbi)
    return math.sqrt(2.0 * delta * mtbi) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - delta


def interruption_rate(interruptions: int, training_hours: float, prior_per_hour: float,
                      prior_hours: float = PRIOR_HOURS) -> float:
    """Interruptions per training hour: the run's own count and hours, pooled with the prior as if the prior had
    been observed for `prior_hours` (a Gamma-Poisson posterior mean). Re-estimated as the run goes."""
    return (prior_per_hour * prior_hours + interruptions) / (prior_hours + max(0.0, training_hours))


@dataclass(frozen=True)
class IntervalChoice:
    """What `checkpoint.every: auto` chose, and from what (status prints it)."""

    interval_s: float
    delta_s: float
    mtbi_s: float
    bounded: str | None = None
    """"min" or "max" when the formula's value was outside the bounds and clipped."""

    def to_dict(self) -> dict:
        return {"interval_s": round(self.interval_s, 3), "delta_s": round(self.delta_s, 4),
                "mtbi_h": round(self.mtbi_s / 3600.0, 4), "bounded": self.bounded}


def choose_interval(delta_s: float, rate_per_hour: float, min_s: float, max_s: float) -> IntervalChoice:
    """Daly's interval for a measured save pause and an interruption rate, clipped to [min_s, max_s]."""
    mtbi = 3600.0 / rate_per_hour if rate_per_hour > 0 else float("inf")
    tau = daly_interval(delta_s, mtbi)
    bounded = "min" if tau < min_s else "max" if tau > max_s else None
    return IntervalChoice(min(max(tau, min_s), max_s), delta_s, mtbi, bounded)
