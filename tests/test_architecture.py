"""The package's import layering, read from the source with ``ast`` (nothing is imported).

Every ``sparse_spectral`` import counts, relative or absolute, at module level or inside a
function. A module belongs to the *unit* named by its first component under
``sparse_spectral`` (``spectral.layer`` -> ``spectral``; a loose root module is its own
unit). Units sit on levels, and an import may only go to a unit on a lower level, or within
its own unit:

====  ===========================================  ======================================
 0    ``_util``, ``_version``, ``linear``          helpers, version, linear module kinds
 1    ``spectral``, ``targeting``, ``sparse_rows`` the SST layer, module selection, CSR data
 2    ``methods``, ``accounting``, ``hyperbolic``  training methods, counts, Lorentz layers
 3    ``models``, ``data``, ``serialization``      models, datasets, saving a method's model
 4    ``training``                                 the loop, schedules, checkpoints
 5    ``tasks``                                    one benchmark task each
 6    ``experiments``                              comparisons and sweeps over tasks
 7    ``cli``                                      command lines
====  ===========================================  ======================================

Where this departs from a plain reading of the brief, it follows the code:

* ``serialization`` is on level 3, not 2: it saves and loads a model together with its
  training method's state (``methods.base``), so it sits above ``methods``; nothing below
  ``tasks`` imports it.
* same-level arrows are allowed only where listed in :data:`SAME_LEVEL`:
  ``spectral -> targeting`` (``spectral.pruning`` selects the layers it prunes).
* ``accounting`` imports nothing of the package, and ``hyperbolic`` only levels 0-1.

Two units stand outside the levels: ``report`` (it reads result files) may import only
``_util``, and nothing but ``tasks``/``experiments``/``cli`` above it may import it; the
package root ``__init__`` (the public API) may import anything except ``cli``, ``tasks``,
``experiments`` and ``report``.

The test also rejects import cycles between modules (an import of ``a.b.c`` from outside
``a.b`` also runs ``a/__init__`` and ``a/b/__init__``, so those count as imported too; the
root ``__init__`` is left out: it always runs first), and loose modules at the package root
beyond :data:`ROOT_MODULES`. Dynamic imports (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "sparse_spectral"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

LEVELS: dict[str, int] = {
    "_util": 0, "_version": 0, "linear": 0,
    "spectral": 1, "targeting": 1, "sparse_rows": 1,
    "methods": 2, "accounting": 2, "hyperbolic": 2,
    "models": 3, "data": 3, "serialization": 3,
    "training": 4,
    "tasks": 5,
    "experiments": 6,
    "cli": 7,
}
#: Allowed imports between different units of the same level: (importer, imported).
SAME_LEVEL = {("spectral", "targeting")}
#: The only unit that may import ``report``: the command renders what the engine wrote
#: (tasks and experiments write result files and never import reports).
REPORT_USERS = {"cli"}
#: What ``report`` itself may import.
REPORT_IMPORTS = {"_util"}
#: What the public API (the root ``__init__``) may not import.
ROOT_FORBIDDEN = {"cli", "tasks", "experiments", "report"}
#: The only modules allowed loose at the package root (everything else lives in a package).
ROOT_MODULES = {"__init__", "_version", "linear", "targeting", "accounting", "serialization",
                "sparse_rows"}
ROOT = "__init__"


# --------------------------------------------------------------------------- reading imports
def module_names() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    names = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> Iterator[str]:
    """The package modules an ``import`` / ``from ... import`` node names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                yield alias.name
        return
    if not isinstance(node, ast.ImportFrom):
        return
    if node.level:
        parts = package.split(".")
        base = parts[:len(parts) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source != PACKAGE and not source.startswith(PACKAGE + "."):
        return
    yield source
    for alias in node.names:  # `from pkg import submodule`
        if f"{source}.{alias.name}" in modules:
            yield f"{source}.{alias.name}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (explicitly or through their packages)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = _package_of(module, path)
        own = {module} | {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, package, modules):
                while target not in modules:  # `from x import name`: name is no module
                    target = target.rpartition(".")[0]
                found.add(target)
                parent = target.rpartition(".")[0]
                while parent and parent != PACKAGE:  # its packages' __init__ run first
                    if parent not in own:
                        found.add(parent)
                    parent = parent.rpartition(".")[0]
        found.discard(module)
        graph[module] = found
    return graph


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


# --------------------------------------------------------------------------- the rules
def forbidden(importer: str, imported: str) -> str | None:
    """Why the unit arrow ``importer -> imported`` is not allowed, or None."""
    if importer == imported:
        return None
    if importer == ROOT:
        return "the public API may not import it" if imported in ROOT_FORBIDDEN else None
    if imported == ROOT:
        return "nothing inside imports the package root"
    if importer == "report":
        return None if imported in REPORT_IMPORTS else "report may only import _util"
    if imported == "report":
        return None if importer in REPORT_USERS else "only cli uses report"
    if importer not in LEVELS or imported not in LEVELS:
        return "unit on no level"
    low, high = LEVELS[imported], LEVELS[importer]
    if low < high or (low == high and (importer, imported) in SAME_LEVEL):
        return None
    if low == high:
        return f"same level {low}, not listed in SAME_LEVEL"
    return f"level {high} may not import level {low}"


def layering_violations() -> list[str]:
    out = []
    for importer, targets in sorted(import_graph().items()):
        for imported in sorted(targets):
            why = forbidden(unit(importer), unit(imported))
            if why is not None:
                out.append(f"{importer} -> {imported}  ({why})")
    return out


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _cycle_arrows(component: list[str]) -> list[str]:
    graph, members = import_graph(), set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]


# --------------------------------------------------------------------------- the tests
def test_the_graph_reader_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert f"{PACKAGE}.linear" in graph[f"{PACKAGE}.spectral.layer"]  # relative, module level
    assert f"{PACKAGE}.data.hgcn" in graph[f"{PACKAGE}.data.graphs"]  # `from . import hgcn`
    assert f"{PACKAGE}.data.text" in graph[f"{PACKAGE}.data.corpus"]  # inside a function
    assert forbidden("spectral", "methods") and not forbidden("methods", "spectral")
    assert forbidden("spectral", "sparse_rows") and not forbidden("spectral", "targeting")


def test_imports_follow_the_layering():
    violations = layering_violations()
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_there_are_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n\n".join(
        "\n".join(_cycle_arrows(component)) for component in cycles)


def test_the_package_root_holds_only_the_allowed_loose_modules():
    loose = {path.stem for path in SOURCE.glob("*.py")}
    extra = sorted(loose - ROOT_MODULES)
    assert not extra, f"loose modules at the package root: {', '.join(extra)}"


def test_the_sst_layer_knows_neither_targeting_nor_the_graph_type():
    # It takes graph data through the fixed-operand protocol of sparse_spectral.linear.
    graph = import_graph()
    for module in ("spectral.layer", "spectral.function"):
        seen = graph[f"{PACKAGE}.{module}"] & {f"{PACKAGE}.targeting", f"{PACKAGE}.sparse_rows"}
        assert not seen, f"{module} imports {sorted(seen)}"
