"""``scripts/bench.py`` still runs and reports, and its statistics are right.

The end-to-end tests check that its daemons start, its cases produce
figures over rounds, its table and JSON come out with their spreads and the
machine's weather, the Redis anchor is refused without hiredis, and it
cleans up. Nothing here judges a figure: speed is the bench's business, on
a quiet machine, never a test's. The cases run are the ones that need no
Redis and take seconds with ``--quick``.

The statistics (median, spread, ratio, verdict), the steal-time reading and
the anchor's rules are pure functions of ``benchkit``, tested directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchkit.anchor import decide_anchor
from benchkit.machine import parse_cpu_times, read_cpu_times, steal_percent
from benchkit.rows import Row, fmt_range, fmt_summary
from benchkit.sched import SchedCounts, parse_sched, read_sched
from benchkit.servers import Sessiond
from benchkit.stats import Summary, Target, coverage, judge, percentile, ratio

from sessiond.errors import DaemonUnavailable

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
CASES = "sequential,pipelined,cli"
RESULTS = {"PASS", "FAIL", "UNSURE", "n/a", "-"}


def run_bench(
    *args: str, env: dict[str, str] | None = None, timeout: float = 540
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )


# -- the run, end to end --------------------------------------------------


@pytest.mark.timeout(600)
def test_bench_quick_runs_its_cases_and_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_bench("--quick", "--no-redis", "--only", CASES, "--rounds", "2",
                       "--json", str(out))
    # 1 is a missed target, which a loaded test machine may well show.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["interrupted"] is False and data["profile"]["name"] == "quick"
    assert data["profile"]["rounds"] == 2 and data["method"]["rounds"] == 2
    assert data["method"]["spread_coverage"] == 0.5
    machine = data["machine"]
    assert len(machine["load_avg_at_start"]) == 3 and len(machine["load_avg_at_end"]) == 3
    assert machine["steal_percent"] is None or 0 <= machine["steal_percent"] <= 100
    assert set(data["case_steal_percent"]) == set(CASES.split(","))
    assert "weather: load average" in result.stdout and "steal time" in result.stdout
    assert "method: medians over 2 interleaved rounds" in result.stdout

    rows = {row["case"]: row for row in data["rows"]}
    broken = {case: row["note"] for case, row in rows.items() if row["status"] != "ok"}
    assert not broken, broken
    for case in (
        "sequential create", "sequential get", "sequential set",
        "pipelined x100 create (whole session)", "pipelined x100 get (whole session)",
        "pipelined x100 set (ack)", "pipelined x100 set (whole session) vs HSET+HGETALL",
        "sessionctl get ID (whole process)",
    ):
        row = rows[case]
        assert row["ours"] > 0, case
        assert len(row["ours_rounds"]) == 2, case
        low, high = row["ours_spread"]
        assert low == min(row["ours_rounds"]) and high == max(row["ours_rounds"]), case
        assert low <= row["ours"] <= high, case
        assert row["result"] in RESULTS, case
        assert case in result.stdout, f"{case} missing from the table"
    # Without Redis there is nothing to compare against, and it says so.
    assert rows["sequential set"]["anchor"] is None
    assert rows["sequential set"]["note"] == "no Redis anchor"
    assert rows["sequential set"]["result"] == "n/a"
    # The CLI's anchor always runs: its ratio is paired round by round,
    # judged on its spread, and the table prints the same median.
    cli = rows["sessionctl get ID (whole process)"]
    paired = [o / a for o, a in zip(cli["ours_rounds"], cli["anchor_rounds"], strict=True)]
    assert cli["ratio_rounds"] == pytest.approx(paired)
    assert cli["result"] == judge(Summary.of(paired), Target(at_most=1.2))
    line = next(x for x in result.stdout.splitlines() if x.startswith("sessionctl get ID"))
    assert f"{cli['ratio']:.2f}x" in line and line.rstrip().endswith(cli["result"])


@pytest.mark.timeout(300)
def test_bench_fsync_case_reports_the_daemons_cpu_migrations_a_request(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_bench("--quick", "--no-redis", "--only", "fsync", "--rounds", "1",
                       "--json", str(out))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    rows = {row["case"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["fsync always: 16 clients / 1 client"]["target"] == ">=3x"
    assert rows["fsync always: set, 1 client"]["target"] == ">=1x"
    row = rows["fsync always, 1 client: CPU migrations a request"]
    if read_sched(os.getpid()) is None:
        assert row["status"] == "skipped" and "statistics" in row["note"]
        return
    assert row["status"] == "ok" and row["unit"] == "/req" and row["ours"] >= 0
    assert row["result"] == "-" and "preempted" in row["note"]
    assert "CPU migrations a request" in result.stdout


def test_bench_clients_never_start_a_daemon_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the environment says: a bench run is not the test suite.
    monkeypatch.delenv("SESSIONCTL_NO_AUTOSTART", raising=False)
    sd = Sessiond(tmp_path / "sd", "always")  # not started
    with pytest.raises(DaemonUnavailable, match="no sessiond answers"):
        sd.client()
    assert not sd.socket.exists(), "nothing was started on the bench daemon's socket"


def test_bench_refuses_an_unknown_case_with_exit_2() -> None:
    result = run_bench("--only", "nonsense", timeout=60)
    assert result.returncode == 2
    assert "nonsense" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("only", ["", ",", " , "])
def test_bench_refuses_an_only_that_names_no_case_with_exit_2(only: str) -> None:
    result = run_bench("--only", only, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--only names no case" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("where", ["missing/x.json", "."])
def test_bench_refuses_a_json_file_it_could_not_write_before_it_runs(
    tmp_path: Path, where: str
) -> None:
    target = tmp_path / where
    result = run_bench("--only", "cli", "--json", str(target), timeout=60)
    assert result.returncode == 2, result.stderr
    # One line, before anything ran.
    assert result.stderr.startswith(f"bench: --json {target}: "), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


@pytest.mark.parametrize("rounds", ["0", "two"])
def test_bench_refuses_rounds_that_are_not_a_positive_count_with_exit_2(rounds: str) -> None:
    result = run_bench("--rounds", rounds, timeout=60)
    assert result.returncode == 2
    assert "--rounds" in result.stderr and result.stdout == ""


def _without_hiredis(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import hiredis, as where it is not
    installed: a package of that name that refuses to import comes first."""
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    shadow = tmp_path / "shadow" / "hiredis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("hiredis hidden by the test")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(shadow.parent), env.get("PYTHONPATH", "")) if x
    )
    return env


