"""The house rules of ``core/``, read from the code: every import points down the layers its sub-package's
docstring names, nothing imports in a circle, and no page or core module imports Streamlit where it must not."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"
PACKAGES = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``core`` module this file imports, at the top or inside a function, type-only imports included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
            # ``from . import a, b`` imports the submodules a and b, not the package; ``from .x import name`` imports x
            candidates = submodules if len(submodules) == len(node.names) else [target, *submodules]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c.startswith("core.") and _exists(c))
    return found


def _exists(module: str) -> bool:
    path = CORE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _allowed(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text())) or ""
    line = re.search(r"May import: (.*?)\.\s*$", doc, re.S)
    assert line, f"core/{package}/__init__.py's docstring does not say what it may import ('May import: …')"
    return set(re.findall(r"``(\w+)``", line.group(1)))


MODULES = sorted(p for p in CORE.rglob("*.py"))


def test_every_sub_package_says_what_it_holds_and_may_import():
    assert {"platform", "spec", "data", "models", "features", "runs", "inference", "training", "analysis", "jobs",
            "cli"} == set(PACKAGES)
    for package in PACKAGES:
        assert _allowed(package) <= set(PACKAGES), package
    assert not [p for p in CORE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}], \
        "a module sits in core/ itself: put it in the sub-package it belongs to"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_imports_point_down_the_layers(path):
    name = _module_name(path)
    if name.count(".") < 1 or name in {"core.__main__"}:
        return  # core/__init__.py and the ``python -m core`` entry sit above every layer
    package = name.split(".")[1]
    allowed = _allowed(package) | {package}
    upward = sorted(m for m in _imports(path) if m.split(".")[1] not in allowed)
    assert not upward, f"{path.relative_to(CORE)} imports {upward}; core/{package} may import only {sorted(allowed)}"


def test_the_layers_are_a_strict_order_and_no_module_imports_in_a_circle():
    # Package level: what each may import never includes a package that may import it back.
    for package in PACKAGES:
        for lower in _allowed(package):
            assert package not in _allowed(lower), f"{package} and {lower} may import each other"
    # Module level: depth-first search over every import (top-level, deferred and type-only alike).
    graph = {_module_name(p): {m for m in _imports(p)} for p in MODULES}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_core_never_imports_streamlit():
    for path in MODULES:
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not [n for n in names if n.split(".")[0] == "streamlit"], path


def test_an_import_inside_a_function_says_why_it_is_deferred():
    """Imports sit at the top of a module, so the graph a reader sees is the real one; one inside a function saves
    start-up time (torch, scikit-learn, torchvision…), and a comment on it or on its block says so. The command line
    defers into every command function, and its package docstring says why once."""
    silent = []
    for path in MODULES:
        if "cli" in path.relative_to(CORE).parts:
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    first = sub.lineno - 1
                    while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                        first -= 1  # the first line of this block of imports
                    said = ("#" in lines[sub.lineno - 1] or "#" in lines[first]
                            or lines[first - 1].strip().startswith("#"))
                    if not said:
                        silent.append(f"{path.relative_to(CORE)}:{sub.lineno}")
    assert not silent, f"imports inside functions without a word on why they are deferred: {silent}"
