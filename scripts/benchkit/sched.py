"""What the scheduler did to a server while it was measured: how often its
threads moved to another CPU (a migration leaves the caches behind) and
how often they were switched out while they could still run (preempted),
from Linux's /proc/PID/task/TID/sched. Kernels built without scheduler
statistics have no such file: then there is nothing to report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_FIELDS = {"se.nr_migrations": "migrations", "nr_involuntary_switches": "preempted"}


@dataclass(frozen=True)
class SchedCounts:
    """A thread's (or a process's, summed) counts since it started."""

    migrations: int = 0
    preempted: int = 0

    def __add__(self, other: SchedCounts) -> SchedCounts:
        return SchedCounts(self.migrations + other.migrations, self.preempted + other.preempted)

    def __sub__(self, other: SchedCounts) -> SchedCounts:
        return SchedCounts(self.migrations - other.migrations, self.preempted - other.preempted)


def parse_sched(text: str) -> SchedCounts:
    """The counts in one /proc/PID/task/TID/sched text; raises ValueError
    when either is missing."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        name = _FIELDS.get(key.strip())
        if colon and name is not None:
            found[name] = int(float(value))
    missing = sorted(set(_FIELDS.values()) - set(found))
    if missing:
        raise ValueError(f"no {', '.join(missing)} in this sched text")
    return SchedCounts(**found)


def read_sched(pid: int) -> SchedCounts | None:
    """Every thread of ``pid`` together; None where the kernel keeps no
    such statistics. A thread that ends while it is read is left out."""
    total = SchedCounts()
    tasks = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(tasks)
    except FileNotFoundError:
        return None
    for tid in tids:
        try:
            text = (tasks / tid / "sched").read_text()
        except FileNotFoundError:
            if not (tasks / tid).exists():
                continue  # the thread ended meanwhile
            return None  # no scheduler statistics on this kernel
        total += parse_sched(text)
    return total
