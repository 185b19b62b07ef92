"""``sessiond``: wiring. Lock, replay, listen, serve, stop.

Exit status: 0 after a clean stop (or a healthy ``--check``), 1 when it cannot
start (journal damaged, data dir locked, unsafe permissions, bad config), 2 on
bad usage.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import gc
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.abc

from sessiond import __version__, config, live, paths, rebind, snapshot, systemd
from sessiond.dispatch import journal_lines
from sessiond.errors import JournalError, SessionError
from sessiond.journal import POLICIES, Journal
from sessiond.legacy import legacy_default_ttl, legacy_dir, read_sessions
from sessiond.live import Live, rules_of
from sessiond.model import Change, now_us
from sessiond.records import LineError
from sessiond.replay import (
    Item,
    JournalDamaged,
    Loader,
    iter_damage,
    remove_leftovers,
    repair,
    scan,
)
from sessiond.rules import Rules
from sessiond.server import Server
from sessiond.store import ReplayRefused, Store

log = logging.getLogger("sessiond")

MIGRATED_MARKER = "legacy-imported"


class StartError(SessionError):
    """The daemon cannot start; the message says why and what to do."""

    code = "start"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sessiond",
        description="Per-user session-state daemon (foreground; stop with SIGTERM or Ctrl-C).",
    )
    p.add_argument("--socket", help="Unix socket to listen on (env SESSIOND_SOCKET)")
    p.add_argument("--data-dir", help="journal and lock directory (env SESSIOND_DATA_DIR)")
    p.add_argument("--config", help="config.json path (env SESSIOND_CONFIG)")
    p.add_argument("--fsync", choices=POLICIES,
                   help="fsync policy, for this run only (wins over config and SESSIOND_FSYNC)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="log verbosity")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="report the journal's health and exit (0 healthy, 1 damaged)")
    mode.add_argument("--repair", action="store_true",
                      help="back up the journal, then drop its unreadable lines")
    mode.add_argument("--version", action="version", version=f"sessiond {__version__}")
    sub = p.add_subparsers(dest="command")
    inst = sub.add_parser("install-service", help="install the systemd user units")
    inst.add_argument("--uninstall", action="store_true", help="remove them instead")
    return p.parse_args(argv)


def take_lock(lock_path: Path) -> int:
    """Exclusive lock on the data dir, held for the daemon's life."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartError(
            f"another sessiond (pid {holder}) already uses data dir {lock_path.parent}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# A Unix socket's address holds 108 bytes, the terminating NUL included.
SOCKET_PATH_MAX = 107


