#!/usr/bin/env python3
"""Lists import cycles between the files of each crate: file A refers to a module of file B
(`use crate::b::…`, `crate::b::…`, `super::b`) and B, directly or through others, refers back to
A. A module's file and its own submodules' files (parent ↔ child) do not count: a parent declares
and re-exports its children, which use its types. Exits 1 when a cycle is found.

Usage: scripts/import-cycles.py [crate-src-dir ...]   (default: every crate of the workspace)
"""
import os
import re
import sys

DEFAULT_DIRS = ["src", "consul/src", "build/src", "data/src", "mesh/src", "gateway/src"] + [
    os.path.join("services", name, "src") for name in sorted(os.listdir("services"))
] if os.path.isdir("services") else []

PATH = re.compile(r"\b(crate|super|self)((?:::[a-z_][a-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\}", re.S)


def module_of(root, path):
    """The module path of `path` (a .rs file under `root`), as a tuple."""
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def files_of(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                out[module_of(root, path)] = path
    return out


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def targets(module, text, modules):
    """The modules (with a file) that `text`, in `module`, refers to."""
    found = set()

    def resolve(base, rest):
        if base == "crate":
            parts = ()
        elif base == "self":
            parts = module
        else:
            parts = module[:-1]
        for name in rest:
            if name == "super":
                parts = parts[:-1]
            else:
                parts = parts + (name,)
        # The deepest prefix that is a module with a file.
        while parts and parts not in modules:
            parts = parts[:-1]
        if parts:
            found.add(parts)

    for base, rest in PATH.findall(text):
        resolve(base, [p for p in rest.split("::") if p])
    for base, group in USE_GROUP.findall(text):
        for item in re.split(r",", group):
            item = item.strip().split("::")[0].strip()
            if re.fullmatch(r"[a-z_][a-z0-9_]*", item):
                resolve(base, [item])
    found.discard(module)
    return found


def related(a, b):
    return a[: len(b)] == b or b[: len(a)] == a


def cycles(root):
    modules = files_of(root)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            text = strip_comments(f.read())
        graph[module] = {t for t in targets(module, text, modules) if not related(module, t)}
    # Tarjan's strongly connected components.
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return [[modules[m] for m in sorted(c)] for c in out]


def main():
    dirs = sys.argv[1:] or DEFAULT_DIRS
    found = False
    for root in dirs:
        for component in cycles(root):
            found = True
            print(f"{root}: files importing each other: {' ↔ '.join(component)}")
    if not found:
        print(f"no import cycles in {len(dirs)} crates")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
