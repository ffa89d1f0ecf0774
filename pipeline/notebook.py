"""The Python entry point for notebooks: a DuckDB connection with the warehouse's views, and a query's
vectors as one numpy matrix beside their keys.

    from pipeline import open_warehouse

    from pipeline import vectors
    con = open_warehouse("storage")
    keys, X = vectors(con, "select utterance_id, frame, phone, vector from frames where run = $run and layer = 6",
                      {"run": "demo"})
    # keys: pyarrow.Table (pl.from_arrow(keys) for polars); X: numpy float32 (n, D), row i beside keys row i

Importing this module loads DuckDB and pyarrow, never torch, FAISS or scikit-learn; the vectors go
through pipeline/warehouse/vectors.py, the one conversion of a vector column to a matrix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sql import bind, load_query
from pipeline.warehouse import Warehouse
from pipeline.warehouse import vectors as vector_encoding


def open_warehouse(path: str | os.PathLike = "storage") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every view of the warehouse at `path` (the same as `pipeline sql` sees)."""
    from pipeline.warehouse.fs import is_remote

    if not is_remote(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"no warehouse at {path}: pass the folder given as --warehouse (default storage)")
    con = Warehouse(path).connect()
    vector_encoding.register(con)  # the views' pipeline_vector as vectorized numpy, not views.sql's pure SQL
    return con


def vectors(con_or_path: duckdb.DuckDBPyConnection | str | os.PathLike, sql: str, params: dict[str, Any] | None = None,
            column: str = "vector") -> tuple[pa.Table, np.ndarray]:
    """Run `sql` (a query of sql/ by name, a .sql path or literal SQL with `$name` parameters) and return
    (every other column as a pyarrow.Table, the `column` of vectors as a float32 (n, D) matrix), row i of
    one beside row i of the other. The vectors are converted as one flat array, no Python per row."""
    con = con_or_path if isinstance(con_or_path, duckdb.DuckDBPyConnection) else open_warehouse(con_or_path)
    text = load_query(sql)
    table = con.sql(text, params=bind(text, params or {})).to_arrow_table()
    if column not in table.column_names:
        raise ValueError(f"the query returns no column {column!r} (it returns {', '.join(table.column_names)}): "
                         f"select the vectors as {column!r} or pass column=")
    vecs = table[column]
    if vecs.null_count:
        raise ValueError(f"{vecs.null_count} of {len(vecs)} rows have no {column!r}: filter them out in the query")
    lengths = pc.min_max(pc.list_value_length(vecs)) if len(vecs) else None
    if lengths is not None and lengths["min"].as_py() != lengths["max"].as_py():
        raise ValueError(f"the {column!r} values have different lengths ({lengths['min']} to {lengths['max']}): "
                         "a matrix needs one model and layer at a time; filter on run and layer in the query")
    return table.drop_columns([column]), vector_encoding.decode(vecs)
