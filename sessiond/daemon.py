"""``sessiond``: wiring. Lock, replay, listen, serve, stop.

Exit status: 0 after a clean stop (or a healthy ``--check``), 1 when it cannot
start (journal damaged, data dir locked, unsafe permissions, bad config, a
log file it cannot open), 2 on bad usage. Where the log goes: sessiond.logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc

from sessiond import (
    __version__,
    check,
    config,
    datadir,
    logs,
    migration,
    paths,
    rebind,
    snapshot,
    systemd,
)
from sessiond.diskio import describe
from sessiond.errors import DataDirTaken, SessionError, StartError
from sessiond.failpoints import START_HOLD, hold
from sessiond.journal import POLICIES, Journal
from sessiond.live import Live, rules_of
from sessiond.local import LocalEngine
from sessiond.model import now_us
from sessiond.records import journal_lines
from sessiond.replay import JournalDamaged, load_store, remove_leftovers
from sessiond.server import Engine, Server, raise_open_files_limit
from sessiond.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sessiond.shared import SharedEngine

log = logging.getLogger("sessiond")

# The signals the daemon acts on (SIGHUP reloads, the others stop it). They
# are blocked from the process's first moment (``sessiond.__main__``, and
# again in ``main`` for whoever calls it directly) until the daemon can act on
# them (``_until_signalled``): until then the default action of SIGHUP and
# SIGTERM would end it on the spot, silently, in the middle of a replay
# that can take seconds. One that comes meanwhile waits, pending, and is
# acted on once the daemon serves.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
    p.add_argument("--backend", metavar="URL",
                   help="store the sessions in Redis or Valkey: redis://[user[:password]@]"
                        "host:port[/db], rediss://, unix:///path, valkey://, valkeys:// "
                        "(env SESSIOND_BACKEND)")
    p.add_argument("--namespace", metavar="NAME",
                   help="the session space shared by the daemons of one backend "
                        "(default: default; env SESSIOND_NAMESPACE)")
    p.add_argument("--backend-password-file", metavar="FILE",
                   help="read the backend's password from FILE "
                        "(else SESSIOND_BACKEND_PASSWORD, else the URL's)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default: info)")
    p.add_argument("--log-file", type=Path, metavar="PATH",
                   help="log to PATH (created 0600), rotated by size, instead of stderr; "
                        "stderr goes there too")
    p.add_argument("--log-max-bytes", type=_positive, default=logs.MAX_BYTES, metavar="N",
                   help=f"rotate the log file before it passes N bytes "
                        f"(default {logs.MAX_BYTES})")
    p.add_argument("--log-backups", type=_positive, default=logs.BACKUPS, metavar="N",
                   help=f"rotated log files kept: PATH.1 (newest) to PATH.N "
                        f"(default {logs.BACKUPS})")
    # Given by sessionctl's autostart (sessionctl.autostart), never by
    # people: a daemon that finds the data dir taken then lost a start race
    # to another autostarted one, which is no error.
    p.add_argument("--autostarted", action="store_true", help=argparse.SUPPRESS)
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


async def run(args: argparse.Namespace) -> int:
    where = paths.resolve(args.socket, args.data_dir, args.config)
    paths.private_dir(where.data_dir)
    lock = paths.lock_data_dir(where.lock)
    raise_open_files_limit()
    logs.start_rotating()  # the log file is ours to rotate only now
    try:
        flags = {"fsync": args.fsync} if args.fsync else {}
        layers = config.layered(where.config, os.environ, flags)
        loop_name = type(asyncio_loop()).__module__.split(".")[0]
        start = config.start_options(where.config)
        url = args.backend or os.environ.get("SESSIOND_BACKEND") or start.get("backend")
        if url:
            engine = await open_shared(args, start, url, layers)
            try:
                keeper = datadir.DataDirKeeper(lock, None)
                await serve(Server(engine, engine.live, loop_name), where, keeper)
            finally:
                await engine.stop()
            return 0
        store, journal, layers = open_local(where, layers)
        try:
            live = Live(layers)
            journal.home = lock.home
            keeper = datadir.DataDirKeeper(lock, journal)
            await serve(Server(LocalEngine(store, journal, live), live, loop_name), where, keeper)
        finally:
            journal.close()
    finally:
        lock.close()
    return 0


async def open_shared(
    args: argparse.Namespace, start: dict[str, str], url: str, layers: config.Layers
) -> SharedEngine:
    """The shared engine the flags, environment or config file name."""
    from sessiond import shared
    from sessiond.shared import url as urls

    namespace = urls.check_namespace(
        args.namespace or os.environ.get("SESSIOND_NAMESPACE") or start.get("namespace")
        or urls.DEFAULT_NAMESPACE
    )
    password = urls.password_from(
        dict(os.environ), args.backend_password_file or start.get("backend_password_file")
    )
    return await shared.open_engine(urls.parse(url, password), namespace, layers)


def open_local(
    where: paths.Paths, layers: config.Layers
) -> tuple[Store, Journal, config.Layers]:
    """The local engine: the journal replayed, and what replay implies
    persisted before anyone connects (imported legacy sessions, deadlines
    that passed while the daemon was down, a lowered max_lifetime)."""
    settings = layers.settings
    refusal = config.local_refusal(settings)
    if refusal is not None:
        raise StartError(refusal)
    for leftover in remove_leftovers(where.journal):
        log.warning("removed %s left by an interrupted compaction", leftover)
    announce_replay(where.journal)
    hold(START_HOLD, SIGNALS)
    store, valid_end, needs_newline = load_store(rules_of(settings), where.journal)
    journal = Journal(where.journal, settings.fsync)
    journal.open(valid_end, needs_newline)
    try:
        layers, migrated = migration.migrate_legacy(store, layers, where.data_dir, journal)
        now = now_us()
        initial = store.cap_lifetimes(now)
        initial += store.expire_due(now) + store.purge_due(now)
        if initial:
            try:
                journal.append_at_start(journal_lines(initial))
            except OSError as exc:
                raise StartError(
                    f"cannot write to journal {where.journal}: {describe(exc)}; the "
                    f"{len(initial)} changes replay implies (sessions that expired while "
                    f"the daemon was down, or a lowered max_lifetime) must be on disk before "
                    f"it serves: make room (or fix the disk), then start it again"
                ) from exc
        if migrated is not None:
            migration.mark_migrated(where.data_dir, migrated)
    except BaseException:
        journal.close()
        raise
    return store, journal, layers


def announce_replay(journal: Path) -> None:
    """One line before a replay, which takes seconds for millions of
    sessions: whoever looks at the log while nothing answers sees why."""
    found = []
    for path in (snapshot.snapshot_path(journal), journal):
        try:
            found.append(f"{path.stat().st_size} bytes of {path.name}")
        except FileNotFoundError:
            continue
    if found:
        log.info("replaying %s in %s; the socket answers once that is done",
                 " and ".join(found), journal.parent)


def asyncio_loop() -> object:
    import asyncio

    return asyncio.get_running_loop()


async def serve(server: Server, where: paths.Paths, data: datadir.DataDirKeeper) -> None:
    engine = server.engine
    activated = systemd.listen_fds()
    # Checked outside the task group, and before "ready", so that a bad
    # hand-over from systemd (the socket, the watchdog's interval, where to
    # notify it) is reported as one line rather than inside an exception
    # group, after a start that looked fine.
    passed = systemd.adopt_listener(activated) if activated else None
    watchdog = systemd.watchdog_interval()
    systemd.notify_address()
    keeper: rebind.SocketKeeper | None = None
    if passed is not None:
        # systemd owns this socket and keeps it across our restarts: it
        # must never be unlinked here (nor bound again: see rebind).
        sock = passed
        address: object = sock.getsockname()
        log.info("using the socket passed by systemd: %s (fd %d)", address, activated[0])
    else:
        sock = rebind.bind_socket(where.socket)
        keeper = rebind.SocketKeeper(where.socket, rebind.bind_socket)
        address = str(where.socket)
    async with anyio.create_task_group() as tg:
        try:
            sock.setblocking(False)
            listener = await anyio.abc.SocketListener.from_socket(sock)
            server.start(listener, tg)
            if keeper is not None:
                tg.start_soon(keeper.run, server)
            tg.start_soon(data.run)
            log.info("sessiond %s ready on %s (pid %d, %d sessions, %s)",
                     __version__, address, os.getpid(), engine.sessions(), engine.describe())
            # Only now: replay is done and the socket listens, so a client
            # that systemd lets through is answered.
            if systemd.notify(f"READY=1\n{_status(engine)}"):
                tg.start_soon(_report_to_systemd, engine, watchdog)
            await _until_stopped(server)
            log.info("stopping: answering requests in flight")
            systemd.notify("STOPPING=1")
            await server.stop_listening()
            await server.drain(grace=4.0)
            await engine.stop()
        finally:
            if keeper is not None and keeper.still_ours():
                where.socket.unlink(missing_ok=True)
            tg.cancel_scope.cancel()
    log.info("stopped")


STATUS_INTERVAL = 5.0


def _status(engine: Engine) -> str:
    count = engine.sessions()
    return f"STATUS=serving {count} session{'' if count == 1 else 's'}"


async def _report_to_systemd(engine: Engine, watchdog: float | None) -> None:
    """Feed the watchdog (from the event loop, so a stuck loop starves it)
    and keep the STATUS= line's session count current."""
    shown = _status(engine)
    while True:
        await anyio.sleep(min(watchdog, STATUS_INTERVAL) if watchdog else STATUS_INTERVAL)
        lines = ["WATCHDOG=1"] if watchdog else []
        status = _status(engine)
        if status != shown:
            lines.append(status)
            shown = status
        if lines:
            systemd.notify("\n".join(lines))


