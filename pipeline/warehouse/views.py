"""The warehouse's views as one SQL script that any DuckDB client runs: the one definition of the views.

    duckdb -init storage/views.sql            the command line
    .read storage/views.sql                   inside a duckdb session, or DBeaver's "execute script"
    duckdb.sql(open("storage/views.sql").read())

The script names each committed file by its absolute path, so it reads exactly what the commit log
names: a file renamed into place by a job that died before its commit is never read (a glob over
the table's folder would read it). It also holds the empty views (a table without files yet still
has its columns), `runs` (each run's facts as a JSON literal), `run_geometry` and the `frame_labels`
macro. `refresh` keeps a copy at the warehouse root (`<warehouse>/views.sql`), rewritten atomically
from every run's commits at the end of each writing command; a file deleted after that is named by
DuckDB's error (run `python -m pipeline check`).
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from pipeline.warehouse.schemas import REASONS, TABLES, empty_view_schema
from pipeline.sql import SQL_DIR
from pipeline.warehouse import DamagedFacts, Warehouse, _fsync_dir

log = logging.getLogger(__name__)

SCRIPT_NAME = "views.sql"  # at the warehouse root

# run_geometry and the frame_labels(run, tier) macro: the one SQL definition of a frame's label
FRAME_LABELS_SQL = SQL_DIR / "macros" / "frame_labels.sql"


def sql_string(text: str) -> str:
    """A SQL string literal (a path or a run's facts may hold a quote)."""
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_files(wh: Warehouse, run: str | None) -> dict[str, list[str]]:
    """Committed files per table (paths relative to the root), every table of pipeline.warehouse.schemas included."""
    tables: dict[str, set[str]] = {name: set() for name in TABLES}
    for rec in wh.commits(run).values():
        for f in rec["files"]:
            tables.setdefault(f["path"].split("/", 1)[0], set()).add(f["path"])
    return {name: sorted(files) for name, files in sorted(tables.items())}


def _files_view(name: str, root: Path, files: list[str]) -> str:
    paths = ",\n    ".join(sql_string((root / p).as_posix()) for p in files)
    return (f"create or replace view {_identifier(name)} as select * from read_parquet([\n    {paths}\n], "
            "hive_partitioning = true, union_by_name = true);")


@functools.lru_cache(maxsize=None)
def _empty_view(name: str) -> str:
    """A view with the table's columns and no rows; the DuckDB types are those DuckDB reads the Arrow schema as."""
    schema = empty_view_schema(name)
    rel = duckdb.connect().from_arrow(schema.empty_table())
    columns = ", ".join(f"cast(null as {typ}) as {_identifier(col)}" for col, typ in zip(rel.columns, rel.types))
    return f"create or replace view {_identifier(name)} as select {columns} where false;"


def _runs_view(wh: Warehouse, run: str | None) -> str:
    """`runs(run, facts json)`: a run whose facts file is damaged is left out with a warning, as in connect()."""
    rows = []
    for r in [run] if run else wh.runs():
        try:
            facts = wh.read_facts(r)
        except DamagedFacts as err:
            log.warning("%s. Run %r is left out of `runs` and `run_geometry`; every other run stays queryable.",
                        err, r)
            continue
        if facts is not None:
            rows.append(f"({sql_string(r)}, {sql_string(json.dumps(facts, sort_keys=True))})")
    if not rows:
        return ("create or replace view runs as select cast(null as varchar) as run, cast(null as json) as facts "
                "where false;")
    values = ",\n    ".join(rows)
    return (f"create or replace view runs as select run, facts::json as facts from (values\n    {values}\n) "
            "t(run, facts);")


def views_sql(wh: Warehouse, run: str | None = None) -> str:
    """The script that creates every view of the warehouse (of one `run` only, if given) in a DuckDB session."""
    root = wh.root.resolve()
    if run is not None and run not in wh.runs() and not wh.commits(run):
        known = ", ".join(wh.runs()) or "none"
        raise ValueError(f"no run {run!r} in {wh.root} (runs: {known})")
    header = [
        f"-- The views of the warehouse {root.as_posix()!r}{f' (run {run})' if run else ''}, over its committed files.",
        "-- Written by `python -m pipeline views`; regenerate it after any writing command. A file that DuckDB",
        "-- reports missing was deleted since: run `python -m pipeline check`.",
    ]
    # relative paths in the user's own SQL resolve against the root; DuckDB splits this setting at commas
    if "," in root.as_posix():
        log.warning("warehouse path %s contains a comma: relative paths in your SQL will not resolve", root)
    else:
        header.append(f"set file_search_path = {sql_string(root.as_posix())};")
    body = []
    for name, files in _table_files(wh, run).items():
        body.append(_files_view(name, root, files) if files else _empty_view(name))
    body += [_runs_view(wh, run), FRAME_LABELS_SQL.read_text().strip(), _reasons_view()]
    return "\n".join(header) + "\n\n" + "\n\n".join(body) + "\n"


def _reasons_view() -> str:
    """`quarantine_reasons`: every reason code with what it means (pipeline.warehouse.schemas.REASONS, the one list)."""
    rows = ", ".join(f"({sql_string(code)}, {sql_string(text)})" for code, text in REASONS.items())
    return f"create or replace view quarantine_reasons(reason, meaning) as values {rows};"


@contextmanager
def _mutex(root: Path) -> Iterator[None]:
    """One refresh at a time per warehouse: each reads the commits after the previous one wrote, so the
    last file written holds every commit made before any refresh started (a flock: released if we die)."""
    path = root / "_locks" / "views.mutex"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def refresh(wh: Warehouse) -> Path:
    """Rewrite `<warehouse>/views.sql` from every run's commits; returns its path."""
    path = wh.root / SCRIPT_NAME
    with _mutex(wh.root):
        write_atomic(path, views_sql(wh))
    return path
