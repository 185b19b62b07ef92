"""What each ``sessionctl`` command that talks to the daemon does, once its
command line is read: the handlers and the checks made before the daemon is
reached that ``registry.COMMANDS`` names.

Kept apart from ``sessionctl.cli`` so that commands that do not talk to the
daemon (``version``, ``help``, usage errors) never import the client, msgspec
or the output code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sessionctl import render
from sessionctl.client import (
    BY_ENVIRONMENT,
    NO_AUTOSTART_ENV,
    Client,
    add_up,
    autostart_off_by_env,
)
from sessionctl.registry import (
    EXIT_FAILED,
    EXIT_OK,
    Args,
    Interrupted,
    OutputFailed,
    UsageError,
    out,
)
from sessiond.model import format_duration, now_us
from sessiond.protocol import PAGE_MAX, ImportResult


def emit(args: Args, data: Any, human: Callable[[], str]) -> None:
    out(render.to_json(data) if args.json else human())


class CliClient(Client):
    """The client, telling people how to turn autostart on in the CLI's
    words rather than Python's."""

    def _autostart_advice(self, off_by: str) -> str:
        if off_by == BY_ENVIRONMENT:
            return f"let sessionctl start it (unset {NO_AUTOSTART_ENV})"
        also = f" and unset {NO_AUTOSTART_ENV}" if autostart_off_by_env() else ""
        return f"let sessionctl start it (drop --no-autostart{also})"


def connect(args: Args) -> Client:
    # --no-autostart turns autostart off; without it, SESSIONCTL_NO_AUTOSTART
    # decides, as Client reads it.
    return CliClient(args.socket, autostart=False if args.no_autostart else None)


def prepare_cleanup(args: Args) -> None:
    args.before_us = None
    if args.before is not None:
        from sessiond.timeparse import parse_before

        try:
            args.before_us = parse_before(args.before, now_us())
        except ValueError as exc:
            raise UsageError(f"--before: {exc}") from None


def prepare_import(args: Args) -> None:
    from pathlib import Path

    from sessiond.legacy import read_sessions

    try:
        args.loaded = read_sessions(Path(args.file))
    except OSError as exc:
        raise UsageError(f"{exc.strerror}; give the path of a data.jsonl or an export") from None


def prepare_export(args: Args) -> Callable[[], None] | None:
    from pathlib import Path

    from sessionctl.export import open_output

    args.target = None
    if args.output is None:
        return None
    try:
        target = open_output(Path(args.output))
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror}") from None
    args.target = target
    return target.discard


def show_session(c: Client, args: Args, s: Any) -> int:
    emit(args, render.session_dict(s), lambda: render.session_fields(s, now_us()))
    return EXIT_OK


def h_create(c: Client, args: Args) -> int:
    s = c.create(user=args.user, ttl=args.ttl, meta=dict(args.meta), id=args.id)
    emit(args, render.session_dict(s), lambda: s.id)
    return EXIT_OK


def h_get(c: Client, args: Args) -> int:
    return show_session(c, args, c.get(args.id, touch=args.touch))


def h_set(c: Client, args: Args) -> int:
    return show_session(
        c, args, c.set(args.id, args.key, args.value, expect_version=args.expect_version)
    )


def h_unset(c: Client, args: Args) -> int:
    return show_session(c, args, c.unset(args.id, args.key, expect_version=args.expect_version))


def h_delete(c: Client, args: Args) -> int:
    sid = c.delete(args.id)
    emit(args, {"deleted": sid}, lambda: f"deleted {sid}")
    return EXIT_OK


def h_expire(c: Client, args: Args) -> int:
    return show_session(c, args, c.expire(args.id))


def h_refresh(c: Client, args: Args) -> int:
    return show_session(c, args, c.refresh(args.id, ttl=args.ttl, revive=args.revive))


def h_list(c: Client, args: Args) -> int:
    from itertools import islice

    limit = args.limit
    page = min(limit, PAGE_MAX) if limit else PAGE_MAX
    sessions = islice(c.iter_sessions(status=args.status, user=args.user, page=page), limit)
    if args.json:
        # Streamed page by page: a million sessions never sit in one string.
        render.write_json_array(sys.stdout, (render.session_dict(s) for s in sessions))
    else:
        out(render.session_table(list(sessions), now_us()))
    return EXIT_OK


def h_stats(c: Client, args: Args) -> int:
    import msgspec

    st = c.stats()
    emit(args, msgspec.to_builtins(st), lambda: render.stats_fields(st, now_us()))
    return EXIT_OK


def h_export(c: Client, args: Args) -> int:
    from sessionctl.export import write_sessions

    target = args.target
    if target is None:
        write_sessions(c, args.format, sys.stdout.buffer)
        return EXIT_OK
    try:
        count = write_sessions(c, args.format, target.file)
        target.commit()
    except OSError as exc:
        raise OutputFailed(f"cannot write {target.path}: {exc.strerror or exc}") from None
    emit(args, {"exported": count, "file": str(target.path)},
         lambda: render.escape_message(
             f"exported {count} session{'s' if count != 1 else ''} to {target.path}"))
    return EXIT_OK


class _StopNow(Exception):
    """A second SIGINT or SIGTERM during an import: stop at once."""