async def _until_stopped(server: Server) -> None:
    """Until SIGTERM, SIGINT or a ``shutdown`` request; SIGHUP reloads."""
    async with anyio.create_task_group() as tg:

        async def until_requested() -> None:
            await server.stop_requested.wait()
            log.info("received a shutdown request")
            tg.cancel_scope.cancel()

        tg.start_soon(until_requested)
        await _until_signalled(server)
        tg.cancel_scope.cancel()


async def _until_signalled(server: Server) -> None:
    with anyio.open_signal_receiver(*SIGNALS) as signals:
        # Handled from here on: one that came during the start (blocked
        # since, see SIGNALS) is delivered now, a SIGHUP then reloads
        # once, a SIGTERM stops the daemon as it would have at any time.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        try:
            await _act_on(signals, server)
        finally:
            # Leaving the receiver puts the default actions back: a reload
            # means nothing to a daemon on its way out, and must not end it
            # before its journal is synced. (A second SIGTERM or SIGINT
            # still ends it at once, as one expects of them.)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


async def _act_on(signals: AsyncIterator[signal.Signals], server: Server) -> None:
    """Until SIGTERM or SIGINT; SIGHUP reloads."""
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.info("received %s", signal.Signals(signum).name)
            return
        try:
            # A shutdown request lets a reload in progress finish, as
            # SIGTERM (read after it) does.
            with anyio.CancelScope(shield=True):
                done = await server.engine.dispatcher.reload()
        except SessionError as exc:
            log.error("SIGHUP: %s", exc)
            continue
        log.info("SIGHUP: %s", done)


