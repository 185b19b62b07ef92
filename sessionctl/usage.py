"""The command line as argparse sees it: help texts and usage errors.

``sessionctl.cli`` reads ordinary command lines itself and hands the rest
here (help, ``-h``, mistakes, anything unusual). The parser is built from
``registry.COMMANDS``, the same table the fast reader uses, so the two
cannot disagree about what a command takes. ``help`` runs here too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sessionctl.registry import (
    APPEND,
    COMMANDS,
    EXIT_OK,
    FLAG,
    GLOBAL_DEFAULTS,
    GLOBALS,
    OPTIONAL,
    Arg,
    Args,
    BadValue,
    UsageError,
    out,
)

GLOBAL_DESTS = frozenset({"help", *(arg.dest for arg in GLOBALS)})


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A subcommand's prog is "sessionctl NAME": point at that command's help.
        topic = self.prog.partition(" ")[2]
        raise UsageError(f"{message} (see 'sessionctl help{' ' + topic if topic else ''}')")


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


def _typed(check: Callable[[str], object]) -> Callable[[str], object]:
    """``check`` as an argparse type: its message becomes argparse's."""

    def convert(text: str) -> object:
        try:
            return check(text)
        except BadValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _add(parser: argparse.ArgumentParser, arg: Arg, **extra: Any) -> None:
    options: dict[str, Any] = {}
    if arg.check is not None:
        options["type"] = _typed(arg.check)
    if arg.metavar is not None:
        options["metavar"] = arg.metavar
    if arg.help is not None:
        options["help"] = arg.help
    allowed = arg.allowed()
    if allowed is not None:
        options["choices"] = allowed
    if arg.kind == OPTIONAL:
        options["nargs"] = "?"
    elif arg.kind == FLAG:
        options["action"] = "store_true"
    elif arg.kind == APPEND:
        options["action"] = "append"
        options["default"] = []
    elif arg.default is not None:
        options["default"] = arg.default
    options.update(extra)
    parser.add_argument(arg.name, **options)


def build_parser() -> TopParser:
    common = Parser(add_help=False, allow_abbrev=False)
    for arg in GLOBALS:
        # Suppressed defaults: given before the command, an option must not
        # be reset by the subcommand's parser, which knows it too.
        _add(common, arg, default=argparse.SUPPRESS)
    p = TopParser(prog="sessionctl", parents=[common], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, command in COMMANDS.items():
        parser = sub.add_parser(name, parents=[common], help=command.summary,
                                description=command.summary, allow_abbrev=False)
        for arg in command.arguments:
            _add(parser, arg)
    return p


def parse_with_argparse(argv: Sequence[str]) -> Args:
    """``argv`` read by argparse: bad usage raises ``UsageError``; ``-h``
    prints help and exits, as argparse does."""
    args = build_parser().parse_args(argv, Args())
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def show_help(args: Args) -> int:
    """``sessionctl help [COMMAND]``: the overview, or one command's help."""
    parser = build_parser()
    if args.topic:
        sub = subcommands(parser).get(args.topic)
        if sub is None:
            raise UsageError(f"no such command {args.topic!r}; run 'sessionctl help'")
        out(sub.format_help().rstrip("\n"))
    else:
        out(parser.format_help().rstrip("\n"))
    return EXIT_OK
