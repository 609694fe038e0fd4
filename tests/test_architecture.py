"""The layout rules of the README's architecture map, checked on the source tree itself.

Size limits (500 lines a file, 60 a function, flag tables excepted), no `sys.path` edits, the command
line known only to `config.py` and the entry points, `tools/` used by nothing outside it, and no import
cycle between the packages and top-level modules of the project.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
# Entry points and their helpers, which may know argparse: the CLI, the tools, the launchers and the tests.
CLI_FILES = ("main.py", "config.py", "conftest.py", "test_kd.py")
CLI_DIRS = ("cli", "tools", "train", "tests")


def _source_files() -> list[str]:
    out = []
    for dpath, dnames, fnames in os.walk(REPO):
        dnames[:] = sorted(d for d in dnames if not d.startswith(".") and d not in ("data", "output", "__pycache__"))
        out += [os.path.relpath(os.path.join(dpath, f), REPO) for f in sorted(fnames) if f.endswith(".py")]
    return out


FILES = _source_files()


def _tree(rel: str) -> ast.Module:
    with open(os.path.join(REPO, rel), encoding="utf-8") as fd:
        return ast.parse(fd.read(), filename=rel)


def _is_library(rel: str) -> bool:
    return rel not in CLI_FILES and rel.split(os.sep)[0] not in CLI_DIRS


def _imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _unit(module: str, units: set[str]) -> str | None:
    """The project package or top-level module a dotted name belongs to (None: not ours)."""
    top = module.split(".")[0]
    return top if top in units else None


def test_the_tree_is_found():
    assert {"main.py", "config.py", "engine.py", "datasets.py", "cells/sets.py", "tasks/base.py", "utils/settings.py"} <= set(FILES)


def test_no_file_over_500_lines():
    long = {rel: n for rel in FILES if (n := sum(1 for _ in open(os.path.join(REPO, rel), encoding="utf-8"))) > MAX_FILE_LINES}
    assert not long, f"split these files: {long}"


def test_no_function_over_60_lines_except_flag_tables():
    long = {}
    for rel in FILES:
        for node in ast.walk(_tree(rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
                flag_table = sum(c.func.attr == "add_argument" for c in calls) >= 0.5 * len(node.body)
                if not flag_table:
                    long[f"{rel}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, f"split these functions: {long}"


def test_no_sys_path_edits():
    edits = []
    for rel in FILES:
        for node in ast.walk(_tree(rel)):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                edits.append(f"{rel}:{node.lineno}")
    assert not edits, f"run tools as `python -m tools.NAME` from the repository root instead: {edits}"


@pytest.mark.parametrize("rel", [f for f in FILES if _is_library(f)])
def test_library_code_never_sees_the_command_line(rel):
    tree = _tree(rel)
    assert "argparse" not in _imported_modules(tree), f"{rel} imports argparse; take a settings dataclass instead"
    namespaces = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "Namespace"]
    assert not namespaces, f"{rel} reads an argparse Namespace (lines {namespaces})"


def test_nothing_outside_tools_imports_tools():
    users = [rel for rel in FILES if rel.split(os.sep)[0] != "tools" and any(m == "tools" or m.startswith("tools.") for m in _imported_modules(_tree(rel)))]
    assert not users, f"production code and tests must not depend on tools/: {users}"


def test_utils_holds_infrastructure_only():
    domain = {"cells", "big_vision", "tasks", "models", "datasets", "engine", "losses", "optim_factory", "config", "main"}
    for rel in FILES:
        if rel.startswith("utils" + os.sep):
            used = {m.split(".")[0] for m in _imported_modules(_tree(rel))} & domain
            assert not used, f"{rel} imports {used}: utils/ is cross-cutting infrastructure, below every domain package"


def test_no_import_cycle_between_packages():
    units = {rel.split(os.sep)[0].removesuffix(".py") for rel in FILES if rel.split(os.sep)[0] not in ("tests", "tools", "train")}
    units -= {"conftest", "test_kd"}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for rel in FILES:
        src = _unit(rel.replace(os.sep, ".").removesuffix(".py"), units)
        if src is None:
            continue
        for m in _imported_modules(_tree(rel)):
            dst = _unit(m, units)
            if dst is not None and dst != src:
                graph[src].add(dst)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for u in sorted(units):
        if u not in done:
            visit(u, [u])
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}; {dict((k, sorted(v)) for k, v in graph.items())}"
