"""``sessionctl completion bash|zsh|fish``: shell completion scripts, built
from the command table (``registry.COMMANDS``), so that they complete what
the command line accepts and nothing else: the commands, each one's options
and the globals, the choices of an option or argument (``--format``,
``--status``), files where a path is asked, the settings ``config`` knows
and the values of those that have a fixed set (``fsync``).

Where a command takes a session id, the script asks ``sessionctl
--no-autostart list --ids`` (with the ``--socket`` given on the line being
completed, if any), its errors thrown away: completing never starts a
daemon, and with none running it offers nothing.

The three scripts do the same thing in each shell's terms: find the command
among the words typed (skipping options and their values), then complete
the option, the option's value, or the positional argument at the cursor.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from importlib import resources

from sessionctl.registry import (
    APPEND,
    COMMAND_NAMES,
    COMMANDS,
    CONFIG_KEYS,
    CONFIG_VALUES,
    EXIT_OK,
    FILES,
    GLOBALS,
    IDS,
    OPTIONAL,
    POSITIONAL,
    VALUE,
    VERSION_OPTION,
    Arg,
    Args,
    out,
)

HELP = ("-h", "--help")


def _kind(arg: Arg) -> str:
    """What a shell completes ``arg``'s value with: ``choices:a b c``, one of
    the registry's kinds, or ``none``."""
    allowed = arg.allowed()
    if allowed is not None:
        return "choices:" + " ".join(allowed)
    return arg.complete or "none"


def value_options() -> dict[str, str]:
    """Every option that takes a value, by each of its names, and what
    completes the value (the same wherever the option appears)."""
    found: dict[str, str] = {}
    for arg in (*GLOBALS, *(a for c in COMMANDS.values() for a in c.arguments)):
        if arg.kind not in (VALUE, APPEND):
            continue
        for name in arg.names:
            kind = _kind(arg)
            if found.setdefault(name, kind) != kind:
                raise AssertionError(f"{name} completes differently in two commands")
    return found


def options(command: str | None) -> list[str]:
    """The options a shell offers after ``command`` (before any: the globals
    and ``--version``)."""
    names = [name for arg in GLOBALS for name in arg.names]
    if command is None:
        return [*names, VERSION_OPTION, *HELP]
    own = [name for arg in COMMANDS[command].arguments for name in arg.names
           if name.startswith("-")]
    return [*own, *names, *HELP]


def positionals(command: str) -> list[str]:
    return [_kind(a) for a in COMMANDS[command].arguments if a.kind in (POSITIONAL, OPTIONAL)]


def config_values() -> dict[str, tuple[str, ...]]:
    """The settings whose values are a fixed set, and that set."""
    from sessiond.config import Settings

    hints = typing.get_type_hints(Settings)
    return {key: tuple(str(v) for v in typing.get_args(hint))
            for key, hint in hints.items() if typing.get_origin(hint) is typing.Literal}


def config_keys() -> tuple[str, ...]:
    from sessiond.config import KEYS

    return tuple(KEYS)


def _kinds(command: str) -> str:
    """The kinds of ``command``'s positional arguments, quoted, in order."""
    return " ".join(_q(k) for k in positionals(command))


def _words(items: Iterable[str]) -> str:
    return " ".join(items)


def _summary(text: str) -> str:
    """A command's summary as one description (no colon for zsh, no tab
    for fish, no quote for either)."""
    return text.replace(":", " -").replace("'", "").replace("\t", " ")


# -- bash --------------------------------------------------------------------


