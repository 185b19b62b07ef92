"""The statistics of a run, as pure functions: a measure's median and spread
over interleaved rounds, the ratio of two measures, and a target's verdict.

Why rounds, and why the lowest-highest range as the spread: on a shared
machine, a neighbour's burst or the hypervisor's steal slows whichever side
happens to be running, so one long measurement of each side compares two
different machines. Interleaving (ours, anchor, ours, anchor, ...) gives
each round both sides under the same weather, so the per-round ratio cancels
most of it; the median of the rounds ignores the odd bad one. The range from
the lowest to the highest round is a distribution-free confidence interval
for the median: with n independent rounds, the true median lies below all of
them with probability 2^-n and above all with 2^-n, so the range holds it
with probability 1 - 2^(1-n) (3 rounds 75%, 5 rounds 94%, 7 rounds 98%).
A target is judged on that range, not on the median alone: PASS when every
round meets it, FAIL when none does, UNSURE when the rounds straddle it,
which says "rerun on a quieter machine or with more rounds", not "passed".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["PASS", "FAIL", "UNSURE"]


@dataclass(frozen=True)
class Summary:
    """A measure over rounds: its median, its lowest and highest round, and
    the rounds themselves in the order they ran (empty for a ratio of two
    measures whose rounds could not be paired)."""

    median: float
    low: float
    high: float
    rounds: tuple[float, ...]

    @classmethod
    def of(cls, samples: Iterable[float]) -> Summary:
        """Raises ValueError when there is no sample or one is NaN."""
        values = tuple(float(v) for v in samples)
        if not values:
            raise ValueError("no samples to summarize")
        if any(math.isnan(v) for v in values):
            raise ValueError(f"a sample is not a number: {values}")
        return cls(statistics.median(values), min(values), max(values), values)

    @classmethod
    def one(cls, value: float) -> Summary:
        """A figure measured once (e.g. memory after a restart): no spread."""
        return cls.of((value,))

    def map(self, f: Callable[[float], float]) -> Summary:
        """The same rounds, each converted (e.g. rows a second to pages a second)."""
        return Summary.of(f(v) for v in self.rounds)


def coverage(rounds: int) -> float:
    """How often the lowest-highest range of ``rounds`` independent rounds
    holds the median of the measure itself."""
    return 1.0 - 2.0 ** (1 - rounds) if rounds > 0 else 0.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; raises
    ValueError when it is empty."""
    if not ordered:
        raise ValueError("no samples to take a percentile of")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ratio(ours: Summary, anchor: Summary) -> Summary | None:
    """``ours / anchor``, or None when the anchor has a round at or below
    zero. Measures with as many rounds are paired round by round, as
    interleaved rounds are meant to be; otherwise (e.g. a fixed reference
    figure) it is the ratio of the medians, spread as wide as the two
    spreads allow."""
    if anchor.low <= 0:
        return None
    if ours.rounds and len(ours.rounds) == len(anchor.rounds):
        return Summary.of(o / a for o, a in zip(ours.rounds, anchor.rounds, strict=True))
    return Summary(ours.median / anchor.median, ours.low / anchor.high,
                   ours.high / anchor.low, ())


@dataclass(frozen=True)
class Target:
    """Bounds a measure must keep; ``strict`` makes the bounds themselves fail."""

    at_least: float | None = None
    at_most: float | None = None
    strict: bool = False

    def floor_ok(self, v: float) -> bool:
        if self.at_least is None:
            return True
        return v > self.at_least if self.strict else v >= self.at_least

    def ceiling_ok(self, v: float) -> bool:
        if self.at_most is None:
            return True
        return v < self.at_most if self.strict else v <= self.at_most

    def admits(self, v: float) -> bool:
        return self.floor_ok(v) and self.ceiling_ok(v)


def judge(s: Summary, target: Target) -> Verdict:
    """PASS when the whole spread meets the target, FAIL when none of it
    does, UNSURE when it straddles a bound."""
    if target.admits(s.low) and target.admits(s.high):
        return "PASS"
    # Every round below the floor, or every round above the ceiling.
    if not target.floor_ok(s.high) or not target.ceiling_ok(s.low):
        return "FAIL"
    return "UNSURE"
