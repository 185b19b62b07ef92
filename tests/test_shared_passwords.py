"""Shared mode with an engine that wants a password: from
``SESSIOND_BACKEND_PASSWORD``, ``--backend-password-file`` or the URL, for
the default user or an ACL user; a wrong one or none stops the start with
a clear message. The password never shows: not in the daemon's log, its
``stats``, its errors, nor its command line when it came from the
environment or a file (and the daemon starts no child that could carry
it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.redis_servers import RedisNode

PASSWORD = "pw-Very$ecret:42"
ACL_PASSWORD = "acl-Other$ecret"


@pytest.fixture
def locked(make_redis: Callable[..., RedisNode]) -> RedisNode:
    node = make_redis(password=PASSWORD)
    node.cli("ACL", "SETUSER", "sessiond", "on", ">" + ACL_PASSWORD, "~sd:*", "+@all")
    return node


def _never_shown(d: Daemon, *secrets: str, in_argv: bool = False) -> None:
    """None of ``secrets`` in what ``d`` shows: its log, stats, an error;
    nor its command line unless ``in_argv`` (the URL held it)."""
    assert d.proc is not None
    with d.client() as c:
        sid = c.create(meta={"k": "v"}).id
        assert c.get(sid).meta == {"k": "v"}
    stats = d.ctl("stats", "--json")
    assert stats.returncode == 0
    human = d.ctl("stats")
    missing = d.ctl("get", "no-such-session")
    assert missing.returncode == 1
    cmdline = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().decode()
    children = " ".join(p.read_text() for p in Path(f"/proc/{d.proc.pid}/task").glob("*/children"))
    assert children.split() == [], "the daemon started a child process"
    for secret in secrets:
        for shown in (d.log_text(), stats.stdout, human.stdout, missing.stderr):
            assert secret not in shown
        if not in_argv:
            assert secret not in cmdline
    assert json.loads(stats.stdout)["backend_ok"] is True


def test_a_password_from_the_environment(
    locked: RedisNode, make_daemon_on: Callable[..., Daemon],
) -> None:
    d = make_daemon_on(backend=locked.url, env={"SESSIOND_BACKEND_PASSWORD": PASSWORD})
    _never_shown(d, PASSWORD)


def test_a_password_from_a_file(
    locked: RedisNode, make_daemon_on: Callable[..., Daemon], tmp_path: Path,
) -> None:
    secret = tmp_path / "backend-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    d = make_daemon_on("--backend-password-file", str(secret), backend=locked.url)
    _never_shown(d, PASSWORD)


def test_a_password_in_the_url(
    locked: RedisNode, make_daemon_on: Callable[..., Daemon],
) -> None:
    from urllib.parse import quote

    d = make_daemon_on(backend=f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{locked.port}")
    _never_shown(d, PASSWORD, quote(PASSWORD, safe=""), in_argv=True)


def test_an_acl_user_and_its_password(
    locked: RedisNode, make_daemon_on: Callable[..., Daemon],
) -> None:
    d = make_daemon_on(backend=f"redis://sessiond@127.0.0.1:{locked.port}",
                       env={"SESSIOND_BACKEND_PASSWORD": ACL_PASSWORD})
    _never_shown(d, ACL_PASSWORD)
    assert "redis://sessiond@127.0.0.1" in d.ctl("stats").stdout


@pytest.mark.parametrize("given", ["wrong", "none", "missing file"])
def test_a_wrong_or_missing_password_stops_the_start_with_a_clear_message(
    locked: RedisNode, make_daemon_on: Callable[..., Daemon], given: str, tmp_path: Path,
) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    if given == "wrong":
        env["SESSIOND_BACKEND_PASSWORD"] = "not-" + PASSWORD
    elif given == "missing file":
        args += ["--backend-password-file", str(tmp_path / "nowhere")]
    d = make_daemon_on(*args, backend=locked.url, env=env, start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1
    log = d.log_text()
    assert "Traceback" not in log
    assert PASSWORD not in log
    if given == "missing file":
        assert "backend password file" in log and str(tmp_path / "nowhere") in log
    else:
        assert f"127.0.0.1:{locked.port}" in log
        assert "auth" in log.lower(), log
    assert not d.socket.exists()
