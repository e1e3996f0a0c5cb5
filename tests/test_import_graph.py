"""lesionforge's modules import each other without cycles, and so do its packages (stages).

Every ``import`` statement counts, also the deferred ones inside functions: deferring an import hides a cycle
from Python, not from the reader (it only moves the error to the first call). The graph is read from the
source with ``ast``; ``graphlib`` finds the cycles.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module under ``src/<package>`` (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``from pkg.mod import name`` counts as ``pkg.mod``,
    or as ``pkg.mod.name`` when that is a module)."""
    modules = module_names(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded to the top-level parts of the package (``lesionforge.validate.filter`` ->
    ``validate``; the root package's ``__init__`` itself is left out)."""

    def part(module: str) -> str | None:
        bits = module.split(".")
        return bits[1] if len(bits) > 1 else None

    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if (p := part(module)) is not None:
            out.setdefault(p, set()).update(q for d in deps if (q := part(d)) not in (None, p))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        return e.args[1]
    return None


def test_no_module_imports_itself_through_others():
    graph = import_graph(SRC, "lesionforge")
    assert len(graph) > 80 and graph["lesionforge.validate.filter"] >= {"lesionforge.validate.validator"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_stages_depend_on_each_other_in_one_direction():
    graph = package_graph(import_graph(SRC, "lesionforge"))
    assert {"data", "segment"} <= graph["experiment"] and "validate" in graph["cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "packages import each other: " + " -> ".join(cycle or [])
    # the filter stays in validate/, the quality measures left it: neither knows the other
    assert "quality" not in graph["validate"] and "validate" not in graph["quality"]


@pytest.mark.parametrize("deferred", [False, True])
def test_a_cycle_is_found_also_through_a_deferred_import(tmp_path, deferred):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "sub" / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "a.py").write_text("from toy.sub import b\n", encoding="utf-8")
    body = "def f():\n    from ..a import f\n" if deferred else "from toy import a\n"
    (pkg / "sub" / "b.py").write_text(body, encoding="utf-8")
    graph = import_graph(tmp_path, "toy")
    assert graph["toy.a"] == {"toy.sub.b"} and graph["toy.sub.b"] == {"toy.a"}
    assert set(find_cycle(graph)) == {"toy.a", "toy.sub.b"}
    assert find_cycle(package_graph(graph)) is not None  # toy.a is the root's "a" part, toy.sub.b is "sub"
