"""The words of ``sessionctl``, and its one table of commands.

``COMMANDS`` says, for every command, what it does (the summary the help
shows), which arguments it takes and which function runs it. Everything
else reads it: ``cli.parse_fast`` reads ordinary command lines with it,
``usage`` builds argparse's parser (help texts, usage errors) from it, and
``cli.run`` calls the handler it names. A handler is named as a string,
``"module:function"``, and imported only when its command runs (as pip's
``commands_dict`` does), so that ``sessionctl version`` never imports the
client. Adding a command is an entry here and its handler.

This module imports nothing else of the package: every other module may
import it, and it sits below all of them. It holds what they share: the
argument kinds and checkers, the exit statuses, the errors that map to
them, and ``out``.
"""

from __future__ import annotations

import sys

# Importing typing would cost ``sessionctl version`` a fifth of its time;
# mypy takes a module-level TYPE_CHECKING as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage: exit status 2."""


class OutputFailed(Exception):
    """A result could not be written where it was asked to go: exit status 1."""


class Interrupted(Exception):
    """A command stopped by a signal once part of its work was done: the
    message (how far it got) is the error line, ``status`` the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


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
    from sessiond.limits import MAX_VERSION

    return _whole(text, "version", MAX_VERSION)


def _sid(text: str) -> str:
    from sessiond.limits import ID_RULE, valid_id

    if not valid_id(text):
        raise BadValue(f"invalid session id {text!r}: {ID_RULE}")
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


# -- arguments and commands ------------------------------------------------

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


class Command:
    """One command: its summary, its arguments, and what runs it.

    ``handler`` names the function, ``"module:function"``. It is called as
    ``handler(client, args)`` with a client connected to the daemon, or, for
    a command with ``daemon=False``, as ``handler(args)``. ``prepare``, if
    given, names a function that checks and loads what the command needs
    before the daemon is reached (or started): ``prepare(args)``, raising
    ``UsageError`` for bad input so that it changes nothing anywhere, and
    returning ``None`` or what to call once the command has run."""

    __slots__ = ("summary", "arguments", "handler", "prepare", "daemon")

    def __init__(
        self,
        summary: str,
        arguments: tuple[Arg, ...],
        handler: str,
        *,
        prepare: str | None = None,
        daemon: bool = True,
    ) -> None:
        self.summary = summary
        self.arguments = arguments
        self.handler = handler
        self.prepare = prepare
        self.daemon = daemon


# Accepted before or after the command; not given means the default here.
GLOBALS = (
    Arg("--socket", VALUE, _path, metavar="PATH",
        help="the daemon's socket (else $SESSIOND_SOCKET, else the default)"),
    Arg("--json", FLAG, help="print the result as JSON on stdout, and nothing else"),
    Arg("--no-autostart", FLAG,
        help="do not start sessiond when none answers (or SESSIONCTL_NO_AUTOSTART=1)"),
)
GLOBAL_DEFAULTS: dict[str, object] = {"socket": None, "json": False, "no_autostart": False}

_CAS = "only if the session is still at version N (else a conflict, exit 1)"

# In the order the overview lists them.
COMMANDS: dict[str, Command] = {
    "create": Command("create a session and print its id", (
        Arg("--user", VALUE, _user, metavar="U", help="owner (default: anonymous)"),
        Arg("--ttl", VALUE, _ttl, metavar="S",
            help="seconds until it expires (default: the default_ttl setting)"),
        Arg("--meta", APPEND, _meta, metavar="K=V", help="a metadata string; repeat for more"),
        Arg("--id", VALUE, _sid, metavar="ID", help="use this id instead of a random one"),
    ), "sessionctl.handlers:h_create"),
    "get": Command("show a session, with the time it has left", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("--touch", FLAG, help="update last access and slide the deadline"),
    ), "sessionctl.handlers:h_get"),
    "set": Command("set a metadata key (the value is stored as a string)", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("key", check=_key, metavar="KEY"),
        Arg("value", metavar="VALUE"),
        Arg("--expect-version", VALUE, _version, metavar="N", help=_CAS),
    ), "sessionctl.handlers:h_set"),
    "unset": Command("remove a metadata key", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("key", check=_key, metavar="KEY"),
        Arg("--expect-version", VALUE, _version, metavar="N", help=_CAS),
    ), "sessionctl.handlers:h_unset"),
    "delete": Command("delete a session", (
        Arg("id", check=_sid, metavar="ID"),
    ), "sessionctl.handlers:h_delete"),
    "list": Command("list sessions in creation order, with a count", (
        Arg("--status", VALUE, choices=_statuses),
        Arg("--user", VALUE, _user, metavar="U"),
        Arg("--limit", VALUE, _limit, metavar="N", help="at most N sessions"),
    ), "sessionctl.handlers:h_list"),
    "expire": Command("expire a session now", (
        Arg("id", check=_sid, metavar="ID"),
    ), "sessionctl.handlers:h_expire"),
    "refresh": Command("extend a session: deadline = now + ttl", (
        Arg("id", check=_sid, metavar="ID"),
        Arg("--ttl", VALUE, _ttl, metavar="S", help="new ttl (default: keep the session's)"),
        Arg("--revive", FLAG, help="allow refreshing an expired session"),
    ), "sessionctl.handlers:h_refresh"),
    "stats": Command("show counts and the daemon's health", (), "sessionctl.handlers:h_stats"),
    "export": Command("write every session as JSON, JSONL or CSV", (
        Arg("--format", VALUE, choices=("json", "jsonl", "csv"), default="json"),
        Arg("--output", VALUE, _path, metavar="FILE",
            help="write to FILE atomically instead of stdout"),
    ), "sessionctl.handlers:h_export", prepare="sessionctl.handlers:prepare_export"),
    "import": Command("import sessions from a legacy data.jsonl or an export", (
        Arg("file", check=_path, metavar="FILE",
            help="a legacy data.jsonl, or a JSON or JSONL export. Importing a file again "
                 "is safe: a session already there is replaced only by a newer version "
                 "of itself, so an interrupted import can simply be rerun"),
    ), "sessionctl.handlers:h_import", prepare="sessionctl.handlers:prepare_import"),
    "cleanup": Command("remove expired sessions", (
        Arg("--before", VALUE, metavar="TIMESTAMP",
            help="also remove sessions whose deadline is before this: ISO 8601 "
                 "(2026-12-01, 2026-12-01T09:30:00Z, 20261201T093000+0100; no zone "
                 "means UTC), @SECONDS for Unix time, or now"),
        Arg("--dry-run", FLAG, help="report, change nothing"),
    ), "sessionctl.handlers:h_cleanup", prepare="sessionctl.handlers:prepare_cleanup"),
    "config": Command("show or change settings (validated, applied live, persisted)", (
        Arg("key", OPTIONAL, metavar="KEY"),
        Arg("value", OPTIONAL, metavar="VALUE",
            help="new value (parsed as JSON when it is JSON, else a string)"),
    ), "sessionctl.handlers:h_config"),
    "compact": Command("rewrite the journal now", (), "sessionctl.handlers:h_compact"),
    "watch": Command("print events as they happen, until interrupted", (
        Arg("--user", VALUE, _user, metavar="U"),
    ), "sessionctl.handlers:h_watch"),
    "ping": Command("check that the daemon answers", (), "sessionctl.handlers:h_ping"),
    "version": Command("print the version", (), "sessionctl.cli:version", daemon=False),
    "help": Command("show this overview, or a command's options", (
        Arg("topic", OPTIONAL, metavar="COMMAND"),
    ), "sessionctl.usage:show_help", daemon=False),
}
