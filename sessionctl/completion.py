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
    return BASH.format(
        commands=_q(_words(COMMANDS)),
        top_options=_q(_words(options(None))),
        value_names="|".join(values),
        value_cases=value_cases,
        option_cases=option_cases,
        positional_cases=positional_cases,
        config_keys=_q(_words(config_keys())),
        config_fixed=fixed,
        FILES=FILES, IDS=IDS, CONFIG_KEYS=CONFIG_KEYS, CONFIG_VALUES=CONFIG_VALUES,
        COMMAND_NAMES=COMMAND_NAMES,
    )


def _q(text: str) -> str:
    """``text`` in single quotes, for bash and zsh (none of ours holds one)."""
    if "'" in text:
        raise AssertionError(f"a quote in {text!r}")
    return f"'{text}'"


BASH = r"""# bash completion for sessionctl, generated by 'sessionctl completion bash'.
# Install: echo 'source <(sessionctl completion bash)' >> ~/.bashrc

# The ids of the sessions the daemon holds; nothing (and no daemon started)
# when none answers.
_sessionctl_ids() {{
    local prog=${{COMP_WORDS[0]}}
    [[ $prog == "~/"* ]] && prog=$HOME/${{prog#"~/"}}
    "$prog" "${{_sessionctl_socket[@]}}" --no-autostart list --ids 2>/dev/null
}}

# Completes $cur with what kind $1 stands for; $2 is the config key before it.
_sessionctl_kind() {{
    local words=
    case $1 in
        choices:*) words=${{1#choices:}} ;;
        {FILES})
            # One name a line: a file name may hold a space.
            local IFS=$'\n'
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
        {IDS}) words=$(_sessionctl_ids) ;;
        {CONFIG_KEYS}) words={config_keys} ;;
        {CONFIG_VALUES})
            case $2 in
{config_fixed}
            esac ;;
        {COMMAND_NAMES}) words={commands} ;;
        *) return ;;
    esac
    # None of these words holds a space (a session id cannot).
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}

_sessionctl_value() {{
    case $2 in
{value_cases}
    esac
}}

_sessionctl_options() {{
    case $1 in
{option_cases}
        *) echo {top_options} ;;
    esac
}}

_sessionctl() {{
    COMPREPLY=()
    local cur=${{COMP_WORDS[COMP_CWORD]}} end=$COMP_CWORD option=
    # bash splits "--format=js" at the "=": the value is completed after it.
    if [[ $cur == "=" ]] && ((COMP_CWORD > 1)); then
        option=${{COMP_WORDS[COMP_CWORD-1]}}; cur=; end=$((COMP_CWORD - 1))
    elif ((COMP_CWORD > 2)) && [[ ${{COMP_WORDS[COMP_CWORD-1]}} == "=" ]]; then
        option=${{COMP_WORDS[COMP_CWORD-2]}}; end=$((COMP_CWORD - 2))
    elif ((COMP_CWORD > 1)); then
        case ${{COMP_WORDS[COMP_CWORD-1]}} in
            {value_names}) option=${{COMP_WORDS[COMP_CWORD-1]}}; end=$((COMP_CWORD - 1)) ;;
        esac
    fi
    # The command, the positional arguments before the cursor, and --socket.
    local i=1 word command= only_words= positional=()
    _sessionctl_socket=()
    while ((i < end)); do
        word=${{COMP_WORDS[i]}}
        if [[ -z $only_words && $word == -* ]]; then
            if [[ $word == "--" ]]; then
                only_words=1
            elif ((i + 1 < end)) && [[ ${{COMP_WORDS[i+1]}} == "=" ]]; then
                [[ $word == --socket ]] && _sessionctl_socket=(--socket "${{COMP_WORDS[i+2]}}")
                ((i += 2))
            else
                case $word in
                    --socket) _sessionctl_socket=(--socket "${{COMP_WORDS[i+1]}}"); ((i++)) ;;
                    {value_names}) ((i++)) ;;
                esac
            fi
        elif [[ -z $command ]]; then
            command=$word
        else
            positional+=("$word")
        fi
        ((i++))
    done
    if [[ -n $option ]]; then
        _sessionctl_value "${{positional[0]}}" "$option"
        return
    fi
    if [[ -z $only_words && $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_sessionctl_options "$command")" -- "$cur"))
        return
    fi
    if [[ -z $command ]]; then
        COMPREPLY=($(compgen -W {commands} -- "$cur"))
        return
    fi
    local kinds=()
    case $command in
{positional_cases}
    esac
    local n=${{#positional[@]}}
    ((n < ${{#kinds[@]}})) && _sessionctl_kind "${{kinds[n]}}" "${{positional[0]}}"
}}

complete -F _sessionctl sessionctl
"""