def bash() -> str:
    values = value_options()
    value_cases = "\n".join(
        f"        {name}) _sessionctl_kind {_q(kind)} \"$1\" ;;" for name, kind in values.items()
    )
    option_cases = "\n".join(
        f"        {name}) echo {_q(_words(options(name)))} ;;" for name in COMMANDS
    )
    positional_cases = "\n".join(
        f"        {name}) kinds=({_kinds(name)}) ;;"
        for name in COMMANDS if positionals(name)
    )
    fixed = "\n".join(
        f"        {key}) words={_q(_words(allowed))} ;;"
        for key, allowed in config_values().items()
    )
    return _script(
        "bash",
        commands=_q(_words(COMMANDS)),
        top_options=_q(_words(options(None))),
        value_names="|".join(values),
        value_cases=value_cases,
        option_cases=option_cases,
        positional_cases=positional_cases,
        config_keys=_q(_words(config_keys())),
        config_fixed=fixed,
    )


def _q(text: str) -> str:
    """``text`` in single quotes, for bash and zsh (none of ours holds one)."""
    if "'" in text:
        raise AssertionError(f"a quote in {text!r}")
    return f"'{text}'"


# -- zsh ---------------------------------------------------------------------


def zsh() -> str:
    values = value_options()
    described = "\n".join(
        f"        {_q(name + ':' + _summary(c.summary))}" for name, c in COMMANDS.items()
    )
    return _script(
        "zsh",
        described=described,
        value_names="|".join(values),
        value_cases="\n".join(
            f"        {name}) _sessionctl_kind {_q(kind)} \"$1\" ;;"
            for name, kind in values.items()
        ),
        option_cases="\n".join(
            f"        {name}) opts=({' '.join(options(name))}) ;;" for name in COMMANDS
        ),
        top_options=" ".join(options(None)),
        positional_cases="\n".join(
            f"        {name}) kinds=({_kinds(name)}) ;;"
            for name in COMMANDS if positionals(name)
        ),
        config_keys=" ".join(config_keys()),
        config_fixed="\n".join(
            f"                {key}) compadd -- {' '.join(allowed)} ;;"
            for key, allowed in config_values().items()
        ),
        commands=" ".join(COMMANDS),
    )


# -- fish --------------------------------------------------------------------


def fish() -> str:
    values = value_options()
    return _script(
        "fish",
        value_names=" ".join(values),
        value_cases="\n".join(
            f"        case {name}\n            __sessionctl_kind {_q(kind)} $key $prefix"
            for name, kind in values.items()
        ),
        option_cases="\n".join(
            f"        case {name}\n            string join \\n -- {' '.join(options(name))}"
            for name in COMMANDS
        ),
        top_options=" ".join(options(None)),
        positional_cases="\n".join(
            f"        case {name}\n            set kinds {_kinds(name)}"
            for name in COMMANDS if positionals(name)
        ),
        described="\n".join(
            f"    printf '%s\\t%s\\n' {name} {_q(_summary(c.summary))}"
            for name, c in COMMANDS.items()
        ),
        config_keys=" ".join(config_keys()),
        config_fixed="\n".join(
            f"                case {key}\n{' ' * 20}string join \\n -- {' '.join(allowed)}"
            for key, allowed in config_values().items()
        ),
        commands=" ".join(COMMANDS),
    )


def _script(shell: str, **fields: str) -> str:
    """The script: its template (``shells/SHELL.tmpl``: the shell's own code,
    a ``str.format`` template, so its own braces are doubled) filled with
    ``fields`` and the names of the kinds of values (``FILES`` ...), which
    every template uses."""
    template = resources.files("sessionctl").joinpath("shells", f"{shell}.tmpl").read_text(
        encoding="utf-8")
    return template.format(
        **fields, FILES=FILES, IDS=IDS, CONFIG_KEYS=CONFIG_KEYS, CONFIG_VALUES=CONFIG_VALUES,
        COMMAND_NAMES=COMMAND_NAMES,
    )


SCRIPTS = {"bash": bash, "zsh": zsh, "fish": fish}


def h_completion(args: Args) -> int:
    # The table's choices for SHELL are SCRIPTS' keys (a test keeps them so).
    out(SCRIPTS[args.shell]().rstrip("\n"))
    return EXIT_OK
