"""``scripts/bench.py`` still runs and reports: its daemons start, its
cases produce figures, its table and JSON come out, and it cleans up.

Nothing here judges a figure: speed is the bench's business, on a quiet
machine, never a test's. The cases run are the ones that need no Redis
and take seconds with ``--quick``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
CASES = "sequential,pipelined,cli"


@pytest.mark.timeout(600)
def test_bench_quick_runs_its_cases_and_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--no-redis", "--only", CASES,
         "--json", str(out)],
        capture_output=True, text=True, timeout=540, check=False,
    )
    # 1 is a missed target, which a loaded test machine may well show.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["interrupted"] is False and data["profile"]["name"] == "quick"
    rows = {row["case"]: row for row in data["rows"]}
    broken = {case: row["note"] for case, row in rows.items() if row["status"] != "ok"}
    assert not broken, broken
    for case in (
        "sequential create", "sequential get", "sequential set",
        "pipelined x100 create", "pipelined x100 get", "pipelined x100 set",
        "sessionctl get ID (whole process)",
    ):
        assert rows[case]["ours"] > 0, case
        assert case in result.stdout, f"{case} missing from the table"
    # Without Redis there is nothing to compare against, and it says so.
    assert rows["sequential set"]["anchor"] is None
    assert rows["sequential set"]["note"] == "no Redis anchor"


def test_bench_refuses_an_unknown_case_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--only", "nonsense"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "nonsense" in result.stderr and result.stdout == ""
