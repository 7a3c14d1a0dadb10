"""The package's modules import each other without a circle, and the lowest ones stay light.

Read from the source (every ``import`` of a ``fedvssl`` module, at module level, inside functions
or for type checking), not by importing: a circle there is a design fault even where lazy imports
keep it from failing at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedvssl"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = {
        ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
        for f in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedvssl"):
                module = str(node.module)
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in files else module
                          for a in node.names}  # fmt: skip
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("fedvssl")}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets, as the list of its modules."""
    found: list[list[str]] = []
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        for other in sorted(graph[module]):
            if other in path:
                found.append([*path[path.index(other) :], other])
            elif other not in done:
                walk(other, [*path, other])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    return found


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    graph = import_graph()
    assert {"fedvssl.settings", "fedvssl.server_app", "fedvssl.run_config"} <= set(graph)
    assert circles(graph) == []
    assert "fedvssl.run_config" not in graph["fedvssl.server_app"]
    assert not graph["fedvssl.settings"] & {"fedvssl.server_app", "fedvssl.client_data"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_settings_import_no_torch_or_flower() -> None:
    code = "import sys, fedvssl.settings; print(sorted({'torch', 'flwr'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
