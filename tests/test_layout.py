"""The package's structure: no import cycle, one home per algorithm, launch modes as objects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from asyncsgd.algorithms.registry import ALGORITHMS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "asyncsgd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules of the package this file imports, at any level (function-level imports count too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in modules:
                found.add(t)
    # importing a.b.c runs a/__init__ and a/b/__init__ too, unless they are this module's own
    # packages (those are always imported before the module itself)
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for t in list(found):
        parts = t.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in modules and parent not in own:
                found.add(parent)
    found.discard(name)
    return found - own


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, name, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    assert len(graph) > 40 and "asyncsgd.algorithms.pdasgd.worker" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_config_is_a_leaf():
    assert import_graph()["asyncsgd.config"] <= {"asyncsgd", "asyncsgd.errors"}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_each_algorithm_has_one_home(name):
    """spec.py, worker.py and sim.py side by side; the registry names the run() of the last two
    (imported at the first call: base.later)."""
    import importlib
    folder = PACKAGE / "algorithms" / name
    assert {"spec.py", "worker.py", "sim.py"} <= {p.name for p in folder.iterdir()}
    algo = ALGORITHMS[name]
    for entry, module in ((algo.worker, "worker"), (algo.sim, "sim")):
        assert (entry.module, entry.function) == (f"asyncsgd.algorithms.{name}.{module}", "run")
        assert callable(importlib.import_module(entry.module).run)


def test_no_torchrun_string_comparison_outside_the_launch_package():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "launch":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if "torchrun" in consts:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
