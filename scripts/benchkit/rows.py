"""A result: one row of the table, with its measures over rounds, its
anchor, its target and verdict, and how its figures are written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from benchkit.stats import Summary, Target, judge, ratio


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "op/s":
        return f"{v / 1000:.1f}k/s" if v >= 1000 else f"{v:.0f}/s"
    if unit == "ms":
        if v < 1:
            return f"{v * 1000:.0f} us"
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "B":
        if v < 10_000:
            return f"{v:.0f} B"
        if v < 10_000_000:
            return f"{v / 1024:.0f} KiB"
        return f"{v / 1024 / 1024:.1f} MiB"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "/req":
        return f"{v:.3f}/req"
    return f"{v:g} {unit}"


_NUMBER_AND_UNIT = re.compile(r"^(-?[\d.]+)(.*)$")


def fmt_range(low: float, high: float, unit: str) -> str:
    """``16.2-17.9k/s``: the unit written once when both ends share it."""
    lo, hi = fmt(low, unit), fmt(high, unit)
    m_lo, m_hi = _NUMBER_AND_UNIT.match(lo), _NUMBER_AND_UNIT.match(hi)
    if m_lo and m_hi and m_lo.group(2) == m_hi.group(2):
        return f"{m_lo.group(1)}-{hi}"
    return f"{lo}-{hi}"


def fmt_summary(s: Summary | None, unit: str, spread: bool) -> str:
    """The median, and with ``spread`` the lowest-highest round after it."""
    if s is None:
        return "-"
    text = fmt(s.median, unit)
    if spread and fmt(s.low, unit) != fmt(s.high, unit):
        text += f" ({fmt_range(s.low, s.high, unit)})"
    return text


def target_text(target: Target, unit: str) -> str:
    def bound(v: float) -> str:
        return f"{v:g}x" if unit == "x" else fmt(v, unit)

    parts = []
    if target.at_least is not None:
        parts.append((">" if target.strict else ">=") + bound(target.at_least))
    if target.at_most is not None:
        parts.append(("<" if target.strict else "<=") + bound(target.at_most))
    return " ".join(parts)


def _summary_json(prefix: str, s: Summary | None) -> dict[str, Any]:
    return {
        prefix: s.median if s is not None else None,
        f"{prefix}_spread": [s.low, s.high] if s is not None else None,
        f"{prefix}_rounds": list(s.rounds) if s is not None else None,
    }


@dataclass
class Row:
    """One line of the table. ``ratio`` is ours / anchor in the row's unit,
    paired round by round where both sides ran the same rounds."""

    case: str
    unit: str  # "op/s", "ms", "s", "B", "x", "/req"
    ours: Summary | None
    anchor: Summary | None = None
    anchor_label: str = ""  # what the anchor is (redis everysec, floor, ...)
    reference: bool = False  # a fixed figure, not measured here
    lower_is_better: bool = False
    note: str = ""
    status: str = "ok"  # ok, skipped, error
    target: Target | None = None
    judged: str = ""  # what the target bounds: "ratio" or "value"
    target_shown: str = ""  # a target shown but not judged in this run

    @property
    def ratio(self) -> Summary | None:
        if self.ours is None or self.anchor is None:
            return None
        return ratio(self.ours, self.anchor)

    def want_ratio(self, at_least: float | None = None, at_most: float | None = None) -> Row:
        """Judge ours / anchor (e.g. throughput vs Redis); without an anchor
        the target is shown and the note says why it is not judged."""
        self.target, self.judged = Target(at_least, at_most), "ratio"
        if self.anchor is None:
            self.note = "; ".join(x for x in (self.note, "no Redis anchor") if x)
        return self

    def want_value(
        self, at_least: float | None = None, at_most: float | None = None, strict: bool = False
    ) -> Row:
        """Judge ours alone against an absolute bound."""
        self.target, self.judged = Target(at_least, at_most, strict), "value"
        return self

    @property
    def spread_on_value(self) -> bool:
        """The table shows the spread where the row is read: on the value
        when the target bounds it or there is no ratio, else on the ratio."""
        return self.judged == "value" or self.ratio is None

    @property
    def judged_summary(self) -> Summary | None:
        return self.ratio if self.judged == "ratio" else self.ours

    @property
    def result(self) -> str:
        """PASS, FAIL or UNSURE for a judged target; n/a for a target with
        nothing to judge it on; - for none; SKIPPED or ERROR for a case
        that did not run."""
        if self.status != "ok":
            return self.status.upper()
        if self.target is None:
            return "n/a" if self.target_shown else "-"
        s = self.judged_summary
        return "n/a" if s is None else judge(s, self.target)

    @property
    def target_label(self) -> str:
        if self.target is not None:
            return target_text(self.target, "x" if self.judged == "ratio" else self.unit)
        return self.target_shown

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "case": self.case,
            "unit": self.unit,
            **_summary_json("ours", self.ours),
            **_summary_json("anchor", self.anchor),
            "anchor_label": self.anchor_label,
            "reference": self.reference,
            "lower_is_better": self.lower_is_better,
            **_summary_json("ratio", self.ratio),
            "target": self.target_label,
            "judged": self.judged,
            "result": result,
            "passed": {"PASS": True, "FAIL": False}.get(result),
            "status": self.status,
            "note": self.note,
        }
