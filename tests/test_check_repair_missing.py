"""``sessiond --check`` and ``--repair`` where there is nothing to check: a
data dir (or a journal) that does not exist is not a healthy journal, and
most likely a mistyped path. Both say so plainly, exit 1, and create
nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Daemon, run_sessiond

pytestmark = pytest.mark.local_only("sessiond --check and --repair work on the journal")


@pytest.mark.parametrize("mode", ["--check", "--repair"])
def test_a_data_dir_that_does_not_exist_is_nothing_there_exit_1(
    make_daemon: Callable[..., Daemon], mode: str
) -> None:
    d = make_daemon(start=False)
    assert not d.data_dir.exists()
    result = run_sessiond(d, mode)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "healthy" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    verb = mode.lstrip("-")
    assert f"no data dir at {d.data_dir} (no such directory): nothing to {verb}" in lines[0]
    assert "Errno" not in result.stderr and "Traceback" not in result.stderr
    assert not d.data_dir.exists()


@pytest.mark.parametrize("mode", ["--check", "--repair"])
def test_a_data_dir_without_a_journal_is_nothing_there_exit_1(
    make_daemon: Callable[..., Daemon], mode: str
) -> None:
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    result = run_sessiond(d, mode)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "healthy" not in result.stdout
    assert f"no journal at {d.journal}: nothing to {mode.lstrip('-')}" in result.stderr
    assert list(d.data_dir.iterdir()) == []


def test_a_path_that_is_a_file_is_not_a_data_dir(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    d.data_dir.write_text("not a directory")
    for mode in ("--check", "--repair"):
        result = run_sessiond(d, mode)
        assert result.returncode == 1
        assert f"no data dir at {d.data_dir} (not a directory)" in result.stderr
        assert "Errno" not in result.stderr


def test_a_data_dir_a_daemon_used_is_still_checked(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    with d.client() as c:
        c.create(id="kept")
    d.stop()
    result = run_sessiond(d, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "healthy" in result.stdout
