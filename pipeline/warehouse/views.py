"""The warehouse's views as one SQL script that any DuckDB client runs: the one definition of the views.

    duckdb -init storage/views.sql            the command line
    .read storage/views.sql                   inside a duckdb session, or DBeaver's "execute script"
    duckdb.sql(open("storage/views.sql").read())

The script names each committed file by its absolute path (or URL), so it reads exactly what the
commit records name: a file written by a job that died before its commit is never read (a glob over
the table's folder would read it). The records come from each run's manifest and the commit objects
newer than it: building the script opens no data file, and files of one recorded schema are read by
one `read_parquet` without `union_by_name` (which would open every footer at each query). DuckDB
binds every file a view names at each query (~50-180 µs a file here), so `Warehouse.connect(runs=,
layers=)` builds views over those runs and layers only (pipeline.warehouse.scope proves which a query
reads). It also holds the empty views (a table without files yet still
has its columns), `runs` (each run's facts as a JSON literal), `run_geometry` and the `frame_labels`
macro. It starts with the `pipeline_vector` macro (pipeline/warehouse/vectors.py): files whose `vector`
is stored as fixed-size binary are read through it, so every view shows `vector` as FLOAT[]; files of
older warehouses (float16 lists) are read as they are, in the same view. Warehouse.connect() points
that name at a vectorized numpy function (vectors.register) after running the script. `refresh`
keeps a copy at the warehouse root (`<warehouse>/views.sql`), rewritten atomically from every
run's commits at the end of each writing command; a file deleted after that is named by DuckDB's
error (run `python -m pipeline check`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from pipeline.warehouse import vectors
from pipeline.warehouse.fs import flock
from pipeline.warehouse.schemas import PARTITIONS, REASONS, TABLES, empty_view_schema
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


def _table_files(records: dict, layers: list[int] | None, exclude: set[str] | None = None) -> dict[str, list[dict]]:
    """Committed files per table (their commit entries: path relative to the root, rows, bytes, vector,
    schema), every table of pipeline.warehouse.schemas included; with `layers`, a per-layer table's files
    of those layers only; never the files in `exclude`."""
    tables: dict[str, dict[str, dict]] = {name: {} for name in TABLES}
    keep = None if layers is None else {f"layer={layer}" for layer in layers}
    for rec in records.values():
        for f in rec["files"]:
            path = f["path"]  # string tests only: this loop sees every file of a run (61,530 for LibriSpeech 960 h)
            if keep is not None and (at := path.find("/layer=")) >= 0 and path[at + 1:path.find("/", at + 1)] not in keep:
                continue
            if exclude and path in exclude:
                continue
            tables.setdefault(path[:path.index("/")], {})[path] = f
    return {name: [files[p] for p in sorted(files)] for name, files in sorted(tables.items())}


def _vector_kind(wh: Warehouse, table: str, f: dict) -> str | None:
    """'float16' / 'float32' for a file whose `vector` is stored binary (the views decode it), None for a file
    without one or with a list vector (older files, read as they are). The commit says which
    (pipeline.warehouse._vector_spec); a commit from before that is answered by the file's schema."""
    if "vector" not in TABLES.get(table, pa.schema([])).names and f.get("vector") is None:
        return None
    spec = f.get("vector")
    if spec is not None:
        return None if spec.startswith("list:") else spec.split("[", 1)[0]
    return _schema_kind(wh, f["path"], f.get("bytes"))


@functools.lru_cache(maxsize=65536)
def _schema_kind(wh: Warehouse, rel: str, size: int | None) -> str | None:
    try:
        schema = wh.parquet_file(rel).schema_arrow
    except (OSError, pa.ArrowInvalid):
        return None  # DuckDB names a missing or unreadable file at the first query that reads it
    if "vector" not in schema.names or not vectors.is_binary(schema.field("vector")):
        return None
    dim, dtype = vectors.type_of(schema.field("vector"))
    if dim < 0:
        raise ValueError(f"{rel}: its `vector` column is {dtype}; rerun the stage that wrote it with --overwrite")
    return dtype


