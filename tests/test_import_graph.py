"""The modules of ``sessiond`` and ``sessionctl`` import each other one way.

No circle, not even through an import inside a function or through a
handler that ``sessionctl.registry.COMMANDS`` names by string (``cli.run``
imports it); and the command table imports nothing else of its package, so
that every other module of the CLI may import it. Imports under ``if
TYPE_CHECKING:`` are the type checker's alone and do not count.

Read from the source, never by importing: what matters is every import
statement, including those on paths a test run would not take.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sessionctl import registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sessiond", "sessionctl")


def our_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def imports_of(path: Path, known: set[str], *, typing_too: bool = False) -> set[str]:
    """The modules of ``known`` that ``path`` imports, wherever the import
    statement is; those under ``if TYPE_CHECKING:`` only if ``typing_too``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test) and not typing_too:
                for other in child.orelse:
                    visit_statement(other)
                continue
            visit_statement(child)

    def visit_statement(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path}: relative import"
            for alias in node.names:
                # ``from sessiond import config`` imports the module config.
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif node.module in known:
                    found.add(node.module)
        visit(node)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    known = set(modules)
    graph = {name: imports_of(path, known) for name, path in modules.items()}
    for command in registry.COMMANDS.values():
        for target in (command.handler, command.prepare):
            if target is not None:
                graph["sessionctl.cli"].add(target.partition(":")[0])
    for name, edges in graph.items():
        edges.discard(name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets, as the modules along it."""
    state: dict[str, str] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def walk(name: str) -> None:
        state[name] = "open"
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                found.append([*path[path.index(other):], other])
            elif other not in state:
                walk(other)
        path.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name)
    return found


def test_no_module_imports_itself_back_through_others() -> None:
    found = [" -> ".join(circle) for circle in circles(import_graph())]
    assert found == []


def test_the_walk_finds_a_circle_when_there_is_one() -> None:
    # The check above is only as good as this.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c", "a"]]


def test_the_command_table_imports_nothing_else_of_its_package() -> None:
    modules = our_modules()
    imported = imports_of(modules["sessionctl.registry"], set(modules), typing_too=True)
    assert {name for name in imported if name.split(".")[0] == "sessionctl"} == set()
