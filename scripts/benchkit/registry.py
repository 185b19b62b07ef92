"""The cases, in the order the table prints them: the one table that
``--only`` reads and the run walks. A case takes the run's context, adds its
rows, and raises ``Skip`` when it cannot run here."""

from __future__ import annotations

from collections.abc import Callable

from benchkit.cases.big import case_big
from benchkit.cases.commands import case_cli, case_shim
from benchkit.cases.connections import case_connections
from benchkit.cases.expiry import case_expiry, case_shared_expiry
from benchkit.cases.pools import case_concurrent, case_fsync, case_latency
from benchkit.cases.requests import case_pipelined, case_sequential
from benchkit.cases.shared import case_shared
from benchkit.measure import Ctx

CASES: dict[str, Callable[[Ctx], None]] = {
    "sequential": case_sequential,
    "pipelined": case_pipelined,
    "concurrent": case_concurrent,
    "fsync": case_fsync,
    "latency": case_latency,
    "connections": case_connections,
    "cli": case_cli,
    "big": case_big,
    "expiry": case_expiry,
    "shim": case_shim,
    "shared": case_shared,
    "shared-expiry": case_shared_expiry,
}
