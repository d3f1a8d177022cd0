"""Import-graph facts of a package: floors, cycles, upward and function-level imports.

Usage: python3 tools/archstat.py pypool [-v]. Floors: longest chain of module-level imports
(0 = imports no pypool module). Cycles are counted twice: on module-level imports, and
counting imports inside functions too (those only hide a cycle until the function runs).
"""
import ast, sys, os
from pathlib import Path

root = Path(sys.argv[1])  # path to the pypool/ folder
pkg = root.name
mods = {}
for p in root.rglob("*.py"):
    rel = p.relative_to(root.parent).with_suffix("")
    name = ".".join(rel.parts)
    if name.endswith(".__init__"):
        name = name[: -len(".__init__")]
    mods[name] = p
for p in root.rglob("*.pyi"):  # extension modules (their stubs stand in)
    name = ".".join(p.relative_to(root.parent).with_suffix("").parts)
    mods.setdefault(name, p)

def resolve(cur, node):
    out = []
    if isinstance(node, ast.Import):
        for a in node.names:
            out.append(a.name)
    else:
        base = cur.split(".")
        is_pkg = mods[cur].name == "__init__.py"
        if node.level:
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        subs = [prefix + "." + a.name for a in node.names if prefix + "." + a.name in mods]
        if len(subs) < len(node.names):
            out.append(prefix)  # a name from the module itself, not a submodule
        out.extend(subs)
    return [m for m in out if m in mods]

edges = {m: set() for m in mods}
all_edges = {m: set() for m in mods}
inner = []
for m, p in mods.items():
    tree = ast.parse(p.read_text()) if p.suffix == '.py' else ast.parse('')
    funcs = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    funcs.add(id(n))
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            tgt = resolve(m, n)
            if id(n) in funcs:
                for t in tgt:
                    if t != m: all_edges[m].add(t)
                names = [a.name for a in n.names]
                inner.append((m, (n.module or "") if isinstance(n, ast.ImportFrom) else names[0], n.lineno, bool(tgt)))
                continue
            # TYPE_CHECKING-only imports don't run
            for t in tgt:
                if t != m:
                    edges[m].add(t); all_edges[m].add(t)
# parent package __init__ runs on import of a submodule: ignore (implicit)
def tarjan(edges):
    # SCC (Tarjan)
    idx, low, st, on, sccs, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    idx, low, st, on, sccs, c = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx:
                sc(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    for v in mods:
        if v not in idx: sc(v)
    return sccs
sccs = tarjan(edges)
all_cycles = [x for x in tarjan(all_edges) if len(x) > 1]
cycles = [s for s in sccs if len(s) > 1]
comp_of = {v: i for i, s in enumerate(sccs) for v in s}
# floors on the condensation
floor = {}
def fl(i):
    if i in floor: return floor[i]
    floor[i] = 0
    deps = {comp_of[w] for v in sccs[i] for w in edges[v]} - {i}
    floor[i] = 1 + max((fl(d) for d in deps), default=-1)
    return floor[i]
for i in range(len(sccs)): fl(i)
print(f"modules: {len(mods)} (folders: {len({p.parent for p in mods.values()})})")
print(f"floors: {1 + max(floor.values())}")
print(f"import cycles: {len(cycles)} at module level, {len(all_cycles)} counting imports inside functions")
for x in all_cycles: print("    (with inner imports)", " <-> ".join(sorted(x)))
for s in cycles: print("   ", " <-> ".join(sorted(s)))
inpkg = [x for x in inner if x[3]]
print(f"imports inside functions: {len(inner)} ({len(inpkg)} of pypool modules)")
for x in inner:
    if x[3] or "-v" in sys.argv: print(f"    {x[0]}:{x[2]} {x[1]}{'' if x[3] else ' (external)'}")
sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in mods.items()), reverse=True)[:6]
print("largest modules:", ", ".join(f"{m} {n}" for n, m in sizes))
if "-v" in sys.argv:
    for i in sorted(range(len(sccs)), key=lambda i: floor[comp_of[sccs[i][0]]] if False else floor[i]):
        print(floor[i], sorted(sccs[i]))
