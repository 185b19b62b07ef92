"""``sessionctl``: the command line.

Exit status: 0 done; 1 the operation failed (not found, expired, conflict,
refused); 2 bad usage or an invalid value; 3 the daemon cannot be reached.
Results go to stdout, errors to stderr as one line.

Starting the interpreter and importing is most of what a command costs, so
this module imports only what the command at hand needs. ``COMMANDS`` is the
one description of the command line. ``parse_fast`` reads the ordinary
command lines with it; argparse (``sessionctl.usage``, built from the same
table) is imported only for help and for whatever ``parse_fast`` does not
take as it stands, so every help text and usage error is argparse's. The
client and the output code (``sessionctl.commands``) are imported only by
commands that talk to the daemon.
"""

from __future__ import annotations

import os
import sys

from sessiond import PROTOCOL_VERSION, __version__
from sessiond.errors import DaemonUnavailable, InvalidRequest, SessionError

# Importing typing would cost ``sessionctl version`` a fifth of its time;
# mypy takes a module-level TYPE_CHECKING as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sessionctl.usage import build_parser as build_parser
    from sessionctl.usage import subcommands as subcommands

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage: exit status 2."""


class OutputFailed(Exception):
    """A result could not be written where it was asked to go: exit status 1."""


class BadValue(ValueError):
    """An argument's value is not acceptable; argparse reports the message as
    ``argument NAME: message``."""


class Args:
    """A parsed command line, one attribute per argument: what argparse's
    Namespace holds, without importing argparse."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:
        # Which attributes exist depends on the command, as with argparse.
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


# -- argument values -------------------------------------------------------


def _whole(text: str, what: str, high: int) -> int:
    # int() would also take " 7", "+7", "1_0" and non-ASCII digits.
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= high:
        raise BadValue(f"{what} must be a whole number from 1 to {high}, not {text!r}")
    return int(text)


def _ttl(text: str) -> int:
    from sessiond.limits import MAX_TTL

    return _whole(text, "ttl (seconds)", MAX_TTL)


def _limit(text: str) -> int:
    return _whole(text, "limit", 2**63 - 1)


def _version(text: str) -> int:
    return _whole(text, "version", 2**63 - 1)


def _sid(text: str) -> str:
    from sessiond.limits import valid_id

    if not valid_id(text):
        raise BadValue(f"invalid session id {text!r}: use 1-128 of A-Z a-z 0-9 . _ -")
    return text


def _user(text: str) -> str:
    from sessiond.limits import USER_MAX

    if not 1 <= len(text) <= USER_MAX:
        raise BadValue(f"user must be 1 to {USER_MAX} characters")
    return text


def _key(text: str) -> str:
    from sessiond.limits import KEY_MAX

    if not 1 <= len(text) <= KEY_MAX:
        raise BadValue(f"meta key must be 1 to {KEY_MAX} characters, not {text!r}")
    return text


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadValue(f"--meta takes KEY=VALUE, not {text!r}")
    return _key(key), value


def _path(text: str) -> str:
    if not text:
        raise BadValue("a path must not be empty")
    return text


def _statuses() -> Sequence[str]:
    # Looked up when needed: sessiond.model imports msgspec.
    from sessiond.model import STATUSES

    return STATUSES


# -- the command line ------------------------------------------------------

# Kinds of argument, as argparse would declare them.
POSITIONAL = "positional"  # required
OPTIONAL = "optional"  # nargs="?"
VALUE = "value"  # --flag VALUE; the last one given wins
APPEND = "append"  # --flag VALUE, repeatable
FLAG = "flag"  # store_true


