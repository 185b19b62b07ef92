"""A socket path the system cannot bind is refused with a reason and a way
out, by the real ``sessiond`` (exit 1), before it creates anything there."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SESSIONCTL, Daemon

pytestmark = pytest.mark.local_only("the daemon's own socket path, whatever the engine")


def test_a_socket_path_over_107_bytes_is_refused_saying_why_and_what_to_do(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    parent = tmp_path / ("p" * 60) / ("q" * 60)
    long = parent / "sessiond.sock"
    d = make_daemon(start=False)
    d.extra_env["SESSIOND_SOCKET"] = str(long)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    log = d.log_text()
    assert f"{len(str(long))} bytes long" in log and "at most 107" in log, log
    assert "--socket" in log and "SESSIOND_SOCKET" in log
    assert "None" not in log and "Traceback" not in log
    assert not parent.exists()
    # With one that fits, the same data dir serves.
    del d.extra_env["SESSIOND_SOCKET"]
    d.start()
    with d.client() as c:
        c.ping()


def test_sessionctl_says_why_it_cannot_connect_to_a_socket_path_over_107_bytes(
    daemon: Daemon, tmp_path: Path
) -> None:
    long = str(tmp_path / ("p" * 60) / ("q" * 60) / "sessiond.sock")
    result = daemon.ctl("--socket", long, "--no-autostart", "ping")
    assert result.returncode == 3
    assert f"the path is {len(long)} bytes long" in result.stderr and "107" in result.stderr
    assert "None" not in result.stderr and result.stderr.count("\n") == 1


def test_a_relative_xdg_runtime_dir_is_ignored_as_an_unset_one(tmp_path: Path) -> None:
    """The XDG spec says to ignore a relative XDG_RUNTIME_DIR: a socket that
    depended on the current directory would be another one in each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIOND_", "XDG_"))}
    env["HOME"] = str(tmp_path)

    def socket_named(cwd: Path, **more: str) -> str:
        cwd.mkdir(exist_ok=True)
        r = subprocess.run([SESSIONCTL, "--no-autostart", "ping"], env={**env, **more},
                           cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 3, r.stderr
        found = re.search(r"no sessiond answers on (\S+) ", r.stderr)
        assert found is not None, r.stderr
        return found.group(1)

    unset = socket_named(tmp_path / "a")
    assert os.path.isabs(unset)
    assert socket_named(tmp_path / "a", XDG_RUNTIME_DIR="rel") == unset
    assert socket_named(tmp_path / "b", XDG_RUNTIME_DIR="rel") == unset
