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


class CommandFailed(Exception):
    """The command could not do what it was asked (the message says why
    and what to do): exit status 1."""


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


def seconds(text: str, what: str, low: int, high: int) -> int:
    """A duration typed by a person, in seconds, from ``low`` to ``high``:
    whole seconds, or numbers with units (``90m``, ``1h30m``, ``7d``)."""
    if text.isascii() and text.isdigit():
        value = int(text)  # the usual case: no parser to import
    else:
        from sessiond.timeparse import parse_duration

        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise BadValue(f"{what}: {exc}") from None
    if not low <= value <= high:
        raise BadValue(f"{what} must be from {_shown(low)} to {_shown(high)}, not {text!r}")
    return value


def _shown(seconds: int) -> str:
    """``36500d``, ``90m``: in the largest unit that divides it."""
    from sessiond.timeparse import UNITS

    for unit, size in UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ttl(text: str) -> int:
    from sessiond.limits import MAX_TTL

    return seconds(text, "ttl", 1, MAX_TTL)


def _patience(text: str) -> int:
    return seconds(text, "--reconnect-timeout", 0, 86400)


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


# What a shell completes an argument's value with (besides its choices).
FILES = "files"
IDS = "ids"  # session ids, asked of the daemon
CONFIG_KEYS = "config-keys"
CONFIG_VALUES = "config-values"  # the allowed values of the key before it
COMMAND_NAMES = "commands"


class Arg:
    """One argument of a command, read by both ``parse_fast`` and argparse
    (and by ``sessionctl.completion``: ``complete`` says what a shell offers
    for its value). ``short`` is a one-letter alias (``-q``)."""

    __slots__ = (
        "name", "kind", "check", "dest", "metavar", "help", "choices", "default", "short",
        "complete",
    )

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
        short: str | None = None,
        complete: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.check = check
        self.dest = name.lstrip("-").replace("-", "_")
        self.metavar = metavar
        self.help = help
        self.choices = choices
        self.default = default
        self.short = short
        self.complete = complete

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if self.short is None else (self.short, self.name)

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

    __slots__ = ("summary", "arguments", "handler", "prepare", "daemon", "notes")

    def __init__(
        self,
        summary: str,
        arguments: tuple[Arg, ...],
        handler: str,
        *,
        prepare: str | None = None,
        daemon: bool = True,
        notes: str | None = None,
    ) -> None:
        self.summary = summary
        self.arguments = arguments
        self.handler = handler
        self.prepare = prepare
        self.daemon = daemon
        # Said under the options in ``help COMMAND``.
        self.notes = notes


# Accepted before or after the command; not given means the default here.
GLOBALS = (
    Arg("--socket", VALUE, _path, metavar="PATH", complete=FILES,
        help="the daemon's socket (else $SESSIOND_SOCKET, else the default)"),
    Arg("--json", FLAG, help="print the result as JSON on stdout, and nothing else"),
    Arg("--no-autostart", FLAG,
        help="do not start sessiond when none answers (or SESSIONCTL_NO_AUTOSTART=1)"),
    # systemctl's -l/--full: on a terminal, tables are fitted to its width
    # (the widest free-text column cut short with "…"); this shows them whole.
    Arg("--full", FLAG, short="-l",
        help="on a terminal, show every value whole rather than fit to its width"),
)
GLOBAL_DEFAULTS: dict[str, object] = {"socket": None, "json": False, "no_autostart": False,
                                      "full": False}
# Options whose value may start with a dash and a digit (``--before -7d``,
# seven days ago): taken as their value, where argparse would see an option.
DASHED_VALUES = frozenset({"--before"})


def dashed_value(text: str) -> bool:
    return len(text) > 1 and text[0] == "-" and "0" <= text[1] <= "9"


# Before any command only: ``sessionctl --version`` is ``sessionctl version``.
VERSION_OPTION = "--version"

_CAS = "only if the session is still at version N (else a conflict, exit 1)"
_DURATION = "90, 45s, 90m, 1h30m, 2h, 7d"


def _id(what: str = "the session's id") -> Arg:
    return Arg("id", check=_sid, metavar="ID", help=what, complete=IDS)


def _bulk(items: str) -> tuple[Arg, Arg]:
    """-q/--quiet and --verbose, for a command that may list thousands of ``items``."""
    return (
        Arg("--quiet", FLAG, short="-q",
            help="print nothing but errors (the exit status says how it went)"),
        Arg("--verbose", FLAG,
            help=f"list every one of the {items} (by default the first {BULK_SHOWN})"),
    )


