"""The package's floors and circles, read from the source with ``ast`` (no import of headatlas; fast).

Every module of ``src/headatlas`` sits on one floor of :data:`FLOORS` (lowest first; the table of
``docs/architecture.md``). A module may import from its own floor and the floors below it, never from a floor
above, whether the import is at module level, inside a function or under ``TYPE_CHECKING``. Files of different
folders (a top-level module counts as its own folder) never import each other in a circle. A module is placed
by the longest entry of the table that is its name or a package above it; a module no entry covers fails the
test, so a new folder or top-level module must be given a floor here (and in the docs).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "headatlas"

# (floor, modules on it), lowest first. Names are relative to ``headatlas``; "" is the package itself.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("errors", "version")),
    ("checks", ("checks", "outdir")),
    ("records", ("atlas.records", "atlas.schema", "stats", "stats_tasks")),
    ("atlas", ("atlas",)),
    ("models", ("models",)),
    ("tasks", ("tasks",)),
    ("instrument", ("instrument",)),
    ("methods", ("methods", "head_deltas")),
    ("detectors", ("detectors", "scanfiles")),
    ("scan", ("scan",)),
    ("validate", ("validate",)),
    ("entry points", ("compare", "sweep")),
    ("cli", ("cli", "__main__", "")),
]

# (importer, imported) -> why this one import runs up a floor. Keep it empty unless an import truly must.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

MAX_LINES = 520   # "no module over ~500 lines" (docs/style); a little slack for a docstring


def _modules() -> dict[str, Path]:
    """Dotted name relative to ``headatlas`` ("" for the package) -> its file."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The headatlas modules an import statement names (a ``from X import y`` names ``X.y`` when that is a
    module, else ``X``); [] for imports from outside the package."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n[len("headatlas."):] if n.startswith("headatlas.") else "" for n in names
                if n == "headatlas" or n.startswith("headatlas.")]
    if node.level:
        base = module.split(".") if module else []
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif node.module and (node.module == "headatlas" or node.module.startswith("headatlas.")):
        target = node.module[len("headatlas."):] if node.module != "headatlas" else ""
    else:
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}" if target else alias.name
        out.append(sub if sub in MODULES else target)
    return out


def _edges() -> dict[str, set[str]]:
    """Importer -> the headatlas modules it imports anywhere in its file."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node):
                    assert target in MODULES, f"{module} imports {target!r}, which is no module of headatlas"
                    if target != module:
                        edges[module].add(target)
    return edges


def _floor(module: str) -> int:
    best, floor = -1, None
    for i, (_, names) in enumerate(FLOORS):
        for name in names:
            covers = module == name or (name and module.startswith(name + ".")) or (name == "" and module == "")
            if covers and len(name) > best:
                best, floor = len(name), i
    assert floor is not None, f"headatlas.{module} is on no floor: add it to FLOORS (and docs/architecture.md)"
    return floor


def _folder(module: str) -> str:
    """The top-level module or sub-package a module belongs to."""
    return module.split(".")[0]


def _label(module: str) -> str:
    return f"headatlas.{module}" if module else "headatlas"


def test_every_module_has_a_floor_and_every_floor_entry_exists():
    for module in MODULES:
        _floor(module)
    for _, names in FLOORS:
        for name in names:
            assert name in MODULES, f"FLOORS names {_label(name)}, which is no module of headatlas"


def test_no_import_runs_up_a_floor():
    edges = _edges()
    bad = []
    for src, targets in edges.items():
        for dst in targets:
            if _floor(dst) > _floor(src) and (src, dst) not in ALLOWED_UPWARD:
                bad.append(f"{_label(src)} ({FLOORS[_floor(src)][0]}) -> {_label(dst)} ({FLOORS[_floor(dst)][0]})")
    assert not bad, "imports from a lower floor to a higher one:\n  " + "\n  ".join(sorted(bad))
    stale = [k for k in ALLOWED_UPWARD if k[1] not in edges.get(k[0], set()) or _floor(k[1]) <= _floor(k[0])]
    assert not stale, f"allow-list entries that no longer run up a floor (remove them): {stale}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in MODULES:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_circle_between_folders():
    edges = _edges()
    bad = []
    for comp in _cycles(edges):
        if len({_folder(m) for m in comp}) > 1:
            inside = sorted(f"{_label(a)} -> {_label(b)}" for a in comp for b in edges.get(a, ()) if b in comp)
            bad.append(", ".join(_label(m) for m in comp) + "\n    " + "\n    ".join(inside))
    assert not bad, "import circles between folders:\n  " + "\n  ".join(bad)


def test_the_cycle_finder_finds_a_planted_circle():
    """The circle test can fail: a planted a -> b -> c -> a is one component, a lone edge is none."""
    global MODULES
    saved = MODULES
    MODULES = {"a": Path("a.py"), "b": Path("b.py"), "c": Path("c.py"), "d": Path("d.py")}
    try:
        assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
        assert _cycles({"a": {"b"}}) == []
    finally:
        MODULES = saved


def test_the_floor_of_a_module_is_its_longest_entry():
    assert FLOORS[_floor("atlas.records")][0] == "records"
    assert FLOORS[_floor("atlas.report")][0] == "atlas"
    assert FLOORS[_floor("")][0] == "cli"
    assert _floor("detectors.patterns.induction") > _floor("methods.dla") > _floor("models.loading")


def test_no_module_over_the_line_limit():
    long = {_label(m): n for m, p in MODULES.items()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their ideas): {long}"
