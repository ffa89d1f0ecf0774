"""Which runs (and layers) a query can read, when its own text proves it: so that `pipeline sql` opens
views over those files only. DuckDB binds every file a view names at each query (~50 µs a file here),
so a view over a whole LibriSpeech-sized warehouse costs seconds before the first row; a query on
one run and layer should cost what that run and layer's files cost.

The proof is DuckDB's own parse tree (`json_serialize_sql`), and it is conservative: every SELECT
that reads a warehouse view must read exactly one table (no join) and have a top-level `AND` term
`run = <value>` or `run IN (<values>)` (a constant or a `$parameter`); likewise `layer` for the
layers. Anything else (a join, an OR, a table function such as the `frame_labels` macro, a parse
error) gives None: every run, exactly as before.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import duckdb


def _nodes(obj: Any, kind: str) -> Iterator[dict]:
    if isinstance(obj, dict):
        if obj.get("type") == kind:
            yield obj
        for value in obj.values():
            yield from _nodes(value, kind)
    elif isinstance(obj, list):
        for value in obj:
            yield from _nodes(value, kind)


def _from_tables(ref: dict | None) -> list[dict] | None:
    """The table refs of one FROM clause (joins flattened); None for a ref we do not understand."""
    if not ref or ref.get("type") == "EMPTY_FROM":
        return []
    kind = ref.get("type")
    if kind == "JOIN":
        left, right = _from_tables(ref.get("left")), _from_tables(ref.get("right"))
        return None if left is None or right is None else left + right
    if kind in ("BASE_TABLE", "SUBQUERY"):
        return [ref]
    return None  # a table function (read_parquet, a table macro), a pivot…


def _values(expr: dict, params: dict) -> list | None:
    if expr.get("class") == "CONSTANT":
        return [expr["literal"].get("text")]
    if expr.get("class") == "PARAMETER":
        name = expr.get("identifier")
        return [params[name]] if name in params else None
    if expr.get("class") == "CAST":
        return _values(expr.get("child", {}), params)
    return None


def _constraint(where: dict | None, column: str, params: dict) -> set[str] | None:
    """Values `column` is pinned to by a top-level AND term of `where`, None if none is."""
    if not where:
        return None
    terms = where["children"] if where.get("type") == "CONJUNCTION_AND" else [where]
    for term in terms:
        kind = term.get("type")
        if kind == "COMPARE_EQUAL":
            sides = [term.get("left", {}), term.get("right", {})]
            for col, val in (sides, sides[::-1]):
                if col.get("class") == "COLUMN_REF" and col["column_names"][-1] == column:
                    found = _values(val, params)
                    if found is not None:
                        return {str(v) for v in found}
        elif kind == "COMPARE_IN":
            col, *rest = term.get("children", [])
            if col.get("class") == "COLUMN_REF" and col["column_names"][-1] == column:
                found = [_values(v, params) for v in rest]
                if all(f is not None for f in found):
                    return {str(v) for f in found for v in f}
    return None


def scope(sql: str, params: dict | None = None) -> tuple[set[str] | None, set[int] | None]:
    """(runs, layers) the query can read, each None when not proven (every run / every layer)."""
    params = params or {}
    try:
        tree = json.loads(duckdb.execute("select json_serialize_sql(?)", [sql]).fetchone()[0])
    except (duckdb.Error, TypeError, ValueError):
        return None, None
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None, None
    ctes = {entry.get("key") for node in _nodes(tree, "SELECT_NODE") for entry in node["cte_map"]["map"]}
    ctes |= {entry.get("key") for node in _nodes(tree, "SET_OPERATION_NODE")
             for entry in node.get("cte_map", {}).get("map", [])}
    runs: set[str] = set()
    layers: set[int] | None = set()
    readers = 0
    for node in _nodes(tree, "SELECT_NODE"):
        tables = _from_tables(node.get("from_table"))
        if tables is None:
            return None, None
        base = [t for t in tables if t["type"] == "BASE_TABLE" and t["table_name"] not in ctes]
        if not base:
            continue
        if len(tables) != 1:
            return None, None  # a join: `run` alone does not say which table it pins
        readers += 1
        pinned = _constraint(node.get("where_clause"), "run", params)
        if pinned is None:
            return None, None
        runs |= pinned
        pinned_layers = _constraint(node.get("where_clause"), "layer", params)
        try:
            layers = None if pinned_layers is None or layers is None else layers | {int(v) for v in pinned_layers}
        except ValueError:
            layers = None
    if not readers:
        return None, None  # no warehouse table named: a macro, the runs view, a constant…
    return runs, layers