# -- zsh ---------------------------------------------------------------------


def zsh() -> str:
    values = value_options()
    described = "\n".join(
        f"        {_q(name + ':' + _summary(c.summary))}" for name, c in COMMANDS.items()
    )
    return ZSH.format(
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
        FILES=FILES, IDS=IDS, CONFIG_KEYS=CONFIG_KEYS, CONFIG_VALUES=CONFIG_VALUES,
        COMMAND_NAMES=COMMAND_NAMES,
    )


ZSH = r"""#compdef sessionctl
# zsh completion for sessionctl, generated by 'sessionctl completion zsh'.
# Install: echo 'source <(sessionctl completion zsh)' >> ~/.zshrc (after
# compinit), or save it as _sessionctl in a directory of $fpath.

# The ids of the sessions the daemon holds; nothing (and no daemon started)
# when none answers.
_sessionctl_ids() {{
    local -a ids
    ids=(${{(f)"$(${{~words[1]}} $_sessionctl_socket --no-autostart list --ids 2>/dev/null)"}})
    compadd -a ids
}}

# Completes the current word with what kind $1 stands for; $2 is the config
# key before it.
_sessionctl_kind() {{
    case $1 in
        choices:*) compadd -- ${{=${{1#choices:}}}} ;;
        {FILES}) _files ;;
        {IDS}) _sessionctl_ids ;;
        {CONFIG_KEYS}) compadd -- {config_keys} ;;
        {CONFIG_VALUES})
            case $2 in
{config_fixed}
            esac ;;
        {COMMAND_NAMES}) compadd -- {commands} ;;
    esac
}}

_sessionctl_value() {{
    case $2 in
{value_cases}
    esac
}}

_sessionctl() {{
    local cur=${{words[CURRENT]}} option= end=$CURRENT
    if [[ $cur == --*=* ]]; then
        option=${{cur%%=*}}
        compset -P '*='
    elif (( CURRENT > 2 )); then
        case ${{words[CURRENT-1]}} in
            {value_names}) option=${{words[CURRENT-1]}}; end=$((CURRENT - 1)) ;;
        esac
    fi
    local i=2 word command= only_words= positional
    positional=()
    _sessionctl_socket=()
    while (( i < end )); do
        word=${{words[i]}}
        if [[ -z $only_words && $word == -* ]]; then
            case $word in
                --) only_words=1 ;;
                --socket=*) _sessionctl_socket=("$word") ;;
                --socket) _sessionctl_socket=(--socket "${{words[i+1]}}"); (( i++ )) ;;
                {value_names}) (( i++ )) ;;
            esac
        elif [[ -z $command ]]; then
            command=$word
        else
            positional+=("$word")
        fi
        (( i++ ))
    done
    if [[ -n $option ]]; then
        _sessionctl_value "${{positional[1]}}" "$option"
        return
    fi
    if [[ -z $only_words && $cur == -* ]]; then
        local -a opts
        case $command in
{option_cases}
            *) opts=({top_options}) ;;
        esac
        compadd -- $opts
        return
    fi
    if [[ -z $command ]]; then
        local -a commands
        commands=(
{described}
        )
        _describe command commands
        return
    fi
    local -a kinds
    case $command in
{positional_cases}
    esac
    local n=$(( ${{#positional}} + 1 ))
    (( n <= ${{#kinds}} )) && _sessionctl_kind "${{kinds[n]}}" "${{positional[1]}}"
}}

if [[ $funcstack[1] == _sessionctl ]]; then
    _sessionctl "$@"
else
    compdef _sessionctl sessionctl
fi
"""


