"""``--backend-password-file`` is refused when every user of the machine
can read it, as ssh refuses a private key others can read: the password
opens every session of every daemon on the backend. A file shared with a
group (0640) is a choice, and is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import Daemon
from tests.redis_servers import RedisNode

PASSWORD = "pw-Very$ecret:42"


def test_a_password_file_anyone_can_read_is_refused_unread(
    make_daemon_on: Callable[..., Daemon], tmp_path: Path,
) -> None:
    secret = tmp_path / "backend-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    # Refused before any connection: no engine need answer at this address.
    d = make_daemon_on("--backend-password-file", str(secret), backend="redis://127.0.0.1:9",
                       start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    assert (f"the backend password file {secret} can be read by every user of this machine "
            f"(mode 644), so it is not used; run 'chmod o-r {secret}'") in d.log_text()
    assert PASSWORD not in d.log_text()
    assert not d.socket.exists()


def test_a_password_file_shared_with_a_group_is_used(
    make_redis: Callable[..., RedisNode], make_daemon_on: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    node = make_redis(password=PASSWORD)
    secret = tmp_path / "backend-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o640)
    d = make_daemon_on("--backend-password-file", str(secret), backend=node.url)
    with d.client() as c:
        assert c.create(meta={"k": "v"}).meta == {"k": "v"}
