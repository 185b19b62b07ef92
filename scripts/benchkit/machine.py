"""The machine a run measured: what it is, and how busy it was. Steal time
(the hypervisor running someone else on our vCPUs) and the load average are
what make two runs of the same code disagree on a shared VM, so the report
carries them beside the figures."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# /proc/stat's "cpu" line: user nice system idle iowait irq softirq steal
# guest guest_nice, in clock ticks since boot. guest and guest_nice are
# already counted in user and nice, so the total is the first eight.
_STEAL = 7
_COUNTED = 8


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time since boot, all CPUs together, in ticks."""

    total: int
    steal: int


def parse_cpu_times(proc_stat: str) -> CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat's text; raises ValueError
    when there is none."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(x) for x in fields[1 : 1 + _COUNTED]]
            steal = ticks[_STEAL] if len(ticks) > _STEAL else 0  # kernels before 2.6.11
            return CpuTimes(sum(ticks), steal)
    raise ValueError("/proc/stat has no aggregate 'cpu' line")


def read_cpu_times() -> CpuTimes:
    return parse_cpu_times(Path("/proc/stat").read_text())


def steal_percent(before: CpuTimes, after: CpuTimes) -> float | None:
    """Percent of all CPU time stolen between two readings; None when no
    tick passed between them."""
    total = after.total - before.total
    if total <= 0:
        return None
    return 100.0 * (after.steal - before.steal) / total


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return f"unknown ({platform.machine()}; /proc/cpuinfo names no model)"


def filesystem_of(path: Path) -> str:
    best, fstype = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def describe(tmp: Path) -> dict[str, object]:
    """What the machine is: the fields of the report's ``machine`` that do
    not change during a run."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "temp_fs": filesystem_of(tmp),
    }


class Weather:
    """Steal time and load over a stretch of the run (the whole run, or a case)."""

    def __init__(self) -> None:
        self.load_at_start = load_average()
        self._start = read_cpu_times()
        self.load_at_end: tuple[float, float, float] | None = None
        self.steal: float | None = None

    def finish(self) -> Weather:
        self.load_at_end = load_average()
        self.steal = steal_percent(self._start, read_cpu_times())
        return self