def main(argv: list[str] | None = None) -> int:
    # Already done if sessiond.__main__ called us: see SIGNALS.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    args = parse_args(argv)
    if args.command == "install-service" or args.check or args.repair:
        # Commands, not the daemon: the default actions, as any program has
        # (and systemctl, which install-service runs, must not inherit them
        # blocked).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    level = getattr(logging, args.log_level.upper())
    try:
        logs.setup(level, args.log_file, args.log_max_bytes, args.log_backups)
    except StartError as exc:
        logs.setup(level)  # stderr, then: say why we do not start
        log.error("%s", exc)
        return 1
    if args.backend:
        from sessiond.cmdline import hide_backend_password

        # ps shows every user our command line: a password there is hidden.
        hide_backend_password(args.backend)
    # A write past RLIMIT_FSIZE must fail with EFBIG, not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        if args.command == "install-service":
            from sessiond.service import install

            return install(uninstall=args.uninstall)
        where = paths.resolve(args.socket, args.data_dir, args.config)
        if args.check:
            return check.check(where)
        if args.repair:
            return check.do_repair(where)
        backend_options = {}
        try:
            import uvloop  # noqa: F401

            backend_options["use_uvloop"] = True
        except ImportError:
            pass
        return anyio.run(run, args, backend="asyncio", backend_options=backend_options)
    except DataDirTaken as exc:
        if not args.autostarted:
            log.error("%s", exc)
            return 1
        # Several commands at once each started a daemon, and another won:
        # it serves them all (sessionctl waits for it), nothing failed.
        log.info("another sessiond (pid %s) already serves data dir %s; leaving it to it",
                 exc.holder, exc.data_dir)
        return 1
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
