"""The layer rule of docs/architecture.md, read from the imports of every module of repshift/.

Algorithms import no other layer; adapters know no Hydra, configs or files of the harness; data knows no
evaluation and no models; reports know no models, adapters, data or benchmarks; and no module imports
another in a circle (an import inside a function counts: it is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import ROOT

PACKAGE = ROOT / "repshift"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports: ``import a.b`` -> a.b; ``from a import b`` -> a.b when that is a module,
    else a; relative imports resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def project_imports(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in MODULES and m != name}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_import_reader_sees_relative_and_nested_imports():
    assert "repshift.select" in project_imports("repshift.merge")
    assert "repshift.patch.base" in project_imports("repshift.patch.timm_vit")


def test_no_module_imports_another_in_a_circle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in project_imports(node):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in MODULES:
        if name not in index:
            visit(name)
    assert cycles == []


ALGORITHMS = ("repshift.scores", "repshift.select", "repshift.merge", "repshift.attention", "repshift.ops")
HARNESS = ("repshift.run", "repshift.tasks", "repshift.configs", "repshift.settings", "repshift.identity",
           "repshift.record", "repshift.report", "repshift.launchers", "repshift.status", "repshift.wandb_log",
           "repshift.maps", "repshift.demo", "repshift.realweights", "repshift.merging_experiment")
RULES = {
    # layer: (its modules, what it must not import: project prefixes and third-party roots)
    "algorithms": (ALGORITHMS, ("repshift.patch", "repshift.models", "repshift.data", "repshift.evaluate",
                                "repshift.bench", *HARNESS, "hydra", "omegaconf", "timm", "transformers")),
    "adapters": (("repshift.patch",), ("repshift.data", "repshift.evaluate", "repshift.bench", *HARNESS,
                                       "hydra", "omegaconf")),
    "data": (("repshift.data",), ("repshift.evaluate", "repshift.models", "repshift.patch", "repshift.bench",
                                  "repshift.run", "repshift.tasks", "repshift.report", "repshift.maps")),
    "reports": (("repshift.report",), ("repshift.models", "repshift.patch", "repshift.data", "repshift.bench",
                                       "repshift.evaluate", "repshift.run", "repshift.tasks", "repshift.maps",
                                       "repshift.configs", "repshift.ops", "torch", "timm", "transformers")),
}


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_rule(layer):
    members, forbidden = RULES[layer]
    broken = sorted(f"{name} imports {module}" for name in MODULES if within(name, members)
                    for module in GRAPH[name] if within(module, forbidden))
    assert broken == []


def test_the_run_record_and_the_algorithms_load_without_the_harness():
    # the record is read by every side; it needs pydantic and the standard library only
    assert project_imports("repshift.record") <= {"repshift.io"}
