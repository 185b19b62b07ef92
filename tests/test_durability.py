"""Crash recovery and disk errors, with real faults: SIGKILL in the middle of
concurrent writes, a failpoint that kills the daemon at each step of
compaction, torn and damaged journals, RLIMIT_FSIZE (EFBIG) on the daemon
process and injected fsync failures.

The rule under test: an acknowledged write survives; a write that failed is
never acknowledged and leaves no trace; the journal always loads, or says
exactly where it is damaged.
"""

from __future__ import annotations

import random
import resource
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from sessionctl import Client
from sessiond.errors import DaemonUnavailable, ReadOnly, SessionNotFound
from sessiond.model import US, Session, now_us
from sessiond.records import put_line
from sessiond.replay import TMP_SUFFIX
from tests.conftest import FAILPOINT, Daemon, as_read, restarted, run_sessiond, stored, wait_until

pytestmark = pytest.mark.local_only("kill -9 of the daemon against its journal")


def leftovers(d: Daemon) -> list[Path]:
    return list(d.data_dir.glob("*" + TMP_SUFFIX))


def write_config(d: Daemon, text: str) -> None:
    d.config.write_text(text)


def writable(c: Client, sid: str) -> bool:
    """One write attempt: true once the daemon accepts writes again."""
    try:
        c.create(id=sid)
    except ReadOnly:
        return False
    return True


# -- kill -9 during concurrent writes ----------------------------------------


class Burst:
    """Client threads, each with its own connection and its own sessions,
    writing until the daemon dies; records what was acknowledged and when."""

    def __init__(self, d: Daemon, round_no: int, writers: int) -> None:
        self.d = d
        self.round_no = round_no
        self.lock = threading.Lock()
        self.last: dict[str, Session | None] = {}  # last acknowledged state; None: deleted
        self.acked_at: dict[str, float] = {}
        self.inflight: dict[int, tuple[str, str] | None] = {}  # writer: (id, operation)
        self.acks = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in range(writers)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a writer did not notice the daemon died"
        assert not self.errors, self.errors

    def _run(self, w: int) -> None:
        rng = random.Random(f"{self.round_no}/{w}")
        own: list[str] = []
        i = 0
        try:
            with self.d.client(timeout=30) as c:
                while True:
                    i += 1
                    roll = rng.random()
                    result: Session | None
                    if not own or roll < 0.4:
                        sid = f"r{self.round_no}-w{w}-{i}"
                        self.inflight[w] = (sid, "create")
                        result = c.create(id=sid, user=f"w{w}", meta={"i": i})
                        own.append(sid)
                    elif roll < 0.85:
                        sid = rng.choice(own)
                        self.inflight[w] = (sid, "set")
                        result = c.set(sid, "i", i)
                    else:
                        sid = own.pop(rng.randrange(len(own)))
                        self.inflight[w] = (sid, "delete")
                        c.delete(sid)
                        result = None
                    with self.lock:
                        self.last[sid] = result
                        self.acked_at[sid] = time.monotonic()
                        self.acks += 1
                        self.inflight[w] = None
        except DaemonUnavailable:
            return  # the kill
        except BaseException as exc:  # any other failure fails the test
            self.errors.append(exc)


