"""Python calls SQL in one way: load `sql/NAME.sql`, pass `$name` parameters, get Arrow back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.warehouse import Warehouse

def _sql_dir() -> Path:
    """The queries: `pipeline/_sql/` in an installed wheel (setup.py copies them in), else the repository's `sql/`."""
    here = Path(__file__).resolve().parent
    packaged = here / "_sql"
    return packaged if packaged.is_dir() else here.parent / "sql"


SQL_DIR = _sql_dir()
PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def load_query(query: str) -> str:
    """A file in `sql/` by name (`phone_counts`), a path to a .sql file, or literal SQL."""
    candidates = [Path(query), SQL_DIR / query, SQL_DIR / f"{query}.sql"]
    for path in candidates:
        try:
            if path.suffix == ".sql" and path.is_file():
                return path.read_text()
        except OSError:  # literal SQL longer than a file name can be
            continue
    if re.fullmatch(r"[\w/.-]+", query.strip()):
        known = ", ".join(sorted(p.stem for p in SQL_DIR.glob("*.sql")))
        raise FileNotFoundError(f"no query named {query!r} in {SQL_DIR} (known: {known})")
    return query


NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def parse_param(text: str) -> tuple[str, Any]:
    """`name=value` from the command line. A value written as a plain number (`3`, `-1`, `0.5`, `1e-3`)
    becomes an int or float; anything else stays a string, so run names like `007` or `1.0.2` and ids
    with leading zeros are not changed. Pass `name='3'` to force the string `3`."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--param expects name=value, got {text!r}")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return name, value[1:-1]
    match = NUMBER.fullmatch(value)
    if match is None:
        return name, value
    return name, float(value) if match.group(2) or match.group(3) else int(value)


def bind(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters the query uses; a missing one is an error naming it."""
    wanted = set(PARAM.findall(_strip_comments(sql)))
    missing = wanted - params.keys()
    if missing:
        raise ValueError(f"query needs parameter(s) {sorted(missing)}: pass --param NAME=VALUE")
    return {k: params[k] for k in wanted}


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def query(warehouse: str | Path, sql: str, params: dict[str, Any] | None = None, con=None) -> pa.Table:
    """Run a query (name, path or literal SQL) on the warehouse's views; returns an Arrow table."""
    text = load_query(sql)
    if con is None:  # open only the runs and layers the query provably reads (pipeline/warehouse/scope.py)
        from pipeline.warehouse.scope import scope

        runs, layers = scope(text, params or {})
        con = Warehouse(warehouse).connect(runs=runs, layers=layers)
    return con.sql(text, params=bind(text, params or {})).to_arrow_table()


def run_checks(warehouse: str | Path) -> dict[str, int]:
    """Every `sql/checks/*.sql` must return zero rows on a healthy warehouse: offending rows per check
    (the queries run in `pipeline.stages.check`, which `python -m pipeline check` reports; a failing query raises)."""
    from pipeline.stages.check import run_sql_checks

    out = {}
    for name, rows in run_sql_checks(Warehouse(warehouse)).items():
        if isinstance(rows, Exception):
            raise rows
        out[name] = rows.num_rows
    return out


def table_text(table: pa.Table, max_rows: int = 100) -> str:
    """A query result as the text table the CLI prints (polars' rendering: every column, 4 decimals)."""
    import polars as pl

    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200, float_precision=4):
        return str(pl.from_arrow(table))
