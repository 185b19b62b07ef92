"""The report of a run: the header (machine, weather, anchors, method), the
table, the notes under it, and the same as JSON for programs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchkit.anchor import AnchorCheck
from benchkit.machine import Weather
from benchkit.rows import Row, fmt_summary
from benchkit.settings import REF_NOTE, Profile
from benchkit.stats import coverage

COLUMNS = ("case", "ours", "anchor", "ratio", "target", "result")


@dataclass
class Run:
    """What a run did, as the report needs it."""

    prof: Profile
    anchor: AnchorCheck
    weather: Weather
    started: float
    machine: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    case_seconds: dict[str, float] = field(default_factory=dict)
    case_steal: dict[str, float | None] = field(default_factory=dict)
    big_data: str = ""  # how the big data set was made, when the big case ran
    elapsed: float = 0.0
    interrupted: bool = False


def _loads(values: Sequence[float] | None) -> str:
    return " ".join(f"{x:.2f}" for x in values) if values is not None else "?"


def _steal(percent: float | None) -> str:
    return "unknown" if percent is None else f"{percent:.1f}%"


def method_line(rounds: int) -> str:
    return (
        f"method: medians over {rounds} interleaved rounds (ours, anchor, ours, anchor, ...); "
        "(low-high) is the lowest and highest round, shown on the ratio when there is one, "
        f"else on the value (it holds the true median {coverage(rounds):.0%} of the time); "
        "PASS when every round meets the target, FAIL when none does, UNSURE when they "
        "straddle it"
    )


def header(run: Run) -> str:
    m, w = run.machine, run.weather
    lines = [
        f"sessiond bench ({run.prof.name}, {run.prof.rounds} rounds)",
        f"machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('usable_cores')} usable), "
        f"{m.get('python')}, event loop {m.get('event_loop', '?')}, kernel {m.get('kernel')}",
        f"weather: load average {_loads(w.load_at_start)} at start, {_loads(w.load_at_end)} "
        f"at end; steal time {_steal(w.steal)} of all CPU time over the run "
        "(per case in the JSON)",
        f"temp dirs on {m.get('temp_fs')}",
        f"anchors: {run.anchor.line}" + ("; appendonly yes, appendfsync everysec (and always "
                                         "for the fsync case)" if run.anchor.run else ""),
    ]
    if run.anchor.warning:
        bar = "!" * 78
        lines += [bar, f"!!! {run.anchor.warning}", bar]
    if run.big_data:
        lines.append(run.big_data)
    lines.append(method_line(run.prof.rounds))
    return "\n".join(lines)


def render_table(rows: Sequence[Row]) -> str:
    lines: list[tuple[str, ...]] = [COLUMNS]
    for r in rows:
        anchor = fmt_summary(r.anchor, r.unit, spread=False)
        if r.anchor is not None:
            anchor += " [ref]" if r.reference else f" ({r.anchor_label})" if r.anchor_label else ""
        lines.append((
            r.case, fmt_summary(r.ours, r.unit, spread=r.spread_on_value), anchor,
            fmt_summary(r.ratio, "x", spread=True), r.target_label or "-", r.result,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render(run: Run) -> str:
    """The whole report as people read it."""
    parts = [header(run), "", render_table(run.rows)]
    if any(r.reference for r in run.rows):
        parts.append(REF_NOTE)
    notes = [r for r in run.rows if r.note]
    if notes:
        parts.append("\nnotes:")
        parts.extend(f"  {r.case}: {r.note}" for r in notes)
    if run.anchor.warning:
        parts.append(f"\n!!! {run.anchor.warning}")
    parts.append(f"\n{run.prof.name} run took {run.elapsed:.0f}s")
    return "\n".join(parts)


def document(run: Run) -> dict[str, Any]:
    """The report for programs (``--json``)."""
    w = run.weather
    return {
        "profile": asdict(run.prof),
        "machine": {
            **run.machine,
            "load_avg_at_start": list(w.load_at_start),
            "load_avg_at_end": list(w.load_at_end) if w.load_at_end is not None else None,
            "steal_percent": w.steal,
            "redis": run.anchor.line,
            "anchor_warning": run.anchor.warning or None,
        },
        "method": {
            "rounds": run.prof.rounds,
            "statistic": "median over interleaved rounds",
            "spread": "lowest and highest round",
            "spread_coverage": coverage(run.prof.rounds),
            "verdicts": "PASS: every round meets the target; FAIL: none does; "
                        "UNSURE: the rounds straddle it",
        },
        "started_at": run.started,
        "elapsed_seconds": run.elapsed,
        "interrupted": run.interrupted,
        "case_seconds": run.case_seconds,
        "case_steal_percent": run.case_steal,
        "rows": [r.as_json() for r in run.rows],
    }
