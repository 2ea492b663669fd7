#!/usr/bin/env python3
"""Import circles between the files of one crate.

Usage: scripts/import-cycles.py CRATE_SRC_DIR [--tests]

Each `.rs` file is a module (`lib.rs`/`main.rs` the root, `x/mod.rs` and `x.rs` module `x`).
A file imports module M when its code (comments and, unless --tests, `#[cfg(test)]` modules
left out) names `crate::M…`, `super::…`, `self::…` or a child module's `child::…`; the longest known module prefix wins. A
module declaration (`mod x;`) is not an import. Prints every strongly connected component of
more than one file and exits 1 if there is one.
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main"):
        rel = rel[:-1]
    elif rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


def split_tests(code):
    """The file's code without comments, split into (code outside, code of its test modules)."""
    lines = [l for l in code.split("\n") if not l.lstrip().startswith("//")]
    code = "\n".join(lines)
    out, tests, i = [], [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code):
        if m.start() < i:
            continue
        out.append(code[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        tests.append(code[m.end():j])
        i = j
    out.append(code[i:])
    return "".join(out), "".join(tests)


def paths(code, children=()):
    """Every path that starts with crate/super/self or with a child module's name, brace groups
    expanded. Visibilities such as `pub(super)` are not paths."""
    code = re.sub(r"pub\((crate|super|self|in [^)]*)\)", "pub", code)
    for child in children:
        # A path that starts with a child module's name (in a `use` or anywhere in the code)
        # names that child: a local module shadows a crate of the same name.
        code = re.sub(r"(?<![:\w])" + child + r"::", "self::" + child + "::", code)
    found = []
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)*)(::\{)?", code):
        base = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        if m.group(3):
            depth, j, start, items = 1, m.end(), m.end(), []
            while depth and j < len(code):
                c = code[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                if (c == "," and depth == 1) or depth == 0:
                    items.append(code[start:j])
                    start = j + 1
                j += 1
            for item in items:
                first = re.match(r"\s*(\w+)", item)
                if first:
                    found.append(base + [first.group(1)])
        else:
            found.append(base)
    return found


def main():
    root = sys.argv[1]
    keep_tests = "--tests" in sys.argv
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                files[module_of(root, path)] = path
    modules = set(files)
    graph = {m: set() for m in modules}
    for module, path in files.items():
        code, tests = split_tests(open(path, encoding="utf-8").read())
        children = [m[-1] for m in modules if len(m) == len(module) + 1 and m[:-1] == module]
        found = [(p, False) for p in paths(code, children)]
        if keep_tests:
            # In a file's test module, `super` is the file's own module.
            found += [(p, True) for p in paths(tests)]
        for p, in_test in found:
            head, rest = p[0], p[1:]
            if head == "crate":
                target = rest
            elif head == "self" or (head == "super" and in_test):
                target = list(module) + rest
                if not rest:
                    continue
            else:  # super
                target = list(module[:-1]) + rest
            while target and tuple(target) not in modules:
                target = target[:-1]
            target = tuple(target)
            if target != module and target in modules and target != ():
                graph[module].add(target)
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    circles = [c for c in sccs if len(c) > 1]
    name = lambda m: "::".join(m) or "crate"
    for comp in circles:
        members = set(comp)
        print("circle:", ", ".join(sorted(name(m) for m in comp)))
        for m in sorted(comp):
            print("   ", name(m), "->", ", ".join(sorted(name(t) for t in graph[m] if t in members)))
    print(f"{len(files)} files, {sum(len(t) for t in graph.values())} imports, {len(circles)} circles")
    sys.exit(1 if circles else 0)


if __name__ == "__main__":
    main()