# A table's files are read by one read_parquet per partition (run, layer, …) with the partition values as
# constant columns when its partitions hold at least this many files each on average, and by one read_parquet
# with Hive partitioning otherwise. DuckDB binds a view at `create view` and again at each query: Hive
# partitioning costs a path parse per file at each bind (~30 µs a file here), a branch one footer read.
FILES_PER_BRANCH = 4


def _partitions(path: str) -> tuple[tuple[str, str], ...]:
    """The `key=value` folders of a file's path (relative: `<table>/run=R/layer=3/part-….parquet`), in order."""
    return tuple(tuple(part.split("=", 1)) for part in path.split("/")[1:-1] if "=" in part)


def _partition_types(table: str, values: dict[str, set[str]]) -> dict[str, str]:
    """DuckDB types of a table's partition columns: `run` and the declared ones as schemas.PARTITIONS says;
    another key (older warehouses) BIGINT when every value is an integer, else VARCHAR. Given to Hive
    partitioning too, so a run named `2024` is the string '2024' either way (DuckDB would guess BIGINT)."""
    declared = {"run": pa.string(), **dict(PARTITIONS.get(table, []))}
    out = {}
    for key in values:
        typ = declared.get(key)
        if typ is None:
            integer = all(v.lstrip("-").isdigit() for v in values[key])
            out[key] = "BIGINT" if integer else "VARCHAR"
        else:
            out[key] = "BIGINT" if pa.types.is_integer(typ) else "VARCHAR"
    return out


def _constant(value: str, typ: str) -> str:
    return f"{int(value)}::BIGINT" if typ == "BIGINT" else f"{sql_string(value)}::VARCHAR"


def _files_view(wh: Warehouse, name: str, files: list[dict]) -> str:
    """The view over a table's files, one read_parquet per (vector kind, schema) and, where partitions hold
    FILES_PER_BRANCH files or more on average, per partition: binary vectors decoded by pipeline_vector,
    list vectors (older warehouses) read as they are, united by column name. Files of one recorded schema
    hash are read without union_by_name (which opens every footer at each query). The partition columns
    (`run`, `layer`, …) follow the file's columns, sorted by name, as Hive partitioning gives them."""
    prefix = wh.root.resolve().as_posix() + "/" if not wh.remote else None
    groups: dict[tuple[str, str], list[str]] = {}
    for f in files:
        key = (_vector_kind(wh, name, f) or "", f.get("schema") or "")
        groups.setdefault(key, []).append(f["path"])
    by_partition = {key: {} for key in groups}
    values: dict[str, set[str]] = {}
    for key, group in groups.items():
        for path in group:
            parts = _partitions(path)
            by_partition[key].setdefault(parts, []).append(path)
            for k, v in parts:
                values.setdefault(k, set()).add(v)
    types = _partition_types(name, values)
    selects = []
    for (kind, schema), group in sorted(groups.items()):
        union = "" if schema else ", union_by_name = true"  # one schema hash: one schema; groups unite by name
        columns = vectors.view_select(kind) if kind else "*"
        partitions = by_partition[(kind, schema)]
        if len(group) < FILES_PER_BRANCH * len(partitions):
            partitions = {None: group}  # few files per partition: one read_parquet, partitions from the paths
        for parts, paths in sorted(partitions.items(), key=lambda item: item[0] or ()):
            listed = ",\n    ".join(sql_string(prefix + p if prefix is not None else wh.uri(p)) for p in paths)
            hive = "false" if parts is not None else "true, hive_types = {" + ", ".join(
                f"{sql_string(k)}: {t}" for k, t in sorted(types.items())) + "}"
            constants = "".join(f", {_constant(v, types[k])} as {_identifier(k)}" for k, v in sorted(parts or ()))
            selects.append(f"select {columns}{constants} from read_parquet([\n    {listed}\n], "
                           f"hive_partitioning = {hive}{union})")
    return f"create or replace view {_identifier(name)} as {' union all by name '.join(selects)};"


def duckdb_type(typ: pa.DataType) -> str:
    """The DuckDB type DuckDB reads an Arrow type of the declared schemas as (tests/test_views.py checks this
    against DuckDB's own reading of every table; asking DuckDB at each start cost ~0.4 s)."""
    simple = {pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.int8(): "TINYINT", pa.int16(): "SMALLINT",
              pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
              pa.bool_(): "BOOLEAN", pa.binary(): "BLOB"}
    if typ in simple:
        return simple[typ]
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return f"{duckdb_type(typ.value_type)}[]"
    if pa.types.is_map(typ):
        return f"MAP({duckdb_type(typ.key_type)}, {duckdb_type(typ.item_type)})"
    raise TypeError(f"no DuckDB type declared for Arrow {typ}: add it to views.duckdb_type")


