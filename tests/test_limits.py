"""Limits: frame size, frame and idle time, connections, queued replies and
file descriptors. Each test ends by checking that the daemon still answers a
normal client with its state intact (and, where it matters, that every
descriptor it opened for the misbehaving clients is closed again).
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sessionctl import Client
from sessiond.errors import Busy
from tests.conftest import Daemon, wait_until
from tests.rawwire import Raw, fd_count, frame, request, seed, snapshot, write_config


@pytest.fixture
def many_files() -> Iterator[None]:
    """Let this process hold a thousand sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"needs RLIMIT_NOFILE >= 2200 to hold the clients (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                else 65536, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def configured(make_daemon: Callable[..., Daemon], **settings: Any) -> Daemon:
    d = make_daemon(start=False)
    write_config(d.config, **settings)
    return d.start()


def pid_of(d: Daemon) -> int:
    assert d.proc is not None
    return d.proc.pid


def baseline_fds(d: Daemon) -> int:
    """The daemon's descriptors with no client connected."""
    with d.client() as c:
        wait_until(lambda: c.stats().connections == 1, 10, "earlier clients to be closed")
        return fd_count(pid_of(d)) - 1


def back_to(d: Daemon, fds: int) -> None:
    """The daemon's descriptors back where they were: no client's left
    behind. On a shared engine its link may keep more connections open than
    at the start (a bounded pool, grown under load)."""
    from sessiond.shared.link import MAX_CONNECTIONS

    slack = MAX_CONNECTIONS + 1 if d.engine.shared else 0
    wait_until(lambda: fds <= fd_count(pid_of(d)) <= fds + slack, 20,
               f"the daemon's descriptors to return to {fds}" + (f" (+{slack})" if slack else ""))


def no_tracebacks(d: Daemon) -> None:
    assert "Traceback" not in d.log_text(), d.log_text()


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- frame size --------------------------------------------------------------


def test_header_of_0xffffffff_is_refused_before_any_body(daemon: Daemon) -> None:
    seed(daemon.socket)
    before = snapshot(daemon.socket)
    with Raw(daemon.socket) as raw:
        reply = raw.error(b"\xff\xff\xff\xff")
        assert reply["code"] == "too_large"
        assert "4294967295" in reply["message"] and "max_frame_bytes" in reply["message"]
        assert raw.at_eof()
    assert snapshot(daemon.socket) == before
    no_tracebacks(daemon)


