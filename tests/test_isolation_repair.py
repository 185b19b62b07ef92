"""``sessiond --repair`` writes only in a data dir that is the user's alone,
and nothing takes a lock through a symlink.

Taking the data dir's lock truncates the lock file and writes the pid in
it. ``--repair`` took it in any data dir, where the daemon refuses one that
is not private: in a directory another user made (``SESSIOND_DATA_DIR`` in
/tmp, refused by the daemon, then "repaired" by its user), a lock file
planted as a symlink to a file of the user's had that file truncated. The
repair now refuses such a data dir as the daemon does, and a lock file that
is a symlink is never opened through; and neither reads a journal that is
no regular file (a FIFO would hold them for ever).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.conftest import Daemon, run_sessiond

pytestmark = pytest.mark.local_only("the journal and its lock are the local engine's")

PRECIOUS = "the user's own file\n"


def test_repair_refuses_a_data_dir_others_can_write_and_truncates_nothing(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    precious = d.root / "precious.txt"
    precious.write_text(PRECIOUS)
    d.data_dir.mkdir()
    d.data_dir.chmod(0o777)  # as another user would leave it for anyone
    (d.data_dir / "sessiond.lock").symlink_to(precious)
    d.journal.write_bytes(b"garbage\n")
    r = run_sessiond(d, "--repair")
    assert r.returncode == 1, r
    assert f"unsafe permissions: {d.data_dir} is open to group or others" in r.stderr
    assert precious.read_text() == PRECIOUS
    assert d.journal.read_bytes() == b"garbage\n"
    assert sorted(p.name for p in d.data_dir.iterdir()) == ["data.jsonl", "sessiond.lock"]


@pytest.mark.parametrize("how", ["daemon", "repair"])
def test_a_lock_file_that_is_a_symlink_is_never_opened_through(
    make_daemon: Callable[..., Daemon], how: str
) -> None:
    d = make_daemon(start=False)
    precious = d.root / "precious.txt"
    precious.write_text(PRECIOUS)
    d.data_dir.mkdir(mode=0o700)
    (d.data_dir / "sessiond.lock").symlink_to(precious)
    d.journal.write_bytes(b"")
    said = (f"cannot use data dir {d.data_dir}: its lock file sessiond.lock is a symlink, "
            f"which is never followed")
    if how == "repair":
        r = run_sessiond(d, "--repair")
        assert r.returncode == 1, r
        assert said in r.stderr
    else:
        d.start(wait=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 1, d.log_text()
        assert said in d.log_text()
    assert precious.read_text() == PRECIOUS


@pytest.mark.parametrize("how", ["--check", "--repair"])
def test_a_journal_that_is_a_fifo_is_refused_at_once_not_read_for_ever(
    make_daemon: Callable[..., Daemon], how: str
) -> None:
    """A data dir of someone else's, checked: a FIFO in the journal's place
    held ``--check`` until its writer closed it."""
    d = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    os.mkfifo(d.journal, 0o600)
    r = run_sessiond(d, how)
    assert r.returncode == 1, r
    assert f"{d.journal} is not a regular file, so it is no journal" in r.stderr
