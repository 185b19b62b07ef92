"""The command line as argparse sees it: help texts and usage errors.

``sessionctl.cli`` reads ordinary command lines itself and hands the rest
here (help, ``-h``, mistakes, anything unusual). The parser is built from
``registry.COMMANDS``, the same table the fast reader uses, so the two
cannot disagree about what a command takes. ``help`` runs here too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from sessionctl.registry import (
    APPEND,
    COMMANDS,
    DASHED_VALUES,
    EXIT_OK,
    FLAG,
    GLOBAL_DEFAULTS,
    GLOBALS,
    OPTIONAL,
    VERSION_OPTION,
    Arg,
    Args,
    BadValue,
    UsageError,
    dashed_value,
    out,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

GLOBAL_DESTS = frozenset({"help", "version_option", *(arg.dest for arg in GLOBALS)})


def see_help(topic: str | None) -> str:
    """Where a usage error points: ``(see 'sessionctl help COMMAND')``."""
    return f"(see 'sessionctl help{' ' + topic if topic else ''}')"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'get'?`` when a candidate is close to ``word`` (as
    git and kubectl say it), else nothing."""
    import difflib

    # difflib's ratio alone offers 'export' for 'teleport': a close one
    # must also start as the word does, or be closer still.
    bare = word.lstrip("-")[:1]
    others = [c for c in candidates if c != word]  # the word itself is no suggestion
    for close in difflib.get_close_matches(word, others, n=3, cutoff=0.6):
        if (close.lstrip("-")[:1] == bare
                or difflib.SequenceMatcher(None, word, close).ratio() >= 0.8):
            return f"; did you mean {close!r}?"
    return ""


class Parser(argparse.ArgumentParser):
    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse's own swallows a failed write, so that help written to a
        # full disk (``--help > /dev/full``) exited 0 having shown nothing:
        # it fails here as any other output does, and a closed pipe
        # (``| head``) ends quietly, in ``cli.main``.
        if message:
            (file or sys.stderr).write(message)

    def error(self, message: str) -> NoReturn:
        # A subcommand's prog is "sessionctl NAME": point at that command's help.
        raise UsageError(f"{message} {see_help(self.prog.partition(' ')[2])}")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own check, with a suggestion: a mistyped command or
        # choice is the commonest slip.
        choices = action.choices
        if choices is None or value in choices:
            return
        if isinstance(action, argparse._SubParsersAction):
            # No "argument COMMAND:" before it: the message says what it is.
            raise argparse.ArgumentError(
                None, f"unknown command {value!r}{did_you_mean(value, choices)}"
            )
        raise argparse.ArgumentError(action, (
            f"invalid choice: {value!r}{did_you_mean(value, choices)} "
            f"(choose from {', '.join(map(str, choices))})"
        ))


class TopParser(Parser):
    """``sessionctl``, ``sessionctl -h`` and ``sessionctl help``: one overview
    that lists every command with its arguments."""

    def format_help(self) -> str:
        lines = [
            "usage: sessionctl [--socket PATH] [--json] [--no-autostart] [-l] COMMAND [ARGS]",
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
            *(f"  {_option_words(arg):<14}  {arg.help}" for arg in GLOBALS),
            f"  {VERSION_OPTION:<14}  the same as 'sessionctl version' (before any command)",
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
        flag = "|".join(action.option_strings)  # -q|--quiet
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


def _option_words(arg: Arg) -> str:
    name = arg.name if arg.short is None else f"{arg.short}, {arg.name}"
    return f"{name} {arg.metavar}" if arg.kind not in (FLAG,) and arg.metavar else name


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
    parser.add_argument(*arg.names, **options)


def build_parser() -> TopParser:
    common = Parser(add_help=False, allow_abbrev=False)
    for arg in GLOBALS:
        # Suppressed defaults: given before the command, an option must not
        # be reset by the subcommand's parser, which knows it too.
        _add(common, arg, default=argparse.SUPPRESS)
    p = TopParser(prog="sessionctl", parents=[common], allow_abbrev=False)
    p.add_argument(VERSION_OPTION, action="store_true", dest="version_option",
                   help="the same as 'sessionctl version'")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, command in COMMANDS.items():
        parser = sub.add_parser(name, parents=[common], help=command.summary,
                                description=command.summary, epilog=command.notes,
                                allow_abbrev=False)
        for arg in command.arguments:
            _add(parser, arg)
    return p


def parse_with_argparse(argv: Sequence[str]) -> Args:
    """``argv`` read by argparse: bad usage raises ``UsageError``; ``-h``
    prints help and exits, as argparse does."""
    args, extra = build_parser().parse_known_args(_joined(argv), Args())
    command = args.command
    if extra:
        # Some releases of argparse leave the ``--`` itself among them.
        words = [word for word in extra if word != "--"] or extra
        raise UsageError(_unexpected(words[0], command, _after_dashes(argv, words)))
    if args.version_option:
        if command is not None:
            raise UsageError(f"{VERSION_OPTION} takes no command {see_help(None)}")
        args.command = "version"
        for arg in COMMANDS["version"].arguments:  # as if none was given
            setattr(args, arg.dest, False if arg.kind == FLAG else arg.default)
    del args.version_option
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def _joined(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--before -7d`` written ``--before=-7d``: argparse takes
    any word that starts with a dash for an option, and a time before now
    does (``parse_fast`` reads it the same)."""
    words: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return words + list(argv[i:])
        if word in DASHED_VALUES and i + 1 < len(argv) and dashed_value(argv[i + 1]):
            words.append(f"{word}={argv[i + 1]}")
            i += 2
        else:
            words.append(word)
            i += 1
    return words


def _after_dashes(argv: Sequence[str], extra: list[str]) -> bool:
    """Whether ``extra[0]``, the first word argparse could not place, came
    after ``--``, where every word is an argument, whatever it looks like.
    argparse leaves the words it cannot place in order: the options it does
    not know where it meets them, then the arguments left over, which end
    with those after ``--``: so it did if all of ``extra`` ends ``argv``
    after its ``--``."""
    if "--" not in argv:
        return False
    after = list(argv)[list(argv).index("--") + 1:]
    return 0 < len(extra) <= len(after) and after[len(after) - len(extra):] == extra


def _unexpected(word: str, command: str | None, argument: bool = False) -> str:
    """What to say of the first word argparse could not place (an
    ``argument``: one after ``--``)."""
    if argument or not word.startswith("-") or word == "-":
        return f"unexpected argument {word!r} {see_help(command)}"
    name = word.partition("=")[0]
    options = [name for arg in GLOBALS for name in arg.names]
    if command is None:
        options.append(VERSION_OPTION)
        where = ""
    else:
        options += [name for arg in COMMANDS[command].arguments for name in arg.names
                    if name.startswith("-")]
        where = f" for {command!r}"
    return f"unknown option {name!r}{where}{did_you_mean(name, options)} {see_help(command)}"


def show_help(args: Args) -> int:
    """``sessionctl help [COMMAND]``: the overview, or one command's help."""
    parser = build_parser()
    if args.topic:
        sub = subcommands(parser).get(args.topic)
        if sub is None:
            raise UsageError(
                f"no such command {args.topic!r}{did_you_mean(args.topic, COMMANDS)} "
                f"{see_help(None)}"
            )
        out(sub.format_help().rstrip("\n"))
    else:
        out(parser.format_help().rstrip("\n"))
    return EXIT_OK
