"""fastalex's own import graph, counting imports inside functions, and its cycles.

Built with grimp (what import-linter uses). ``python tests/support/import_graph.py`` prints
every cycle: the modules of each strongly connected group, and each import that closes a
loop, with its line. ``tests/test_import_cycles.py`` keeps the list from growing.

Importing ``fastalex.a.b`` also runs ``fastalex/__init__.py`` and ``fastalex/a/__init__.py``;
those implicit parent imports are not counted (a package's ``__init__`` re-exporting its
submodules would otherwise make every submodule part of a cycle).
"""

from __future__ import annotations

import sys

__all__ = ["import_graph", "strongly_connected", "cycle_imports", "simple_cycles", "report"]


def import_graph(package="fastalex") -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, every import statement counted (module
    level, inside functions, under ``if TYPE_CHECKING``)."""
    import grimp
    graph = grimp.build_graph(package, cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}, graph


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or not (Tarjan)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(groups)


def cycle_imports(package="fastalex") -> set[tuple[str, str]]:
    """Every ``(importer, imported)`` pair inside a strongly connected group: the imports that
    take part in a cycle."""
    edges, _ = import_graph(package)
    pairs = set()
    for group in strongly_connected(edges):
        members = set(group)
        pairs.update((a, b) for a in group for b in edges[a] if b in members)
    return pairs


def simple_cycles(edges, group) -> list[list[str]]:
    """Every elementary cycle within ``group`` (each listed once, from its smallest module)."""
    members, cycles = set(group), []
    for start in sorted(group):
        def walk(path):
            for nxt in sorted(edges[path[-1]] & members):
                if nxt == start:
                    cycles.append(path + [start])
                elif nxt > start and nxt not in path:
                    walk(path + [nxt])
        walk([start])
    return cycles


def report(package="fastalex") -> str:
    edges, graph = import_graph(package)
    short = lambda m: m[len(package) + 1:] if m.startswith(package + ".") else m  # noqa: E731
    groups = strongly_connected(edges)
    if not groups:
        return "no import cycles"
    lines = []
    for group in groups:
        lines.append(f"cycle group: {', '.join(short(m) for m in group)}")
        for cycle in simple_cycles(edges, group):
            lines.append(f"  loop: {' -> '.join(short(m) for m in cycle)}")
        members = set(group)
        for a in group:
            for b in sorted(edges[a] & members):
                for detail in graph.get_import_details(importer=a, imported=b):
                    lines.append(f"  {short(a)}:{detail['line_number']} -> {short(b)}: "
                                 f"{detail['line_contents'].strip()}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1] if len(sys.argv) > 1 else "fastalex"))
