"""``sessionctl``: the command line.

Exit status: 0 done; 1 the operation failed (not found, expired, conflict,
refused); 2 bad usage or an invalid value; 3 the daemon cannot be reached.
Results go to stdout, errors to stderr as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sessiond import __version__
from sessiond.errors import DaemonUnavailable, InvalidRequest, SessionError
from sessiond.model import STATUSES, format_duration, now_us, valid_id
from sessionctl import render
from sessionctl.client import Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage: exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see 'sessionctl help')")


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ttl must be a positive whole number of seconds, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"ttl must be a positive whole number of seconds, not {text!r}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"limit must be a positive whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"limit must be a positive whole number, not {text!r}")
    return value


def _sid(text: str) -> str:
    if not valid_id(text):
        raise argparse.ArgumentTypeError(
            f"invalid session id {text!r}: use 1-128 of A-Z a-z 0-9 . _ -"
        )
    return text


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--meta takes KEY=VALUE, not {text!r}")
    return key.strip(), value


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help="daemon socket (env SESSIOND_SOCKET)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for programs")
    common.add_argument("--no-autostart", action="store_true", default=argparse.SUPPRESS,
                        help="do not start sessiond when none answers (env SESSIONCTL_NO_AUTOSTART=1)")
    p = Parser(prog="sessionctl", parents=[common],
               description="Talk to sessiond, the per-user session-state daemon.",
               epilog="Exit status: 0 done, 1 operation failed, 2 bad usage, 3 daemon unreachable.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def cmd(name: str, help: str) -> Parser:
        return sub.add_parser(name, parents=[common], help=help, description=help)  # type: ignore[no-any-return]

    c = cmd("create", "create a session and print its id")
    c.add_argument("--user", help="owner (default: anonymous)")
    c.add_argument("--ttl", type=_ttl, help="seconds until it expires (default: config default_ttl)")
    c.add_argument("--meta", type=_meta, action="append", default=[], metavar="KEY=VALUE",
                   help="metadata; repeat for more")
    c.add_argument("--id", type=_sid, help="use this id instead of a random one")
    c = cmd("get", "show a session")
    c.add_argument("id", type=_sid)
    c.add_argument("--touch", action="store_true", help="update last access and slide the deadline")
    c = cmd("set", "set a metadata key (value stored as a string)")
    c.add_argument("id", type=_sid)
    c.add_argument("key")
    c.add_argument("value")
    c = cmd("unset", "remove a metadata key")
    c.add_argument("id", type=_sid)
    c.add_argument("key")
    c = cmd("delete", "delete a session")
    c.add_argument("id", type=_sid)
    c = cmd("list", "list sessions in creation order")
    c.add_argument("--status", choices=STATUSES)
    c.add_argument("--user")
    c.add_argument("--limit", type=_limit)
    c = cmd("expire", "expire a session now")
    c.add_argument("id", type=_sid)
    c = cmd("refresh", "extend a session: deadline = now + ttl")
    c.add_argument("id", type=_sid)
    c.add_argument("--ttl", type=_ttl, help="new ttl (default: keep the session's)")
    c.add_argument("--revive", action="store_true", help="allow refreshing an expired session")
    cmd("stats", "show counts and daemon health")
    c = cmd("export", "write every session as JSON, JSONL or CSV")
    c.add_argument("--format", choices=("json", "jsonl", "csv"), default="json")
    c.add_argument("--output", metavar="FILE", help="write to FILE atomically instead of stdout")
    c = cmd("import", "import sessions from a legacy data.jsonl or an export")
    c.add_argument("file")
    c = cmd("cleanup", "remove expired sessions")
    c.add_argument("--before", metavar="TIMESTAMP",
                   help="also remove sessions whose deadline is before this (ISO 8601 or Unix seconds)")
    c.add_argument("--dry-run", action="store_true", help="report, change nothing")
    c = cmd("config", "show or change settings")
    c.add_argument("key", nargs="?")
    c.add_argument("value", nargs="?", help="new value (parsed as JSON when it is JSON)")
    cmd("compact", "rewrite the journal now")
    c = cmd("watch", "print events as they happen, until interrupted")
    c.add_argument("--user")
    cmd("ping", "check that the daemon answers")
    cmd("version", "print the version")
    c = cmd("help", "show help for sessionctl or a command")
    c.add_argument("topic", nargs="?")
    return p


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    out(render.to_json(data) if args.json else human())


def connect(args: argparse.Namespace) -> Client:
    no_auto = args.no_autostart or os.environ.get("SESSIONCTL_NO_AUTOSTART", "") not in ("", "0")
    return Client(getattr(args, "socket", None), autostart=not no_auto)


def run(args: argparse.Namespace, parser: Parser) -> int:
    command = args.command
    if command in (None, "help"):
        topic = getattr(args, "topic", None)
        if topic:
            sub = _subparser(parser, topic)
            if sub is None:
                raise UsageError(f"no such command {topic!r}")
            sub.print_help()
        else:
            parser.print_help()
        return EXIT_OK
    if command == "version":
        emit(args, {"sessionctl": __version__}, lambda: f"sessionctl {__version__}")
        return EXIT_OK
    before = None
    if command == "cleanup" and args.before is not None:
        from sessiond.model import parse_time

        try:
            before = parse_time(args.before)
        except ValueError as exc:
            raise UsageError(f"--before: {exc}") from None
    with connect(args) as c:
        handler = HANDLERS[command]
        if command == "cleanup":
            args.before_us = before
        return handler(c, args)


def _subparser(parser: Parser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser | None = action.choices.get(name)
            return found
    return None


def show_session(c: Client, args: argparse.Namespace, s: Any) -> int:
    emit(args, render.session_dict(s), lambda: render.session_fields(s, now_us()))
    return EXIT_OK


def h_create(c: Client, args: argparse.Namespace) -> int:
    s = c.create(user=args.user, ttl=args.ttl, meta=dict(args.meta), id=args.id)
    emit(args, render.session_dict(s), lambda: s.id)
    return EXIT_OK


def h_get(c: Client, args: argparse.Namespace) -> int:
    return show_session(c, args, c.get(args.id, touch=args.touch))


def h_set(c: Client, args: argparse.Namespace) -> int:
    return show_session(c, args, c.set(args.id, args.key, args.value))


def h_unset(c: Client, args: argparse.Namespace) -> int:
    return show_session(c, args, c.unset(args.id, args.key))


def h_delete(c: Client, args: argparse.Namespace) -> int:
    sid = c.delete(args.id)
    emit(args, {"deleted": sid}, lambda: f"deleted {sid}")
    return EXIT_OK


def h_expire(c: Client, args: argparse.Namespace) -> int:
    return show_session(c, args, c.expire(args.id))


def h_refresh(c: Client, args: argparse.Namespace) -> int:
    return show_session(c, args, c.refresh(args.id, ttl=args.ttl, revive=args.revive))


def h_list(c: Client, args: argparse.Namespace) -> int:
    sessions = c.list(status=args.status, user=args.user, limit=args.limit)
    if args.json:
        out(render.to_json([render.session_dict(s) for s in sessions]))
    else:
        out(render.session_table(sessions, now_us()))
    return EXIT_OK


def h_stats(c: Client, args: argparse.Namespace) -> int:
    import msgspec

    st = c.stats()
    data = msgspec.to_builtins(st)

    def human() -> str:
        rows = [(k.replace("_", " "), v) for k, v in data.items()]
        return render.fields(rows)

    emit(args, data, human)
    return EXIT_OK


def h_export(c: Client, args: argparse.Namespace) -> int:
    from sessionctl.export import export

    count, target = export(c, args.format, args.output)
    if args.output:
        emit(args, {"exported": count, "file": target},
             lambda: f"exported {count} sessions to {target}")
    return EXIT_OK


def h_import(c: Client, args: argparse.Namespace) -> int:
    from sessiond.legacy import read_sessions

    try:
        loaded = read_sessions(Path(args.file))
    except OSError as exc:
        raise UsageError(str(exc.strerror)) from None
    result = c.import_sessions(loaded.sessions)
    data = {
        "imported": result.imported,
        "updated": result.updated,
        "skipped": result.skipped,
        "unreadable": len(loaded.problems),
        "reasons": result.reasons,
        "problems": loaded.problems,
    }

    def human() -> str:
        lines = [
            f"imported {result.imported}, updated {result.updated}, skipped {result.skipped}, "
            f"unreadable {len(loaded.problems)} ({loaded.format} from {args.file})"
        ]
        lines += [f"  skipped {r}" for r in result.reasons]
        lines += [f"  unreadable: {p}" for p in loaded.problems]
        return "\n".join(lines)

    emit(args, data, human)
    if loaded.problems:
        sys.stderr.write(
            f"sessionctl: error: {len(loaded.problems)} unreadable record(s) in {args.file} "
            f"were not imported (listed above)\n"
        )
        return EXIT_FAILED
    return EXIT_OK


def h_cleanup(c: Client, args: argparse.Namespace) -> int:
    import msgspec

    r = c.cleanup(before=args.before_us, dry_run=args.dry_run)

    def human() -> str:
        verb = "would remove" if r.dry_run else "removed"
        lines = [f"{verb} {r.removed_count} sessions, {r.remaining_count} remaining"]
        lines += [f"  {sid}" for sid in r.removed_ids]
        return "\n".join(lines)

    emit(args, msgspec.to_builtins(r), human)
    return EXIT_OK


def h_config(c: Client, args: argparse.Namespace) -> int:
    from sessiond.config import parse_value

    if args.value is not None:
        data = c.set_config(args.key, parse_value(args.value))
    else:
        data = c.config(args.key)
    if args.key and args.value is None and not args.json:
        out(render.meta_text(data[args.key]))
        return EXIT_OK
    emit(args, data, lambda: render.fields((k, render.meta_text(v)) for k, v in data.items()))
    return EXIT_OK


def h_compact(c: Client, args: argparse.Namespace) -> int:
    import msgspec

    r = c.compact()
    emit(args, msgspec.to_builtins(r), lambda: (
        f"compacted: {render.human_bytes(r.bytes_before)} -> {render.human_bytes(r.bytes_after)}, "
        f"{r.sessions} sessions kept, {r.seconds:.3f}s"
    ))
    return EXIT_OK


def h_watch(c: Client, args: argparse.Namespace) -> int:
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
                user = f" user={ev.session.user}" if ev.session else ""
                out(f"{iso(ev.at)} {ev.kind} {ev.sid}{user}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def h_ping(c: Client, args: argparse.Namespace) -> int:
    p = c.ping()
    emit(args, {"pid": p.pid, "version": p.version, "uptime": round(p.uptime, 3),
                "socket": str(c.path)},
         lambda: f"pong from sessiond {p.version} (pid {p.pid}, up {format_duration(p.uptime)})")
    return EXIT_OK


HANDLERS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "create": h_create, "get": h_get, "set": h_set, "unset": h_unset, "delete": h_delete,
    "expire": h_expire, "refresh": h_refresh, "list": h_list, "stats": h_stats,
    "export": h_export, "import": h_import, "cleanup": h_cleanup, "config": h_config,
    "compact": h_compact, "watch": h_watch, "ping": h_ping,
}


def fail(message: str, status: int) -> int:
    sys.stderr.write(f"sessionctl: error: {message}\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for name, default in (("json", False), ("no_autostart", False), ("socket", None)):
            if not hasattr(args, name):
                setattr(args, name, default)
        return run(args, parser)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except DaemonUnavailable as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except InvalidRequest as exc:
        return fail(str(exc), EXIT_USAGE)
    except SessionError as exc:
        return fail(str(exc), EXIT_FAILED)
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
