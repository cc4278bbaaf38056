#!/usr/bin/env python3
"""Lists the engine's module dependencies (`crate::<module>` references, by top-level module)
and the cycles among them."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "crates/engine/src"
mods = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"): continue
        p = os.path.join(dirpath, f)
        rel = os.path.relpath(p, root)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"): top = "lib"
        src = re.sub(r"//[^\n]*", "", open(p).read())
        # drop #[cfg(test)] mod tests blocks' influence is ignored: tests count too
        deps = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", src))
        for m in re.findall(r"use crate::\{([^;]*)\}", src, re.S):
            deps |= set(re.findall(r"(?:^|[\s,{])([a-z_][a-z0-9_]*)(?=::|\s*[,}]|$)", m))
        mods.setdefault(top, set()).update(d for d in deps if d != top)
names = set(mods)
graph = {m: sorted(d for d in ds if d in names and d != "lib") for m, ds in mods.items()}
for m in sorted(graph): print(f"{m:14} -> {', '.join(graph[m])}")
# cycles via Tarjan SCC
idx, low, st, on, out, n = {}, {}, [], set(), [], [0]
def sc(v):
    idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
    for w in graph.get(v, []):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        c = []
        while True:
            w = st.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: out.append(sorted(c))
for v in sorted(graph):
    if v not in idx: sc(v)
print("cycles:", out if out else "none")
sys.exit(1 if out else 0)
