"""``sessionctl completion bash|zsh|fish``: scripts built from the command
table that complete commands, options, choices, config keys and values,
files, and session ids asked of the daemon (never starting one).

bash is driven for real: the script is sourced into ``bash``, ``complete -p``
must show it registered, and its function is called with ``COMP_WORDS`` and
``COMP_CWORD`` as bash's completion sets them (``--opt=value`` split at the
``=``). fish, when installed, is driven for real too (``complete -C``). zsh,
when installed, must parse (``zsh -n``), and its function is run with the
completion builtins it calls replaced by functions that print their
arguments (the completion system needs a terminal). Without zsh or fish
those tests are skipped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionctl import completion, registry
from tests.conftest import SESSIONCTL, Daemon, needs, running

AUTOSTART_ON = {"SESSIONCTL_NO_AUTOSTART": ""}


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("completion")) as daemon:
        with daemon.client() as c:
            for sid in ("alpha-1", "alpha-2", "beta-1"):
                c.create(id=sid)
        yield daemon


def script(d: Daemon, shell: str) -> Path:
    r = d.ctl("completion", shell)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    path = d.root / f"completion.{shell}"
    path.write_text(r.stdout)
    return path


def printed(argv: list[str], env: dict[str, str]) -> list[str]:
    """The lines a shell prints running a completion driver, which must
    succeed and say nothing on stderr."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout.splitlines()


BASH_DRIVER = r"""
source "$1"; shift
complete -p sessionctl
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_sessionctl
((${#COMPREPLY[@]} == 0)) || printf '%s\n' "${COMPREPLY[@]}"
"""


