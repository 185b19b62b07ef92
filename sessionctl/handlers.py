"""What each ``sessionctl`` command that talks to the daemon does, once its
command line is read: the handlers and the checks made before the daemon is
reached that ``registry.COMMANDS`` names.

Kept apart from ``sessionctl.cli`` so that commands that do not talk to the
daemon (``version``, ``help``, usage errors) never import the client, msgspec
or the output code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

from sessionctl import render
from sessionctl.client import Client
from sessionctl.connection import BY_ENVIRONMENT, NO_AUTOSTART_ENV, autostart_off_by_env
from sessionctl.registry import (
    EXIT_OK,
    Args,
    CommandFailed,
    OutputFailed,
    UsageError,
    out,
)
from sessionctl.results import Session
from sessiond.errors import ConfigError, InvalidRequest, SessionExpired, SessionsDamaged
from sessiond.model import format_duration, now_us
from sessiond.protocol import PAGE_MAX


def emit(args: Args, data: Any, human: Callable[[], str]) -> None:
    out(render.to_json(data) if args.json else human())


def plural(count: int, word: str) -> str:
    """``1 session``, ``2 sessions``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def warn_damaged(damaged: list[str]) -> None:
    """After the results, one line on stderr: the sessions a list or a
    cleanup passed over because the shared engine holds them damaged, and
    what is wrong with the first (``get`` on each says, the daemon's log
    names all). A warning, not an error: the command did what it could on
    every other session, as ``journalctl`` goes on past a damaged file."""
    if not damaged:
        return
    sys.stdout.flush()
    count = len(damaged)
    sys.stderr.write(render.escape_message(
        f"sessionctl: warning: {plural(count, 'session')} left out: the engine holds "
        f"{'it' if count == 1 else 'them'} damaged; the first: {damaged[0]}"
    ) + "\n")


class CliClient(Client):
    """The client, telling people how to turn autostart on in the CLI's
    words rather than Python's."""

    def _autostart_advice(self, off_by: str) -> str:
        if off_by == BY_ENVIRONMENT:
            return f"let sessionctl start it (unset {NO_AUTOSTART_ENV})"
        try:
            set_too = autostart_off_by_env()
        except InvalidRequest:
            set_too = True  # not a boolean: unsetting it is part of the advice
        also = f" and unset {NO_AUTOSTART_ENV}" if set_too else ""
        return f"let sessionctl start it (drop --no-autostart{also})"

    def _started_apart(self, note: str) -> None:
        sys.stderr.write(f"sessionctl: warning: {note}\n")
        sys.stderr.flush()


def connect(args: Args) -> Client:
    # --no-autostart turns autostart off; without it, SESSIONCTL_NO_AUTOSTART
    # decides, as Client reads it.
    return CliClient(args.socket, autostart=False if args.no_autostart else None)


def prepare_export(args: Args) -> Callable[[], None] | None:
    from pathlib import Path

    from sessionctl.export import open_output

    args.target = None
    if args.output is None:
        if args.json and args.format == "csv":
            raise UsageError(
                "--json and --format csv contradict each other: CSV on stdout is not JSON "
                "(use --format json or jsonl, or --output FILE, when --json shapes the summary)"
            )
        return None
    try:
        target = open_output(Path(args.output))
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror}") from None
    args.target = target
    return target.discard


def prepare_config(args: Args) -> None:
    """The value to send, read as ``config.read_value`` reads it (as the
    daemon reads ``SESSIOND_<KEY>``): JSON when it is JSON, else the
    string; for a setting in seconds, a duration (``2h``) in whole seconds."""
    from sessiond.config import read_value

    args.parsed = None
    if args.value is None:
        return
    try:
        value = read_value(args.key, args.value)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        # Past what the protocol carries: as the text typed, which the
        # daemon refuses naming the key's range, as for any other value.
        value = args.value
    args.parsed = value


