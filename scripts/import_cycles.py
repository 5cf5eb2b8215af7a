#!/usr/bin/env python3
"""Finds source files that import each other in a loop, within each crate of the workspace.

A file's imports are the `crate::`, `super::` and `self::` paths it names (in `use` lines and
inline); each is resolved to the module file that defines it. A loop of two or more files is
printed and the exit status is 1. Declaring a child module (`mod x;`) is not an import.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each tree of modules: a crate's src/, and the cucumber steps (a module tree of their own).
TREES = ["bus/src", "runtime/src", "local/src", "projections/src", "queen/src", "hive/src", "worker/src", "ops/src", "features/src", "features/tests/steps"]
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def imports(text: str, here: tuple) -> set:
    """Module paths (tuples) named by a file whose module is `here`."""
    found = set()

    def resolve(root: str, rest: list) -> tuple:
        if root == "crate":
            return tuple(rest)
        base = list(here)
        if root == "super":
            base = base[:-1]
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
        return tuple(base + rest)

    for m in USE_GROUP.finditer(text):
        prefix = [p for p in m.group(2).split("::") if p]
        for item in m.group(3).split(","):
            names = [p for p in item.strip().split("::") if p and p != "self" and p != "{"]
            first = re.match(r"[A-Za-z_][A-Za-z0-9_]*", names[0]) if names else None
            found.add(resolve(m.group(1), prefix + ([first.group(0)] if first else [])))
    for m in PATH.finditer(text):
        found.add(resolve(m.group(1), [p for p in m.group(2).split("::") if p]))
    return found


def module_graph(tree: str) -> dict:
    src = ROOT / tree
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    graph = {}
    for module, file in files.items():
        targets = set()
        for path in imports(strip_comments(file.read_text()), module):
            # The longest prefix of the path that is a module file of this crate.
            for n in range(len(path), -1, -1):
                if path[:n] in files:
                    target = path[:n]
                    break
            # A file naming its own ancestors' items (`crate::Config` from lib.rs) is no loop edge
            # unless the ancestor is a file other than its parent module declaring it.
            if target != module and target != ():
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict) -> list:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(component)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    found = 0
    for tree in TREES:
        for component in cycles(module_graph(tree)):
            found += 1
            names = ", ".join(f"{tree}/{'/'.join(m) or 'lib'}" for m in sorted(component))
            print(f"import loop: {names}")
    if found:
        return 1
    print("no import loops between source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