def crash_rounds(d: Daemon, rounds: int, slack: float | None) -> None:
    """Kill -9 mid-burst, restart, compare with what was acknowledged.

    ``slack`` None: nothing acknowledged may be lost. Otherwise a lost write
    must have been acknowledged less than ``slack`` seconds before the kill."""
    model: dict[str, Session | None] = {}
    for round_no in range(rounds):
        burst = Burst(d, round_no, writers=4)
        burst.start()
        target = random.randint(60, 200)
        wait_until(lambda b=burst, n=target: b.acks >= n or b.errors, 30, "acknowledged writes")
        killed_at = time.monotonic()
        d.kill()
        burst.join()
        model.update(burst.last)
        pending = dict(op for op in burst.inflight.values() if op is not None)
        d.start()
        now = stored(d)
        for sid, operation in pending.items():
            # The request in flight at the kill may or may not have landed.
            expect, got = model.get(sid), now.get(sid)
            if got == expect:
                continue
            if operation == "create":
                assert expect is None and got is not None and got.version == 1, sid
            elif operation == "set":
                assert expect is not None and got is not None, sid
                assert got.version == expect.version + 1, sid
            else:
                assert got is None, sid
        inflight = set(pending)
        lost = [sid for sid, expect in model.items()
                if sid not in inflight and now.get(sid) != expect]
        if slack is not None:
            late = [sid for sid in lost if killed_at - burst.acked_at.get(sid, 0.0) > slack]
            assert not late, f"round {round_no}: lost writes acknowledged long before the kill"
        # Acknowledged means written (and, for always, fsynced); SIGKILL cannot
        # undo a completed write(2), so nothing acknowledged may be missing.
        assert not lost, f"round {round_no}: lost acknowledged writes: {lost[:5]}"
        phantoms = set(now) - set(model) - inflight
        assert not phantoms, f"round {round_no}: writes that were never acknowledged: {phantoms}"
        model.update({sid: now.get(sid) for sid in inflight})
    assert run_sessiond(d, "--check").returncode == 0


