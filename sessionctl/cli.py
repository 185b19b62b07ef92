"""``sessionctl``: the command line.

Exit status: 0 done; 1 the operation failed (not found, expired, conflict,
refused); 2 bad usage or an invalid value; 3 the daemon cannot be reached.
Results go to stdout, errors to stderr as one line.

Starting the interpreter and importing is most of what a command costs, so
this module imports only what the command at hand needs. The commands and
their arguments are ``sessionctl.registry.COMMANDS``. ``parse_fast`` reads
the ordinary command lines with it; argparse (``sessionctl.usage``, built
from the same table) is imported only for help and for whatever
``parse_fast`` does not take as it stands, so every help text and usage
error is argparse's. ``run`` imports a command's handler only when it runs
it, and the client and the output code only for commands that talk to the
daemon.
"""

from __future__ import annotations

import os
import sys

from sessionctl.registry import (
    APPEND,
    COMMANDS,
    DASHED_VALUES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    FLAG,
    GLOBAL_DEFAULTS,
    GLOBALS,
    OPTIONAL,
    POSITIONAL,
    VERSION_OPTION,
    Arg,
    Args,
    BadValue,
    CommandFailed,
    Interrupted,
    OutputFailed,
    UsageError,
    dashed_value,
    out,
)
from sessiond import PROTOCOL_VERSION, __version__
from sessiond.errors import DaemonUnavailable, InvalidRequest, SessionError

# Importing typing would cost ``sessionctl version`` a fifth of its time;
# mypy takes a module-level TYPE_CHECKING as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sessionctl.client import Client

_GLOBAL_OPTIONS = {name: arg for arg in GLOBALS for name in arg.names}


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
        if token == VERSION_OPTION and command is None:
            # The version command, with the global options only: argparse
            # knows --version at the top, where no command's options are.
            command = "version"
            arguments = COMMANDS[command].arguments
            continue
        if not token.startswith("-"):
            if command is None:
                if token not in COMMANDS or token == "help":
                    return None
                command = token
                arguments = COMMANDS[token].arguments
                options = {**_GLOBAL_OPTIONS, **{name: a for a in arguments
                                                 for name in a.names if name.startswith("-")}}
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
        elif i < len(argv) and (not argv[i].startswith("-")
                                or name in DASHED_VALUES and dashed_value(argv[i])):
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


# -- running ---------------------------------------------------------------


def load(target: str) -> Any:
    """The function ``"module:function"`` names (a handler in the table),
    its module imported now."""
    module, _, name = target.partition(":")
    __import__(module)
    return getattr(sys.modules[module], name)


def run(args: Args) -> int:
    name = args.command
    if name is None:
        raise UsageError("no command given; run 'sessionctl help' for the list of commands")
    command = COMMANDS[name]
    if not command.daemon:
        local: Callable[[Args], int] = load(command.handler)
        return local(args)
    # Everything that can be checked here is, before the daemon is reached
    # (or started): bad input must change nothing anywhere.
    undo = load(command.prepare)(args) if command.prepare is not None else None
    try:
        from sessionctl.handlers import connect

        with connect(args) as c:
            handler: Callable[[Client, Args], int] = load(command.handler)
            return handler(c, args)
    finally:
        if undo is not None:
            undo()


def version(args: Args) -> int:
    """This client's version and protocol, and, unless ``--client``, the
    daemon's version and the protocol it agreed to if one answers (none is
    started for this): after an upgrade, the daemon left running from
    before may give the same version number, never a newer protocol."""
    data: dict[str, object] = {"sessionctl": __version__, "protocol": PROTOCOL_VERSION}
    lines = [f"sessionctl {__version__} (protocol {PROTOCOL_VERSION})"]
    if not args.client:
        from sessionctl.handlers import CliClient
        from sessiond.paths import socket_location

        where = socket_location(args.socket)
        try:
            with CliClient(where, autostart=False, timeout=VERSION_TIMEOUT) as c:
                data["sessiond"] = {"version": c.server_version, "protocol": c.protocol_version,
                                    "pid": c.server_pid, "socket": where}
                lines.append(f"sessiond {c.server_version} (protocol {c.protocol_version}, "
                             f"pid {c.server_pid}, on {where})")
        except DaemonUnavailable:
            data["sessiond"] = None
            lines.append(f"sessiond: none answers on {where}")
    if args.json:
        from sessionctl.render import to_json

        out(to_json(data))
    else:
        out("\n".join(lines))
    return EXIT_OK


# A daemon that accepts but does not answer must not hang ``version``.
VERSION_TIMEOUT = 5.0


def _pointed(message: str, command: str | None) -> str:
    """A usage error that says where to read how the command is used."""
    if "'sessionctl help" in message:
        return message  # argparse's errors say it already
    return f"{message} (see 'sessionctl help{' ' + command if command else ''}')"


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
    command: str | None = None
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        command = args.command
        status = run(args)
        # Flushed here, not at exit, so that a closed pipe is handled below.
        sys.stdout.flush()
        return status
    except UsageError as exc:
        return fail(_pointed(str(exc), command), EXIT_USAGE)
    except DaemonUnavailable as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except InvalidRequest as exc:
        return fail(_pointed(str(exc), command), EXIT_USAGE)
    except SessionError as exc:
        return fail(str(exc), EXIT_FAILED)
    except (OutputFailed, CommandFailed) as exc:
        return fail(str(exc), EXIT_FAILED)
    except Interrupted as exc:
        return fail(str(exc), exc.status)
    except BrokenPipeError:
        # The reader went away (``| head``): what it wanted, it has. Point
        # stdout at /dev/null so the interpreter's last flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except OSError as exc:
        import errno  # an error's path only

        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            # A write without a file's name is stdout's (every file the
            # commands open is named in its error): said as coreutils'
            # "write error" says it, not as a bare "No space left on device".
            return fail(f"cannot write the output: {exc.strerror}", EXIT_FAILED)
        where = f" ({exc.filename})" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}", EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
