"""The data dir changed under a running daemon (``sessiond.datadir``): its
lock file or its journal removed, renamed or replaced by a tmp cleaner, an
``rm`` or a backup script. No second daemon may start on it, and no write
acknowledged meanwhile may be missing at the next start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sessionctl import Client
from sessiond.errors import DaemonUnavailable, ReadOnly, SessionError, SessionNotFound
from tests.conftest import Daemon, wait_until

pytestmark = pytest.mark.local_only("the journal and the data dir's lock")


def created(c: Client, sid: str) -> bool:
    """Whether ``sid`` was created now (a write refused while the journal
    is being written again says so, and is tried again)."""
    try:
        c.create(id=sid, user="u")
    except ReadOnly:
        return False
    return True


def exists(c: Client, sid: str) -> bool:
    try:
        c.get(sid)
    except SessionNotFound:
        return False
    return True


def answers(socket: Path) -> bool:
    try:
        with Client(socket, timeout=5) as c:
            c.ping()
    except DaemonUnavailable:
        return False
    return True


def holds(journal: Path, sid: str) -> bool:
    try:
        return f'"id":"{sid}"'.encode() in journal.read_bytes()
    except FileNotFoundError:
        return False


def test_a_second_daemon_is_refused_after_the_lock_file_was_removed(
    make_daemon: Callable[..., Daemon],
) -> None:
    first = make_daemon()
    assert first.proc is not None
    with first.client() as c:
        c.create(id="before", user="u")
    lock = first.data_dir / "sessiond.lock"
    lock.unlink()
    # The lock was on that file alone: a second daemon then took the same
    # journal, and the two wrote over each other's lines.
    second = make_daemon(start=False, root=first.root)
    second.extra_env["SESSIOND_SOCKET"] = str(first.root / "run" / "other.sock")
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(15) == 1, second.log_text()
    assert "already uses data dir" in second.log_text()
    # The first writes its lock file again, naming itself for clients.
    wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.proc.pid),
               what="the lock file written again")
    wait_until(lambda: "was removed while this daemon ran: wrote it again" in first.log_text(),
               what="the daemon to say so")
    with first.client() as c:
        c.create(id="after", user="u")
    first.kill()
    first.start()
    with first.client() as c:
        assert exists(c, "before") and exists(c, "after")


@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_writes_after_the_journal_was_taken_away_survive_a_restart(
    make_daemon: Callable[..., Daemon], how: str
) -> None:
    d = make_daemon()
    with d.client() as c:
        c.create(id="before", user="u")
        if how == "removed":
            d.journal.unlink()
        else:
            d.journal.rename(d.data_dir / "backup.jsonl")
        # Acknowledged into the file no path leads to, or refused while
        # the daemon writes the journal again from memory.
        wait_until(lambda: created(c, "after"), what="a write accepted")
    # Before, the daemon wrote on into the old file: the next start found
    # no journal (or an empty one) and every session was gone.
    wait_until(lambda: holds(d.journal, "after"), what="the journal written again")
    assert "writes are refused until the journal has been written again" in d.log_text()
    d.kill()
    d.start()
    with d.client() as c:
        assert exists(c, "before") and exists(c, "after")
        c.create(id="later", user="u")
    d.kill()
    d.start()
    with d.client() as c:
        assert exists(c, "later")


def test_a_journal_replaced_by_another_file_is_written_again_from_memory(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    with d.client() as c:
        c.create(id="kept", user="u")
        # A backup put back over the journal while the daemon runs.
        other = d.data_dir / "old.jsonl"
        other.write_bytes(b"")
        other.replace(d.journal)
        wait_until(lambda: holds(d.journal, "kept"), what="the journal written again")
        wait_until(lambda: created(c, "next"), what="a write accepted")
    d.kill()
    d.start()
    with d.client() as c:
        assert exists(c, "kept") and exists(c, "next")


def test_a_data_dir_moved_away_gets_nothing_written_at_its_path_until_it_is_back(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    moved = d.root / "data.moved"
    acknowledged = ["before"]
    with d.client() as c:
        c.create(id="before", user="u")
        d.data_dir.rename(moved)
        # Acknowledged until the daemon notices (they are in memory and in
        # the moved directory), then refused.
        tries = iter(range(10_000))

        def refused() -> bool:
            sid = f"w{next(tries)}"
            if created(c, sid):
                acknowledged.append(sid)
                return False
            return True

        wait_until(refused, what="writes refused")
    # Another daemon makes a data dir at the path, and holds it.
    other = make_daemon(start=False, root=d.root)
    other_socket = d.root / "run" / "other.sock"
    other.extra_env["SESSIOND_SOCKET"] = str(other_socket)
    other.start(wait=False)
    wait_until(lambda: answers(other_socket), 15, "the other daemon")
    with Client(other_socket) as c:
        c.create(id="others", user="u")
    with d.client() as c:
        # A rewrite ('compact' asks for one now) is refused rather than
        # write over the other's journal: before, the daemon put the whole
        # of its state there.
        with pytest.raises(SessionError, match="no longer the directory this daemon locked"):
            c.compact()
        with pytest.raises(ReadOnly):
            c.create(id="refused", user="u")
    assert not holds(d.journal, "before") and holds(d.journal, "others")
    assert other.stop() == 0
    d.data_dir.rename(d.root / "data.other")
    moved.rename(d.data_dir)
    with d.client() as c:
        c.compact()
        c.create(id="after", user="u")
    acknowledged.append("after")
    d.kill()
    d.start()
    with d.client() as c:
        assert all(exists(c, sid) for sid in acknowledged)
        assert not exists(c, "others") and not exists(c, "refused")
