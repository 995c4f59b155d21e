"""The packages form layers, as the README's layout table draws them, and no import goes up or sideways.

Every import counts, including those inside functions: a lazy import is still
a dependency. A failure names the importing file, its line and the rule broken.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lower numbers are lower layers; a package may import its own modules and any lower layer.
LAYERS: dict[str, int] = {
    "core": 0,
    "schemas": 1,
    "store": 2,
    "collector": 3, "pipeline": 3, "query": 3, "billing": 3, "simulator": 3,
    "dashboards": 4,
    "apim_analytics": 5,
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")) + sorted((REPO / package).rglob("*.pyx")):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a project module in the file."""
    if path.suffix == ".pyx":  # Cython: only its Python-level import lines are parsed
        source = "\n".join(line if line.lstrip().startswith(("import ", "from ")) and " cimport " not in line
                           else "" for line in path.read_text().splitlines())
    else:
        source = path.read_text()
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                    if f"{target}.{alias.name}" in MODULES]
    return [(line, name) for line, name in out if name.split(".")[0] in LAYERS]


def test_every_runtime_package_has_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(LAYERS), "add the new package to LAYERS and to the README's layout table"


def test_no_import_goes_up_or_sideways() -> None:
    broken = []
    for module, path in MODULES.items():
        own = module.split(".")[0]
        for line, target in _imports(path, module):
            other = target.split(".")[0]
            if other != own and LAYERS[other] >= LAYERS[own]:
                broken.append(f"{path.relative_to(REPO)}:{line} imports {target} "
                              f"(layer {LAYERS[other]} from layer {LAYERS[own]})")
    assert broken == []


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _line, target in _imports(path, module):
            while target and target not in MODULES:  # "from store.engine import make_engine" names store.engine
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["core"])
def test_core_imports_only_itself(package: str) -> None:
    for module, path in MODULES.items():
        if module.split(".")[0] == package:
            assert {t.split(".")[0] for _l, t in _imports(path, module)} <= {package}, path


def test_record_headers_match_the_schemas() -> None:
    from core.record_format import DEAD_LETTER_SCHEMA, USAGE_RECORD_FORMAT, USAGE_RECORD_SCHEMA
    from schemas.apim.usage.v1.dead_letter_pb2 import DeadLetter
    from schemas.apim.usage.v1.usage_event_columns_pb2 import UsageEventColumns

    assert f"{UsageEventColumns.DESCRIPTOR.full_name};format={USAGE_RECORD_FORMAT}".encode() == USAGE_RECORD_SCHEMA
    assert DeadLetter.DESCRIPTOR.full_name.encode() == DEAD_LETTER_SCHEMA
