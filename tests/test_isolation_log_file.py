"""``--log-file`` writes only to a file of the daemon's own user.

Given a path in a shared directory (``--log-file /tmp/sessiond.log``),
another user could make the file first: one of theirs was told everything
the daemon logged, and a symlink of theirs had the daemon append its lines
to whatever of the user's it pointed at (its own journal, which then no
longer replayed). Such a file is refused, and nothing is written to it or
through it; the user's own symlink, and a device such as /dev/null, still
work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.isolation import OTHER_UID, needs_root, refused
from tests.rawwire import seed, snapshot

pytestmark = pytest.mark.local_only("the log file is opened before any engine")


def test_a_log_file_of_another_uid_is_refused_and_left_unread(
    make_daemon: Callable[..., Daemon],
) -> None:
    needs_root()
    d = make_daemon(start=False)
    planted = d.root / "shared.log"
    planted.write_text("theirs\n")
    planted.chmod(0o666)
    os.chown(planted, OTHER_UID, OTHER_UID)
    d.extra_args += ["--log-file", str(planted)]
    refused(d, f"cannot use the log file {planted}: it is owned by uid {OTHER_UID}")
    assert planted.read_text() == "theirs\n"
    assert not d.socket.exists()


def journal_planted_as_the_log(
    make_daemon: Callable[..., Daemon], plant: Callable[[Path, Path], object], words: str
) -> None:
    """A daemon's journal put at its log path by ``plant(journal, path)``:
    the start is refused saying ``words`` (the path formatted in), the
    journal is left as it was, and the daemon serves it whole once started
    without that log."""
    d = make_daemon()
    seed(d.socket)
    before = snapshot(d.socket)
    d.stop()
    journal = d.journal.read_bytes()
    planted = d.root / "shared.log"
    plant(d.journal, planted)
    d.extra_args += ["--log-file", str(planted)]
    refused(d, words.format(path=planted))
    assert d.journal.read_bytes() == journal
    d.extra_args.clear()
    d.start()
    assert snapshot(d.socket) == before


def test_a_symlink_of_another_uid_at_the_log_path_is_not_followed(
    make_daemon: Callable[..., Daemon],
) -> None:
    needs_root()

    def plant(journal: Path, path: Path) -> None:
        path.symlink_to(journal)
        os.lchown(path, OTHER_UID, OTHER_UID)

    journal_planted_as_the_log(
        make_daemon, plant,
        f"cannot use the log file {{path}}: it is a symlink of uid {OTHER_UID}")


def test_a_hard_link_at_the_log_path_is_refused_and_its_file_left_alone(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Where hard links to others' files are allowed (fs.protected_hardlinks
    off), another user could link the user's journal in under the log's
    name: the log would be appended to it."""
    journal_planted_as_the_log(
        make_daemon, os.link, "cannot use the log file {path}: it has 2 hard links")


def test_the_users_own_symlink_and_dev_null_are_written(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    real = d.root / "real.log"
    link = d.root / "link.log"
    link.symlink_to(real)
    d.extra_args += ["--log-file", str(link)]
    d.start()
    assert link.is_symlink()
    assert "ready on" in real.read_text()
    d.stop()
    d.extra_args[-1] = os.devnull
    d.start()
    seed(d.socket)
