"""What a run measures and with what: the executables, the workload's
constants, the deadlines, the two profiles, the legacy tool's reference
figures, and the two exceptions a case may raise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
SESSIOND = BIN / "sessiond"
SESSIONCTL = BIN / "sessionctl"
SHIM = REPO / "scripts" / "script.sh"

META: dict[str, Any] = {"theme": "dark", "lang": "en"}
USER = "bench"
TTL = 3600
BIG_TTL = 86400  # the big data set must not start expiring while it is measured
DEPTH = 100  # pipeline depth
PAGE = 100  # list page size

START_TIMEOUT = 30.0
BIG_START_TIMEOUT = 900.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 180.0
RESULT_GRACE = 120.0
SUBPROCESS_TIMEOUT = 60.0
POLL = 0.002

# The legacy tool's own figures (the shim replaces it); printed as fixed
# reference anchors because the legacy tool is not run here.
REF_LEGACY_EMPTY_MS = 115.0
REF_LEGACY_GET_100K_MS = 500.0
REF_LEGACY_SET_100K_MS = 1400.0
REF_NOTE = (
    "[ref] = reference figure, not measured here: the legacy tool's own figures "
    "(115 ms a command on an empty store; get 0.5 s and set 1.4 s at 100,000 sessions)"
)

T0 = time.monotonic()


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


class Skip(Exception):
    """A case that cannot run here; the message says why."""


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Profile:
    """How much a run does. Every comparison is ``rounds`` interleaved rounds
    (ours, anchor, ours, anchor, ...) of a fixed amount of work each, so that
    ``--rounds`` scales the time and the confidence together and nothing else."""

    name: str
    rounds: int  # interleaved rounds of every comparison; --rounds replaces it
    block: float  # seconds of one timed block of in-process requests
    window: float  # seconds of one timed window of the multi-process cases
    cli_runs: int  # runs of each command in one round
    shim_runs: int  # runs of each shim command in one round
    big_n: int
    restarts: int  # after compaction; the first start on the written journal adds one
    compactions: int
    expiry_n: int
    shim_n: int
    probe_baseline: float  # seconds a probing client runs before the measured action

    def with_rounds(self, rounds: int | None) -> Profile:
        return self if rounds is None else replace(self, rounds=rounds)


# Five rounds: the lowest and highest of five rounds bracket the median one
# would get from endless rounds with 94% confidence (see stats.py); three
# (quick) with 75%, which is why --quick is for checking that cases run.
QUICK = Profile(
    name="quick", rounds=3, block=0.1, window=0.3, cli_runs=2, shim_runs=1,
    big_n=50_000, restarts=1, compactions=1, expiry_n=10_000, shim_n=10_000,
    probe_baseline=0.5,
)
FULL = Profile(
    name="full", rounds=5, block=0.5, window=1.2, cli_runs=12, shim_runs=3,
    big_n=1_000_000, restarts=2, compactions=2, expiry_n=100_000, shim_n=100_000,
    probe_baseline=1.0,
)
