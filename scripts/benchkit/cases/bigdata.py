"""The big data set and the probe the big case measures with: a compacted
journal written as the daemon writes one, the same records loaded into
Redis by mass insertion, and a client doing gets while something else runs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchkit.servers import RedisServer
from benchkit.settings import BIG_TTL, META, REQUEST_TIMEOUT, BenchError
from benchkit.workers import WorkerPool, sent_and_lat
from sessiond.model import ACTIVE, US, Session, now_us
from sessiond.records import put_line


def write_journal(path: Path, ids: Sequence[str]) -> None:
    """A compacted journal, exactly as the daemon writes one (put_line)."""
    now = now_us()
    expires = now + BIG_TTL * US
    meta = dict(META)
    with path.open("wb") as f:
        chunk: list[bytes] = []
        for i, sid in enumerate(ids):
            chunk.append(put_line(Session(
                id=sid, user=f"user{i % 1000}", status=ACTIVE, ttl=BIG_TTL, meta=meta,
                created_at=now, last_access=now, expires_at=expires,
            )))
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    path.chmod(0o600)


def _bulk(x: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(x), x)


def load_redis(rd: RedisServer, ids: Sequence[str]) -> None:
    """Redis's mass insertion: raw RESP HSET + EXPIRE, replies checked per chunk."""
    now = now_us()
    exp = now + BIG_TTL * US
    ttl_b = str(BIG_TTL).encode()
    fixed: list[bytes] = [
        b"status", b"active", b"ttl", ttl_b, b"created_at", str(now).encode(),
        b"last_access", str(now).encode(), b"expires_at", str(exp).encode(), b"version", b"1",
    ]
    for k, v in META.items():
        fixed += [b"meta." + k.encode(), str(v).encode()]
    # Only the id and the user change from one record to the next.
    hset = b"*%d\r\n$4\r\nHSET\r\n" % (6 + len(fixed))
    fixed_tail = b"".join(_bulk(x) for x in fixed)
    expire = b"*3\r\n$6\r\nEXPIRE\r\n"
    ttl_tail = _bulk(ttl_b)
    chunk_size = 2000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REQUEST_TIMEOUT)
        s.connect(str(rd.socket))
        for start in range(0, len(ids), chunk_size):
            part = ids[start : start + chunk_size]
            out: list[bytes] = []
            for j, sid in enumerate(part):
                key = _bulk(sid.encode())
                user = _bulk(b"user%d" % ((start + j) % 1000))
                out += [hset, key, b"$2\r\nid\r\n", key, b"$4\r\nuser\r\n", user, fixed_tail,
                        expire, key, ttl_tail]
            s.sendall(b"".join(out))
            buf = b""
            while buf.count(b"\r\n") < 2 * len(part):
                data = s.recv(1 << 20)
                if not data:
                    raise BenchError(f"{rd.name} closed the connection during mass insertion")
                buf += data
            bad = [line for line in buf.split(b"\r\n") if line and not line.startswith(b":")]
            if bad:
                raise BenchError(f"{rd.name} refused mass insertion: {bad[0][:200]!r}")


def probe_window(
    pool: WorkerPool, action: Callable[[], object], baseline: float
) -> tuple[list[float], list[float], float, object]:
    """Latencies (ms, sorted) of a probing client's gets before and during
    ``action``, the seconds ``action`` took, and what it returned."""
    pool.start("get", None, timestamps=True)
    time.sleep(baseline)
    t0 = time.monotonic()
    result = action()
    t1 = time.monotonic()
    time.sleep(0.3)
    pool.stop()
    pairs = sent_and_lat(pool.collect())
    before = sorted(lat * 1000 for sent, lat in pairs if sent + lat < t0)
    during = sorted(lat * 1000 for sent, lat in pairs if sent < t1 and sent + lat > t0)
    if not during or not before:
        raise BenchError("the probe made no request before or during the measured action")
    return before, during, t1 - t0, result