class Arg:
    """One argument of a command, read by both ``parse_fast`` and argparse."""

    __slots__ = ("name", "kind", "check", "dest", "metavar", "help", "choices", "default")

    def __init__(
        self,
        name: str,
        kind: str = POSITIONAL,
        check: Callable[[str], object] | None = None,
        *,
        metavar: str | None = None,
        help: str | None = None,
        choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        default: object = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.check = check
        self.dest = name.lstrip("-").replace("-", "_")
        self.metavar = metavar
        self.help = help
        self.choices = choices
        self.default = default

    def allowed(self) -> Sequence[str] | None:
        return self.choices() if callable(self.choices) else self.choices


# Accepted before or after the command; not given means the default here.
GLOBALS = (
    Arg("--socket", VALUE, _path, metavar="PATH",
        help="the daemon's socket (else $SESSIOND_SOCKET, else the default)"),
    Arg("--json", FLAG, help="print the result as JSON on stdout, and nothing else"),
    Arg("--no-autostart", FLAG,
        help="do not start sessiond when none answers (or SESSIONCTL_NO_AUTOSTART=1)"),
)
GLOBAL_DEFAULTS: dict[str, object] = {"socket": None, "json": False, "no_autostart": False}

# name: (description, arguments); in the order the overview lists them.
COMMANDS: dict[str, tuple[str, tuple[Arg, ...]]] = {
    "create": ("create a session and print its id", (
        Arg("--user", VALUE, _user, metavar="U", help="owner (default: anonymous)"),
        Arg("--ttl", VALUE, _ttl, metavar="S",
            help="seconds until it expires (default: the default_ttl setting)"),
        Arg("--meta", APPEND, _meta, metavar="K=V", help="a metadata string; repeat for more"),
        Arg("--id", VALUE, _sid, metavar="ID", help="use this id instead of a random one"),
    )),
    "get": ("show a session, with the time it has left", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("--touch", FLAG, help="update last access and slide the deadline"),
    )),
    "set": ("set a metadata key (the value is stored as a string)", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("key", check=_key, metavar="KEY"),
        Arg("value", metavar="VALUE"),
        Arg("--expect-version", VALUE, _version, metavar="N",
            help="only if the session is still at version N (else a conflict, exit 1)"),
    )),
    "unset": ("remove a metadata key", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("key", check=_key, metavar="KEY"),
        Arg("--expect-version", VALUE, _version, metavar="N",
            help="only if the session is still at version N (else a conflict, exit 1)"),
    )),
    "delete": ("delete a session", (
        Arg("id", check=_sid, metavar="ID"),
    )),
    "list": ("list sessions in creation order, with a count", (
        Arg("--status", VALUE, choices=_statuses),
        Arg("--user", VALUE, _user, metavar="U"),
        Arg("--limit", VALUE, _limit, metavar="N", help="at most N sessions"),
    )),
    "expire": ("expire a session now", (
        Arg("id", check=_sid, metavar="ID"),
    )),
    "refresh": ("extend a session: deadline = now + ttl", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("--ttl", VALUE, _ttl, metavar="S", help="new ttl (default: keep the session's)"),
        Arg("--revive", FLAG, help="allow refreshing an expired session"),
    )),
    "stats": ("show counts and the daemon's health", ()),
    "export": ("write every session as JSON, JSONL or CSV", (
        Arg("--format", VALUE, choices=("json", "jsonl", "csv"), default="json"),
        Arg("--output", VALUE, _path, metavar="FILE",
            help="write to FILE atomically instead of stdout"),
    )),
    "import": ("import sessions from a legacy data.jsonl or an export", (
        Arg("file", check=_path, metavar="FILE",
            help="a legacy data.jsonl, or a JSON or JSONL export. Importing a file again "
                 "is safe: a session already there is replaced only by a newer version "
                 "of itself, so an interrupted import can simply be rerun"),
    )),
    "cleanup": ("remove expired sessions", (
        Arg("--before", VALUE, metavar="TIMESTAMP",
            help="also remove sessions whose deadline is before this: ISO 8601 "
                 "(2026-12-01, 2026-12-01T09:30:00Z, 20261201T093000+0100; no zone "
                 "means UTC), @SECONDS for Unix time, or now"),
        Arg("--dry-run", FLAG, help="report, change nothing"),
    )),
    "config": ("show or change settings (validated, applied live, persisted)", (
        Arg("key", OPTIONAL, metavar="KEY"),
        Arg("value", OPTIONAL, metavar="VALUE",
            help="new value (parsed as JSON when it is JSON, else a string)"),
    )),
    "compact": ("rewrite the journal now", ()),
    "watch": ("print events as they happen, until interrupted", (
        Arg("--user", VALUE, _user, metavar="U"),
    )),
    "ping": ("check that the daemon answers", ()),
    "version": ("print the version", ()),
    "help": ("show this overview, or a command's options", (
        Arg("topic", OPTIONAL, metavar="COMMAND"),
    )),
}

_GLOBAL_OPTIONS = {arg.name: arg for arg in GLOBALS}


