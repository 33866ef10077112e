"""The house's shape (../DESIGN.md, README's Layout): imports point down the layers, and no
module reaches itself again through others, lazy imports included. Read with `ast` from the
source, so an import inside a function counts as much as one at the top (names imported by
string, as gptlab/__init__.py's lazy exports are, are not seen)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gptlab"

# Floors, top to bottom: a module may import its own floor's or lower floors' modules only.
FLOORS = [
    ("gptlab.cli", "gptlab.serve", "gptlab.__main__"),
    ("gptlab.train", "gptlab.generate", "gptlab.eval"),
    ("gptlab.model",),
    ("gptlab.attention", "gptlab.tokenizers", "gptlab.data"),
    ("gptlab.config", "gptlab.hub", "gptlab.hardware"),
    ("gptlab.errors", "gptlab.fileio", "gptlab.folders", "gptlab.figures"),
]

# The one import that points up, as ../DESIGN.md allows: GPT.generate, a thin method over
# gptlab.generate, which needs nothing back from the model (it imports model/cache.py only).
ALLOWED_UPWARD = {("gptlab.model.gpt", "gptlab.generate")}


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports() -> dict[str, set[str]]:
    """module -> the gptlab modules it imports (at the top or inside a function)."""
    mods = modules()

    def home(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.startswith("gptlab"):
                    where = home(target)
                    if where and where != module and not module.startswith(where + "."):
                        edges[module].add(where)  # (a package's own __init__ aside)
    return edges


def floor(module: str) -> int:
    for level, names in enumerate(FLOORS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return level
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(group)

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(imports()) == []


def test_imports_point_down_the_floors():
    upward = {
        (m, t)
        for m, targets in imports().items()
        for t in targets
        if m != "gptlab" and floor(t) < floor(m)
    }
    assert upward <= ALLOWED_UPWARD, f"imports that point up: {sorted(upward - ALLOWED_UPWARD)}"


def test_the_package_exports_its_public_names_and_subpackages_lazily():
    """gptlab/__init__.py imports on first use (so the command line starts without torch);
    every public name and subpackage is still an attribute of the package."""
    import gptlab
    from gptlab.model import GPT

    assert gptlab.GPT is GPT and gptlab.model.GPT is GPT
    assert set(gptlab.__all__) <= set(dir(gptlab))
    assert all(getattr(gptlab, name) is not None for name in gptlab.__all__)


def test_the_circle_finder_finds_a_circle_through_three_modules():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert circles(edges) == [{"a", "b", "c"}]


def test_no_function_is_longer_than_80_lines():
    """A function a reader cannot see whole is cut into named pieces (issue 25's rule)."""
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []
