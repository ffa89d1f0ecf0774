"""The warehouse: Hive-partitioned Parquet tables, atomic writes, a commit log and DuckDB views.

Layout under the root (default `storage/`):

    <table>/run=<run>/[layer=<layer>/]part-<shard>.parquet   data, named by (run, layer, shard)
    segments/run=<run>/ctc_greedy-<shard>.parquet             a second writer of a table: its own file_prefix
    _runs/<run>.json                                          the run's facts, written once
    _commits/run=<run>/<stage>.rank<r>.jsonl                  one line per committed shard
    _locks/run=<run>.json                                     the writing job's lease (pipeline/warehouse/lock.py)
    _tmp/                                                     files being written (outside globs)

Readers (the DuckDB views, resume) trust only files named by a commit record whose file still
exists with the recorded row count; a shard with a damaged file is left out with a warning per run.
A rerun rewrites the same file names, so it replaces. Commits, facts and drop_run check the run's
lease as they write, so a job that lost its lock cannot write.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.warehouse import lock as runlock
from pipeline.warehouse.lock import LeaseLost, RunLocked  # noqa: F401 - re-exported for the commands
from pipeline.warehouse.schemas import SCHEMA_VERSION

log = logging.getLogger(__name__)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # always fullmatch: `$` lets a final newline pass
FILE_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,59}")
PARTITION_VALUE = re.compile(r"[^./\\\x00-\x1f][^/\\\x00-\x1f]{0,99}")  # one folder name: layer=-1, tier=phone
ZSTD_LEVEL = 3  # zstd gains ~7 % on float16 vectors; higher levels cost time for little more
ROW_GROUP_ROWS = 64 * 1024
# a row group is buffered in memory before it is written: 32 MiB is ~22k frames of a 768-dim float16 layer
ROW_GROUP_BYTES = 32 * 1024 * 1024


class DamagedFacts(RuntimeError):
    """A run's facts file is empty or not JSON: that run cannot be read or continued until repaired."""


class FactsMismatch(RuntimeError):
    """A run exists with other facts (model, layers, source…): appending would mix results."""


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the warehouse root, '/'-separated
    rows: int
    bytes: int


@dataclass(frozen=True)
class DamagedFile:
    """A committed file that no longer holds what its commit says; readers leave its shard out."""
    run: str
    stage: str
    shard: int
    path: str  # relative to the warehouse root
    rows_expected: int
    rows_found: int | None  # None: missing or unreadable
    problem: str  # "missing", "unreadable (...)", "612 rows, 818 committed"


_WARNED: set[tuple] = set()


def _warn_damaged(root: Path, damaged: list[DamagedFile]) -> None:
    """One loud warning per damaged run (once per process for the same damage)."""
    by_run: dict[str, list[DamagedFile]] = {}
    for d in damaged:
        by_run.setdefault(d.run, []).append(d)
    for run, files in sorted(by_run.items()):
        key = (str(root), run, frozenset((d.path, d.problem) for d in files))
        if key in _WARNED:
            continue
        _WARNED.add(key)
        shards = sorted({(d.stage, d.shard) for d in files})
        log.warning(
            "run %r in %s: %d committed file(s) damaged, e.g. %s (%s); their %d shard(s) are left out of every "
            "query. Run `python -m pipeline check --run %s`; rerun the stage to redo the shard.",
            run, root, len(files), files[0].path, files[0].problem, len(shards), run,
        )


def check_run_name(run: str) -> str:
    if not isinstance(run, str) or not RUN_NAME.fullmatch(run):
        raise ValueError(
            f"run name {run!r} is not usable in a path: use letters, digits, '_', '.', '-' "
            "(at most 100 characters, not starting with a dot)"
        )
    return run


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _maybe_kill(point: str) -> None:
    """Fault injection for the crash tests: PIPELINE_KILL_AT=point:n SIGKILLs this process the
    n-th time it reaches `point` (`after_rename`, `before_commit`)."""
    spec = os.environ.get("PIPELINE_KILL_AT", "")
    if not spec.startswith(point + ":"):
        return
    _KILL_COUNTS[point] = _KILL_COUNTS.get(point, 0) + 1
    if _KILL_COUNTS[point] == int(spec.split(":")[1]):
        os.kill(os.getpid(), 9)


