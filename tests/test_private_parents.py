"""Every directory sessionctl and sessiond create on the way to their own is
private (0700), whatever the umask: under umask 000 a ``~/.local`` made with
the umask's mode would be world-writable, and anyone could move
``~/.local/state`` away (the next daemon would start empty, saying nothing).
Directories that were there already are left as they were.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from sessionctl import Client
from tests.conftest import SESSIONCTL

pytestmark = pytest.mark.local_only("autostart starts a daemon with the default (local) engine")


def modes_below(root: Path) -> dict[str, int]:
    """The mode of every directory below ``root`` (not ``root`` itself)."""
    return {
        str(Path(top, name).relative_to(root)): stat.S_IMODE(os.lstat(Path(top, name)).st_mode)
        for top, dirs, _ in os.walk(root) for name in dirs
    }


def test_every_directory_made_on_the_way_is_0700_under_umask_000(
    tmp_path: Path, started: list[int]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)  # there before: left as it is
    runtime = tmp_path / "run"  # not there: made, with sessiond/ below it
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SESSIOND_", "XDG_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), SESSIONCTL_NO_AUTOSTART="")
    # Autostart makes the data dir (~/.local/state/sessiond), the daemon its
    # socket's directory, and the config file's (~/.config/sessiond) when
    # told to set something.
    r = subprocess.run([SESSIONCTL, "config", "default_ttl", "2h"], env=env, umask=0,
                       capture_output=True, text=True, timeout=60, check=False)
    socket = runtime / "sessiond" / "sessiond.sock"
    if socket.exists():
        with Client(socket, autostart=False, timeout=10) as c:
            started.append(c.ping().pid)
    assert r.returncode == 0, r.stderr
    assert (home / ".config" / "sessiond" / "config.json").exists()
    assert (home / ".local" / "state" / "sessiond" / "data.jsonl").exists()
    made = {**modes_below(home), **{f"run/{k}": v for k, v in modes_below(runtime).items()},
            "run": stat.S_IMODE(runtime.stat().st_mode)}
    assert {".local", ".local/state", ".config", "run"} <= set(made)
    assert {name: oct(m) for name, m in made.items() if m != 0o700} == {}
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