class _Signals:
    """SIGINT and SIGTERM while an import runs: the first is noted, and the
    import stops once the page in flight is answered, so that the count of
    committed sessions is exact; a second stops it at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._before: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._before[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, handler in self._before.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise _StopNow
        self.received = signum


def import_all(c: Client, args: Args) -> ImportResult:
    """Every page of ``args.loaded`` imported. A signal stops it with
    ``Interrupted``, which says how far it got and that a rerun is safe,
    and whose exit status is 128 + the signal's number, as a shell reports
    a process it killed."""
    import signal

    sessions = args.loaded.sessions
    total = ImportResult(reasons=[])
    forced = False
    with _Signals() as signals:
        try:
            if signals.received is None:
                for part in c.import_pages(sessions):
                    add_up(total, part)
                    if signals.received is not None:
                        break
        except _StopNow:
            forced = True
    if signals.received is None:
        return total
    name = signal.Signals(signals.received).name
    committed = total.imported + total.updated
    done = total.imported + total.updated + total.skipped
    how_far = (
        f"{committed} sessions were committed (imported {total.imported}, updated "
        f"{total.updated}; {total.skipped} skipped) of {len(sessions)}"
    )
    if forced:
        how_far = (f"at least {how_far}; a second signal cut the page in flight short, and "
                   f"it may have been committed too")
    elif done < len(sessions):
        how_far += f"; the other {len(sessions) - done} were not sent"
    raise Interrupted(
        f"import interrupted by {name}: {how_far}. Importing {args.file} again is safe "
        f"(a session already there is replaced only by a newer version of itself): a "
        f"rerun completes the import",
        128 + signals.received,
    )


def h_import(c: Client, args: Args) -> int:
    loaded = args.loaded
    result = import_all(c, args)
    # Records no request could carry are skipped here, as the daemon skips
    # those its rules refuse.
    skipped = result.skipped + len(loaded.refused)
    reasons = loaded.refused + result.reasons
    data = {
        "imported": result.imported,
        "updated": result.updated,
        "skipped": skipped,
        "unreadable": len(loaded.problems),
        "already_expired": result.already_expired,
        "reasons": reasons,
        "problems": loaded.problems,
    }

    def human() -> str:
        expired = result.already_expired
        lines = [
            f"imported {result.imported}, updated {result.updated}, skipped {skipped}, "
            f"unreadable {len(loaded.problems)} ({loaded.format} from {args.file})"
        ]
        if expired:
            lines.append(
                f"  {expired} of them already expired: kept for expired_retention from now"
            )
        lines += [f"  skipped {r}" for r in reasons]
        lines += [f"  unreadable: {p}" for p in loaded.problems]
        # The reasons quote ids and lines from the file, whatever it holds.
        return "\n".join(render.escape_message(line) for line in lines)

    emit(args, data, human)
    if loaded.problems:
        sys.stderr.write(
            f"sessionctl: error: {len(loaded.problems)} unreadable record(s) in {args.file} "
            f"were not imported (listed above)\n"
        )
        return EXIT_FAILED
    return EXIT_OK


def h_cleanup(c: Client, args: Args) -> int:
    import msgspec

    r = c.cleanup(before=args.before_us, dry_run=args.dry_run)

    def human() -> str:
        verb = "would remove" if r.dry_run else "removed"
        lines = [f"{verb} {r.removed_count} sessions, {r.remaining_count} remaining"]
        lines += [f"  {sid}" for sid in r.removed_ids]
        return "\n".join(lines)

    emit(args, msgspec.to_builtins(r), human)
    return EXIT_OK


def h_config(c: Client, args: Args) -> int:
    from sessiond.config import parse_value

    if args.value is not None:
        data = c.set_config(args.key, parse_value(args.value))
    elif args.key or args.json:
        data = c.config(args.key)
    else:
        data, sources = c.config_sources()
        out(render.config_table(data, sources))
        return EXIT_OK
    if args.key and args.value is None and not args.json:
        out(render.escape(render.meta_text(data[args.key])))
        return EXIT_OK
    emit(args, data, lambda: render.fields((k, render.meta_text(v)) for k, v in data.items()))
    return EXIT_OK


def h_compact(c: Client, args: Args) -> int:
    import msgspec

    r = c.compact()
    # A note replaces the sizes where there was nothing to compact (the
    # shared engine persists the sessions itself).
    emit(args, msgspec.to_builtins(r), lambda: (
        f"compact: {render.escape(r.note)}" if r.note is not None else
        f"compacted: {render.human_bytes(r.bytes_before)} -> {render.human_bytes(r.bytes_after)}, "
        f"{r.sessions} sessions kept, {r.seconds:.3f}s"
    ))
    return EXIT_OK


def h_watch(c: Client, args: Args) -> int:
    from sessiond.model import iso

    try:
        for ev in c.watch(user=args.user):
            if args.json:
                data: dict[str, Any] = {"event": ev.kind, "id": ev.sid, "at": iso(ev.at)}
                if ev.session is not None:
                    data["session"] = render.session_dict(ev.session)
                if ev.kind == "lagged":
                    data["dropped"] = ev.dropped
                out(render.to_json(data, indent=0).replace("\n", ""))
            elif ev.kind == "lagged":
                out(f"{iso(ev.at)} lagged, {ev.dropped} events dropped")
            elif ev.kind != "watching":
                user = f" user={render.escape(ev.session.user)}" if ev.session else ""
                out(f"{iso(ev.at)} {ev.kind} {render.escape(str(ev.sid))}{user}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def h_ping(c: Client, args: Args) -> int:
    p = c.ping()
    emit(args, {"pid": p.pid, "version": p.version, "uptime": round(p.uptime, 3),
                "socket": str(c.path)},
         lambda: f"pong from sessiond {p.version} (pid {p.pid}, up {format_duration(p.uptime)})")
    return EXIT_OK