def test_bench_refuses_the_redis_anchor_without_hiredis(tmp_path: Path) -> None:
    result = run_bench("--quick", "--only", "cli", env=_without_hiredis(tmp_path), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install hiredis" in result.stderr and "--allow-slow-anchor" in result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(300)
def test_bench_runs_a_slow_anchor_when_allowed_and_warns_in_the_header(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_bench("--quick", "--only", "cli", "--rounds", "1", "--allow-slow-anchor",
                       "--json", str(out), env=_without_hiredis(tmp_path))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    header = result.stdout.split("\ncase ", 1)[0]
    assert "SLOW ANCHOR" in header and "pip install hiredis" in header
    machine = json.loads(out.read_text())["machine"]
    assert "SLOW ANCHOR" in machine["anchor_warning"]
    assert "pure-Python parser" in machine["redis"]


def _without_redis_server() -> dict[str, str]:
    """An environment whose PATH has no redis-server: the venv's own
    executables alone (the bench needs nothing else)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent)
    return env


@pytest.mark.parametrize(("flags", "env", "reason"), [
    (["--no-redis"], None, "--no-redis leaves out every Redis"),
    ([], _without_redis_server(), "redis-server is not on PATH (apt-get install redis-server)"),
])
def test_bench_shared_case_is_skipped_saying_why_where_it_has_no_redis(
    tmp_path: Path, flags: list[str], env: dict[str, str] | None, reason: str
) -> None:
    out = tmp_path / "bench.json"
    result = run_bench("--quick", "--only", "shared", *flags, "--json", str(out), env=env,
                       timeout=120)
    # A skipped case fails nothing.
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["case"] == "shared" and row["status"] == "skipped"
    assert row["note"].startswith(reason), row["note"]
    assert "SKIPPED" in result.stdout and reason in result.stdout


SHARED_ROWS = (
    "shared sequential get", "shared sequential set (ack)", "shared sequential create",
    "shared pipelined x100 get", "shared pipelined x100 set (ack)", "shared pipelined x100 create",
)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.timeout(600)
def test_bench_shared_case_duels_the_daemon_on_its_engine_against_redis_py_direct(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    result = run_bench("--quick", "--only", "shared", "--rounds", "2", "--json", str(out))
    # 1 is a missed target, which shared mode (and a loaded machine) may show.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    rows = {row["case"]: row for row in json.loads(out.read_text())["rows"]}
    broken = {case: row["note"] for case, row in rows.items() if row["status"] != "ok"}
    assert not broken, broken
    for case in SHARED_ROWS:
        row = rows[case]
        # Both sides ran in the same rounds, and the ratio is judged on them.
        assert len(row["ours_rounds"]) == len(row["anchor_rounds"]) == 2, case
        assert row["ours"] > 0 and row["anchor"] > 0, case
        assert row["anchor_label"].startswith("direct"), case
        want = "0.5x" if "sequential" in case else "0.8x"
        assert row["target"] == ">=" + want and row["result"] in {"PASS", "FAIL", "UNSURE"}, case
        assert case in result.stdout, f"{case} missing from the table"
    # --quick fills 50k sessions: the memory row is shown, judged at 1M only.
    memory = rows["shared memory per session (50k)"]
    assert memory["ours"] > 0 and memory["anchor"] > 0 and memory["lower_is_better"]
    assert memory["target"] == "<=2x at 1M" and memory["result"] == "n/a"
    assert "a session's hash" in memory["note"] and "--quick: 50000 sessions" in memory["note"]


# -- statistics ------------------------------------------------------------


def test_summary_is_the_median_and_the_lowest_and_highest_round() -> None:
    s = Summary.of([30.0, 10.0, 20.0, 50.0, 40.0])
    assert (s.median, s.low, s.high) == (30.0, 10.0, 50.0)
    assert s.rounds == (30.0, 10.0, 20.0, 50.0, 40.0)  # in the order they ran
    assert Summary.of([1.0, 2.0]).median == 1.5
    assert s.map(lambda v: v / 10).rounds == (3.0, 1.0, 2.0, 5.0, 4.0)


@pytest.mark.parametrize("samples", [[], [1.0, float("nan")]])
def test_summary_refuses_no_samples_or_a_nan(samples: list[float]) -> None:
    with pytest.raises(ValueError):
        Summary.of(samples)


def test_ratio_pairs_the_rounds_of_interleaved_measures() -> None:
    ours, anchor = Summary.of([10.0, 20.0, 30.0]), Summary.of([10.0, 10.0, 40.0])
    r = ratio(ours, anchor)
    assert r is not None
    # Round by round (1, 2, 0.75), not the ratio of the medians (20 / 10).
    assert r.rounds == (1.0, 2.0, 0.75)
    assert (r.median, r.low, r.high) == (1.0, 0.75, 2.0)


def test_ratio_of_unpaired_measures_spreads_as_wide_as_both_spreads() -> None:
    r = ratio(Summary.of([10.0, 20.0, 30.0]), Summary.of([8.0, 10.0]))
    assert r is not None and r.rounds == ()
    assert r.median == pytest.approx(20.0 / 9.0)
    assert (r.low, r.high) == (1.0, 3.75)
    fixed = ratio(Summary.of([50.0, 60.0, 70.0]), Summary.one(100.0))  # a reference figure
    assert fixed is not None and (fixed.median, fixed.low, fixed.high) == (0.6, 0.5, 0.7)


def test_ratio_against_an_anchor_at_zero_is_none() -> None:
    assert ratio(Summary.of([1.0, 2.0]), Summary.of([0.0, 3.0])) is None


@pytest.mark.parametrize(
    ("rounds", "target", "verdict"),
    [
        ((1.1, 1.2, 1.3), Target(at_least=1.0), "PASS"),
        ((0.8, 0.9, 0.95), Target(at_least=1.0), "FAIL"),
        ((0.9, 1.05, 1.2), Target(at_least=1.0), "UNSURE"),
        ((1.0, 1.1, 1.15), Target(at_most=1.2), "PASS"),
        ((1.25, 1.3), Target(at_most=1.2), "FAIL"),
        ((1.1, 1.3), Target(at_most=1.2), "UNSURE"),
        ((1.0, 1.0), Target(at_least=1.0), "PASS"),  # the bound itself meets it...
        ((1.0, 1.0), Target(at_least=1.0, strict=True), "FAIL"),  # ...unless strict
        ((49.0, 50.0), Target(at_most=50.0, strict=True), "UNSURE"),
        ((1.5,), Target(at_least=2.0), "FAIL"),  # one round: no spread to straddle
        ((0.5, 3.0), Target(at_least=1.0, at_most=2.0), "UNSURE"),  # over both bounds
        ((2.5, 3.0), Target(at_least=1.0, at_most=2.0), "FAIL"),
    ],
)
def test_judge_passes_only_when_every_round_meets_the_target(
    rounds: tuple[float, ...], target: Target, verdict: str
) -> None:
    assert judge(Summary.of(rounds), target) == verdict


def test_spread_of_n_rounds_holds_the_median_with_1_minus_2_to_the_1_minus_n() -> None:
    assert [coverage(n) for n in (1, 2, 3, 5, 7)] == [0.0, 0.5, 0.75, 0.9375, 0.984375]


def test_percentile_is_the_nearest_rank() -> None:
    ordered = [float(x) for x in range(1, 101)]
    assert percentile(ordered, 0.99) == 99.0 and percentile(ordered, 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_row_is_unsure_when_its_ratio_spread_crosses_the_target() -> None:
    row = Row("pipelined x100 get", "op/s", Summary.of([210.0, 190.0, 230.0]),
              Summary.of([100.0, 100.0, 100.0]), "redis").want_ratio(at_least=2.0)
    assert row.result == "UNSURE"
    data = row.as_json()
    assert data["result"] == "UNSURE" and data["passed"] is None
    assert data["ratio"] == 2.1 and data["ratio_spread"] == [1.9, 2.3]
    assert data["target"] == ">=2x" and data["judged"] == "ratio"
    row.anchor = Summary.of([80.0, 80.0, 80.0])
    assert row.result == "PASS" and row.as_json()["passed"] is True


def test_row_judged_on_its_value_uses_the_value_spread() -> None:
    row = Row("worst get during compaction (1M)", "ms", Summary.of([3.0, 70.0]),
              lower_is_better=True).want_value(at_most=50)
    assert row.result == "UNSURE" and row.target_label == "<=50.0 ms"
    assert row.spread_on_value


def test_row_without_an_anchor_shows_its_target_and_judges_nothing() -> None:
    row = Row("sequential set", "op/s", Summary.of([1.0, 2.0])).want_ratio(at_least=1.0)
    assert row.result == "n/a" and row.note == "no Redis anchor" and row.target_label == ">=1x"
    assert Row("x", "", None, status="error").result == "ERROR"


def test_spread_is_written_with_its_unit_once() -> None:
    assert fmt_range(16_200, 17_900, "op/s") == "16.2-17.9k/s"
    assert fmt_range(0.9, 1.2, "ms") == "900 us-1.2 ms"
    assert fmt_summary(Summary.of([1.42, 1.31, 1.55]), "x", spread=True) == "1.42x (1.31-1.55x)"
    assert fmt_summary(Summary.of([1.42, 1.31, 1.55]), "x", spread=False) == "1.42x"
    # No spread where the rounds print alike.
    assert fmt_summary(Summary.of([0.131, 0.129]), "x", spread=True) == "0.13x"


# -- the machine's weather --------------------------------------------------

STAT_BEFORE = "cpu  1000 0 500 8000 100 0 50 300 0 0\ncpu0 500 0 250 4000 50 0 25 150 0 0\n"
STAT_AFTER = "cpu  1100 0 550 8200 100 0 50 400 0 0\ncpu0 550 0 275 4100 50 0 25 200 0 0\n"


def test_steal_is_the_stolen_share_of_all_cpu_time_between_two_readings() -> None:
    before, after = parse_cpu_times(STAT_BEFORE), parse_cpu_times(STAT_AFTER)
    assert (before.total, before.steal) == (9950, 300)
    # 450 ticks passed, 100 of them stolen.
    assert steal_percent(before, after) == pytest.approx(100 * 100 / 450)
    assert steal_percent(after, after) is None


def test_steal_reading_parses_this_machines_proc_stat() -> None:
    now = read_cpu_times()
    assert now.total > 0 and 0 <= now.steal <= now.total


def test_proc_stat_without_a_cpu_line_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu"):
        parse_cpu_times("intr 1 2 3\n")


SCHED = """python3 (4242, #threads: 2)
-------------------------------------------------------------------
se.exec_start                                :      10108532.842563
se.sum_exec_runtime                          :             0.150776
se.nr_migrations                             :                   17
nr_switches                                  :                   40
nr_voluntary_switches                        :                   31
nr_involuntary_switches                      :                    9
"""


def test_sched_counts_are_read_from_a_threads_sched_text() -> None:
    assert parse_sched(SCHED) == SchedCounts(migrations=17, preempted=9)
    assert parse_sched(SCHED) - SchedCounts(10, 4) == SchedCounts(7, 5)


def test_sched_text_without_the_counts_is_refused() -> None:
    with pytest.raises(ValueError, match="migrations"):
        parse_sched("nr_involuntary_switches : 3\n")


def test_sched_counts_of_a_process_add_up_its_threads() -> None:
    counts = read_sched(os.getpid())
    # None only on a kernel that keeps no scheduler statistics.
    assert counts is None or (counts.migrations >= 0 and counts.preempted >= 0)
    assert read_sched(2**22 + 1) is None, "a process that does not exist has none"


# -- the Redis anchor's rules -----------------------------------------------

INSTALLED = {"server_version": "7.0.15", "redis_py": "8.2.0"}


def test_anchor_without_hiredis_is_refused_naming_the_install() -> None:
    a = decide_anchor(**INSTALLED, hiredis=None, hiredis_used=False, allow_slow=False)
    assert not a.run and "pip install hiredis" in a.refusal and "not installed" in a.refusal


def test_anchor_with_a_hiredis_redis_py_ignores_is_refused_naming_the_upgrade() -> None:
    a = decide_anchor(**INSTALLED, hiredis="2.3.2", hiredis_used=False, allow_slow=False)
    assert not a.run and "pip install -U hiredis" in a.refusal and "2.3.2" in a.refusal


def test_slow_anchor_runs_with_a_loud_warning_only_when_allowed() -> None:
    a = decide_anchor(**INSTALLED, hiredis=None, hiredis_used=False, allow_slow=True)
    assert a.run and not a.refusal and "SLOW ANCHOR" in a.warning
    assert "pure-Python parser" in a.line


def test_anchor_with_hiredis_runs_without_a_warning() -> None:
    a = decide_anchor(**INSTALLED, hiredis="3.5.0", hiredis_used=True, allow_slow=False)
    assert a.run and not a.refusal and not a.warning and "hiredis 3.5.0 parser" in a.line


def test_without_redis_ours_run_alone_and_nothing_is_refused() -> None:
    a = decide_anchor(server_version=None, redis_py=None, hiredis=None, hiredis_used=False,
                      allow_slow=False)
    assert not a.run and not a.refusal and "redis-server is not on PATH" in a.line