def test_kill9_during_concurrent_writes_loses_no_acknowledged_write_with_always(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", start=False)
    # Small thresholds, so that compactions run (and get killed) during the bursts.
    write_config(d, '{"compact_min_bytes": 16384, "compact_growth_percent": 50}')
    d.start()
    crash_rounds(d, rounds=5, slack=None)
    assert "compacted" in d.log_text()


def test_kill9_with_everysec_loses_at_most_the_last_second_and_the_journal_loads(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    crash_rounds(d, rounds=4, slack=2.0)


# -- a crash at each step of compaction --------------------------------------


@pytest.mark.parametrize("step", ["compact-written", "compact-synced", "compact-renamed"])
def test_a_crash_at_each_step_of_compaction_keeps_exactly_the_acknowledged_state(
    make_daemon: Callable[..., Daemon], step: str
) -> None:
    d = make_daemon(env={FAILPOINT: step})
    model: dict[str, Session] = {}
    with d.client() as c:
        for i in range(30):
            model[f"c{i}"] = c.create(id=f"c{i}", user=f"u{i % 4}", meta={"i": i})
        for i in range(0, 30, 2):
            model[f"c{i}"] = c.set(f"c{i}", "i", -i)
        for i in range(0, 30, 5):
            c.delete(f"c{i}")
            del model[f"c{i}"]
        model["c1"] = c.expire("c1")
        model["c3"] = c.refresh("c3", ttl=7200)
    before = d.journal.read_bytes()
    result = d.ctl("compact")
    assert result.returncode == 3, result.stderr  # the daemon died under it
    assert d.proc is not None and d.proc.wait(10) == -signal.SIGKILL
    if step == "compact-renamed":
        assert not leftovers(d)
        assert d.journal.read_bytes().count(b"\n") == len(model), "the rename had happened"
    else:
        assert leftovers(d), "the temp file was there when the daemon died"
        assert d.journal.read_bytes() == before
    del d.extra_env[FAILPOINT]
    d.start()
    assert not leftovers(d)
    assert stored(d) == model
    with d.client() as c:
        c.compact()
    d.kill()
    d.start()
    assert stored(d) == model


# -- torn tails and damage ---------------------------------------------------


def _last_line_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


@pytest.mark.parametrize("cut", ["mid-line", "all-but-newline"])
def test_a_torn_last_line_is_cut_at_restart_and_a_later_write_reloads(
    make_daemon: Callable[..., Daemon], cut: str
) -> None:
    d = make_daemon()
    with d.client() as c:
        a = c.create(id="a")
        b = c.create(id="b")
        b2 = c.set("b", "k", "v")
    assert d.stop() == 0
    data = d.journal.read_bytes()
    start = _last_line_start(data)
    keep = (len(data) - start) // 2 if cut == "mid-line" else len(data) - start - 1
    d.journal.write_bytes(data[: start + keep])
    d.start()
    after_crash = {"a": a, "b": b2 if cut == "all-but-newline" else b}
    assert stored(d) == after_crash
    if cut == "mid-line":
        assert "torn" in d.log_text()
    with d.client() as c:
        after_crash["c"] = c.create(id="c")
    d.kill()
    assert run_sessiond(d, "--check").returncode == 0
    d.start()
    assert stored(d) == after_crash


def _damage(d: Daemon, kind: str) -> tuple[bytes, int, str]:
    """Damage the third line; returns the original, its offset and its id."""
    original = d.journal.read_bytes()
    lines = original.splitlines(keepends=True)
    offset = len(lines[0]) + len(lines[1])
    sid = "s2"
    assert f'"id":"{sid}"'.encode() in lines[2]
    if kind == "checksum":
        lines[2] = lines[2].replace(b'"user":"u2"', b'"user":"u7"')
    else:
        lines.insert(2, b"\x00\x00 garbage \xff\n")
        sid = ""
    d.journal.write_bytes(b"".join(lines))
    return original, offset, sid


def _five_sessions(d: Daemon) -> dict[str, Session]:
    """A journal of five sessions, as a daemon would have written it."""
    now = now_us()
    made = {
        f"s{i}": Session(id=f"s{i}", user=f"u{i}", status="active", ttl=3600, meta={},
                         created_at=now, last_access=now, expires_at=now + 3600 * US)
        for i in range(5)
    }
    d.data_dir.mkdir(mode=0o700, exist_ok=True)
    d.journal.write_bytes(b"".join(put_line(s) for s in made.values()))
    return made


@pytest.mark.parametrize("kind", ["checksum", "garbage"])
def test_damage_before_the_tail_stops_the_start_naming_file_line_and_offset(
    make_daemon: Callable[..., Daemon], kind: str
) -> None:
    d = make_daemon(start=False)
    _five_sessions(d)
    _, offset, _ = _damage(d, kind)
    damaged = d.journal.read_bytes()
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    log = d.log_text()
    assert str(d.journal) in log and f"line 3 (byte offset {offset})" in log
    assert "sessiond --repair" in log
    assert d.journal.read_bytes() == damaged, "a refused start must not touch the journal"


def test_check_reports_a_healthy_journal_with_exit_0(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    _five_sessions(d)
    data = d.journal.read_bytes()
    d.journal.write_bytes(data + data[: 40])  # a torn tail is not damage
    result = run_sessiond(d, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 readable lines" in result.stdout and "torn final line" in result.stdout
    assert "healthy" in result.stdout
    assert d.journal.read_bytes() == data + data[:40], "--check only reads"


@pytest.mark.parametrize("kind", ["checksum", "garbage"])
def test_check_reports_damage_with_exit_1_without_starting(
    make_daemon: Callable[..., Daemon], kind: str
) -> None:
    d = make_daemon(start=False)
    _five_sessions(d)
    _, offset, sid = _damage(d, kind)
    result = run_sessiond(d, "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"line 3 (byte offset {offset})" in result.stdout
    assert (f"[id {sid}]" in result.stdout) == bool(sid)
    assert not d.socket.exists()


def test_repair_keeps_a_backup_then_drops_only_unreadable_lines_naming_their_ids(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    made = _five_sessions(d)
    made["s0"] = msgspec.structs.replace(made["s0"], meta={"k": "v"}, version=2)
    with d.journal.open("ab") as f:
        f.write(put_line(made["s0"]))
    original = d.journal.read_bytes()
    lines = original.splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"user":"u2"', b'"user":"u9"')  # s2's only line
    lines.insert(4, b"not json\n")
    damaged = b"".join(lines)
    d.journal.write_bytes(damaged)
    result = run_sessiond(d, "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dropped 2 unreadable lines (ids: s2)" in result.stdout
    backups = list(d.data_dir.glob("data.jsonl.bak-*"))
    assert len(backups) == 1 and str(backups[0]) in result.stdout
    assert backups[0].read_bytes() == damaged
    assert run_sessiond(d, "--check").returncode == 0
    d.start()
    del made["s2"]
    assert stored(d) == {sid: as_read(s) for sid, s in made.items()}


def test_a_checksummed_record_the_rules_refuse_is_judged_alike_by_start_check_and_repair(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    made = _five_sessions(d)
    bogus = msgspec.structs.replace(made["s2"], id="bogus", status="paused")
    with d.journal.open("ab") as f:
        f.write(put_line(bogus))  # a valid line, checksum and all, of an impossible session
    offset = d.journal.stat().st_size - len(put_line(bogus))
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    assert f"line 6 (byte offset {offset})" in d.log_text() and "paused" in d.log_text()
    check = run_sessiond(d, "--check")
    assert check.returncode == 1 and "line 6" in check.stdout and "[id bogus]" in check.stdout
    repaired = run_sessiond(d, "--repair")
    assert repaired.returncode == 0 and "(ids: bogus)" in repaired.stdout
    d.start()
    assert stored(d) == {sid: as_read(s) for sid, s in made.items()}


def test_repair_refuses_while_a_daemon_uses_the_data_dir(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.create(id="kept")
    before = daemon.journal.read_bytes()
    result = run_sessiond(daemon, "--repair")
    assert result.returncode == 1
    assert daemon.proc is not None and f"pid {daemon.proc.pid}" in result.stderr
    assert daemon.journal.read_bytes() == before
    assert not list(daemon.data_dir.glob("data.jsonl.bak-*"))


# -- disk errors -------------------------------------------------------------


def _create_until_refused(c: Client, prefix: str, **fields: object) -> tuple[
    dict[str, Session], str, str
]:
    acked: dict[str, Session] = {}
    for i in range(500):
        sid = f"{prefix}{i}"
        try:
            acked[sid] = c.create(id=sid, **fields)  # type: ignore[arg-type]
        except ReadOnly as exc:
            return acked, sid, str(exc)
    raise AssertionError("no write was ever refused")


def test_a_failed_fsync_under_always_is_not_acknowledged_and_writes_resume_after_compaction(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", env={FAILPOINT: "fsync-error@4:1"})
    with d.client() as c:
        acked, refused, message = _create_until_refused(c, "k")
        assert len(acked) == 3
        assert "journal fsync failed" in message and "Input/output error" in message
        # The failure wakes the compactor, whose fresh journal ends read-only mode.
        wait_until(lambda: writable(c, "after"), what="writes accepted again")
        acked["after"] = c.get("after")
        with pytest.raises(SessionNotFound):
            c.get(refused)
        st = c.stats()
        assert st.write_errors == 1 and st.read_only is None and st.compactions >= 1
    restarted(d)
    assert stored(d) == acked


def test_a_lasting_fsync_failure_keeps_reads_working_and_refuses_writes_saying_why(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--fsync", "always", env={FAILPOINT: "fsync-error@4"})
    with d.client() as c:
        acked, refused, message = _create_until_refused(c, "k")
        assert len(acked) == 3 and "Input/output error" in message
        for sid, s in acked.items():
            assert c.get(sid) == s
        assert [s.id for s in c.list()] == list(acked)
        with pytest.raises(ReadOnly, match="writes are refused"):
            c.set("k0", "a", "b")
        st = c.stats()
        assert st.read_only is not None and "fsync failed" in st.read_only
        assert st.write_errors >= 1
    cli = d.ctl("create", "--id", "nope")
    assert cli.returncode == 1
    assert "Input/output error" in cli.stderr and "writes are refused" in cli.stderr
    compact = d.ctl("compact")
    assert compact.returncode == 1 and "compaction failed" in compact.stderr
    assert not leftovers(d)
    assert d.stop() == 0
    del d.extra_env[FAILPOINT]
    d.start()
    assert stored(d) == acked


def test_everysec_flushes_in_the_background_and_a_failed_flush_turns_read_only_until_compacted(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(env={FAILPOINT: "fsync-error@1:1"})
    with d.client() as c:
        assert c.stats().fsync == "everysec"
        first = c.create(id="first")  # acknowledged once written
        written = time.monotonic()
        # No request triggers it: the background flush does, about a second later.
        wait_until(lambda: c.stats().write_errors == 1, what="the background fsync")
        assert time.monotonic() - written < 8
        wait_until(lambda: writable(c, "second"), what="writes accepted again")
        assert c.stats().compactions >= 1
        second = c.get("second")
    restarted(d)
    assert stored(d) == {"first": first, "second": second}


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Soft limit only: the hard one stays unlimited so that the test can
        # raise the soft one later with prlimit(2), as an operator would.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_efbig_refuses_the_write_and_writes_resume_once_a_compaction_fits(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    d.start(preexec_fn=_file_size_limit(48 * 1024))
    with d.client() as c:
        keep = c.create(id="keep", meta={"k": "v"})
        last = c.create(id="hot")
        pad = "x" * 1000
        message = ""
        for i in range(200):
            try:
                last = c.set("hot", "v", f"{i}:{pad}")
            except ReadOnly as exc:
                message = str(exc)
                break
        assert "File too large" in message, message
        # The journal holds many versions of one session: compacted, it fits.
        wait_until(lambda: writable(c, "after"), what="writes accepted again")
        assert c.get("hot") == last
        assert c.stats().write_errors >= 1
        after = c.get("after")
    d.kill()
    d.start()
    assert stored(d) == {"keep": keep, "hot": last, "after": after}


def test_efbig_keeps_the_daemon_read_only_until_a_compaction_can_be_written(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    with daemon.client() as c:
        acked = {f"big{i}": c.create(id=f"big{i}", meta={"pad": "x" * 1000}) for i in range(24)}
        short = c.create(id="short", ttl=2)
        # A quota below what the journal, and even the state alone, needs.
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
        with pytest.raises(ReadOnly, match="File too large") as refused:
            c.create(id="refused")
        assert "writes are refused" in str(refused.value)
        cli = daemon.ctl("create", "--id", "nope")
        assert cli.returncode == 1
        assert "File too large" in cli.stderr and "writes are refused" in cli.stderr
        compact = daemon.ctl("compact")
        assert compact.returncode == 1 and "File too large" in compact.stderr
        # None left: the daemon's own tries to leave read-only mode go on
        # meanwhile, and one may have its temp file open at any moment.
        wait_until(lambda: not leftovers(daemon), what="no compaction temp file")
        for sid, s in acked.items():
            assert c.get(sid) == s
        assert len(c.list()) == len(acked) + 1
        # A read that finds a deadline passed still answers, though the
        # expiry it implies cannot be written yet.
        wait_until(lambda: c.get("short").status == "expired", what="short to expire")
        st = c.stats()
        assert st.read_only is not None and "File too large" in st.read_only
        assert st.write_errors >= 2
        resource.prlimit(
            pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        compact = daemon.ctl("compact")
        assert compact.returncode == 0, compact.stderr
        assert c.stats().read_only is None
        acked["after"] = c.create(id="after")
        for sid in ("refused", "nope"):
            with pytest.raises(SessionNotFound):
                c.get(sid)
    assert daemon.stop() == 0
    daemon.start()
    now = stored(daemon)
    assert now.pop("short").status == "expired" and short.status == "active"
    assert now == acked