def expired(sid: str, *, refreshing: bool = False) -> SessionExpired:
    """The daemon's refusal of a change to an expired session, with the
    command that brings it back."""
    if refreshing:
        return SessionExpired(
            f"session {sid} has expired; add --revive to bring it back "
            f"('sessionctl refresh {sid} --revive')"
        )
    return SessionExpired(
        f"session {sid} has expired; bring it back first with 'sessionctl refresh {sid} "
        f"--revive'"
    )


def show_session(c: Client, args: Args, s: Any) -> int:
    emit(args, render.session_dict(s), lambda: render.session_fields(
        s, now_us(), render.screen_columns(args.full)))
    return EXIT_OK


def h_create(c: Client, args: Args) -> int:
    s = c.create(user=args.user, ttl=args.ttl, meta=dict(args.meta), id=args.id)
    emit(args, render.session_dict(s), lambda: s.id)
    return EXIT_OK


def h_get(c: Client, args: Args) -> int:
    s = c.get(args.id, touch=args.touch)
    if args.key is None:
        return show_session(c, args, s)
    if args.key not in s.meta:
        # As 'git config KEY' does for a key it lacks: a script tells the
        # absent from the empty.
        raise CommandFailed(f"session {s.id} has no metadata key {args.key!r}")
    value = s.meta[args.key]
    emit(args, {args.key: value}, lambda: render.escape(render.meta_text(value)))
    return EXIT_OK


def h_set(c: Client, args: Args) -> int:
    try:
        s = c.set(args.id, args.key, args.value, expect_version=args.expect_version)
    except SessionExpired:
        raise expired(args.id) from None
    return show_session(c, args, s)


def h_unset(c: Client, args: Args) -> int:
    try:
        s = c.unset(args.id, args.key, expect_version=args.expect_version)
    except SessionExpired:
        raise expired(args.id) from None
    return show_session(c, args, s)


def h_delete(c: Client, args: Args) -> int:
    sid = c.delete(args.id)
    emit(args, {"deleted": sid}, lambda: f"deleted {sid}")
    return EXIT_OK


def h_expire(c: Client, args: Args) -> int:
    return show_session(c, args, c.expire(args.id))


def h_refresh(c: Client, args: Args) -> int:
    try:
        s = c.refresh(args.id, ttl=args.ttl, revive=args.revive)
    except SessionExpired:
        if args.revive:
            raise  # past max_lifetime: the daemon says so
        raise expired(args.id, refreshing=True) from None
    return show_session(c, args, s)


class _Listing:
    """The sessions ``list`` asked for, page by page, and whether ``--limit``
    left some out (known once they have been read)."""

    def __init__(self, c: Client, args: Args) -> None:
        self.c = c
        self.args = args
        self.more = False
        # What the pages passed over (shared mode: sessions held damaged).
        self.damaged: list[str] = []

    def __iter__(self) -> Iterator[Session]:
        left: int | None = self.args.limit
        cursor: str | None = None
        while True:
            page = PAGE_MAX if left is None else min(left, PAGE_MAX)
            sessions, cursor = self._page(page, cursor)
            for s in sessions:  # a page holds at most ``left``
                yield s
                if left is not None:
                    left -= 1
            if cursor is None:
                return
            if left == 0:
                # The cursor says only that the store goes on: one more
                # session asked for says whether another one matches
                # (what it passed over on the way is past what is shown).
                self.more = bool(self._page(1, cursor, shown=False)[0])
                return

    def _page(
        self, limit: int, cursor: str | None, shown: bool = True
    ) -> tuple[list[Session], str | None]:
        args = self.args
        try:
            return self.c.list_page(status=args.status, user=args.user, limit=limit,
                                    cursor=cursor)
        except SessionsDamaged as exc:
            if shown:
                self.damaged += exc.damaged
            return exc.sessions, exc.cursor


