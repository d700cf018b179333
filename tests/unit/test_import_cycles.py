"""No import cycle between the modules of gptresume: every `import` and `from ... import` in every module, at the
top or inside a function (a function-level import hides a cycle, it does not remove it), read with `ast`; only
imports under `if TYPE_CHECKING:` are left out (they never run). A cycle means two modules that cannot be
understood, tested or moved apart; the test names the modules of each one."""

from __future__ import annotations

import ast
from pathlib import Path

import gptresume

PACKAGE = Path(gptresume.__file__).parent


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module and package of gptresume."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except what sits under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The gptresume modules `name` imports: `from a.b import c` is module a.b.c when that is a module, else a.b."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_anywhere_in_the_package():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert len(graph) > 80 and "gptresume.training.start" in graph  # the walk sees the whole package
    assert "gptresume.health.decide" in graph["gptresume.training.session"]  # function-level imports are read
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)


def test_the_walk_finds_a_cycle_hidden_in_a_function(tmp_path):
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("import gptresume.b\n")
    b.write_text("def f():\n    from gptresume import a\n")
    known = {"gptresume.a": a, "gptresume.b": b, "gptresume": tmp_path / "__init__.py"}
    graph = {"gptresume.a": imports_of("gptresume.a", a, known), "gptresume.b": imports_of("gptresume.b", b, known),
             "gptresume": set()}
    assert cycles(graph) == [["gptresume.a", "gptresume.b"]]
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gptresume import a\n")
    graph["gptresume.b"] = imports_of("gptresume.b", b, known)
    assert cycles(graph) == []
