"""The import graph of the pypool package (README, "Architecture").

Two rules, checked on the source with ``ast`` (nothing is imported):

* no import cycle between pypool's modules, counting the imports inside functions too
  (an import moved into a function to dodge a cycle at import time is still a cycle in
  the design);
* a function imports no pypool module: the dependencies of a module are the imports at
  its top. Only heavy or optional third-party packages (torch, matplotlib, rmm) may be
  imported where they are needed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PKG_DIR = Path(__file__).resolve().parent.parent / "pypool"

# Third-party packages a function may import: loading them at the top would make
# `import pypool` slow (torch) or fail where the optional extra is not installed.
HEAVY_OPTIONAL = ("torch", "matplotlib", "rmm")


def _modules(root: Path) -> Dict[str, Path]:
    """Module name -> file, for every ``.py`` (and ``.pyi`` stub of an extension) under root."""
    mods: Dict[str, Path] = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    for p in sorted(root.rglob("*.pyi")):
        mods.setdefault(".".join(p.relative_to(root.parent).with_suffix("").parts), p)
    return mods


def _targets(mods: Dict[str, Path], cur: str, node: ast.AST) -> List[str]:
    """The pypool modules an import statement loads (a package's submodules included)."""
    out: List[str] = []
    if isinstance(node, ast.Import):
        for a in node.names:
            out.append(a.name)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = cur.split(".")
            if mods[cur].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        subs = [prefix + "." + a.name for a in node.names if prefix + "." + a.name in mods]
        if len(subs) < len(node.names):
            out.append(prefix)  # a name defined in the module (or package __init__) itself
        out.extend(subs)
    # Importing a submodule runs its package's __init__ first: that edge is implicit, and
    # counting it would make every package that imports its own submodules a cycle.
    return [m for m in out if m in mods and m != cur]


def _graph(root: Path) -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]], List[Tuple[str, int, str]]]:
    """(module-level edges, all edges, function-level imports as (module, line, name))."""
    mods = _modules(root)
    top: Dict[str, Set[str]] = {m: set() for m in mods}
    every: Dict[str, Set[str]] = {m: set() for m in mods}
    inner: List[Tuple[str, int, str]] = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text()) if p.suffix == ".py" else ast.Module(body=[], type_ignores=[])
        in_function: Set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for n in ast.walk(tree):
            if not isinstance(n, (ast.Import, ast.ImportFrom)):
                continue
            tgt = _targets(mods, m, n)
            every[m].update(tgt)
            if id(n) in in_function:
                if isinstance(n, ast.ImportFrom):
                    names = ["." * n.level + (n.module or "")]
                else:
                    names = [a.name for a in n.names]
                allowed = not tgt and all(x.split(".")[0] in HEAVY_OPTIONAL for x in names)
                if not allowed:
                    inner.append((m, n.lineno, ", ".join(names)))
            else:
                top[m].update(tgt)
    return top, every, inner


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _problems(root: Path) -> List[str]:
    top, every, inner = _graph(root)
    found = [f"import cycle (module level): {' <-> '.join(c)}" for c in _cycles(top)]
    found += [f"import cycle (counting imports inside functions): {' <-> '.join(c)}" for c in _cycles(every)]
    found += [f"{m}:{line}: a function imports {what} (import it at the top of the module)"
              for m, line, what in inner]
    return found


def test_pypool_has_no_import_cycle_and_no_function_level_imports() -> None:
    assert _problems(PKG_DIR) == []


# `pypool` and its folders hold what the graph is made of: a check that finds nothing in
# an empty tree would pass forever.
def test_the_check_sees_the_package() -> None:
    top, every, _ = _graph(PKG_DIR)
    assert "pypool.memory" in top and "pypool._core" in top
    assert "pypool._core" in every["pypool.memory"]


def _write(root: Path, files: Dict[str, str]) -> Path:
    pkg = root / "pkg"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


@pytest.mark.parametrize("files, expected", [
    # a cycle at module level
    ({"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import x\n"},
     ["import cycle (module level): pkg.a <-> pkg.b",
      "import cycle (counting imports inside functions): pkg.a <-> pkg.b"]),
    # the same cycle closed by an import inside a function: a cycle and an inner import
    ({"__init__.py": "", "a.py": "from . import b\n",
      "b.py": "def f():\n    from .a import x\n    return x\n"},
     ["import cycle (counting imports inside functions): pkg.a <-> pkg.b",
      "pkg.b:2: a function imports .a (import it at the top of the module)"]),
    # through a sub-package and its __init__
    ({"__init__.py": "", "sub/__init__.py": "from .c import y\n", "sub/c.py": "from ..a import z\n",
      "a.py": "from .sub import y\n"},
     ["import cycle (module level): pkg.a <-> pkg.sub <-> pkg.sub.c",
      "import cycle (counting imports inside functions): pkg.a <-> pkg.sub <-> pkg.sub.c"]),
    # a light external module inside a function is refused, torch is allowed
    ({"__init__.py": "", "a.py": "def f():\n    import json\n    import torch.distributed\n"},
     ["pkg.a:2: a function imports json (import it at the top of the module)"]),
    # no cycle, nothing inside functions
    ({"__init__.py": "from . import a\n", "a.py": "from . import b\n", "b.py": "import os\n"}, []),
])
def test_the_check_finds_cycles_and_inner_imports(tmp_path: Path, files: Dict[str, str],
                                                   expected: List[str]) -> None:
    assert _problems(_write(tmp_path, files)) == expected
