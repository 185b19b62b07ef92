"""The legacy ``session`` command line, served by sessiond.

``scripts/script.sh`` execs this module. It keeps every command, flag, JSON
shape and exit status of the legacy tool (docs/legacy.md), so that scripts
written against it keep working, while the daemon does the work.

Exit status: 0 done; 1 for everything else, as the legacy tool did (scripts
written against it test for non-zero):

* an unknown session: stdout ``{"ok": false, "error": "Session ID not found"}``,
  ID being the id asked for, verbatim;
* ``set`` on an expired session: stdout ``{"ok": false, "error": ...}``;
* bad usage, bad input, a refused setting, an unreachable daemon: stderr
  ``{"error": "..."}``, and nothing changes.

Where the legacy tool silently did the wrong thing (an unknown flag, an extra
argument, a bad ``--before``), this says so in the same stderr shape.

Speed: a ``get`` must cost one interpreter start and one round trip, so this
module parses by hand (no argparse), imports the client only for commands that
reach the daemon, and leaves rare needs (CSV, timestamp parsing) to the
commands that use them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sessiond import __version__
from sessiond.errors import InvalidRequest, SessionError, SessionExpired, SessionNotFound
from sessiond.limits import ID_RULE, MAX_TTL, valid_id

if TYPE_CHECKING:
    from sessionctl.client import Client
    from sessionctl.results import Session

NOT_FOUND = "Session {} not found"
HELP = """\
session - manage session state and lifecycle (served by sessiond)

Usage: script.sh COMMAND [ARGS]

Commands:
  create [--user USER] [--ttl SECONDS] [--meta k=v,k2=v2]
                                      create a session
  get SESSION_ID                      show a session
  set SESSION_ID KEY VALUE            set a metadata key (stored as a string)
  delete SESSION_ID                   delete a session
  list [--status active|expired] [--user USER] [--limit N]
                                      list sessions
  expire SESSION_ID                   mark a session expired
  refresh SESSION_ID [--ttl SECONDS]  extend a session from now (revives an
                                      expired one); ttl defaults to default_ttl
  stats                               summary statistics
  export [--format json|csv] [--output FILE]
                                      export every session
  cleanup [--before TIMESTAMP] [--dry-run]
                                      remove expired sessions (and those whose
                                      expires_at is before TIMESTAMP)
  config [KEY] [VALUE]                show or change settings
  help                                show this help
  version                             show the version

