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

from sessionctl import render
from sessionctl.client import Client
from sessiond import __version__
from sessiond.errors import DaemonUnavailable, InvalidRequest, SessionError
from sessiond.model import KEY_MAX, MAX_TTL, STATUSES, format_duration, now_us, valid_id
from sessiond.protocol import PAGE_MAX, PROTOCOL_VERSION

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage: exit status 2."""


class OutputFailed(Exception):
    """A result could not be written where it was asked to go: exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A subcommand's prog is "sessionctl NAME": point at that command's help.
        topic = self.prog.partition(" ")[2]
        raise UsageError(f"{message} (see 'sessionctl help{' ' + topic if topic else ''}')")


def _whole(text: str, what: str, high: int) -> int:
    # int() would also take " 7", "+7", "1_0" and non-ASCII digits.
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= high:
        raise argparse.ArgumentTypeError(
            f"{what} must be a whole number from 1 to {high}, not {text!r}"
        )
    return int(text)


def _ttl(text: str) -> int:
    return _whole(text, "ttl (seconds)", MAX_TTL)


def _limit(text: str) -> int:
    return _whole(text, "limit", 2**63 - 1)


def _sid(text: str) -> str:
    if not valid_id(text):
        raise argparse.ArgumentTypeError(
            f"invalid session id {text!r}: use 1-128 of A-Z a-z 0-9 . _ -"
        )
    return text


def _user(text: str) -> str:
    if not 1 <= len(text) <= 256:
        raise argparse.ArgumentTypeError("user must be 1 to 256 characters")
    return text


def _key(text: str) -> str:
    if not 1 <= len(text) <= KEY_MAX:
        raise argparse.ArgumentTypeError(
            f"meta key must be 1 to {KEY_MAX} characters, not {text!r}"
        )
    return text


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--meta takes KEY=VALUE, not {text!r}")
    return _key(key), value


