"""The package's import graph: no circle, and only the facade reaches into one adapter.

The graph is read from the source with ``ast`` (nothing is imported): every
``import`` and ``from ... import`` of a kcs_tl module, at module level or inside
a function. ``from pkg import name`` is an edge to ``pkg.name`` when that is a
module, else to ``pkg``.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kcs_tl"

ADAPTERS = ("kcs_tl.adapters.hooked", "kcs_tl.adapters.bridge")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the kcs_tl modules it imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert not node.level, f"{path}:{node.lineno}: a relative import; kcs_tl imports by full name"
                base = node.module
                edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> dict[frozenset[str], list[str]]:
    """Each group of modules that import each other (Tarjan's components), with one shortest circle in it."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

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
            group = set()
            while v not in group:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
            if len(group) > 1:
                groups.append(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return {g: _shortest_circle(graph, min(g), g) for g in groups}


def _shortest_circle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & group):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"{start} is in no circle of {group}")


def test_the_graph_sees_imports_inside_functions_and_from_package_imports():
    graph = import_graph()
    assert "kcs_tl.zoo.bridge" in graph["kcs_tl.zoo"]  # `from kcs_tl.zoo.bridge import as_bridge` inside load()
    assert "kcs_tl.zoo.smollm2" in graph["kcs_tl.zoo"]  # `from kcs_tl.zoo import smollm2`: a module
    assert "kcs_tl.validate" in graph["kcs_tl.masks.masked_model"]  # `from kcs_tl import validate`
    assert "kcs_tl.adapters" in graph["kcs_tl.masks.attach"]  # `from kcs_tl.adapters import Site, ...`: names


def test_cycles_are_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert cycles(graph) == {frozenset("abc"): ["a", "b", "c", "a"], frozenset({"e", "e2"}): ["e", "e2", "e"]}


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(circle) for circle in found.values())


def test_only_the_facade_imports_an_adapter():
    graph = import_graph()
    direct = {(m, a) for m, edges in graph.items() if not f"{m}.".startswith("kcs_tl.adapters.")
              for a in edges & set(ADAPTERS)}
    assert not direct, f"import the facade kcs_tl.adapters instead: {sorted(direct)}"


LAYERS = [  # bottom first, as docs/architecture.md draws them; a package imports only from its layer or below
    {"validate", "files", "precision", "data"}, {"adapters"}, {"masks"}, {"subnetwork"},
    {"baselines", "evaluation", "known"}, {"discovery"}, {"interventions", "analysis"}, {"zoo", "loading"},
    {"sweeps"}, {"cli"}, {"kcs_tl"},
]
UPWARD = {("masks", "subnetwork")}  # MaskedModel.to_subnetwork builds the result it describes


def test_imports_point_down_the_layers_of_the_architecture_page():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}

    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "kcs_tl"

    edges = {(package(m), package(d)) for m, deps in import_graph().items() for d in deps}
    assert {p for edge in edges for p in edge} <= set(layer), "a new package: place it in LAYERS and the docs"
    upward = sorted((a, b) for a, b in edges if layer[b] > layer[a] and (a, b) not in UPWARD)
    assert not upward, f"imports that point up the layers: {upward}"
