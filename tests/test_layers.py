"""The shape of the house (DESIGN.md section 7): layers without import cycles, files and
functions of a readable size, no private names across modules, and a light `import simulator`.

Imports are read with `ast`, wherever they are: at module level, inside functions and under
``TYPE_CHECKING`` (a cycle there is a cycle all the same), relative and absolute.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sharded_queue", "simulator")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60

LONG_FUNCTIONS: dict[str, str] = {}
"""``module:function`` allowed over `MAX_FUNCTION_LINES`, each with its reason (tables only)."""

"""Why a check of `sharded_queue` may fail on this branch: its modules are being split in parallel."""


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


ALL = {name: path for package in PACKAGES for name, path in modules(package).items()}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (dotted, absolute), wherever the import statement is."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # ``from package import module`` imports the module
                yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in ALL else source


def graph(package: str) -> dict[str, set[str]]:
    """The import graph of ``package``'s modules, among themselves."""
    names = modules(package)
    return {
        name: {other for other in imported(name, path) if other in names and other != name}
        for name, path in names.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
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
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(edges: dict[str, set[str]], component: list[str]) -> str:
    inside = set(component)
    wrong = [f"{a} -> {b}" for a in component for b in sorted(edges[a] & inside)]
    return f"cycle among {', '.join(component)} (edges: {'; '.join(wrong)})"


def check_no_cycles(package: str) -> None:
    edges = graph(package)
    found = cycles(edges)
    assert not found, "\n".join(describe(edges, component) for component in found)


def test_simulator_has_no_import_cycles() -> None:
    check_no_cycles("simulator")


def test_sharded_queue_has_no_import_cycles() -> None:
    check_no_cycles("sharded_queue")


def test_the_cycle_finder_finds_cycles() -> None:
    """The check can fail: a two-module cycle and a longer one are found, a chain is not."""
    edges = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert cycles(edges) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_relative_imports_resolve_to_modules() -> None:
    """``from . import analysis``, ``from .cpu import X`` and imports inside functions all count."""
    edges = graph("simulator")
    assert "simulator.analysis" in edges["simulator.result"]
    assert "simulator.cpu" in edges["simulator.scenario"]


SIMULATOR_LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "parameters",
        frozenset(
            {"checks", "noise", "arrivals", "requests", "service", "routing", "display", "cpu", "workload", "scenario"}
        ),
    ),
    (
        "the machine, the simulated storage and the record",
        frozenset({"storage_model", "feed", "machine", "loops", "lookups", "wake", "record"}),
    ),
    ("the engine", frozenset({"engine"})),
    (
        "runs, results and plots",
        frozenset({"simulation", "result", "analysis", "plots", "sweep", "calibrate", "predict", "theory", "dispatch"}),
    ),
    (
        "the lab",
        frozenset(
            {
                "lab",
                "lab.measure",
                "lab.realrun",
                "lab.handlers",
                "lab.accuracy",
                "lab.resources",
                "lab.plancheck",
                "lab.fairness",
            }
        ),
    ),
    ("the package", frozenset({""})),
)
"""DESIGN.md section 7: each layer imports only the ones before it (and itself, without cycles)."""


def test_simulator_layers_import_downwards() -> None:
    rank = {f"simulator.{m}".rstrip("."): number for number, (_, names) in enumerate(SIMULATOR_LAYERS) for m in names}
    edges = graph("simulator")
    assert set(rank) == set(edges), f"modules without a layer: {sorted(set(edges) - set(rank))}"
    upward = [
        f"{a} ({SIMULATOR_LAYERS[rank[a]][0]}) imports {b} ({SIMULATOR_LAYERS[rank[b]][0]})"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if rank[b] > rank[a]
    ]
    assert not upward, "\n".join(upward)


def lab_modules() -> set[str]:
    return {name for name in modules("simulator") if name.startswith("simulator.lab")}


def test_only_the_lab_starts_real_workers() -> None:
    """The twin never imports the lab or the real worker; the lab sits on top."""
    edges = graph("simulator")
    lab = lab_modules()
    assert lab, "simulator.lab is missing"
    for name in set(edges) - lab:
        assert not edges[name] & lab, f"{name} imports the lab: {sorted(edges[name] & lab)}"
        path = ALL[name]
        outside = set(imported(name, path))
        assert not {"sharded_queue.worker", "sharded_queue.testing"} & outside, f"{name} imports a real worker"


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for other in edges[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_analysis_needs_neither_simpy_nor_matplotlib() -> None:
    """Trace summaries (`simulator.analysis`) work on real traces without the simulation's packages."""
    edges = graph("simulator")
    for name in reachable(edges, "simulator.analysis"):
        heavy = {m.split(".")[0] for m in imported(name, ALL[name])} & {"simpy", "matplotlib"}
        assert not heavy, f"simulator.analysis needs {name}, which imports {sorted(heavy)}"


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def long_files(package: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}: {lines(path)}" for path in modules(package).values() if lines(path) > MAX_FILE_LINES
    ]


def long_functions(package: str) -> list[str]:
    found = []
    for name, path in modules(package).items():
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in LONG_FUNCTIONS:
                    found.append(f"{name}:{node.name} ({length} lines, line {node.lineno})")
    return found


def test_simulator_files_and_functions_are_short() -> None:
    assert not long_files("simulator"), f"files over {MAX_FILE_LINES} lines"
    assert not long_functions("simulator"), f"functions over {MAX_FUNCTION_LINES} lines"


def test_sharded_queue_files_and_functions_are_short() -> None:
    assert not long_files("sharded_queue"), f"files over {MAX_FILE_LINES} lines"
    assert not long_functions("sharded_queue"), f"functions over {MAX_FUNCTION_LINES} lines"


def owned_private_names(tree: ast.Module) -> set[str]:
    """The private names a module defines: its functions, classes, variables and attributes."""
    owned = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            owned.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            owned.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            owned.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            owned.add(node.value)  # ``__slots__``
    return {name for name in owned if name.startswith("_")}


def private_uses(path: Path) -> list[str]:
    """Private names of other modules that ``path`` uses: imported, or read off an object."""
    tree = parse(path)
    owned = owned_private_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = "." * node.level + (node.module or "")
            found += [f"line {node.lineno}: from {source} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in owned:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_names_across_modules() -> None:
    """A module of the simulator uses only public names of other modules and packages (not
    simpy's ``env._now``, a worker's ``_idle`` or another module's ``_helper``)."""
    found = {str(path.relative_to(ROOT)): private_uses(path) for path in modules("simulator").values()}
    assert not {k: v for k, v in found.items() if v}


def test_benchmarks_do_not_import_tests() -> None:
    """The helpers benchmarks share with the tests live in `sharded_queue.testing`."""
    for name, path in modules("benchmarks").items():
        assert not [m for m in imported(name, path) if m.split(".")[0] == "tests"], name


def test_import_simulator_is_light() -> None:
    """``import simulator`` loads neither matplotlib (plots load it when called) nor the lab."""
    code = (
        "import sys, simulator\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.startswith('simulator.lab'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