def bash(d: Daemon, *words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last of ``words`` (the line up to the cursor,
    as COMP_WORDS), with the script that ``sessionctl completion bash`` printed."""
    full = d.env
    full.update(env or {})
    lines = printed(
        ["bash", "--norc", "--noprofile", "-c", BASH_DRIVER, "bash", str(script(d, "bash")),
         SESSIONCTL, *words], full,
    )
    assert lines[0] == "complete -F _sessionctl sessionctl"
    return lines[1:]


def test_bash_completes_commands(d: Daemon) -> None:
    assert bash(d, "") == list(registry.COMMANDS)
    assert bash(d, "ge") == ["get"]
    assert bash(d, "c") == ["create", "cleanup", "config", "compact", "completion"]


def test_bash_completes_each_commands_options_from_the_table(d: Daemon) -> None:
    globals_ = [name for arg in registry.GLOBALS for name in arg.names]
    for name, command in registry.COMMANDS.items():
        own = [n for arg in command.arguments for n in arg.names if n.startswith("-")]
        assert bash(d, name, "-") == [*own, *globals_, "-h", "--help"], name
    assert bash(d, "get", "--t") == ["--touch"]
    assert bash(d, "--") == ["--socket", "--json", "--no-autostart", "--full", "--version",
                             "--help"]


def test_bash_completes_choices_config_keys_and_values(d: Daemon) -> None:
    assert bash(d, "export", "--format", "") == ["json", "jsonl", "csv"]
    assert bash(d, "export", "--format", "=", "js") == ["json", "jsonl"]  # --format=js
    assert bash(d, "export", "--format", "=") == ["json", "jsonl", "csv"]  # --format=
    assert bash(d, "list", "--status", "e") == ["expired"]
    assert bash(d, "completion", "") == ["bash", "zsh", "fish"]
    assert bash(d, "config", "fs") == ["fsync"]
    assert bash(d, "config", "") == list(completion.config_keys())
    assert bash(d, "config", "fsync", "") == ["always", "everysec", "no"]
    assert bash(d, "config", "default_ttl", "") == []
    assert bash(d, "help", "sh") == ["shutdown"]
    assert bash(d, "create", "--ttl", "") == []  # a duration: nothing to offer


def test_bash_completes_files_where_a_path_is_asked(d: Daemon) -> None:
    (d.root / "with space.jsonl").write_text("")
    assert bash(d, "import", str(d.root / "with")) == [str(d.root / "with space.jsonl")]
    assert bash(d, "export", "--output", str(d.root / "with")) == [
        str(d.root / "with space.jsonl")
    ]


def test_bash_asks_the_daemon_for_ids_where_a_command_takes_one(d: Daemon) -> None:
    assert bash(d, "get", "") == ["alpha-1", "alpha-2", "beta-1"]
    assert bash(d, "get", "al") == ["alpha-1", "alpha-2"]
    assert bash(d, "--json", "set", "b") == ["beta-1"]
    assert bash(d, "set", "alpha-1", "") == []  # a key: nothing to offer
    assert bash(d, "refresh", "--ttl", "5", "b") == ["beta-1"]


def test_bash_ids_follow_the_socket_typed_on_the_line(d: Daemon, tmp_path: Path) -> None:
    elsewhere = {"SESSIOND_SOCKET": str(tmp_path / "elsewhere.sock")}
    assert bash(d, "get", "", env=elsewhere) == []
    assert bash(d, "--socket", str(d.socket), "get", "", env=elsewhere) == [
        "alpha-1", "alpha-2", "beta-1"
    ]
    assert bash(d, "--socket", "=", str(d.socket), "get", "al", env=elsewhere) == [
        "alpha-1", "alpha-2"
    ]


def test_completing_ids_starts_no_daemon(make_daemon: Callable[..., Daemon]) -> None:
    stopped = make_daemon(start=False)
    assert bash(stopped, "get", "", env=AUTOSTART_ON) == []
    assert not stopped.socket.exists()
    assert not (stopped.data_dir / "sessiond.log").exists()


def test_list_ids_prints_one_id_a_line(d: Daemon) -> None:
    r = d.ctl("list", "--ids")
    assert (r.returncode, r.stdout, r.stderr) == (0, "alpha-1\nalpha-2\nbeta-1\n", "")
    assert d.ctl("list", "--ids", "--limit", "1").stdout == "alpha-1\n"


# -- zsh and fish, where installed --------------------------------------------


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_the_script_parses_in_its_shell(d: Daemon, shell: str) -> None:
    exe = needs(shell)
    done = subprocess.run([exe, "-n", str(script(d, shell))], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done


def fish(d: Daemon, line: str) -> list[str]:
    exe = needs("fish")
    rows = printed(
        [exe, "--no-config", "-c", f"source {script(d, 'fish')}; complete -C '{line}'"], d.env
    )
    return [row.split("\t")[0] for row in rows]


def test_fish_completes_commands_options_choices_and_ids(d: Daemon) -> None:
    assert fish(d, f"{SESSIONCTL} ge") == ["get"]
    assert fish(d, f"{SESSIONCTL} get --t") == ["--touch"]
    assert fish(d, f"{SESSIONCTL} export --format ") == ["csv", "json", "jsonl"]
    assert fish(d, f"{SESSIONCTL} export --format=js") == ["--format=json", "--format=jsonl"]
    assert fish(d, f"{SESSIONCTL} config fsync ") == ["always", "everysec", "no"]
    assert fish(d, f"{SESSIONCTL} get al") == ["alpha-1", "alpha-2"]
    assert fish(d, f"{SESSIONCTL} --socket /nonexistent get ") == []


ZSH_DRIVER = r"""
compdef() { print "compdef $*" }
source "$1"; shift
compadd() {
    while [[ $1 == -* && $1 != -- ]]; do
        [[ $1 == -a ]] && { shift; (( ${#${(P@)1}} == 0 )) || print -rl -- "${(P@)1}"; return }
        shift
    done
    [[ $1 == -- ]] && shift
    print -rl -- "$@"
}
_describe() { print -rl -- "${(P@)2%%:*}" }
_files() { print -r -- "(files)" }
compset() { : }
words=("$@")
CURRENT=$#words
_sessionctl
"""


def zsh(d: Daemon, *words: str) -> list[str]:
    exe = needs("zsh")
    lines = printed(
        [exe, "-f", "-c", ZSH_DRIVER, "zsh", str(script(d, "zsh")), SESSIONCTL, *words], d.env
    )
    assert lines[0] == "compdef _sessionctl sessionctl"
    return lines[1:]


def test_zsh_offers_commands_options_choices_and_ids(d: Daemon) -> None:
    # zsh's compadd filters by what is typed: the function offers them all.
    assert zsh(d, "") == list(registry.COMMANDS)
    assert zsh(d, "get", "-")[:1] == ["--touch"]
    assert zsh(d, "export", "--format", "") == ["json", "jsonl", "csv"]
    assert zsh(d, "export", "--format=") == ["json", "jsonl", "csv"]
    assert zsh(d, "config", "fsync", "") == ["always", "everysec", "no"]
    assert zsh(d, "import", "") == ["(files)"]
    assert zsh(d, "get", "") == ["alpha-1", "alpha-2", "beta-1"]
    assert zsh(d, "--socket=/nonexistent", "get", "") == []


def test_help_completion_gives_the_line_that_installs_it_for_each_shell(d: Daemon) -> None:
    text = " ".join(d.ctl("help", "completion").stdout.split())
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for line in ("echo 'source <(sessionctl completion bash)' >> ~/.bashrc",
                 "echo 'source <(sessionctl completion zsh)' >> ~/.zshrc",
                 "sessionctl completion fish > ~/.config/fish/completions/sessionctl.fish"):
        assert line in text
        assert line in readme
