"""A client talks only to a daemon of its own user.

Whoever gets a socket first to the path a client uses (a runtime dir that
is not private, ``XDG_RUNTIME_DIR=/tmp``, a directory another user made
first) would otherwise be sent every session the client writes, and could
answer anything. The client asks the kernel who listens (``SO_PEERCRED``)
and refuses another uid before it sends a byte: exit 3, one line saying
who listens there.

The other uid is real: a listener that binds as root, then drops to
``nobody`` (65534) before listen(2), which is the moment the kernel records
the credentials a client reads. So these tests run only as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from sessionctl import AsyncClient, Client, DaemonUnavailable
from tests.conftest import SESSIONCTL
from tests.isolation import OTHER_UID

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.getuid() != 0,
    reason="needs root, to listen as another uid (nobody) for real",
)

# Binds as root (the path's directories need not be open to nobody), drops
# to nobody, listens, says so, then reports how many bytes the one client
# it accepts sent before hanging up.
_LISTENER = """
import os, socket, sys
path, uid = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
s.listen(8)
print("ready", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(30)
got = b""
while True:
    data = c.recv(65536)
    if not data:
        break
    got += data
print(len(got), flush=True)
"""


class Listener:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LISTENER, str(path), str(OTHER_UID)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def bytes_received(self) -> int:
        """How many bytes the client sent before it hung up."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        self.proc.wait(timeout=30)
        return int(line)


@pytest.fixture
def foreign(tmp_path: Path) -> Iterator[Listener]:
    listener = Listener(tmp_path / "sessiond.sock")
    try:
        yield listener
    finally:
        listener.proc.kill()
        listener.proc.wait(timeout=30)
        assert listener.proc.stdout is not None
        listener.proc.stdout.close()


def test_cli_refuses_a_socket_another_uid_listens_on_before_sending(
    foreign: Listener,
) -> None:
    r = subprocess.run(
        [SESSIONCTL, "--socket", str(foreign.path), "create", "--meta", "token=secret"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 3, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sessionctl: error: refused: ")
    assert f"runs as uid {OTHER_UID}, not as you (uid 0)" in lines[0]
    assert foreign.bytes_received() == 0


def test_client_refuses_a_socket_another_uid_listens_on(foreign: Listener) -> None:
    with pytest.raises(DaemonUnavailable, match=f"runs as uid {OTHER_UID}"):
        Client(foreign.path, autostart=True, timeout=10)
    assert foreign.bytes_received() == 0


def test_async_client_refuses_a_socket_another_uid_listens_on(foreign: Listener) -> None:
    async def main() -> None:
        async with AsyncClient(foreign.path, autostart=True, timeout=10) as c:
            await c.ping()

    with pytest.raises(DaemonUnavailable, match=f"runs as uid {OTHER_UID}"):
        anyio.run(main)
    assert foreign.bytes_received() == 0