# How many items a bulk command lists for people before "... and N more".
BULK_SHOWN = 20
# How long ``watch`` waits, by default, for a daemon to answer again after
# losing its connection (a restart takes a second or two; a daemon that
# nobody restarts within this is not coming back on its own).
WATCH_RECONNECT_SECONDS = 60

SHUTDOWN_NOTES = (
    "Asks the daemon to stop as SIGTERM does (it answers the requests in flight and syncs "
    "its journal first) and waits until it has exited. When systemd's units run it (it is "
    "sessiond.service's main process), it runs 'systemctl --user stop sessiond.socket "
    "sessiond.service' instead: stopping the service alone would let the socket start it "
    "again at the next connection. The units stay enabled, and the next sessionctl command "
    "starts a daemon again unless autostart is off. Exit status 3 when no daemon answers "
    "(there is nothing to stop: shutdown never starts one)."
)
RELOAD_NOTES = (
    "Waits until the file is in force and prints what changed. Flags and environment "
    "variables the daemon started with still win over the file, and in shared mode the "
    "namespace's settings (set with 'sessionctl config KEY VALUE') do; the output names them. "
    "A file that is not valid changes nothing: exit status 1, saying why. Exit status 3 when "
    "no daemon answers (it reads the file when it starts: reload never starts one)."
)