@functools.lru_cache(maxsize=None)
def _empty_view(name: str) -> str:
    """A view with the table's columns and no rows, typed as DuckDB reads the table's Arrow schema."""
    columns = ", ".join(f"cast(null as {duckdb_type(f.type)}) as {_identifier(f.name)}"
                        for f in empty_view_schema(name))
    return f"create or replace view {_identifier(name)} as select {columns} where false;"


def _runs_view(wh: Warehouse, runs: list[str] | None) -> str:
    """`runs(run, facts json)`: a run whose facts file is damaged is left out with a warning, as in connect()."""
    rows = []
    for r in wh.runs() if runs is None else runs:
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


def views_sql(wh: Warehouse, run: str | None = None, runs: list[str] | None = None,
              layers: list[int] | None = None, exclude: set[str] | None = None) -> str:
    """The script that creates every view of the warehouse in a DuckDB session: of one `run` only, or of
    `runs` only, and with `layers` only those layers' files of per-layer tables (what one query reads)."""
    if run is not None and run not in wh.runs() and not wh.commit_records(run):
        known = ", ".join(wh.runs()) or "none"
        raise ValueError(f"no run {run!r} in {wh.root} (runs: {known})")
    chosen = [run] if run is not None else None if runs is None else sorted(set(runs))
    records = wh.commit_records() if chosen is None else {
        key: rec for r in chosen for key, rec in wh.commit_records(r).items()}
    where = wh.root.resolve().as_posix() if not wh.remote else str(wh.root)
    header = [
        f"-- The views of the warehouse {where!r}{f' (run {run})' if run else ''}, over its committed files.",
        "-- Written by `python -m pipeline views`; regenerate it after any writing command. A file that DuckDB",
        "-- reports missing was deleted since: run `python -m pipeline check`.",
    ]
    # relative paths in the user's own SQL resolve against the root; DuckDB splits this setting at commas
    if "," in where and not wh.remote:
        log.warning("warehouse path %s contains a comma: relative paths in your SQL will not resolve", where)
    elif not wh.remote:
        header.append(f"set file_search_path = {sql_string(where)};")
    # every table's view empty first, then the macros, then the views over files: DuckDB binds a macro's
    # tables when it creates the macro (every file a view names), and binds them again at each call anyway
    tables = _table_files(records, layers, exclude)
    body = [vectors.macro_sql(), *(_empty_view(name) for name in tables if name in TABLES),
            _runs_view(wh, chosen), FRAME_LABELS_SQL.read_text().strip(), _reasons_view()]
    body += [_files_view(wh, name, files) for name, files in tables.items() if files]
    return "\n".join(header) + "\n\n" + "\n\n".join(body) + "\n"


def _reasons_view() -> str:
    """`quarantine_reasons`: every reason code with what it means (pipeline.warehouse.schemas.REASONS, the one list)."""
    rows = ", ".join(f"({sql_string(code)}, {sql_string(text)})" for code, text in REASONS.items())
    return f"create or replace view quarantine_reasons(reason, meaning) as values {rows};"


@contextmanager
def _mutex(root: Path) -> Iterator[None]:
    """One refresh at a time per warehouse: each reads the commits after the previous one wrote, so the
    last file written holds every commit made before any refresh started (a flock: released if we die)."""
    with flock(root / "_locks" / "views.mutex"):
        yield


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


def refresh(wh: Warehouse) -> Path | str:
    """Rewrite `<warehouse>/views.sql` from every run's commits; returns its path (its URL on an object store,
    where it is one PUT: a reader sees the old script or the new one, and two refreshes at once keep the last)."""
    if wh.remote:
        wh.store.put(SCRIPT_NAME, views_sql(wh).encode())
        return wh.uri(SCRIPT_NAME)
    path = wh.root / SCRIPT_NAME
    with _mutex(wh.root):
        write_atomic(path, views_sql(wh))
    return path
