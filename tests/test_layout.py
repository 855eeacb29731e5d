"""The package's layout is its architecture: no import circles between modules, and subpackages import only
downward in a declared layer order. Static (ast): every import counts, including those inside functions and
under `if TYPE_CHECKING:`, so a circle cannot hide behind a lazy import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "causalclip_cli"
ROOT = Path(__file__).resolve().parents[1] / PKG

# Bottom to top. A module may import modules of its own layer's package and of lower layers only.
# Layers with several packages (scanning, robustness) may not import each other.
LAYERS: list[set[str]] = [
    {"base"},  # causalclip_cli/__init__.py, errors.py, settings.py
    {"model"},
    {"evidence"},
    {"inputs"},
    {"training"},
    {"scanning", "robustness"},
    {"top"},  # cli.py, __main__.py, api.py: the user-facing layer
]
TOP_MODULES = {"cli", "__main__", "api"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    """The package's own module that `target` names (a module, or a name inside one), else None."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            targets = [f"{module}.{a.name}" for a in node.names] or [module]
        for t in targets:
            if t == PKG or t.startswith(PKG + "."):
                mod = _resolve(t, known)
                if mod is not None and mod != name:
                    found.add(mod)
    return found


FACADE = f"{PKG}:facade"


def _graph() -> dict[str, set[str]]:
    """Module → the package modules it imports. The root `__init__` plays two parts: imported, it is the base
    (`__version__`); importing, it is the API facade at the top, re-exporting `api` lazily. Its outgoing
    edges therefore belong to a separate top-layer node, FACADE."""
    known = _modules()
    return {(FACADE if name == PKG else name): _imports(name, path, known) for name, path in known.items()}


def _layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if module == FACADE:
        group = "top"
    elif len(parts) == 1:
        group = "base"
    elif len(parts) == 2 and parts[1] in TOP_MODULES:
        group = "top"
    elif len(parts) == 2 and parts[1] in {"errors", "settings"}:
        group = "base"
    else:
        group = parts[1]
    for rank, names in enumerate(LAYERS):
        if group in names:
            return rank, group
    raise AssertionError(f"{module}: package {group!r} has no place in LAYERS; add it to the layer order")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_lazy_and_relative_imports() -> None:
    graph = _graph()
    # scan.py imports the data loader inside a function: a lazy import is an edge too.
    assert "causalclip_cli.inputs.data" in graph["causalclip_cli.scanning.scan"]
    assert "causalclip_cli.cli" in graph["causalclip_cli.__main__"]
    assert len(graph) > 30
    assert "causalclip_cli.api" in graph[FACADE]


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_subpackages_import_downward_only() -> None:
    bad = []
    for src, targets in sorted(_graph().items()):
        src_rank, src_group = _layer_of(src)
        for dst in sorted(targets):
            dst_rank, dst_group = _layer_of(dst)
            if dst_group == src_group:
                continue
            if dst_rank >= src_rank:
                bad.append(f"{src} ({src_group}) imports {dst} ({dst_group})")
    assert bad == []


@pytest.mark.parametrize("package", ["model", "evidence", "inputs", "training", "scanning", "robustness"])
def test_subpackage_docstring_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8")))
    assert doc and "import" in doc