# In the order the overview lists them.
COMMANDS: dict[str, Command] = {
    "create": Command("create a session and print its id", (
        Arg("--user", VALUE, _user, metavar="U", help="owner (default: anonymous)"),
        Arg("--ttl", VALUE, _ttl, metavar="DURATION",
            help=f"time until it expires: {_DURATION} (default: the default_ttl setting)"),
        Arg("--meta", APPEND, _meta, metavar="K=V", help="a metadata string; repeat for more"),
        Arg("--id", VALUE, _sid, metavar="ID", help="use this id instead of a random one"),
    ), "sessionctl.handlers:h_create"),
    "get": Command("show a session, with the time it has left, or one metadata value", (
        _id(),
        Arg("key", OPTIONAL, check=_key, metavar="KEY",
            help="print this metadata key's value alone, as 'config KEY' prints a setting "
                 "(exit 1 when the session has no such key)"),
        Arg("--touch", FLAG, help="update last access and slide the deadline"),
    ), "sessionctl.handlers:h_get"),
    "set": Command("set a metadata key (the value is stored as a string)", (
        _id(),
        Arg("key", check=_key, metavar="KEY", help="the metadata key"),
        Arg("value", metavar="VALUE", help="its new value, stored as a string"),
        Arg("--expect-version", VALUE, _version, metavar="N", help=_CAS),
    ), "sessionctl.handlers:h_set"),
    "unset": Command("remove a metadata key", (
        _id(),
        Arg("key", check=_key, metavar="KEY", help="the metadata key to remove"),
        Arg("--expect-version", VALUE, _version, metavar="N", help=_CAS),
    ), "sessionctl.handlers:h_unset"),
    "delete": Command("delete a session", (
        _id(),
    ), "sessionctl.handlers:h_delete"),
    "list": Command("list sessions in creation order, with a count", (
        Arg("--status", VALUE, choices=_statuses, help="only sessions with this status"),
        Arg("--user", VALUE, _user, metavar="U", help="only this user's sessions"),
        Arg("--limit", VALUE, _limit, metavar="N",
            help="at most N sessions (the count line says when more match)"),
        Arg("--ids", FLAG, help="print only the ids, one per line"),
    ), "sessionctl.handlers:h_list"),
    "expire": Command("expire a session now", (
        _id(),
    ), "sessionctl.handlers:h_expire"),
    "refresh": Command("extend a session: deadline = now + ttl", (
        _id(),
        Arg("--ttl", VALUE, _ttl, metavar="DURATION",
            help=f"new ttl: {_DURATION} (default: keep the session's)"),
        Arg("--revive", FLAG, help="allow refreshing an expired session"),
    ), "sessionctl.handlers:h_refresh"),
    "stats": Command("show counts and the daemon's health", (), "sessionctl.handlers:h_stats"),
    "export": Command("write every session as JSON, JSONL or CSV", (
        Arg("--format", VALUE, choices=("json", "jsonl", "csv"), default="json",
            help="json: an array of records; jsonl: a record a line; csv: a header and a "
                 "row a session, without meta (default: json)"),
        Arg("--output", VALUE, _path, metavar="FILE", complete=FILES,
            help="write to FILE atomically instead of stdout"),
    ), "sessionctl.handlers:h_export", prepare="sessionctl.handlers:prepare_export",
        notes="A record is the legacy tool's session record, as the journal and the legacy "
              "data.jsonl hold it: \"type\": \"session\" first, \"expired_at\" only once "
              "expired, and the version; import and scripts/script.sh read it back. (The "
              "--json of get and list is another shape: no \"type\", \"expired_at\" always.) "
              "--json with --format csv is refused (exit 2) unless --output is given, when "
              "--json shapes the summary line."),
    "import": Command("import sessions from a legacy data.jsonl or an export", (
        Arg("file", check=_path, metavar="FILE", complete=FILES,
            help="a legacy data.jsonl, or a JSON or JSONL export. Importing a file again "
                 "is safe: a session already there is replaced only by a newer version "
                 "of itself, so an interrupted import can simply be rerun"),
        *_bulk("skipped and unreadable records"),
    ), "sessionctl.bulk:h_import", prepare="sessionctl.bulk:prepare_import"),
    "cleanup": Command("remove expired sessions", (
        Arg("--before", VALUE, metavar="TIMESTAMP",
            help="also remove sessions whose deadline is before this, active or not: "
                 "ISO 8601 (2026-12-01, 2026-12-01T09:30:00Z, 20261201T093000+0100; no "
                 "zone means UTC), @SECONDS for Unix time, now, or a duration before or "
                 "after now (-7d: seven days ago; -1h30m, +2h)"),
        Arg("--dry-run", FLAG, help="report, change nothing"),
        *_bulk("removed ids"),
    ), "sessionctl.bulk:h_cleanup", prepare="sessionctl.bulk:prepare_cleanup"),
    "config": Command("show or change settings (validated, applied live, persisted)", (
        Arg("key", OPTIONAL, metavar="KEY", complete=CONFIG_KEYS,
            help="the setting to show or change (all of them if left out)"),
        Arg("value", OPTIONAL, metavar="VALUE", complete=CONFIG_VALUES,
            help="new value (parsed as JSON when it is JSON, else a string); the settings "
                 "in seconds also take a duration: " + _DURATION),
    ), "sessionctl.handlers:h_config", prepare="sessionctl.handlers:prepare_config"),
    "reload": Command("read the config file again and put it in force (as SIGHUP does)", (),
                      "sessionctl.reload:h_reload", daemon=False, notes=RELOAD_NOTES),
    "compact": Command("rewrite the journal now", (), "sessionctl.handlers:h_compact"),
    "watch": Command("print events as they happen, until interrupted", (
        Arg("--user", VALUE, _user, metavar="U", help="only events of this user's sessions"),
        Arg("--no-reconnect", FLAG,
            help="end (exit 3) when the connection to the daemon (or its engine) is lost, "
                 "instead of waiting for it to answer again"),
        Arg("--reconnect-timeout", VALUE, _patience, metavar="DURATION",
            default=WATCH_RECONNECT_SECONDS,
            help=f"how long to wait for a daemon (or its engine) to answer again before "
                 f"giving up (exit 3; "
                 f"default: {WATCH_RECONNECT_SECONDS}s)"),
    ), "sessionctl.watching:h_watch"),
    "ping": Command("check that the daemon answers", (), "sessionctl.handlers:h_ping"),
    "shutdown": Command("stop the daemon (through systemd when its units run it)", (),
                        "sessionctl.shutdown:h_shutdown", daemon=False,
                        notes=SHUTDOWN_NOTES),
    "version": Command("print this client's version, and the daemon's if one answers", (
        Arg("--client", FLAG, help="this client's version alone: do not ask the daemon"),
    ), "sessionctl.cli:version", daemon=False),
    "completion": Command("print a shell completion script", (
        Arg("shell", choices=("bash", "zsh", "fish"), metavar="SHELL",
            help="bash, zsh or fish"),
    ), "sessionctl.completion:h_completion", daemon=False,
        notes="Install it with one line: bash: echo 'source <(sessionctl completion bash)' "
              ">> ~/.bashrc; zsh: echo 'source <(sessionctl completion zsh)' >> ~/.zshrc "
              "(after compinit); fish: sessionctl completion fish > "
              "~/.config/fish/completions/sessionctl.fish"),
    "help": Command("show this overview, or a command's options", (
        Arg("topic", OPTIONAL, metavar="COMMAND", complete=COMMAND_NAMES,
            help="the command to explain"),
    ), "sessionctl.usage:show_help", daemon=False),
}
