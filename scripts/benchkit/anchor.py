"""The Redis anchor: whether it may run, and a session as Redis holds it.

A fair anchor is Redis as a user who cares about speed runs it: redis-py
with ``hiredis``, its C reply parser. Without it redis-py parses replies in
pure Python, which on a pipeline costs more than Redis itself, and every
ratio against it flatters us. So the bench refuses the anchor without
hiredis, unless told otherwise (``--allow-slow-anchor``), in which case the
table's header says so loudly.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchkit.settings import DEPTH, META, TTL, USER
from sessiond.model import US, new_id, now_us

INSTALL_HINT = "pip install hiredis (or pip install -e '.[bench]')"


@dataclass(frozen=True)
class AnchorCheck:
    """What the Redis anchor will be in this run."""

    run: bool  # the Redis anchors run
    line: str  # the header's line about them
    warning: str = ""  # printed loudly in the table's header
    refusal: str = ""  # set: the bench must not run (exit status 2)


def decide_anchor(
    *, server_version: str | None, redis_py: str | None, hiredis: str | None,
    hiredis_used: bool, allow_slow: bool,
) -> AnchorCheck:
    """The anchor from what is installed: redis-server's version (None: not
    on PATH), redis-py's and hiredis's (None: not installed), and whether
    redis-py parses with hiredis (it ignores a hiredis too old for it)."""
    missing = []
    if server_version is None:
        missing.append("redis-server is not on PATH")
    if redis_py is None:
        missing.append("redis-py (pip package 'redis') is not installed")
    if missing:
        # Nothing is compared, and the header says so: no ratio can mislead.
        return AnchorCheck(False, "Redis anchors skipped: " + "; ".join(missing)
                           + " (ours shown alone)")
    what = f"redis-server {server_version}, redis-py {redis_py}"
    if hiredis_used:
        return AnchorCheck(True, f"{what} (hiredis {hiredis} parser), Unix socket")
    if not allow_slow:
        why = ("hiredis is not installed" if hiredis is None else
               f"hiredis {hiredis} is installed but redis-py {redis_py} does not use it "
               "(too old for it: pip install -U hiredis)")
        return AnchorCheck(False, f"{what} without hiredis", refusal=(
            f"the Redis anchor needs hiredis, redis-py's C reply parser, and {why}; without "
            "it redis-py parses in pure Python and Redis looks slower than its users see it. "
            f"Install it ({INSTALL_HINT}), or leave Redis out with --no-redis, or run the "
            "slow anchor anyway with --allow-slow-anchor"
        ))
    return AnchorCheck(True, f"{what} (pure-Python parser), Unix socket", warning=(
        "WARNING: SLOW ANCHOR. redis-py runs without hiredis (--allow-slow-anchor): its "
        "pure-Python parser makes Redis look slower than it is, and every ratio against "
        f"it flatters us. For a fair anchor: {INSTALL_HINT}"
    ))


def _server_version(server: str) -> str:
    out = subprocess.run(
        [server, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    words = out.stdout.split()
    return words[2].removeprefix("v=") if len(words) > 2 else f"unknown ({out.stdout!r})"


def check_anchor(*, no_redis: bool, allow_slow: bool) -> AnchorCheck:
    """What is installed here, decided by ``decide_anchor``."""
    if no_redis:
        return AnchorCheck(False, "Redis anchors left out (--no-redis); ours shown alone")
    server = shutil.which("redis-server")
    redis_py: str | None = None
    hiredis: str | None = None
    used = False
    if importlib.util.find_spec("redis") is not None:
        import redis
        import redis.utils

        redis_py = redis.__version__
        # The flag redis-py itself reads to choose its parser.
        used = bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False))
        try:
            module = importlib.import_module("hiredis")
        except ImportError:
            pass  # not installed: decide_anchor says so
        else:
            hiredis = str(getattr(module, "__version__", "(version unknown)"))
    return decide_anchor(
        server_version=_server_version(server) if server is not None else None,
        redis_py=redis_py, hiredis=hiredis, hiredis_used=used, allow_slow=allow_slow,
    )


def redis_fields(sid: str, user: str, ttl: int, now: int) -> dict[str, str | int]:
    """A session as one Redis hash: the record's fields, meta flattened."""
    fields: dict[str, str | int] = {
        "id": sid, "user": user, "status": "active", "ttl": ttl, "created_at": now,
        "last_access": now, "expires_at": now + ttl * US, "version": 1,
    }
    for k, v in META.items():
        fields["meta." + k] = v
    return fields


def redis_create(r: Any, user: str = USER, ttl: int = TTL) -> str:
    """HSET + EXPIRE in one MULTI/EXEC round trip: a session with a deadline, atomically."""
    sid = new_id()
    p = r.pipeline(transaction=True)
    p.hset(sid, mapping=redis_fields(sid, user, ttl, now_us()))
    p.expire(sid, ttl)
    p.execute()
    return sid


def pipe_create(p: Any, now: int) -> str:
    """Queue a create on a redis-py pipeline (HSET + EXPIRE); the new key."""
    sid = new_id()
    p.hset(sid, mapping=redis_fields(sid, USER, TTL, now))
    p.expire(sid, TTL)
    return sid


def redis_pipe(r: Any, queue: Callable[[Any, int], object]) -> Callable[[], int]:
    """A block of work for a duel: ``DEPTH`` requests queued by ``queue`` (the
    pipeline and one ``now`` for all) in one redis-py pipeline, not a
    transaction, as a Redis user pipelines."""

    def run() -> int:
        p = r.pipeline(transaction=False)
        now = now_us()
        for _ in range(DEPTH):
            queue(p, now)
        p.execute()
        return DEPTH

    return run


def bulk_create_redis(r: Any, n: int) -> list[str]:
    ids: list[str] = []
    now = now_us()
    while len(ids) < n:
        p = r.pipeline(transaction=False)
        ids.extend(pipe_create(p, now) for _ in range(min(500, n - len(ids))))
        p.execute()
    return ids