def _path(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a path must not be empty")
    return text


GLOBAL_DESTS = frozenset({"help", "socket", "json", "no_autostart"})


class TopParser(Parser):
    """``sessionctl``, ``sessionctl -h`` and ``sessionctl help``: one overview
    that lists every command with its arguments."""

    def format_help(self) -> str:
        lines = [
            "usage: sessionctl [--socket PATH] [--json] [--no-autostart] COMMAND [ARGS]",
            "",
            "Talk to sessiond, the per-user session-state daemon (started on first use).",
            "",
            "commands:",
        ]
        for name, sub in subcommands(self).items():
            lines.append(f"  {synopsis(name, sub)}")
            lines.append(f"      {sub.description}")
        lines += [
            "",
            "options, before or after the command:",
            "  --socket PATH   the daemon's socket (else $SESSIOND_SOCKET, else the default)",
            "  --json          print the result as JSON on stdout, and nothing else",
            "  --no-autostart  do not start sessiond when none answers "
            "(or SESSIONCTL_NO_AUTOSTART=1)",
            "",
            "Run 'sessionctl help COMMAND' for a command's options.",
            "Exit status: 0 done; 1 the operation failed; 2 bad usage or invalid value; "
            "3 the daemon cannot be reached.",
        ]
        return "\n".join(lines) + "\n"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def synopsis(name: str, sub: argparse.ArgumentParser) -> str:
    """``create [--user U] [--ttl S] [--meta K=V]... [--id ID]``, from the
    parser itself so that the overview cannot drift from what is accepted."""
    parts = [name]
    optional_positionals: list[str] = []
    for action in sub._actions:
        if action.dest in GLOBAL_DESTS:
            continue
        if action.choices is not None and action.metavar is None:
            value = "|".join(str(c) for c in action.choices)
        else:
            value = str(action.metavar or action.dest.upper())
        if not action.option_strings:
            if action.nargs == "?":
                optional_positionals.append(value)
            else:
                parts.append(value)
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:
            parts.append(f"[{flag}]")
        elif isinstance(action, argparse._AppendAction):
            parts.append(f"[{flag} {value}]...")
        else:
            parts.append(f"[{flag} {value}]")
    if optional_positionals:
        nested = ""
        for value in reversed(optional_positionals):
            nested = f"[{value}{' ' + nested if nested else ''}]"
        parts.append(nested)
    return " ".join(parts)


def build_parser() -> TopParser:
    common = Parser(add_help=False, allow_abbrev=False)
    common.add_argument("--socket", type=_path, metavar="PATH", default=argparse.SUPPRESS,
                        help="the daemon's socket (else $SESSIOND_SOCKET, else the default)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON on stdout, and nothing else")
    common.add_argument("--no-autostart", action="store_true", default=argparse.SUPPRESS,
                        help="do not start sessiond when none answers "
                             "(or SESSIONCTL_NO_AUTOSTART=1)")
    p = TopParser(prog="sessionctl", parents=[common], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def cmd(name: str, help: str) -> Parser:
        made: Parser = sub.add_parser(name, parents=[common], help=help, description=help,
                                      allow_abbrev=False)
        return made

    c = cmd("create", "create a session and print its id")
    c.add_argument("--user", type=_user, metavar="U", help="owner (default: anonymous)")
    c.add_argument("--ttl", type=_ttl, metavar="S",
                   help="seconds until it expires (default: the default_ttl setting)")
    c.add_argument("--meta", type=_meta, action="append", default=[], metavar="K=V",
                   help="a metadata string; repeat for more")
    c.add_argument("--id", type=_sid, metavar="ID", help="use this id instead of a random one")
    c = cmd("get", "show a session, with the time it has left")
    c.add_argument("id", type=_sid, metavar="ID")
    c.add_argument("--touch", action="store_true", help="update last access and slide the deadline")
    c = cmd("set", "set a metadata key (the value is stored as a string)")
    c.add_argument("id", type=_sid, metavar="ID")
    c.add_argument("key", type=_key, metavar="KEY")
    c.add_argument("value", metavar="VALUE")
    c = cmd("unset", "remove a metadata key")
    c.add_argument("id", type=_sid, metavar="ID")
    c.add_argument("key", type=_key, metavar="KEY")
    c = cmd("delete", "delete a session")
    c.add_argument("id", type=_sid, metavar="ID")
    c = cmd("list", "list sessions in creation order, with a count")
    c.add_argument("--status", choices=STATUSES)
    c.add_argument("--user", type=_user, metavar="U")
    c.add_argument("--limit", type=_limit, metavar="N", help="at most N sessions")
    c = cmd("expire", "expire a session now")
    c.add_argument("id", type=_sid, metavar="ID")
    c = cmd("refresh", "extend a session: deadline = now + ttl")
    c.add_argument("id", type=_sid, metavar="ID")
    c.add_argument("--ttl", type=_ttl, metavar="S", help="new ttl (default: keep the session's)")
    c.add_argument("--revive", action="store_true", help="allow refreshing an expired session")
    cmd("stats", "show counts and the daemon's health")
    c = cmd("export", "write every session as JSON, JSONL or CSV")
    c.add_argument("--format", choices=("json", "jsonl", "csv"), default="json")
    c.add_argument("--output", type=_path, metavar="FILE",
                   help="write to FILE atomically instead of stdout")
    c = cmd("import", "import sessions from a legacy data.jsonl or an export")
    c.add_argument("file", type=_path, metavar="FILE")
    c = cmd("cleanup", "remove expired sessions")
    c.add_argument("--before", metavar="TIMESTAMP",
                   help="also remove sessions whose deadline is before this "
                        "(ISO 8601 or Unix seconds)")
    c.add_argument("--dry-run", action="store_true", help="report, change nothing")
    c = cmd("config", "show or change settings (validated, applied live, persisted)")
    c.add_argument("key", nargs="?", metavar="KEY")
    c.add_argument("value", nargs="?", metavar="VALUE",
                   help="new value (parsed as JSON when it is JSON, else a string)")
    cmd("compact", "rewrite the journal now")
    c = cmd("watch", "print events as they happen, until interrupted")
    c.add_argument("--user", type=_user, metavar="U")
    cmd("ping", "check that the daemon answers")
    cmd("version", "print the version")
    c = cmd("help", "show this overview, or a command's options")
    c.add_argument("topic", nargs="?", metavar="COMMAND")
    return p


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    out(render.to_json(data) if args.json else human())


def connect(args: argparse.Namespace) -> Client:
    no_auto = args.no_autostart or os.environ.get("SESSIONCTL_NO_AUTOSTART", "") not in ("", "0")
    return Client(args.socket, autostart=not no_auto)


def run(args: argparse.Namespace, parser: Parser) -> int:
    command = args.command
    if command is None:
        raise UsageError("no command given; run 'sessionctl help' for the list of commands")
    if command == "help":
        if args.topic:
            sub = subcommands(parser).get(args.topic)
            if sub is None:
                raise UsageError(f"no such command {args.topic!r}; run 'sessionctl help'")
            out(sub.format_help().rstrip("\n"))
        else:
            out(parser.format_help().rstrip("\n"))
        return EXIT_OK
    if command == "version":
        emit(args, {"sessionctl": __version__, "protocol": PROTOCOL_VERSION},
             lambda: f"sessionctl {__version__} (protocol {PROTOCOL_VERSION})")
        return EXIT_OK
    # Everything that can be checked here is, before the daemon is reached
    # (or started): bad input must change nothing anywhere.
    prepare = PREPARE.get(command)
    undo = prepare(args) if prepare is not None else None
    try:
        with connect(args) as c:
            return HANDLERS[command](c, args)
    finally:
        if undo is not None:
            undo()


def prepare_cleanup(args: argparse.Namespace) -> None:
    from sessiond.model import parse_time

    args.before_us = None
    if args.before is not None:
        try:
            args.before_us = parse_time(args.before)
        except ValueError as exc:
            raise UsageError(f"--before: {exc}") from None


def prepare_import(args: argparse.Namespace) -> None:
    from sessiond.legacy import read_sessions

    try:
        args.loaded = read_sessions(Path(args.file))
    except OSError as exc:
        raise UsageError(f"{exc.strerror}; give the path of a data.jsonl or an export") from None


def prepare_export(args: argparse.Namespace) -> Callable[[], None] | None:
    from sessionctl.export import Output

    args.target = None
    if args.output is None:
        return None
    try:
        target = Output.open(Path(args.output))
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror}") from None
    args.target = target
    return target.discard


PREPARE: dict[str, Callable[[argparse.Namespace], Callable[[], None] | None]] = {
    "cleanup": prepare_cleanup,
    "import": prepare_import,
    "export": prepare_export,
}


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


def h_stats(c: Client, args: argparse.Namespace) -> int:
    import msgspec

    st = c.stats()
    emit(args, msgspec.to_builtins(st), lambda: render.stats_fields(st, now_us()))
    return EXIT_OK


def h_export(c: Client, args: argparse.Namespace) -> int:
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
         lambda: f"exported {count} session{'s' if count != 1 else ''} to {target.path}")
    return EXIT_OK


def h_import(c: Client, args: argparse.Namespace) -> int:
    loaded = args.loaded
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
    if sys.stdout is None:
        # Started with fd 1 closed: a result could not be reported, so do
        # not change anything.
        return fail("standard output is closed; nothing was done", EXIT_FAILED)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for name, default in (("json", False), ("no_autostart", False), ("socket", None)):
            if not hasattr(args, name):
                setattr(args, name, default)
        status = run(args, parser)
        # Flushed here, not at exit, so that a closed pipe is handled below.
        sys.stdout.flush()
        return status
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except DaemonUnavailable as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except InvalidRequest as exc:
        return fail(str(exc), EXIT_USAGE)
    except SessionError as exc:
        return fail(str(exc), EXIT_FAILED)
    except OutputFailed as exc:
        return fail(str(exc), EXIT_FAILED)
    except BrokenPipeError:
        # The reader went away (``| head``): what it wanted, it has. Point
        # stdout at /dev/null so the interpreter's last flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}", EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
