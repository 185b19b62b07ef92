"""``sessionctl import`` of big sessions: pages bounded by bytes as well as
by count, so that our own export always imports; and an import killed by
SIGINT or SIGTERM says exactly how many sessions it committed, which a rerun
then completes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionctl import Client
from sessiond.model import US, Session, now_us
from sessiond.records import plain_line
from tests.conftest import SESSIONCTL, Daemon, stored


def sessions(count: int, meta_bytes: int, prefix: str = "s") -> list[Session]:
    now = now_us()
    return [
        Session(id=f"{prefix}{i:05d}", user=f"u{i % 7}", status="active", ttl=86400,
                meta={"blob": f"{i:05d}".ljust(meta_bytes, "x")},
                created_at=now, last_access=now, expires_at=now + 86400 * US)
        for i in range(count)
    ]


def test_our_own_export_of_3000_sessions_of_8_kib_imports_into_a_fresh_daemon(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    source = make_daemon()
    with source.client() as c:
        for start in range(0, 3000, 500):
            with c.pipeline() as p:
                for i in range(start, start + 500):
                    p.create(id=f"big{i:05d}", user=f"u{i % 5}",
                             meta={"blob": f"{i:05d}".ljust(8 * 1024, "y"), "n": str(i)})
    dump = tmp_path / "all.jsonl"
    r = source.ctl("export", "--format", "jsonl", "--output", str(dump))
    assert r.returncode == 0, r.stderr
    # The frame the old client sent for one page of 1,000 of these.
    assert dump.stat().st_size > 3 * 4 * 1024 * 1024

    target = make_daemon()
    r = target.ctl("import", str(dump), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert (result["imported"], result["updated"], result["skipped"]) == (3000, 0, 0)
    assert stored(target) == stored(source)


def test_pages_follow_a_lowered_max_frame_bytes_and_a_session_too_big_is_skipped(
    daemon: Daemon,
) -> None:
    small = sessions(60, 1024)
    huge = sessions(1, 6000, prefix="huge")
    with daemon.client() as c:
        c.set_config("max_frame_bytes", 4096)
        result = c.import_sessions(small[:30] + huge + small[30:])
        assert (result.imported, result.updated, result.skipped) == (60, 0, 1)
        assert len(result.reasons) == 1
        reason = result.reasons[0]
        assert reason.startswith("huge00000: ") and "max_frame_bytes is 4096" in reason
        assert {s.id for s in c.iter_sessions()} == {s.id for s in small}
        # The connection stayed in step: no frame was refused by the daemon.
        assert c.ping().pid == c.server_pid


def test_a_session_past_the_page_bound_is_skipped_naming_that_bound(daemon: Daemon) -> None:
    """Not the daemon's max_frame_bytes (4 MiB here), which it fits in."""
    huge = sessions(1, 1_500_000, prefix="huge")
    with daemon.client() as c:
        result = c.import_sessions(huge)
    assert (result.imported, result.skipped) == (0, 1)
    (reason,) = result.reasons
    assert "an import page carries at most 1048576 bytes" in reason
    assert "max_frame_bytes" not in reason


def _write(path: Path, items: list[Session]) -> None:
    path.write_bytes(b"".join(plain_line(s) for s in items))


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_import_says_how_many_it_committed_and_a_rerun_completes_it(
    make_daemon: Callable[..., Daemon], tmp_path: Path, signum: int, status: int
) -> None:
    d = make_daemon()
    # Small pages (a handful of sessions each) make the import long: some
    # hundreds of round trips, of which the test catches one of the first.
    with d.client() as c:
        c.set_config("max_frame_bytes", 4096)
    total = 3000
    path = tmp_path / "big.jsonl"
    _write(path, sessions(total, 400))
    proc = subprocess.Popen([SESSIONCTL, "import", str(path), "--json"], env=d.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert d.proc is not None
    try:
        with Client(d.socket) as c:
            # Asked back to back, not every few milliseconds: each answer
            # waits its turn behind the import's pages anyway.
            deadline = time.monotonic() + 60
            while c.stats().total_sessions == 0:
                assert proc.poll() is None and time.monotonic() < deadline, "no page came"
        # Held still, the daemon keeps the page in flight unanswered while
        # the signal arrives: the import is surely in its middle.
        d.proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signum)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, (out, err)
    assert out == ""
    assert len(err.splitlines()) == 1, err
    name = signal.Signals(signum).name
    found = re.match(
        rf"sessionctl: error: import interrupted by {name}: (\d+) sessions were committed "
        rf"\(imported (\d+), updated 0; 0 skipped\) of {total}; the other (\d+) were not sent\. "
        rf"Importing {re.escape(str(path))} again is safe",
        err,
    )
    assert found, err
    committed = int(found.group(1))
    assert committed == int(found.group(2)) and committed + int(found.group(3)) == total
    assert 0 < committed < total
    with d.client() as c:
        assert c.stats().total_sessions == committed

    again = d.ctl("import", str(path), "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert (result["imported"], result["skipped"]) == (total - committed, committed)
    with d.client() as c:
        assert c.stats().total_sessions == total
