#!/usr/bin/env python3
"""Fails if the modules of a crate import each other in a circle.

Dependencies should point one way (CONVENTIONS: no import cycles). This
reads each crate's `src/` tree, takes every `crate::...` and `super::...`
path outside comments and test modules (grouped imports included) as an
edge from the file's module to the module it names, ignores edges between
a module and its own parent or children, and reports every strongly
connected component of more than one module. It reads paths, not types: a
name reached only through a re-export is not seen.

Usage: scripts/module-cycles.py CRATE_DIR...   (exit 1 on a cycle)
"""
import os
import re
import sys


def modules(src):
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
            text = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
            found["::".join(parts)] = text
    return found


def edges(mods):
    names = set(mods)

    def resolve(path):
        segs = [s for s in path.split("::") if s]
        for i in range(len(segs), 0, -1):
            candidate = "::".join(segs[:i])
            if candidate in names:
                return candidate
        return None

    out = {m: set() for m in mods}
    for m, text in mods.items():
        parent = m.rsplit("::", 1)[0] if "::" in m else ""

        def add(path):
            t = resolve(path)
            if t and t != m and not t.startswith(m + "::") and not m.startswith(t + "::"):
                out[m].add(t)

        def absolute(kind, rest):
            return rest if kind == "crate" else (parent + "::" if parent else "") + rest

        for g in re.finditer(r"\b(crate|super)::\{([^}]*)\}", text):
            for item in g.group(2).split(","):
                item = item.strip().split(" as ")[0]
                if item and item[0].islower() and item != "self":
                    add(absolute(g.group(1), item))
        for g in re.finditer(r"\b(crate|super)::([a-z_0-9]+(?:::[a-z_0-9]+)*)", text):
            add(absolute(g.group(1), g.group(2)))
    return out


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def at_depth(graph, depth):
    """The graph with each module folded into its ancestor `depth` deep, so
    that `a -> b::c` and `b::d -> a` make the circle `a, b`."""

    def fold(m):
        return "::".join(m.split("::")[:depth])

    folded = {}
    for m, targets in graph.items():
        src = fold(m)
        folded.setdefault(src, set())
        for t in targets:
            dst = fold(t)
            folded.setdefault(dst, set())
            if dst != src and not dst.startswith(src + "::") and not src.startswith(dst + "::"):
                folded[src].add(dst)
    return folded


def main():
    failed = False
    for crate in sys.argv[1:]:
        graph = edges(modules(os.path.join(crate, "src")))
        deepest = max((m.count("::") + 1 for m in graph if m), default=1)
        seen = set()
        for depth in range(1, deepest + 1):
            folded = at_depth(graph, depth)
            for component in cycles(folded):
                if tuple(component) in seen:
                    continue
                seen.add(tuple(component))
                failed = True
                print(f"{crate}: modules import each other in a circle: {', '.join(component)}")
                for m in component:
                    print(f"  {m} -> {', '.join(sorted(folded[m] & set(component)))}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