_KILL_COUNTS: dict[str, int] = {}


def _append(path: Path, data: bytes, what: str) -> None:
    """Append all of `data` to `path` and fsync, or leave the file as it was and raise an OSError
    that says what was not written (a short write, a full disk, a file-size limit)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n" and path.suffix == ".jsonl":
            data = b"\n" + data  # a torn last line from a crash: start on a fresh line
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n == 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, size)  # no torn record that would hide the ones appended later
            raise OSError(err.errno, f"could not write {what} to {path} ({err.strerror or err}): nothing was "
                                     "committed; free disk space or raise the file-size limit, then rerun") from err
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """One shard file written in row groups as batches arrive, so memory does not grow with the file.

    Batches are buffered up to ROW_GROUP_ROWS rows or ROW_GROUP_BYTES bytes, then written as one row
    group; `close()` fsyncs, renames into place and fsyncs the folder, exactly once.
    """

    def __init__(self, wh: Warehouse, tmp: Path, final: Path, schema: pa.Schema,
                 row_group_bytes: int = ROW_GROUP_BYTES):
        self.wh, self.tmp, self.final, self.schema = wh, tmp, final, schema
        self.row_group_bytes = row_group_bytes
        self.rows = 0
        self.record: FileRecord | None = None
        self._buffer: list[pa.Table] = []
        self._buffered_rows = self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            tmp,
            schema,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            write_statistics=True,
            # vectors never repeat: dictionary-encoding them took 2-3x the write time for larger files
            use_dictionary=[name for name in schema.names if name != "vector"],
        )

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self._writer is None:
            raise RuntimeError(f"{self.final}: write after close or abort")
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        if not table.schema.equals(self.schema):
            raise ValueError(f"{self.final}: batch schema\n{table.schema}\ndiffers from the file's\n{self.schema}")
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_bytes += table.nbytes
        self.rows += table.num_rows
        if self._buffered_rows >= ROW_GROUP_ROWS or self._buffered_bytes >= self.row_group_bytes:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write full row groups; keep a partial one buffered unless this is the end of the file."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        group = max(1, min(ROW_GROUP_ROWS, self.row_group_bytes // row_bytes))
        n_full = table.num_rows if final else table.num_rows // group * group
        if n_full:
            self._writer.write_table(table.slice(0, n_full), row_group_size=group)
        rest = table.slice(n_full)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered_rows, self._buffered_bytes = rest.num_rows, rest.nbytes if rest.num_rows else 0

    def close(self) -> FileRecord:
        """Finish the file, fsync it, rename it into place, fsync the folder."""
        if self.record is not None:
            return self.record
        if self._writer is None:
            raise RuntimeError(f"{self.final}: close after abort")
        try:
            self._flush(final=True)
            self._writer.close()
            self._writer = None
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            self.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, self.final)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.final.parent)
        _maybe_kill("after_rename")
        self.record = FileRecord(self.wh._rel(self.final), self.rows, self.final.stat().st_size)
        return self.record

    def abort(self) -> None:
        """Drop the temp file; nothing reaches the table."""
        self._buffer = []
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._writer = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.record is None and self._writer is not None:
            self.close()


class Warehouse:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- paths
    def table_path(self, table: str, run: str, shard: int, file_prefix: str = "part", **partitions: Any) -> Path:
        """`<table>/run=<run>/[k=v/...]<file_prefix>-<shard>.parquet`. Two writers of one table and shard
        (extract's corpus segments, the CTC labels) keep apart by their `file_prefix`."""
        if not FILE_PREFIX.fullmatch(file_prefix):
            raise ValueError(f"file_prefix {file_prefix!r} is not usable in a file name: use letters, digits, '_', "
                             "'.', '-' (at most 60 characters, starting with a letter or digit)")
        for k, v in partitions.items():
            if not PARTITION_VALUE.fullmatch(str(v)):
                raise ValueError(f"{k}={v!r} is not usable as a folder name: no '/', '\\' or control characters, "
                                 "at most 100 characters, not starting with a dot")
        parts = [f"run={check_run_name(run)}"] + [f"{k}={v}" for k, v in partitions.items()]
        return self.root.joinpath(table, *parts, f"{file_prefix}-{shard:05d}.parquet")

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ---------------------------------------------------------------- writing
    def open_writer(self, table: str, run: str, shard: int, schema: pa.Schema, file_prefix: str = "part",
                    row_group_bytes: int = ROW_GROUP_BYTES, **partitions: Any) -> ShardWriter:
        """A streaming writer of one shard file: `.write()` batches as they come, `.close()` renames the file
        into place and returns its FileRecord; an exception inside `with` removes the temp file. At most
        `row_group_bytes` are buffered (one row group)."""
        final = self.table_path(table, run, shard, file_prefix, **partitions)
        tmp_dir = self.root / "_tmp"
        tmp_dir.mkdir(exist_ok=True)
        tmp = tmp_dir / (f"{table}.{run}.{'.'.join(map(str, partitions.values()))}.{file_prefix}.{shard}."
                         f"{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        return ShardWriter(self, tmp, final, schema, row_group_bytes)

    def write(self, table: str, data: pa.Table, run: str, shard: int, file_prefix: str = "part",
              **partitions: Any) -> FileRecord:
        """Write one shard file atomically: temp name outside the table's glob, fsync, rename."""
        with self.open_writer(table, run, shard, data.schema, file_prefix, **partitions) as writer:
            writer.write(data)
            return writer.close()

    def commit(self, run: str, stage: str, shard: int, files: Iterable[FileRecord], rank: int = 0, **info: Any) -> None:
        """Append the commit record of one shard. Only committed files are ever read."""
        log = self.root / "_commits" / f"run={check_run_name(run)}" / f"{stage}.rank{rank}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "run": run,
            "stage": stage,
            "shard": shard,
            "files": [f.__dict__ for f in files],
            "time": time.time(),
            **info,
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        _maybe_kill("before_commit")
        with runlock.fence(self.root, run, f"commit shard {shard} of {stage}"):
            _append(log, line, f"the commit record of shard {shard} of {stage} (run {run!r})")

    # ---------------------------------------------------------------- reading the log
    def commit_records(self, run: str | None = None, stage: str | None = None) -> dict[tuple[str, str, int], dict]:
        """Latest commit record per (run, stage, shard), files not verified. A torn line (a crash
        mid-write) is skipped: its shard is not committed."""
        base = self.root / "_commits"
        runs = [f"run={check_run_name(run)}"] if run else [p.name for p in base.glob("run=*")] if base.exists() else []
        out: dict[tuple[str, str, int], dict] = {}
        for run_dir in runs:
            pattern = f"{stage}.rank*.jsonl" if stage else "*.jsonl"
            for log in sorted((base / run_dir).glob(pattern)):
                for line in log.read_bytes().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    key = (rec["run"], rec["stage"], rec["shard"])
                    if key not in out or rec["time"] >= out[key]["time"]:
                        out[key] = rec
        return out

    def damaged(self, run: str | None = None, records: dict | None = None) -> list[DamagedFile]:
        """Committed files that are missing, unreadable or hold another row count than their commit."""
        records = self.commit_records(run) if records is None else records
        out = []
        for (run_, stage, shard), rec in sorted(records.items()):
            for f in rec["files"]:
                try:
                    found: int | None = pq.read_metadata(self.root / f["path"]).num_rows
                    problem = f"{found} rows, {f['rows']} committed"
                except FileNotFoundError:
                    found, problem = None, "missing"
                except (OSError, pa.ArrowInvalid) as err:
                    found, problem = None, f"unreadable ({type(err).__name__}: {err})"
                if found != f["rows"]:
                    out.append(DamagedFile(run_, stage, shard, f["path"], f["rows"], found, problem))
        return out

    def commits(self, run: str | None = None, stage: str | None = None) -> dict[tuple[str, str, int], dict]:
        """Latest valid commit per (run, stage, shard). A torn last line (a crash mid-write) is skipped;
        a record whose files are missing or have another row count is dropped, so its shard is redone,
        and a warning per damaged run says so."""
        records = self.commit_records(run, stage)
        bad = self.damaged(records=records)
        _warn_damaged(self.root, bad)
        hidden = {(d.run, d.stage, d.shard) for d in bad}
        return {k: r for k, r in records.items() if k not in hidden}

    def committed_files(self, table: str, run: str | None = None) -> list[str]:
        files = {
            f["path"]
            for rec in self.commits(run).values()
            for f in rec["files"]
            if f["path"].split("/", 1)[0] == table
        }
        return sorted(files)

    # ---------------------------------------------------------------- run facts
    def facts_path(self, run: str) -> Path:
        return self.root / "_runs" / f"{check_run_name(run)}.json"

    def read_facts(self, run: str) -> dict | None:
        """The run's facts, None for a run without any; a damaged facts file is an error saying what to do."""
        path = self.facts_path(run)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            facts = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            facts, why = None, f"is not valid JSON ({err})" if text.strip() else "is empty"
        else:
            why = "does not hold a JSON object"
        if not isinstance(facts, dict):
            raise DamagedFacts(
                f"the facts file {path} of run {run!r} {why}: rerun the run's first stage with --overwrite, "
                "or restore the file from a backup"
            )
        return facts

    def ensure_facts(self, run: str, facts: dict) -> dict:
        """Record the run's facts once; refuse to continue a run made under different facts.

        Facts may be extended (an `ingest` run later extracted with a model): keys present in
        both must be equal. Read, compare and write happen under the run's lock.
        """
        facts = {"schema_version": SCHEMA_VERSION, **facts}
        with runlock.fence(self.root, check_run_name(run), "write the run's facts"):
            old = self.read_facts(run)
            if old is not None:
                clash = {k: (old[k], facts[k]) for k in facts.keys() & old.keys()
                         if old[k] != facts[k] and k != "package_version"}
                if clash:
                    lines = "\n".join(f"  {k}: recorded {a!r}, now {b!r}" for k, (a, b) in sorted(clash.items()))
                    raise FactsMismatch(
                        f"run {run!r} in {self.root} was made under other facts:\n{lines}\n"
                        "Use another --run name, or --overwrite to drop the old run first."
                    )
                if facts.keys() <= old.keys():
                    return old
                facts = {**old, **facts}
            facts["package_version"] = __version__
            path = self.facts_path(run)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.root / "_tmp" / f"facts.{run}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.parent.mkdir(exist_ok=True)
            try:
                _append(tmp, json.dumps(facts, indent=1, sort_keys=True).encode(), f"the facts of run {run!r}")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        return facts

    def runs(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "_runs").glob("*.json"))

    def drop_run(self, run: str) -> None:
        """Remove every file of a run (data, commits, facts)."""
        with runlock.fence(self.root, check_run_name(run), "drop the run"):
            for table_dir in self.root.iterdir():
                target = table_dir / f"run={run}"
                if target.is_dir():
                    shutil.rmtree(target)
            self.facts_path(run).unlink(missing_ok=True)

    def lock(self, run: str, command: str | None = None, wait: bool = False,
             timeout_s: float | None = None) -> ContextManager[runlock.Lease]:
        """Hold the run's lock for a `with` block (see pipeline/warehouse/lock.py): RunLocked at once if another job
        holds it, or wait for it with `wait`. Commits, facts and drop_run check the lease as they write."""
        return runlock.hold(self.root, check_run_name(run), command or runlock.command_line(), wait, timeout_s)

    # ---------------------------------------------------------------- DuckDB
    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the views of `pipeline.warehouse.views.views_sql` (one definition, also written to
        `views.sql` for other clients): committed files of every run, empty views, runs, run_geometry,
        frame_labels; old warehouses' clusterings get their `tier` (schemas.tiered_views)."""
        from pipeline.warehouse.schemas import tiered_views
        from pipeline.warehouse.views import views_sql  # views.py imports this module

        con = duckdb.connect(database)
        con.execute(views_sql(self))
        tiered_views(con)
        return con