def test_header_of_limit_plus_one_is_refused_and_limit_itself_accepted(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = configured(make_daemon, max_frame_bytes=1024)
    seed(d.socket)
    before = snapshot(d.socket)
    with Raw(d.socket) as raw:
        reply = raw.error((1025).to_bytes(4, "big"))
        assert reply["code"] == "too_large" and "1025" in reply["message"]
        assert raw.at_eof()
    assert snapshot(d.socket) == before
    # A request of exactly max_frame_bytes is fine.
    body = next(
        b for n in range(1024)
        if len(b := msgspec.msgpack.encode({"op": "create", "id": 1, "meta": {"p": "x" * n}}))
        == 1024
    )
    assert len(body) == 1024
    with Raw(d.socket) as raw:
        raw.send(frame(body))
        made = raw.read_frame()
        assert made is not None and made["r"] == "session", made
    sessions, _ = snapshot(d.socket)
    assert len(sessions) == 4 and sessions[:3] == before[0]


# -- frame and idle time -----------------------------------------------------


def test_frame_cut_short_then_closed_changes_nothing(daemon: Daemon) -> None:
    seed(daemon.socket)
    before = snapshot(daemon.socket)
    fds = baseline_fds(daemon)
    whole = request(op="create", id=1, user="cut", meta={"k": "v" * 500})
    for cut in (1, 3, 4, 5, len(whole) // 2, len(whole) - 1):
        with Raw(daemon.socket) as raw:
            raw.send(whole[:cut])
    back_to(daemon, fds)
    assert snapshot(daemon.socket) == before
    no_tracebacks(daemon)


def test_silent_client_is_closed_after_idle_timeout(make_daemon: Callable[..., Daemon]) -> None:
    d = configured(make_daemon, idle_timeout=1)
    seed(d.socket)
    before = snapshot(d.socket)
    with Raw(d.socket, timeout=30) as raw:
        reply = raw.read_frame()  # sends nothing: waits for the daemon to give up
        assert reply is not None and reply["code"] == "protocol", reply
        assert "idle_timeout" in reply["message"]
        assert raw.at_eof()
    assert snapshot(d.socket) == before


def test_trickled_frame_is_closed_after_frame_timeout_counted_from_its_start(
    make_daemon: Callable[..., Daemon],
) -> None:
    """One byte every 0.2 s never leaves the connection silent for a whole
    second, yet the frame as a whole must arrive within frame_timeout."""
    d = configured(make_daemon, frame_timeout=1)
    seed(d.socket)
    before = snapshot(d.socket)
    whole = request(op="create", id=1, user="slow", meta={"k": "v" * 100})
    started = time.monotonic()
    with Raw(d.socket, timeout=30) as raw:
        for i in range(len(whole) - 1):  # never the last byte
            raw.send(whole[i : i + 1])
            readable, _, _ = select.select([raw.sock], [], [], 0.2)
            if readable:
                break
        else:
            raise AssertionError("the daemon let a frame trickle in for the whole time")
        reply = raw.read_frame()
        assert reply is not None and reply["code"] == "protocol", reply
        assert "frame_timeout" in reply["message"]
        assert raw.at_eof()
    assert time.monotonic() - started < 10
    assert snapshot(d.socket) == before


def test_dripping_clients_do_not_delay_a_normal_client(daemon: Daemon) -> None:
    ids = seed(daemon.socket)
    before = snapshot(daemon.socket)
    fds = baseline_fds(daemon)
    drippers = [Raw(daemon.socket) for _ in range(100)]
    payload = request(op="create", id=1, user="drip", meta={"pad": "x" * 100})
    stop = threading.Event()

    def drip() -> None:
        for i in range(len(payload) - 1):
            for raw in drippers:
                raw.send(payload[i : i + 1])
            # The pace is the point of the test, not a synchronisation.
            if stop.wait(0.5):
                return

    latencies: list[float] = []
    dripper = threading.Thread(target=drip)
    try:
        with daemon.client() as c:
            wait_until(lambda: c.stats().connections == 101, 10, "all drippers to be connected")
            dripper.start()
            until = time.monotonic() + 4.0
            while time.monotonic() < until:
                t0 = time.perf_counter()
                c.get(ids[0])
                c.ping()
                latencies.append((time.perf_counter() - t0) / 2)
            assert c.stats().connections == 101, "the drippers should all still be connected"
    finally:
        stop.set()
        dripper.join(10)
        for raw in drippers:
            raw.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    assert len(latencies) > 200
    assert p99 < 0.100, f"p99 {p99 * 1000:.1f} ms over {len(latencies)} requests"
    back_to(daemon, fds)
    assert snapshot(daemon.socket) == before


# -- connections ---------------------------------------------------------------


def test_connection_over_max_connections_is_told_busy(make_daemon: Callable[..., Daemon]) -> None:
    d = configured(make_daemon, max_connections=3)
    seed(d.socket)
    before = snapshot(d.socket)
    # Three, and the one more kept for config, stats and shutdown (whose
    # hello it answers).
    held = [d.client() for _ in range(4)]
    try:
        with pytest.raises(Busy, match=r"max_connections=3"):
            Client(d.socket)
    finally:
        held.pop(0).close()

    def admitted() -> bool:
        try:
            with d.client() as c:
                c.ping()
            return True
        except Busy:
            return False

    wait_until(admitted, 10, "a freed slot to admit a new client")
    for c in held:
        c.close()
    assert snapshot(d.socket) == before


@pytest.mark.local_only("the connection limit is the server's, the same on either engine")
def test_a_daemon_full_of_connections_still_answers_config_reload_stats_and_shutdown(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    sid = seed(d.socket)[0]
    assert d.ctl("config", "max_connections", "1").returncode == 0
    with Raw(d.socket) as watcher:
        assert watcher.call(op="watch", id=1)["r"] == "event"
        refused = d.ctl("get", sid)
        assert refused.returncode == 1, refused.stderr
        assert "max_connections=1" in refused.stderr
        assert "kept beyond them serves only sessionctl config, reload, stats" in refused.stderr
        stats = d.ctl("stats", "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["connections"] == 2
        assert d.ctl("config", "max_connections").stdout == "1\n"
        # The way out, without editing the file and SIGHUP.
        assert d.ctl("config", "max_connections", "100").returncode == 0
        assert d.ctl("get", sid).returncode == 0
        assert d.ctl("config", "max_connections", "1").returncode == 0
        # Or by editing the file and reloading it.
        d.config.write_text(json.dumps({"max_connections": 100}))
        reloaded = d.ctl("reload")
        assert "max_connections 1 -> 100" in reloaded.stdout, reloaded.stderr
        assert d.ctl("get", sid).returncode == 0
        assert d.ctl("config", "max_connections", "1").returncode == 0
        assert d.ctl("shutdown").returncode == 0
        assert d.proc is not None and d.proc.wait(10) == 0


@pytest.mark.local_only("the connection limit is the server's, the same on either engine")
def test_the_connection_kept_beyond_max_connections_is_one_and_serves_nothing_else(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = configured(make_daemon, max_connections=1)
    sid = seed(d.socket)[0]
    before = snapshot(d.socket)  # on the one connection max_connections allows
    with d.client() as regular, d.client() as reserve:
        assert reserve.stats().connections == 2
        # Taken: nobody else gets in, not even for stats.
        refused = d.ctl("stats")
        assert refused.returncode == 1 and "is in use" in refused.stderr, refused.stderr
        # Anything else, pipelined after a stats or not, is refused before any of it is done.
        with pytest.raises(Busy, match="max_connections=1"), reserve.pipeline() as p:
            p.stats()
            p.delete(sid)
        # It closed that connection, which is free for the next.
        wait_until(lambda: d.ctl("stats").returncode == 0, 10, "the kept connection to be free")
        assert regular.get(sid).id == sid
    assert snapshot(d.socket) == before


CLIENTS = 1000
THREADS = 20
OPS = 10


def test_thousand_concurrent_clients_all_answered_or_told_busy(
    make_daemon: Callable[..., Daemon], many_files: None
) -> None:
    d = configured(make_daemon, max_connections=800)
    seeded = seed(d.socket)
    fds = baseline_fds(d)
    barrier = threading.Barrier(THREADS)
    outcome: dict[str, int] = {"answered": 0, "busy": 0}
    problems: list[str] = []
    lock = threading.Lock()

    def ops(sid: str, i: int) -> bytes:
        calls: list[dict[str, Any]] = [
            {"op": "create", "sid": sid, "ttl": 86400, "meta": {"i": i}},
            {"op": "get", "sid": sid},
            {"op": "set", "sid": sid, "key": "k", "value": i},
            {"op": "get", "sid": sid, "touch": True},
            {"op": "refresh", "sid": sid, "ttl": 86400},
            {"op": "ping"},
            {"op": "unset", "sid": sid, "key": "k"},
            {"op": "list", "limit": 2},
            {"op": "get", "sid": seeded[0]},
            {"op": "get", "sid": sid},
        ]
        return request(id=i + 1, **calls[i])

    def worker(t: int) -> None:
        socks: list[Raw] = []
        try:
            for _ in range(CLIENTS // THREADS):
                socks.append(Raw(d.socket, timeout=60))
            alive = dict(enumerate(socks))
            for i in range(OPS):
                for k, raw in alive.items():
                    try:
                        raw.send(ops(f"c{t}-{k}", i))
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # told busy and closed: the answer is read below
                for k, raw in list(alive.items()):
                    reply = raw.read_frame()
                    if reply is None:
                        with lock:
                            problems.append(f"c{t}-{k}: closed without an answer")
                        del alive[k]
                    elif reply.get("code") == "busy":
                        assert i == 0 and reply["id"] == 0, reply
                        assert "max_connections=800" in reply["message"], reply
                        with lock:
                            outcome["busy"] += 1
                        del alive[k]
                    elif reply["r"] == "error" or reply["id"] != i + 1:
                        with lock:
                            problems.append(f"c{t}-{k} op {i}: {reply}")
                        del alive[k]
                if i == 0:
                    # Every client has been admitted or refused: from here
                    # on all the admitted ones are open at the same time.
                    barrier.wait(60)
            with lock:
                outcome["answered"] += len(alive)
        except BaseException as exc:  # reported by the assertion below
            with lock:
                problems.append(f"thread {t}: {exc!r}")
            barrier.abort()
        finally:
            for raw in socks:
                raw.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(100)
    assert not problems, problems[:10]
    assert outcome["answered"] + outcome["busy"] == CLIENTS, outcome
    assert 799 <= outcome["answered"] <= 800, outcome
    back_to(d, fds)
    with d.client() as c:
        sessions = c.list()
        assert c.stats().total_sessions == len(seeded) + outcome["answered"]
    assert [s.id for s in sessions[:3]] == seeded
    assert all(s.version == 5 and s.meta == {"i": 0} for s in sessions[3:])
    no_tracebacks(d)


def test_open_file_limit_of_64_is_survived(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    d.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    seed(d.socket)
    before = snapshot(d.socket)
    fds = baseline_fds(d)
    pid = pid_of(d)
    # Connections alone never use the descriptors up (those past the room
    # the limit leaves are told busy: tests/test_open_files_limit.py); a
    # limit lowered below what the daemon holds (prlimit) does.
    held = [Raw(d.socket) for _ in range(16)]
    try:
        assert all(raw.call(op="ping", id=1)["r"] == "pong" for raw in held)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds + 8, 64))
        # Connecting succeeds while the backlog has room, accepted or not.
        held += [Raw(d.socket) for _ in range(16)]
        wait_until(lambda: "accept failed (Too many open files)" in d.log_text(), 10,
                   "the daemon to run out of descriptors")
        # Backing off, not spinning: well under half a CPU while starved.
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        assert held[0].call(op="ping", id=5)["r"] == "pong", "an accepted client is served"
        wait_until(lambda: time.monotonic() - wall0 >= 1.0, 5, "a second of starvation")
        assert cpu_seconds(pid) - cpu0 < 0.5
        assert d.proc is not None and d.proc.poll() is None
    finally:
        for raw in held:
            raw.close()
    back_to(d, fds)
    # The next client is accepted (those that came while the daemon was
    # starved were answered busy with its spare descriptor), and the log
    # says so.
    assert snapshot(d.socket) == before
    wait_until(lambda: "accepting connections again" in d.log_text(), 10, "accept to recover")
    no_tracebacks(d)


# -- clients that do not read, or leave ----------------------------------------


def test_client_that_never_reads_a_large_reply_is_dropped_without_hoarding(
    make_daemon: Callable[..., Daemon],
) -> None:
    # No automatic compaction: one started by the 2.4 MB of creates would hold
    # files open while the fd baseline is taken, and this test is about the
    # non-reading client, not compaction.
    d = configured(
        make_daemon, send_timeout=2, max_reply_queue_bytes=1 << 20, compact_min_bytes=1 << 40
    )
    with d.client() as c:
        with c.pipeline() as p:
            for i in range(40):
                p.create(ttl=86400, meta={"blob": f"{i}" + "x" * 60_000})
    before = snapshot(d.socket)
    fds = baseline_fds(d)
    pid = pid_of(d)
    peak_before = vm_kib(pid, "VmHWM")
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(str(d.socket))
    try:
        # Each list answer is ~2.4 MB; fifty of them pipelined would be
        # 120 MB if the daemon built every reply before sending any.
        hog.sendall(b"".join(request(op="list", id=i + 1) for i in range(50)))
        latencies: list[float] = []
        with d.client() as c:
            wait_until(lambda: c.stats().connections == 2, 10, "the hog to be connected")
            while c.stats().connections == 2:
                t0 = time.perf_counter()
                c.ping()
                latencies.append(time.perf_counter() - t0)
                assert len(latencies) < 200_000, "the hog was never dropped"
        assert max(latencies) < 1.0, "a client that does not read held up another"
    finally:
        hog.close()
    back_to(d, fds)
    grew_mib = (vm_kib(pid, "VmHWM") - peak_before) / 1024
    assert grew_mib < 40, f"peak memory grew by {grew_mib:.0f} MiB for one client"
    assert "left its replies unread for 2s (send_timeout)" in d.log_text()
    assert snapshot(d.socket) == before


@pytest.mark.local_only('what the daemon applied it wrote to its journal')
def test_client_that_disconnects_mid_request_loses_nothing_acknowledged(daemon: Daemon) -> None:
    seeded = seed(daemon.socket)
    fds = baseline_fds(daemon)
    creates = b"".join(
        request(op="create", id=i + 1, sid=f"gone{i}", ttl=86400) for i in range(300)
    )
    with Raw(daemon.socket) as raw:
        raw.send(creates + request(op="ping", id=999)[:5])
    back_to(daemon, fds)
    with daemon.client() as c:
        state = c.list()
    assert [s.id for s in state[:3]] == seeded
    # Whatever the daemon applied it also wrote: a restart shows the same.
    daemon.restart()
    assert snapshot(daemon.socket)[0] == [msgspec.to_builtins(s) for s in state]
    no_tracebacks(daemon)


@pytest.mark.local_only("the local hub's queue of events for a watcher")
def test_watcher_that_disconnects_mid_stream_costs_only_its_connection(daemon: Daemon) -> None:
    seeded = seed(daemon.socket)
    fds = baseline_fds(daemon)
    watcher = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    watcher.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    watcher.connect(str(daemon.socket))
    watcher.sendall(request(op="watch", id=1))
    with daemon.client() as c:
        wait_until(lambda: c.stats().watchers == 1, 10, "the watcher to subscribe")
        with c.pipeline() as p:
            for _ in range(300):
                p.create(ttl=86400, meta={"pad": "x" * 500})
        # Events are now queued and being sent to a client that reads none.
        watcher.close()
        with c.pipeline() as p:
            for _ in range(50):
                p.create(ttl=86400, meta={"pad": "y" * 500})
        wait_until(lambda: c.stats().watchers == 0, 10, "the watcher to be dropped")
        assert c.stats().total_sessions == len(seeded) + 350
    back_to(daemon, fds)
    assert "internal error" not in daemon.log_text()
    no_tracebacks(daemon)
