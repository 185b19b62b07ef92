"""Atomic file writes: the one helper (``sessiond.diskio``) and the exports
that go through it, the shim's above all, which once wrote to a temp name
that anyone could guess and create first."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sessiond.diskio import AtomicFile, atomic_file, atomic_write
from tests.conftest import BIN, Daemon, run_sessiond, stored
from tests.test_hardening import OTHER_UID
from tests.test_shim import BASH, SCRIPT
from tests.test_systemd import install_service, unit_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the helper ----------------------------------------------------------------


def test_atomic_write_replaces_the_file_with_a_new_private_one(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    target.chmod(0o644)
    old_inode = target.stat().st_ino
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert target.stat().st_ino != old_inode  # renamed into place, not rewritten
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_mode_is_set_before_the_file_takes_its_name(tmp_path: Path) -> None:
    atomic_write(tmp_path / "unit", b"[Unit]\n", mode=0o644)
    assert mode(tmp_path / "unit") == 0o644


def test_an_exception_in_the_block_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of it")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_discarded_file_leaves_nothing_behind(tmp_path: Path) -> None:
    out = AtomicFile(tmp_path / "out.json")
    out.file.write(b"never")
    out.discard()
    out.discard()  # twice is harmless: undo paths may both run
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        out.commit()


def test_errors_name_the_target_not_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "out.json"
    with pytest.raises(FileNotFoundError) as caught:
        atomic_write(target, b"x")
    assert caught.value.filename == str(target)
    directory = tmp_path / "a-dir"
    directory.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        atomic_write(directory, b"x")
    assert caught.value.filename == str(directory)
    assert sorted(os.listdir(tmp_path)) == ["a-dir"]
    assert os.listdir(directory) == []


def test_the_temp_file_is_never_one_someone_made_first(tmp_path: Path) -> None:
    # Whatever name a planted file has, the helper makes its own with
    # O_EXCL: planting every name it could pick is impossible.
    out = AtomicFile(tmp_path / "out.json")
    try:
        st = os.fstat(out.file.fileno())
        assert st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o600
        assert out.tmp.parent == tmp_path and out.tmp.name.startswith(".out.json.")
    finally:
        out.discard()


def test_a_symlink_of_ours_is_followed_and_stays(tmp_path: Path) -> None:
    """A dotfile manager's link, or the user's own: the file it points to
    is replaced, not the link."""
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


def test_another_users_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    """Planted under the target's name in a shared directory, it would
    receive what is written (an export's secrets) were it followed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a symlink to another uid")
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    link = tmp_path / "out.json"
    link.symlink_to(theirs)
    os.lchown(link, OTHER_UID, -1)
    atomic_write(link, b"secret")
    assert not link.is_symlink() and link.read_bytes() == b"secret"
    assert theirs.read_text() == ""


def test_a_fifo_of_ours_is_written_into_not_replaced(tmp_path: Path) -> None:
    """As /dev/null or /dev/stdout would be: a rename would put a regular
    file where the device (or the pipe a reader holds) was."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o600)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def test_the_cli_export_through_a_symlink_keeps_the_link(daemon: Daemon, tmp_path: Path) -> None:
    with daemon.client() as c:
        made = c.create(user="linked")
    real = tmp_path / "e.json"
    real.write_text("[]")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    r = daemon.ctl("export", "--output", str(link))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink()
    assert json.loads(real.read_text())[0]["id"] == made.id


# -- the shim's export ---------------------------------------------------------


def shim_export_with_planted_temp(daemon: Daemon, shared: Path, plant: str) -> tuple[
    subprocess.CompletedProcess[str], Path, Path
]:
    """``script.sh export --output out.json`` in ``shared``, after another
    user has planted ``.out.json.<pid>.tmp`` there for the pid it runs as
    (the name the old shim used): a 0666 file, or a symlink to a file of
    theirs. The shim is held before its exec until the plant is in place
    (exec keeps the pid)."""
    env = daemon.env
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SESSIOND_PYTHON", None)
    hold = (
        "import os, sys; sys.stdin.readline(); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", hold, BASH, str(SCRIPT), "export", "--output", "out.json"],
        cwd=shared, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    planted = shared / f".out.json.{proc.pid}.tmp"
    loot = shared / "attackers-file"
    loot.write_text("")
    loot.chmod(0o666)
    if plant == "file":
        planted.write_text("")
        planted.chmod(0o666)
    else:
        planted.symlink_to(loot)
    out, err = proc.communicate("go\n", timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), planted, loot


@pytest.mark.parametrize("plant", ["file", "symlink"])
def test_the_shims_export_never_writes_into_a_planted_temp_file(
    daemon: Daemon, tmp_path: Path, plant: str
) -> None:
    with daemon.client() as c:
        c.create(user="secret-owner", meta={"token": "s3cr3t"})
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # a shared directory, as /tmp is
    result, planted, loot = shim_export_with_planted_temp(daemon, shared, plant)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "exported": 1, "file": "out.json"}
    target = shared / "out.json"
    assert not target.is_symlink()
    assert mode(target) == 0o600
    assert json.loads(target.read_text())[0]["meta"] == {"token": "s3cr3t"}
    # What the other user planted got nothing, and is where it was; no
    # temp file of ours is left beside it.
    assert loot.read_text() == ""
    if plant == "file":
        assert planted.read_text() == "" and mode(planted) == 0o666
    else:
        assert planted.is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        ["out.json", loot.name, planted.name]
    )


def test_the_cli_export_output_is_private_and_whole(daemon: Daemon, tmp_path: Path) -> None:
    with daemon.client() as c:
        made = c.create(user="exported")
    where = tmp_path / "exports"
    where.mkdir()
    target = where / "all.jsonl"
    target.write_text("old")
    target.chmod(0o644)
    r = daemon.ctl("export", "--format", "jsonl", "--output", str(target), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"exported": 1, "file": str(target)}
    assert mode(target) == 0o600
    assert json.loads(target.read_text())["id"] == made.id
    assert os.listdir(where) == ["all.jsonl"]


# -- the other callers -----------------------------------------------------------


def test_install_service_writes_whole_units_readable_by_all_and_no_temp(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False)
    first = install_service(d, manager=True)
    assert first.returncode == 0, first.stderr
    target = unit_dir(d)
    inodes = {p.name: p.stat().st_ino for p in target.iterdir()}
    again = install_service(d, manager=True)  # over the old units: replaced, not rewritten
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in target.iterdir()) == ["sessiond.service", "sessiond.socket"]
    for unit in target.iterdir():
        assert mode(unit) == 0o644
        assert unit.stat().st_ino != inodes[unit.name]
        assert unit.read_text().endswith("\n")


@pytest.mark.local_only('sessiond --repair rewrites the journal')
def test_repair_replaces_the_journal_with_a_private_file_and_no_temp(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    with d.client() as c:
        c.create(id="kept")
    d.stop()
    d.append_to_journal(b"not a journal line\n")
    before = d.journal.stat().st_ino
    result = run_sessiond(d, "--repair")
    assert result.returncode == 0, result.stderr
    assert "dropped 1 unreadable lines" in result.stdout
    assert d.journal.stat().st_ino != before and mode(d.journal) == 0o600
    names = [p.name for p in d.data_dir.iterdir()]
    assert len([n for n in names if n.startswith("data.jsonl.bak-")]) == 1
    assert not [n for n in names if n.endswith(".tmp")], names
    d.start()
    assert set(stored(d)) == {"kept"}
