"""A backend password given in ``--backend``'s URL is taken out of the
daemon's command line, which every user of the machine can read (``ps``,
``/proc/PID/cmdline``), and the log says where to give it instead.

It used to stay there for the daemon's whole life: any local user could
read the password of the shared engine, and with it every user's sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import Daemon
from tests.redis_servers import RedisNode

PASSWORD = "pw-Very$ecret:42"


@pytest.fixture
def locked(make_redis: Callable[..., RedisNode]) -> RedisNode:
    return make_redis(password=PASSWORD)


def cmdline(d: Daemon) -> str:
    assert d.proc is not None
    return Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().decode(errors="replace")


@pytest.mark.parametrize("user", ["", "default"])
def test_a_password_in_the_backend_url_is_hidden_from_the_command_line(
    locked: RedisNode, make_daemon_on: Callable[..., Daemon], user: str
) -> None:
    quoted = quote(PASSWORD, safe="")
    d = make_daemon_on(backend=f"redis://{user}:{quoted}@127.0.0.1:{locked.port}")
    shown = cmdline(d)
    assert PASSWORD not in shown and quoted not in shown, shown
    # The rest of the command line is as it was: the password's place is
    # marked, and the daemon uses the password all the same.
    assert f"redis://{user}:{'x' * len(quoted)}@127.0.0.1:{locked.port}" in shown
    with d.client() as c:
        sid = c.create(meta={"k": "v"}).id
        assert c.get(sid).meta == {"k": "v"}
    log = d.log_text()
    assert "the backend password was given in --backend's URL" in log
    assert "--backend-password-file or SESSIOND_BACKEND_PASSWORD" in log
    assert PASSWORD not in log and quoted not in log


def test_a_url_without_a_password_leaves_the_command_line_alone(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon]
) -> None:
    node = make_redis()
    url = f"redis://127.0.0.1:{node.port}"
    d = make_daemon_on(backend=url)
    assert url in cmdline(d)
    assert "backend password" not in d.log_text()
