"""No import cycles in fastalex, counting imports inside functions (issue 20).

There are none: every module imports only the layers below it (docs/architecture.md). KNOWN
stays empty; the test fails when a cycle appears (a module importing "up" again). ``python
tests/support/import_graph.py`` prints each loop with the import statements and their lines.
"""

import pytest

pytest.importorskip("grimp", reason="the import graph needs grimp (pip install import-linter)")

from support.import_graph import cycle_imports, import_graph, simple_cycles, strongly_connected  # noqa: E402

#: (importer, imported), without the "fastalex." prefix: the imports that take part in a cycle
KNOWN: set = set()


def test_no_new_import_cycle_and_the_known_list_is_exact():
    found = {(a.removeprefix("fastalex."), b.removeprefix("fastalex.")) for a, b in cycle_imports()}
    new, gone = found - KNOWN, KNOWN - found
    assert not new, f"new imports in a cycle (import only downwards, see docs/architecture.md): {sorted(new)}"
    assert not gone, f"no longer in a cycle, delete from KNOWN: {sorted(gone)}"


def test_imports_inside_functions_count():
    edges, graph = import_graph()
    # classify imports the Dask runner only inside a function; it is an edge all the same
    details = graph.get_import_details(importer="fastalex.classify", imported="fastalex.distributed")
    assert details and all(d["line_contents"].startswith("from .distributed") for d in details)
    assert "fastalex.distributed" in edges["fastalex.classify"]


def test_cycle_finder_on_a_small_graph():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert strongly_connected(edges) == [["a", "b", "c"], ["e"]]
    assert simple_cycles(edges, ["a", "b", "c"]) == [["a", "b", "c", "a"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