def bind_socket(path: Path) -> socket.socket:
    """A listening socket at ``path``, created 0600 by the umask at bind.

    A stale socket (nothing answers) is replaced; a live one is an error."""
    length = len(os.fsencode(path))
    if length > SOCKET_PATH_MAX:
        # Else bind says only "AF_UNIX path too long", with no errno.
        raise StartError(
            f"cannot bind {path}: the path is {length} bytes long and a Unix socket's "
            f"path can be at most {SOCKET_PATH_MAX}; choose a shorter one with --socket "
            f"or SESSIOND_SOCKET"
        )
    paths.private_dir(path.parent)
    if path.exists() or path.is_symlink():
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise StartError(f"{path} exists and is not a socket; remove it or choose --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A live daemon with a full backlog makes connect wait: that still
        # means "in use", so a timeout counts as live.
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("replacing stale socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise StartError(f"socket {path} is in use by another running sessiond")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot bind {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    sock.listen(512)
    return sock


def loader(store: Store) -> Loader:
    """Replay's loader: an item the store refuses counts as a damaged line
    (``--check`` and ``--repair`` use it too, so they judge as replay does)."""
    def load(items: Sequence[Item]) -> None:
        try:
            store.replay(items)
        except ReplayRefused as exc:
            raise LineError(str(exc), index=exc.index) from exc

    return load


def load_snapshot(store: Store, journal_path: Path) -> snapshot.Header | None:
    """Load the records of the snapshot beside the journal into the empty
    ``store``, if it stands for the head of the journal byte for byte.

    ``None`` (saying why, unless there is no snapshot, and having loaded
    nothing) when the journal must be replayed in full."""
    try:
        return snapshot.load(journal_path, store.replay)
    except snapshot.SnapshotStale as exc:
        log.info("%s; replaying the journal in full", exc)
    except snapshot.SnapshotDamaged as exc:
        log.warning("%s; replaying the journal in full", exc)
    return None


def replay(rules: Rules, journal_path: Path) -> tuple[Store, int, bool]:
    """The store the journal holds (by way of its snapshot where there is a
    sound one), and where the journal's valid part ends."""
    # Replay makes millions of objects and frees few: collections during it
    # would find nothing to free. Afterwards what it built is frozen, so
    # that later full collections do not walk it again and again.
    gc.disable()
    try:
        store = Store(rules)
        base = load_snapshot(store, journal_path)
        start, lines = (base.journal_bytes, base.lines) if base else (0, 0)
        result = scan(journal_path, load=loader(store), start=start, lineno=lines)
    finally:
        gc.enable()
    gc.freeze()
    if result.torn_bytes:
        log.warning("%s: final line is torn (%d bytes): cutting it",
                    journal_path, result.torn_bytes)
    if base is None:
        log.info("replayed %d journal lines: %d sessions", result.records, len(store))
    else:
        log.info(
            "loaded %d sessions from snapshot %s and %d journal lines after it: %d sessions",
            base.count, snapshot.snapshot_path(journal_path).name, result.records, len(store),
        )
    return store, result.valid_end, result.needs_newline


def migrate_legacy(
    store: Store, layers: config.Layers, data_dir: Path
) -> tuple[config.Layers, list[Change], Path | None]:
    """First start with an empty journal: bring ``~/.session`` across once.

    Returns the settings' layers (a legacy default_ttl goes to the config
    file), the changes to persist, and the legacy file when it
    was imported: ``mark_migrated`` must follow once the changes are on disk,
    so that a failed first commit is retried at the next start. The legacy
    files are only ever read."""
    source = legacy_dir()
    legacy_file = source / "data.jsonl"
    if len(store) or (data_dir / MIGRATED_MARKER).exists() or not legacy_file.is_file():
        return layers, [], None
    try:
        loaded = read_sessions(legacy_file)
    except OSError as exc:
        # Serving matters more than migrating, and the file can be imported
        # later; say so rather than refuse to start.
        log.error("legacy import skipped: %s; import it with 'sessionctl import %s'",
                  exc.strerror, legacy_file)
        return layers, [], None
    # The default_ttl first: legacy records with a ttl of 0 or less are
    # kept expired, with the default_ttl in force as their ttl.
    layers = _migrate_default_ttl(store, layers, source)
    result, changes = store.import_sessions(now_us(), loaded.sessions)
    for problem in loaded.problems + loaded.refused + result.reasons:
        log.warning("legacy import: %s", problem)
    log.info(
        "imported %d sessions from legacy %s (%d of them already expired, kept for "
        "expired_retention from now; %d skipped, %d unreadable lines, reported above); "
        "the legacy files are left untouched",
        result.imported, legacy_file, result.already_expired,
        result.skipped + len(loaded.refused), len(loaded.problems),
    )
    return layers, changes, legacy_file


def _migrate_default_ttl(store: Store, layers: config.Layers, source: Path) -> config.Layers:
    try:
        ttl = legacy_default_ttl(source)
    except ValueError as exc:
        log.warning("legacy import: default_ttl not imported: %s", exc)
        return layers
    if ttl is None:
        return layers
    cfg_path = layers.path
    if "default_ttl" in layers.file:
        log.info("legacy default_ttl %d not imported: %s already sets default_ttl",
                 ttl, cfg_path)
        return layers
    try:
        # That key alone: a flag or a variable of this run must not become
        # persistent config.
        config.with_value(layers.settings, "default_ttl", ttl)
        config.persist_key(cfg_path, "default_ttl", ttl)
    except SessionError as exc:
        log.warning("legacy import: default_ttl %d not imported: %s", ttl, exc)
        return layers
    log.info("imported default_ttl %d from legacy %s", ttl, source / "config.json")
    layers = layers.with_file({**layers.file, "default_ttl": ttl})
    pinned = layers.pinned_by("default_ttl")
    if pinned is not None:
        log.info("default_ttl %d is in force instead, set by %s",
                 layers.settings.default_ttl, pinned)
    store.rules.default_ttl = layers.settings.default_ttl
    return layers


def mark_migrated(data_dir: Path, legacy_file: Path) -> None:
    """The legacy import is on disk: never run it again for this data dir."""
    (data_dir / MIGRATED_MARKER).write_text(f"{legacy_file}\n")


async def run(args: argparse.Namespace) -> int:
    where = paths.resolve(args.socket, args.data_dir, args.config)
    paths.private_dir(where.data_dir)
    lock_fd = take_lock(where.lock)
    try:
        flags = {"fsync": args.fsync} if args.fsync else {}
        layers = config.layered(where.config, os.environ, flags)
        settings = layers.settings
        for leftover in remove_leftovers(where.journal):
            log.warning("removed %s left by an interrupted compaction", leftover)
        store, valid_end, needs_newline = replay(rules_of(settings), where.journal)
        journal = Journal(where.journal, settings.fsync)
        journal.open(valid_end, needs_newline)
        layers, initial, migrated = migrate_legacy(store, layers, where.data_dir)
        # The config file may have lowered max_lifetime while we were down:
        # persisted with the other start-up changes, before anyone reads.
        initial += store.cap_lifetimes(now_us())
        loop_name = type(asyncio_loop()).__module__.split(".")[0]
        server = Server(store, journal, Live(layers), loop_name)
        try:
            await serve(server, where, initial, migrated)
        finally:
            journal.close()
    finally:
        os.close(lock_fd)
    return 0


def asyncio_loop() -> object:
    import asyncio

    return asyncio.get_running_loop()


async def serve(
    server: Server, where: paths.Paths, initial: list[Change], migrated: Path | None = None
) -> None:
    store, journal = server.store, server.journal
    activated = systemd.listen_fds()
    # Checked outside the task group, so that a bad hand-over from systemd
    # is reported as one line rather than inside an exception group.
    passed = systemd.adopt_listener(activated) if activated else None
    # Replay is done; persist what it implies before anyone connects:
    # imported legacy sessions, and deadlines that passed while we were down.
    now = now_us()
    initial += store.expire_due(now) + store.purge_due(now)
    if initial:
        journal.append_at_start(journal_lines(initial))
    if migrated is not None:
        mark_migrated(where.data_dir, migrated)
    keeper: rebind.SocketKeeper | None = None
    if passed is not None:
        # systemd owns this socket and keeps it across our restarts: it
        # must never be unlinked here (nor bound again: see rebind).
        sock = passed
        address: object = sock.getsockname()
        log.info("using the socket passed by systemd: %s (fd %d)", address, activated[0])
    else:
        sock = bind_socket(where.socket)
        keeper = rebind.SocketKeeper(where.socket, bind_socket)
        address = str(where.socket)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run_flusher)
        tg.start_soon(journal.run_syncer)
        try:
            sock.setblocking(False)
            listener = await anyio.abc.SocketListener.from_socket(sock)
            server.start(listener, tg)
            if keeper is not None:
                tg.start_soon(keeper.run, server)
            log.info("sessiond %s ready on %s (pid %d, %d sessions, fsync %s)",
                     __version__, address, os.getpid(), len(store), journal.policy)
            watchdog = systemd.watchdog_interval()
            # Only now: replay is done and the socket listens, so a client
            # that systemd lets through is answered.
            if systemd.notify(f"READY=1\n{_status(store)}"):
                tg.start_soon(_report_to_systemd, store, watchdog)
            await _until_stopped(server, where)
            log.info("stopping: answering requests in flight")
            systemd.notify("STOPPING=1")
            await server.stop_listening()
            await server.drain(grace=4.0)
            await journal.sync()
        finally:
            if keeper is not None and keeper.still_ours():
                where.socket.unlink(missing_ok=True)
            tg.cancel_scope.cancel()
    log.info("stopped")


STATUS_INTERVAL = 5.0


def _status(store: Store) -> str:
    count = len(store)
    return f"STATUS=serving {count} session{'' if count == 1 else 's'}"


async def _report_to_systemd(store: Store, watchdog: float | None) -> None:
    """Feed the watchdog (from the event loop, so a stuck loop starves it)
    and keep the STATUS= line's session count current."""
    shown = _status(store)
    while True:
        await anyio.sleep(min(watchdog, STATUS_INTERVAL) if watchdog else STATUS_INTERVAL)
        lines = ["WATCHDOG=1"] if watchdog else []
        status = _status(store)
        if status != shown:
            lines.append(status)
            shown = status
        if lines:
            systemd.notify("\n".join(lines))


async def _until_stopped(server: Server, where: paths.Paths) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum != signal.SIGHUP:
                log.info("received %s", signal.Signals(signum).name)
                return
            try:
                await live.reload(server.live, server.dispatcher.adopt)
            except SessionError as exc:
                log.error("SIGHUP: config not reloaded: %s", exc)
                continue
            pinned = ", ".join(
                f"{key} ({source})" for key, source in server.live.layers.sources().items()
                if source in (config.ENV, config.FLAG)
            )
            log.info("SIGHUP: reloaded %s%s", where.config,
                     f"; still set by flag or environment: {pinned}" if pinned else "")


def _nothing_there(where: paths.Paths, doing: str) -> SessionError | None:
    """Why ``--check`` or ``--repair`` has nothing to work on, if it has
    not: a data dir or a journal that does not exist is not a healthy
    journal, and is most likely a mistyped path."""
    if not where.data_dir.is_dir():
        what = "no such directory" if not where.data_dir.exists() else "not a directory"
        return JournalError(
            f"no data dir at {where.data_dir} ({what}): nothing to {doing}; give the data "
            f"dir of the daemon you mean with --data-dir or SESSIOND_DATA_DIR"
        )
    if not where.journal.exists():
        return JournalError(
            f"no journal at {where.journal}: nothing to {doing} (a daemon that ran with "
            f"this data dir would have left one)"
        )
    return None


def check(where: paths.Paths) -> int:
    missing = _nothing_there(where, "check")
    if missing is not None:
        raise missing
    store = Store()
    report = scan(where.journal, stop_on_damage=False, load=loader(store))
    print(f"{where.journal}: {report.records} readable lines")
    if report.torn_bytes:
        print(f"torn final line ({report.torn_bytes} bytes): it will be cut at start")
    if report.reserved_bytes:
        # A running daemon's reserve, or what one killed left: not damage.
        print(f"{report.reserved_bytes} zero bytes reserved after the lines: "
              f"a start cuts them, as a clean stop does")
    for line in iter_damage(report):
        print(f"damaged: {line}")
    print(snapshot_state(where.journal))
    if report.damaged:
        print(f"{len(report.damaged)} damaged lines: run 'sessiond --repair'")
        return 1
    print("healthy")
    return 0


def snapshot_state(journal_path: Path) -> str:
    """What a start would make of the snapshot (it never decides health:
    the journal holds everything)."""
    try:
        base = snapshot.load(journal_path, _ignore)
    except snapshot.SnapshotUnusable as exc:
        return f"{exc}; the next start ignores it"
    if base is None:
        return f"no snapshot: the next start replays {journal_path.name} in full"
    return (f"snapshot {snapshot.snapshot_path(journal_path)}: valid, {base.count} sessions "
            f"standing for the first {base.lines} lines")


def _ignore(_: object) -> None:
    return None


def do_repair(where: paths.Paths) -> int:
    missing = _nothing_there(where, "repair")
    if missing is not None:
        raise missing
    lock_fd = take_lock(where.lock)
    try:
        stale = snapshot.snapshot_path(where.journal)
        if where.journal.exists() and stale.exists():
            # Removed before the journal is rewritten: a snapshot must never
            # outlive the bytes it stands for (its checksum would catch it,
            # but nothing should have to).
            stale.unlink()
            print(f"removed the snapshot {stale}: the next compaction writes a new one")
        backup, dropped = repair(where.journal, loader(Store()))
    finally:
        os.close(lock_fd)
    print(f"backup kept at {backup}")
    ids = sorted({sid for *_, sid in dropped if sid})
    print(f"dropped {len(dropped)} unreadable lines" + (f" (ids: {', '.join(ids)})" if ids else ""))
    for lineno, offset, reason, sid in dropped:
        print(f"  line {lineno} (byte offset {offset}): {reason}" + (f" [id {sid}]" if sid else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s sessiond[%(process)d] %(levelname)s %(message)s",
    )
    # A write past RLIMIT_FSIZE must fail with EFBIG, not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        if args.command == "install-service":
            from sessiond.service import install

            return install(uninstall=args.uninstall)
        where = paths.resolve(args.socket, args.data_dir, args.config)
        if args.check:
            return check(where)
        if args.repair:
            return do_repair(where)
        backend_options = {}
        try:
            import uvloop  # noqa: F401

            backend_options["use_uvloop"] = True
        except ImportError:
            pass
        return anyio.run(run, args, backend="asyncio", backend_options=backend_options)
    except JournalDamaged as exc:
        log.error("%s", exc)
        return 1
    except SessionError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