Output is JSON on stdout; errors are {"error": "..."} on stderr. Exit status
is 0 on success and 1 on any error.
"""


class Usage(Exception):
    """Bad usage or input: ``{"error": ...}`` on stderr, exit 1."""


class Refused(Exception):
    """The session cannot do that: ``{"ok": false, "error": ...}`` on stdout, exit 1."""


class About:
    """A command on one session: the daemon's "not found" becomes the
    legacy refusal naming the id that was asked for, verbatim."""

    __slots__ = ("sid",)

    def __init__(self, sid: str) -> None:
        self.sid = sid

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and issubclass(kind, SessionNotFound):
            raise Refused(NOT_FOUND.format(self.sid)) from None


# -- output --------------------------------------------------------------


def pretty(value: Any) -> None:
    # json.dumps(indent=2), as the legacy tool printed: same separators, same
    # \\u escapes of non-ASCII text.
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def one_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")


def show(s: Session) -> int:
    from sessionctl.render import legacy_record  # the client brought its imports already

    pretty({"ok": True, "session": legacy_record(s)})
    return 0


# -- arguments -----------------------------------------------------------


def parse(
    command: str, argv: Sequence[str], options: dict[str, bool], most: int
) -> tuple[list[str], dict[str, list[str]]]:
    """Positionals and ``{option: [values]}``. ``options`` maps each flag to
    whether it takes a value; ``--flag=value`` and ``--`` are understood."""
    positional: list[str] = []
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("-") and len(arg) > 1:
            name, eq, inline = arg.partition("=")
            if name not in options:
                raise Usage(f"Unknown option for {command}: {name}. Run 'help' for usage.")
            if not options[name]:
                if eq:
                    raise Usage(f"{name} takes no value")
                found.setdefault(name, []).append("")
                continue
            if eq:
                value = inline
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                raise Usage(f"{name} requires a value")
            found.setdefault(name, []).append(value)
            continue
        positional.append(arg)
    if len(positional) > most:
        raise Usage(f"Unexpected argument for {command}: {positional[most]}. Run 'help' for usage.")
    return positional, found


def last(found: dict[str, list[str]], name: str) -> str | None:
    values = found.get(name)
    return values[-1] if values else None


def only_positional(command: str, argv: Sequence[str], most: int) -> list[str]:
    # Commands without options take their arguments literally, so that a
    # VALUE or an id may start with a dash, as in the legacy tool.
    if len(argv) > most:
        raise Usage(f"Unexpected argument for {command}: {argv[most]}. Run 'help' for usage.")
    return list(argv)


def session_id(args: Sequence[str]) -> str:
    if not args or not args[0]:
        raise Usage("SESSION_ID required")
    sid = args[0]
    if not valid_id(sid):
        raise Usage(f"Invalid session ID {sid!r}: {ID_RULE}")
    return sid


def whole_number(name: str, text: str, top: int) -> int:
    # int() alone would take " 5", "+5" and "5_0".
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:
        raise Usage(f"{name} must be a whole number from 1 to {top}, not {text!r}")
    return int(text)


def parse_meta(values: list[str]) -> dict[str, str]:
    """``k=v,k2=v2``: each pair split at its first ``=``, key and value
    stripped. Repeated ``--meta`` options add up."""
    meta: dict[str, str] = {}
    for text in values:
        for pair in text.split(","):
            if not pair.strip():
                continue  # a trailing or doubled comma carries no pair
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise Usage(f"--meta takes k=v pairs separated by commas, not {pair.strip()!r}")
            meta[key.strip()] = value.strip()
    return meta


# -- commands ------------------------------------------------------------


def connect() -> Client:
    from sessionctl.client import Client
    from sessionctl.connection import NO_AUTOSTART_ENV

    class ShimClient(Client):
        # The shim has no flag of its own: only the environment turns
        # autostart off (Client reads it, for sessionctl and the shim alike).
        def _autostart_advice(self, off_by: str) -> str:
            return f"let script.sh start it (unset {NO_AUTOSTART_ENV})"

    return ShimClient()


def c_create(argv: Sequence[str]) -> int:
    _, found = parse("create", argv, {"--user": True, "--ttl": True, "--meta": True}, 0)
    user = last(found, "--user")
    if user is not None and not user:
        raise Usage("--user must not be empty")
    ttl_text = last(found, "--ttl")
    ttl = None if ttl_text is None else whole_number("--ttl", ttl_text, MAX_TTL)
    meta = parse_meta(found.get("--meta", []))
    with connect() as c:
        return show(c.create(user=user, ttl=ttl, meta=meta))


def c_get(argv: Sequence[str]) -> int:
    sid = session_id(only_positional("get", argv, 1))
    with connect() as c, About(sid):
        return show(c.get(sid))


def c_set(argv: Sequence[str]) -> int:
    args = only_positional("set", argv, 3)
    sid = session_id(args)
    if len(args) < 3:
        raise Usage("Usage: set SESSION_ID KEY VALUE")
    with connect() as c, About(sid):
        try:
            return show(c.set(sid, args[1], args[2]))
        except SessionExpired:
            # The legacy tool wrote meta into expired sessions, where the
            # next cleanup threw it away. The daemon refuses, and the shim
            # does not work around it: that would mean reviving the session
            # (moving its deadline, a worse surprise) or writing it back
            # whole by import (the lost-update race the daemon exists to
            # remove). Refused in the "not found" shape, so that scripts
            # checking "ok" or the exit status notice, and told what to do.
            raise Refused("Session expired; refresh it before set") from None


def c_delete(argv: Sequence[str]) -> int:
    sid = session_id(only_positional("delete", argv, 1))
    with connect() as c, About(sid):
        one_line({"ok": True, "deleted": c.delete(sid)})
    return 0


def c_list(argv: Sequence[str]) -> int:
    _, found = parse("list", argv, {"--status": True, "--user": True, "--limit": True}, 0)
    status = last(found, "--status")
    if status is not None and status not in ("active", "expired"):
        raise Usage(f"--status must be active or expired, not {status!r}")
    user = last(found, "--user")
    if user is not None and not user:
        raise Usage("--user must not be empty")
    limit_text = last(found, "--limit")
    limit = None if limit_text is None else whole_number("--limit", limit_text, 2**31)
    from sessionctl.render import legacy_record

    with connect() as c:
        sessions = [legacy_record(s) for s in c.list(status=status, user=user, limit=limit)]
    pretty({"ok": True, "count": len(sessions), "sessions": sessions})
    return 0


def c_expire(argv: Sequence[str]) -> int:
    sid = session_id(only_positional("expire", argv, 1))
    with connect() as c, About(sid):
        return show(c.expire(sid))


def c_refresh(argv: Sequence[str]) -> int:
    args, found = parse("refresh", argv, {"--ttl": True}, 1)
    sid = session_id(args)
    ttl_text = last(found, "--ttl")
    ttl = None if ttl_text is None else whole_number("--ttl", ttl_text, MAX_TTL)
    with connect() as c, About(sid):
        if ttl is None:
            # Legacy refresh reset ttl to default_ttl, not to the session's own.
            ttl = int(c.config("default_ttl")["default_ttl"])
        try:
            return show(c.refresh(sid, ttl=ttl, revive=True))
        except SessionExpired as exc:
            # Only max_lifetime refuses a revive: say why, in the refusal shape.
            raise Refused(str(exc)) from None


def c_stats(argv: Sequence[str]) -> int:
    only_positional("stats", argv, 0)
    with connect() as c:
        st = c.stats()
    pretty({"ok": True, "stats": {
        "total_sessions": st.total_sessions,
        "active": st.active,
        "expired": st.expired,
        "unique_users": st.unique_users,
        "average_ttl_seconds": round(st.average_ttl_seconds, 1),
        "data_file": st.journal_path,
    }})
    return 0


def c_export(argv: Sequence[str]) -> int:
    _, found = parse("export", argv, {"--format": True, "--output": True}, 0)
    fmt = last(found, "--format") or "json"
    if fmt not in ("json", "csv"):
        raise Usage(f"--format must be json or csv, not {fmt!r}")
    output = last(found, "--output")
    if output is not None and not output:
        raise Usage("--output must name a file")
    from sessionctl.export import write_legacy

    with connect() as c:
        if output is None:
            write_legacy(c, fmt, sys.stdout)
            return 0
        # Written atomically (sessiond.diskio): an interrupted export never
        # leaves a half-written file under the requested name, and the temp
        # file is a fresh 0600 one, so nobody else can have made it first
        # (the legacy tool's predictable temp name let another user who
        # pre-created it own and read the export).
        import io

        from sessiond.diskio import AtomicFile

        try:
            with AtomicFile(output) as target:
                text = io.TextIOWrapper(target.file, encoding="utf-8", newline="")
                count = write_legacy(c, fmt, text)
                text.flush()
                text.detach()  # the binary file stays open for the commit
        except OSError as exc:
            raise Usage(f"cannot write {output}: {exc.strerror}") from None
    one_line({"ok": True, "exported": count, "file": output})
    return 0


def c_cleanup(argv: Sequence[str]) -> int:
    _, found = parse("cleanup", argv, {"--before": True, "--dry-run": False}, 0)
    before_text = last(found, "--before")
    before = None
    if before_text is not None:
        from sessiond.model import now_us
        from sessiond.timeparse import parse_legacy_before

        try:
            before = parse_legacy_before(before_text, now_us())
        except ValueError as exc:
            # The legacy tool took an unparsable --before as "now".
            raise Usage(f"--before: {exc}") from None
    from sessionctl.results import to_datetime

    with connect() as c:
        r = c.cleanup(before=None if before is None else to_datetime(before),
                      dry_run="--dry-run" in found)
    pretty({
        "ok": True,
        "dry_run": r.dry_run,
        "removed_count": r.removed_count,
        "remaining_count": r.remaining_count,
        "removed_ids": r.removed_ids,
    })
    return 0


def c_config(argv: Sequence[str]) -> int:
    args = only_positional("config", argv, 2)
    with connect() as c:
        if not args:
            pretty({"ok": True, "config": c.config()})
        elif len(args) == 1:
            # A key the daemon does not have reads as null, as an unset key
            # did in the legacy tool; only writing one is an error.
            one_line({"ok": True, args[0]: c.config().get(args[0])})
        else:
            try:
                value = json.loads(args[1])
            except ValueError:
                value = args[1]
            # The daemon validates keys and values (the legacy tool stored
            # anything): a refusal is an error and changes nothing, and
            # quotes the value as it was typed (1e3, not the 1000.0 sent).
            try:
                updated = c.set_config(args[0], value)
            except InvalidRequest as exc:
                from sessiond.config import as_typed

                raise Usage(as_typed(str(exc), args[0], value, args[1])) from None
            one_line({"ok": True, "updated": {args[0]: updated.get(args[0], value)}})
    return 0


def c_version(argv: Sequence[str]) -> int:
    only_positional("version", argv, 0)
    one_line({"tool": "session", "version": __version__})
    return 0


def c_help(argv: Sequence[str]) -> int:
    # The legacy contract shows one usage text, and no help of a command:
    # ``help create`` would print the same text as if it had been read.
    only_positional("help", argv, 0)
    sys.stdout.write(HELP)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "create": c_create, "get": c_get, "set": c_set, "delete": c_delete, "list": c_list,
    "expire": c_expire, "refresh": c_refresh, "stats": c_stats, "export": c_export,
    "cleanup": c_cleanup, "config": c_config, "help": c_help, "--help": c_help,
    "-h": c_help, "version": c_version,
}


def error(message: str) -> int:
    sys.stderr.write(json.dumps({"error": message}) + "\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "help"
    handler = COMMANDS.get(command)
    if handler is None:
        return error(f"Unknown command: {command}. Run 'help' for usage.")
    try:
        status = handler(args[1:])
        # Flushed here, not at exit, so that a closed pipe is handled below.
        sys.stdout.flush()
        return status
    except Usage as exc:
        return error(str(exc))
    except Refused as exc:
        one_line({"ok": False, "error": str(exc)})
        return 1
    except SessionError as exc:  # DaemonUnavailable included
        return error(str(exc))
    except BrokenPipeError:
        # The reader went away (``| head``): not an error, and nothing more
        # can be written; keep the interpreter's final flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
