"""Usage errors that help: a mistyped command, option or choice gets "did
you mean", every usage error points at ``sessionctl help COMMAND``, and
every option in ``help COMMAND`` says in a line what it does. Through the
real ``sessionctl``; none of these reaches the daemon or changes anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sessionctl import registry, usage
from tests.conftest import Daemon, running
from tests.rawwire import snapshot


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("usage")) as daemon:
        yield daemon


def error_line(d: Daemon, *args: str) -> str:
    r = d.ctl(*args)
    assert r.returncode == 2, (args, r.stderr)
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("sessionctl: error: ")
    return r.stderr.rstrip("\n").removeprefix("sessionctl: error: ")


SUGGESTED = [
    (("gte", "x"), "unknown command 'gte'; did you mean 'get'? (see 'sessionctl help')"),
    (("--json", "lsit"), "unknown command 'lsit'; did you mean 'list'? (see 'sessionctl help')"),
    (("get", "--tuoch", "x"),
     "unknown option '--tuoch' for 'get'; did you mean '--touch'? (see 'sessionctl help get')"),
    (("--jsn", "list"),
     "unknown option '--jsn' for 'list'; did you mean '--json'? (see 'sessionctl help list')"),
    (("refresh", "x", "--revieve"),
     "unknown option '--revieve' for 'refresh'; did you mean '--revive'? "
     "(see 'sessionctl help refresh')"),
    (("--verison",),
     "unknown option '--verison'; did you mean '--version'? (see 'sessionctl help')"),
    (("list", "--status", "activ"),
     "argument --status: invalid choice: 'activ'; did you mean 'active'? (choose from "
     "active, expired) (see 'sessionctl help list')"),
    (("help", "cleanpu"),
     "no such command 'cleanpu'; did you mean 'cleanup'? (see 'sessionctl help')"),
]


@pytest.mark.parametrize(("args", "said"), SUGGESTED, ids=[" ".join(a) for a, _ in SUGGESTED])
def test_a_slip_gets_did_you_mean(d: Daemon, args: tuple[str, ...], said: str) -> None:
    before = snapshot(d.socket)
    assert error_line(d, *args) == said
    assert snapshot(d.socket) == before


def test_no_suggestion_when_nothing_is_close(d: Daemon) -> None:
    assert error_line(d, "teleport") == "unknown command 'teleport' (see 'sessionctl help')"
    assert error_line(d, "get", "x", "--zzzzzz") == (
        "unknown option '--zzzzzz' for 'get' (see 'sessionctl help get')"
    )


def test_after_dashes_every_word_is_an_argument_and_no_word_is_its_own_suggestion(
    d: Daemon,
) -> None:
    # Before: "unknown option '--json' for 'delete'; did you mean '--json'?"
    assert error_line(d, "delete", "--", "-lead", "--json") == (
        "unexpected argument '--json' (see 'sessionctl help delete')"
    )
    assert error_line(d, "delete", "--", "-lead", "-zz") == (
        "unexpected argument '-zz' (see 'sessionctl help delete')"
    )
    # An unknown option before them is still one.
    assert error_line(d, "delete", "--jsn", "--", "-lead") == (
        "unknown option '--jsn' for 'delete'; did you mean '--json'? (see 'sessionctl help delete')"
    )
    # And one argument after them is the id, however it looks.
    r = d.ctl("delete", "--json", "--", "-lead")
    assert r.returncode == 1 and "session -lead not found" in r.stderr, r.stderr


def test_a_word_is_never_suggested_for_itself() -> None:
    assert usage.did_you_mean("--json", ["--json", "--jsonl"]) == "; did you mean '--jsonl'?"
    assert usage.did_you_mean("get", ["get"]) == ""


# Each kind of usage error, from argparse, from an argument's check, from the
# checks made before the daemon is reached, and from the daemon itself.
POINTED = [
    ("get",), ("get", "bad/id"), ("get", "a", "b", "c"), ("create", "--ttl", "0"),
    ("create", "--meta", "novalue"), ("list", "--limit", "ten"),
    ("cleanup", "--before", "yesterday"), ("cleanup", "-q", "--verbose"),
    ("import", "/nonexistent/file"), ("export", "--format", "csv", "--json"),
    ("config", "default_ttl", "soon"), ("config", "fsync", "sometimes"),
    ("config", "no_such_key"), ("watch", "--reconnect-timeout", "2d"),
    ("completion", "tcsh"), ("help", "nothing"),
]


@pytest.mark.parametrize("args", POINTED, ids=[" ".join(a) for a in POINTED])
def test_every_usage_error_points_at_the_commands_help(d: Daemon, args: tuple[str, ...]) -> None:
    topic = "" if args[0] == "help" else f" {args[0]}"
    assert error_line(d, *args).endswith(f"(see 'sessionctl help{topic}')")


def test_every_argument_of_every_command_has_its_line_of_help(d: Daemon) -> None:
    for name, command in registry.COMMANDS.items():
        shown = " ".join(d.ctl("help", name).stdout.split())
        for arg in (*registry.GLOBALS, *command.arguments):
            assert arg.help, f"{name} {arg.name} has no help"
            assert " ".join(arg.help.split()) in shown, (name, arg.name)


@pytest.mark.parametrize(("command", "option", "text"), [
    ("list", "--status {active,expired}", "only sessions with this status"),
    ("list", "--user U", "only this user's sessions"),
    ("watch", "--user U", "only events of this user's sessions"),
])
def test_the_options_that_had_no_help_have_it(
    d: Daemon, command: str, option: str, text: str
) -> None:
    lines = d.ctl("help", command).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
    assert text in " ".join(lines[at : at + 2])