def h_list(c: Client, args: Args) -> int:
    sessions = _Listing(c, args)
    if args.ids:
        if args.json:
            render.write_json_array(sys.stdout, (s.id for s in sessions))
        else:
            for s in sessions:
                out(s.id)
    elif args.json:
        # Streamed page by page: a million sessions never sit in one string.
        render.write_json_array(sys.stdout, (render.session_dict(s) for s in sessions))
    else:
        shown: list[Session] = list(sessions)
        out(render.session_table(shown, now_us(), more=sessions.more,
                                 columns=render.screen_columns(args.full)))
    warn_damaged(sessions.damaged)
    return EXIT_OK


def h_stats(c: Client, args: Args) -> int:
    import msgspec

    st = c.stats()
    data: dict[str, Any] = {}
    for key, value in msgspec.to_builtins(st).items():
        if key == "read_only":
            # A yes or no, as the table shows it; the reason beside it.
            data["read_only"] = value is not None
            data["read_only_reason"] = value
        else:
            data[key] = value
    emit(args, data, lambda: render.stats_fields(st, now_us(), render.screen_columns(args.full)))
    return EXIT_OK


def h_export(c: Client, args: Args) -> int:
    from sessionctl.export import write_sessions

    target = args.target
    try:
        if target is None:
            write_sessions(c, args.format, sys.stdout.buffer)
            return EXIT_OK
        try:
            count = write_sessions(c, args.format, target.file)
            target.commit()
        except OSError as exc:
            raise OutputFailed(f"cannot write {target.path}: {exc.strerror or exc}") from None
    except SessionsDamaged as exc:
        # Moved to another host, an export that left them out would lose them.
        raise CommandFailed(
            f"export refused: {exc}; "
            + ("what it wrote is incomplete" if target is None
               else f"nothing was written to {target.path}")
        ) from None
    emit(args, {"exported": count, "file": str(target.path)},
         lambda: render.escape_message(f"exported {plural(count, 'session')} to {target.path}"))
    return EXIT_OK


def h_config(c: Client, args: Args) -> int:
    if args.value is not None:
        try:
            data = c.set_config(args.key, args.parsed)
        except InvalidRequest as exc:
            from sessiond.config import as_typed

            # The daemon quotes what it was sent: the value as the user
            # typed it (1e3, 2h), not as it was read (1000.0, 7200).
            raise type(exc)(as_typed(str(exc), args.key, args.parsed, args.value)) from exc
    elif args.key or args.json:
        data = c.config(args.key)
    else:
        listing = c.config_listing()
        out(render.config_table(listing.values, listing.sources,
                                render.screen_columns(args.full)))
        if listing.file_note is not None:
            # After the table, on stderr, as systemctl warns of a unit file
            # changed on disk: the table shows what is in force.
            sys.stdout.flush()
            sys.stderr.write(render.escape_message(
                f"sessionctl: warning: {listing.file_note}") + "\n")
        return EXIT_OK
    if args.key and args.value is None and not args.json:
        out(render.escape(render.meta_text(data[args.key])))
        return EXIT_OK
    emit(args, data, lambda: render.fields(((k, render.meta_text(v)) for k, v in data.items()),
                                           render.screen_columns(args.full)))
    return EXIT_OK


def h_compact(c: Client, args: Args) -> int:
    import msgspec

    r = c.compact()
    # A note replaces the sizes where there was nothing to compact (the
    # shared engine persists the sessions itself).
    emit(args, msgspec.to_builtins(r), lambda: (
        f"compact: {render.escape(r.note)}" if r.note is not None else
        f"compacted: {render.human_bytes(r.bytes_before)} -> {render.human_bytes(r.bytes_after)}, "
        f"{plural(r.sessions, 'session')} kept, {r.seconds:.3f}s"
    ))
    return EXIT_OK


def h_ping(c: Client, args: Args) -> int:
    p = c.ping()
    emit(args, {"pid": p.pid, "version": p.version, "uptime": round(p.uptime, 3),
                "socket": str(c.path)},
         lambda: f"pong from sessiond {p.version} (pid {p.pid}, up {format_duration(p.uptime)})")
    return EXIT_OK
