#!/usr/bin/env python3
"""Import cycles between the modules of each crate: a module that needs one
that needs it back (directly or around a loop). A module and its own parent
or children are not counted (they always see each other). Reads `crate::`
and `super::` paths outside comments and inline test modules; exits 1 when
a crate has a cycle, naming the modules and the edges of each.

    python3 scripts/import-cycles.py [SRC_DIR ...]
"""
import os
import re
import sys

CRATES = ["common/src", "controller/src", "agent/src", "service/src", "tests/src"]


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods["::".join(rel)] = p
    return mods


def refs(mods, name, path):
    s = open(path, encoding="utf-8").read()
    s = re.sub(r"(?s)#\[cfg\(test\)\]\s*mod tests \{.*", "", s)
    s = re.sub(r"//[^\n]*", "", s)
    here = name.split("::") if name else []
    out = set()
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", s):
        base = [] if m.group(1) == "crate" else here[:-1]
        parts = base + m.group(2).strip(":").split("::")
        for k in range(len(parts), 0, -1):
            cand = "::".join(parts[:k])
            if cand in mods:
                out.add(cand)
                break
    return out


def related(a, b):
    a, b = (a.split("::") if a else []), (b.split("::") if b else [])
    return a[: len(b)] == b or b[: len(a)] == a


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(n):
        index[n] = low[n] = counter[0]
        counter[0] += 1
        stack.append(n)
        on.add(n)
        for w in graph.get(n, ()):
            if w not in index:
                visit(w)
                low[n] = min(low[n], low[w])
            elif w in on:
                low[n] = min(low[n], index[w])
        if low[n] == index[n]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == n:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for n in graph:
        if n not in index:
            visit(n)
    return found


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    srcs = sys.argv[1:] or [os.path.join(root, c) for c in CRATES]
    bad = 0
    for src in srcs:
        mods = modules(src)
        graph = {
            m: {r for r in refs(mods, m, p) if r != m and not related(m, r)}
            for m, p in mods.items()
        }
        for comp in cycles(graph):
            bad += 1
            print(f"{os.path.relpath(src, root)}: import cycle: {' <-> '.join(comp)}")
            for a in comp:
                for b in sorted(graph[a] & set(comp)):
                    print(f"    {a} -> {b}")
    if bad:
        print(f"{bad} import cycle(s); move what both sides need below them")
        return 1
    print("no import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
