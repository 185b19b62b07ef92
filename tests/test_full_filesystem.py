"""A real filesystem that fills up or turns read-only under a running
daemon (a small tmpfs, mounted for the test: root only): what cannot be
written is refused in one line with exit 1, changes nothing, leaves nothing
behind, and works again once the filesystem does.

(The journal's own full disk is ``tests/test_disk_full.py``'s, by the file
size limit, which fails a write as a full disk does. A filesystem holding
the open journal cannot be remounted read-only: the kernel says it is
busy.)"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import tmpfs
from tests.conftest import Daemon, wait_until
from tests.tmpfs import fill

pytestmark = pytest.mark.local_only("the daemon's own files on a filesystem of the test's")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test."""
    yield from tmpfs.mounted(tmp_path, "1m")


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessionctl: error: "), result.stderr
    # Not a usage error: no pointer to the command's help.
    assert "help" not in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_setting_the_config_file_cannot_take_is_refused_exit_1_and_changes_nothing(
    make_daemon: Callable[..., Daemon], small_fs: Path, fault: str
) -> None:
    config = small_fs / "config.json"
    d = make_daemon(env={"SESSIOND_CONFIG": str(config)})
    if fault == "full":
        filler = fill(small_fs)
        why = "No space left on device"
    else:
        remount(small_fs, "ro")
        why = "Read-only file system"
    # Before, exit 2 and a pointer to the help: as if the value were wrong.
    one_error_line(d.ctl("config", "default_ttl", "100"), f"cannot write config {config}", why)
    assert d.ctl("config", "default_ttl").stdout == "3600\n"
    assert sorted(p.name for p in small_fs.iterdir()) == (["filler"] if fault == "full" else [])
    if fault == "full":
        filler.unlink()
    else:
        remount(small_fs, "rw")
    assert d.ctl("config", "default_ttl", "100").returncode == 0
    assert d.ctl("config", "default_ttl").stdout == "100\n"
    d.stop()
    d.start()
    assert d.ctl("config", "default_ttl").stdout == "100\n"


def test_a_start_that_cannot_write_what_replay_implies_says_so_and_starts_once_there_is_room(
    make_daemon: Callable[..., Daemon], small_fs: Path
) -> None:
    d = make_daemon(env={"SESSIOND_DATA_DIR": str(small_fs / "data")})
    with d.client() as c:
        # Enough that their expiries need more than the journal's last page.
        for i in range(40):
            c.create(id=f"due{i}", user="u", ttl=1, meta={"pad": "x" * 200})
        expires = c.get("due39").expires_at
    assert d.stop() == 0
    filler = fill(small_fs)
    wait_until(lambda: datetime.now(UTC) > expires, what="the session's deadline")
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(15) == 1
    # Before: "[Errno 28] No space left on device", and nothing else.
    log = d.log_text()
    assert f"cannot write to journal {small_fs / 'data' / 'data.jsonl'}" in log, log
    assert "No space left on device" in log and "make room" in log, log
    filler.unlink()
    d.start()
    with d.client() as c:
        assert all(c.get(f"due{i}").status == "expired" for i in range(40))