def parse_fast(argv: Sequence[str]) -> Args | None:
    """What argparse makes of ``argv``, for a command line it takes as it
    stands; ``None`` for anything else (help, ``-h``, a mistake, a value that
    starts with a dash, ``--``, an option given twice, positionals split by
    an option), which is then argparse's to read and to report on."""
    command: str | None = None
    arguments: tuple[Arg, ...] = ()
    options = _GLOBAL_OPTIONS
    values: dict[str, object] = {}
    appended: dict[str, list[object]] = {}
    words: list[str] = []
    words_ended = False
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("-"):
            if command is None:
                if token not in COMMANDS or token == "help":
                    return None
                command = token
                arguments = COMMANDS[token][1]
                options = {**_GLOBAL_OPTIONS,
                           **{a.name: a for a in arguments if a.name.startswith("-")}}
            elif words_ended:
                return None
            else:
                words.append(token)
            continue
        name, eq, inline = token.partition("=")
        arg = options.get(name)
        if arg is None:
            return None
        if words:
            words_ended = True
        if arg.kind == FLAG:
            if eq:
                return None
            values[arg.dest] = True
            continue
        if eq:
            text = inline
        elif i < len(argv) and not argv[i].startswith("-"):
            text = argv[i]
            i += 1
        else:
            return None
        value = _checked(arg, text)
        if value is None:
            return None
        if arg.kind == APPEND:
            appended.setdefault(arg.dest, []).append(value)
        elif arg.dest in values:
            return None
        else:
            values[arg.dest] = value
    if command is None:
        return None
    positionals = [a for a in arguments if a.kind in (POSITIONAL, OPTIONAL)]
    required = sum(a.kind == POSITIONAL for a in positionals)
    if not required <= len(words) <= len(positionals):
        return None
    result = Args(command=command, **GLOBAL_DEFAULTS)
    for arg in arguments:
        if arg.kind in (POSITIONAL, OPTIONAL):
            if not words:
                setattr(result, arg.dest, None)
                continue
            value = _checked(arg, words.pop(0))
            if value is None:
                return None
            setattr(result, arg.dest, value)
        else:
            setattr(result, arg.dest, [] if arg.kind == APPEND else
                    False if arg.kind == FLAG else arg.default)
    for dest, value in (*values.items(), *appended.items()):
        setattr(result, dest, value)
    return result


def _checked(arg: Arg, text: str) -> object | None:
    """The value of ``text`` for ``arg`` (never ``None``), or ``None`` if
    argparse would refuse it."""
    try:
        value = text if arg.check is None else arg.check(text)
    except BadValue:
        return None
    allowed = arg.allowed()
    if allowed is not None and value not in allowed:
        return None
    return value


def parse(argv: Sequence[str]) -> Args:
    """``argv`` read as argparse reads it; bad usage raises ``UsageError``."""
    args = parse_fast(argv)
    if args is None:
        from sessionctl.usage import parse_with_argparse

        args = parse_with_argparse(argv)
    return args


def __getattr__(name: str) -> object:
    # The argparse side is imported only when asked for (help, errors, tests).
    if name in ("build_parser", "subcommands"):
        from sessionctl import usage

        return getattr(usage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- running ---------------------------------------------------------------


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def run(args: Args) -> int:
    command = args.command
    if command is None:
        raise UsageError("no command given; run 'sessionctl help' for the list of commands")
    if command == "help":
        from sessionctl.usage import build_parser, subcommands

        parser = build_parser()
        if args.topic:
            sub = subcommands(parser).get(args.topic)
            if sub is None:
                raise UsageError(f"no such command {args.topic!r}; run 'sessionctl help'")
            out(sub.format_help().rstrip("\n"))
        else:
            out(parser.format_help().rstrip("\n"))
        return EXIT_OK
    if command == "version":
        if args.json:
            from sessionctl.render import to_json

            out(to_json({"sessionctl": __version__, "protocol": PROTOCOL_VERSION}))
        else:
            out(f"sessionctl {__version__} (protocol {PROTOCOL_VERSION})")
        return EXIT_OK
    from sessionctl.commands import execute

    return execute(args)


def fail(message: str, status: int) -> int:
    if not message.isprintable():
        # A message may quote a value a session holds: one line, and
        # nothing in it that drives the terminal.
        from sessionctl.render import escape_message

        message = escape_message(message)
    sys.stderr.write(f"sessionctl: error: {message}\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stdout is None:
        # Started with fd 1 closed: a result could not be reported, so do
        # not change anything.
        return fail("standard output is closed; nothing was done", EXIT_FAILED)
    try:
        status = run(parse(sys.argv[1:] if argv is None else argv))
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