# -- fish --------------------------------------------------------------------


def fish() -> str:
    values = value_options()
    return FISH.format(
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
        FILES=FILES, IDS=IDS, CONFIG_KEYS=CONFIG_KEYS, CONFIG_VALUES=CONFIG_VALUES,
        COMMAND_NAMES=COMMAND_NAMES,
    )


FISH = r"""# fish completion for sessionctl, generated by 'sessionctl completion fish'.
# Install: sessionctl completion fish > ~/.config/fish/completions/sessionctl.fish

# The ids of the sessions the daemon holds; nothing (and no daemon started)
# when none answers.
function __sessionctl_ids
    set -l words (commandline -opc)
    $words[1] $__sessionctl_socket --no-autostart list --ids 2>/dev/null
end

# Prints the candidates of kind $argv[1] ($argv[2]: the config key before
# it), each after the prefix $argv[3] ("--format=" when completing that).
function __sessionctl_kind
    set -l prefix $argv[3]
    set -l current (commandline -ct)
    switch $argv[1]
        case 'choices:*'
            string split ' ' -- (string replace 'choices:' '' -- $argv[1])
        case {FILES}
            __fish_complete_path (string replace -- "$prefix" '' "$current")
        case {IDS}
            __sessionctl_ids
        case {CONFIG_KEYS}
            string join \n -- {config_keys}
        case {CONFIG_VALUES}
            switch "$argv[2]"
{config_fixed}
            end
        case {COMMAND_NAMES}
            string join \n -- {commands}
    end | string replace -r -- '^' "$prefix"
end

function __sessionctl_value
    set -l key $argv[1]
    set -l prefix $argv[3]
    switch $argv[2]
{value_cases}
    end
end

function __sessionctl_options
    switch "$argv[1]"
{option_cases}
        case '*'
            string join \n -- {top_options}
    end
end

function __sessionctl_complete
    set -l words (commandline -opc)
    set -l current (commandline -ct)
    set -l end (count $words)
    set -l option
    set -l prefix
    if string match -qr -- '^--[^=]+=' $current
        set option (string replace -r -- '=.*' '' $current)
        set prefix "$option="
    else if test $end -gt 1; and contains -- $words[$end] {value_names}
        set option $words[$end]
        set end (math $end - 1)
    end
    set -l command
    set -l positional
    set -l only_words
    set -g __sessionctl_socket
    set -l i 2
    while test $i -le $end
        set -l word $words[$i]
        if test -z "$only_words"; and string match -q -- '-*' $word
            if test "$word" = --
                set only_words 1
            else if string match -q -- '--socket=*' $word
                set __sessionctl_socket $word
            else if contains -- $word {value_names}
                if test $word = --socket; and test $i -lt $end
                    set __sessionctl_socket --socket $words[(math $i + 1)]
                end
                set i (math $i + 1)
            end
        else if test -z "$command"
            set command $word
        else
            set -a positional $word
        end
        set i (math $i + 1)
    end
    if test -n "$option"
        __sessionctl_value "$positional[1]" $option $prefix
        return
    end
    if test -z "$only_words"; and string match -q -- '-*' $current
        __sessionctl_options "$command"
        return
    end
    if test -z "$command"
{described}
        return
    end
    set -l kinds
    switch $command
{positional_cases}
    end
    set -l n (math (count $positional) + 1)
    if test $n -le (count $kinds)
        __sessionctl_kind $kinds[$n] "$positional[1]" ''
    end
end

complete -c sessionctl -f -a '(__sessionctl_complete)'
"""


SCRIPTS = {"bash": bash, "zsh": zsh, "fish": fish}


def h_completion(args: Args) -> int:
    # The table's choices for SHELL are SCRIPTS' keys (a test keeps them so).
    out(SCRIPTS[args.shell]().rstrip("\n"))
    return EXIT_OK
