"""The package's import graph: no cycles, and each layer imports only the layers below it
(issue 16). Every import counts: module level, inside functions and under TYPE_CHECKING.

    cli -> api -> tools -> run -> {compile, formats} -> ops -> lang -> core
    (errors and version sit under everything; `mapspec/__init__` re-exports lazily). ops sits
    on lang because an action's arguments are the language's expression nodes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "mapspec"

# layer of each top-level part of the package; a module may import its own layer's package
# and any layer with a smaller number
LAYERS = {
    "errors": 0, "version": 0,
    "core": 1,
    "lang": 2,
    "ops": 3,
    "compile": 4, "formats": 4,
    "run": 5,
    "tools": 6,
    "api": 7,
    "cli": 8,
    "__init__": 9,
}
TOP_LEVEL_MODULES = {"__init__", "api", "errors", "version"}


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mapspec modules `name` imports, wherever the import statement is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name and c != "mapspec"}
    return found


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # `__init__` lazily re-exports (by string); it is the top and imports nothing eagerly but version
    return {m: imports(m, f, known) for m, f in mods.items()}


def test_the_top_level_holds_only_the_facade_modules():
    top = {f.stem for f in ROOT.glob("*.py")}
    assert top == TOP_LEVEL_MODULES
    packages = {d.name for d in ROOT.iterdir() if d.is_dir() and (d / "__init__.py").exists()}
    assert packages == {p for p, _ in LAYERS.items() if p not in TOP_LEVEL_MODULES}


def test_every_import_points_down_the_pipeline():
    upward = []
    for module, targets in graph().items():
        src = part(module)
        assert src in LAYERS, f"{module} is in no layer: add its package to LAYERS"
        for t in targets:
            dst = part(t)
            if dst == src:
                continue
            if LAYERS[dst] >= LAYERS[src]:
                upward.append(f"{module} -> {t}")
    assert upward == []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join(path[path.index(w):] + [w]))
            elif w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v, [v])
    assert cycles == []
