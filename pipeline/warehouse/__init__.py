"""The warehouse: Hive-partitioned Parquet tables, write-once files, commit objects, manifests, DuckDB views.

Layout under the root (default `storage/`; or an object store URL, `s3://bucket/prefix`: see fs.py):

    <table>/run=<run>/[layer=<layer>/]part-<shard>.<writer>.parquet    data, written once under a unique name
    segments/run=<run>/ctc_greedy-<shard>.<writer>.parquet             a second writer of a table: its file_prefix
    _runs/<run>.json                                  the run's facts
    _commits/run=<run>/<stage>/<shard>.<generation>.json   one commit object per committed shard and generation,
                                                      created only if absent (O_EXCL link / S3 If-None-Match)
    _commits/run=<run>/<stage>.rank<r>.jsonl          commit logs of warehouses written before: still read
    _manifests/run=<run>.json                         the run's commits compacted into one snapshot
    _locks/run=<run>.json                             the writing job's lease (pipeline/warehouse/lock.py)
    _tmp/                                             local files being written (outside globs)

A shard's commit takes the next generation: two writers that both start from generation g race for
g + 1 and exactly one creates it; the other removes its data files and raises CommitConflict. The
commit holds the lease's fencing token: a commit made under an older token than the shard's current
one (a writer whose lease was taken over) never supersedes it. Readers open the manifest and read only
the commit objects newer than it (one listing): no per-file request. Validating files against their
commits (footers) is for resume (`commits()`) and `check`; readers trust the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.warehouse.fs import Store, StoreError, _fsync_dir, write_all  # noqa: F401 - StoreError re-exported for the CLI

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


class CommitConflict(RuntimeError):
    """Another writer committed the same shard first: this writer's files were removed."""


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the warehouse root, '/'-separated
    rows: int
    bytes: int
    vector: str | None = None  # the `vector` column: "float16[768]" binary, "list:float16[768]" a list (_vector_spec)
    schema: str | None = None  # a hash of the column names and types: views read files of one hash without
    #                            union_by_name (which opens every file's footer at each query)

    def as_dict(self) -> dict:
        out = {"path": self.path, "rows": self.rows, "bytes": self.bytes}
        for key in ("vector", "schema"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def schema_hash(schema: pa.Schema) -> str:
    """12 hex digits naming a file's columns and types (metadata left out)."""
    text = schema.to_string(show_field_metadata=False, show_schema_metadata=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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
            write_all(fd, data)
        except OSError as err:
            os.ftruncate(fd, size)  # no torn record that would hide the ones appended later
            raise OSError(err.errno, f"could not write {what} to {path} ({err.strerror or err}): nothing was "
                                     "committed; free disk space or raise the file-size limit, then rerun") from err
    finally:
        os.close(fd)


class ShardWriter:
    """One shard file written in row groups as batches arrive, so memory does not grow with the file.

    Batches are buffered up to ROW_GROUP_ROWS rows or ROW_GROUP_BYTES bytes, then written as one row
    group. The file gets a unique name (`<prefix>-<shard>.<writer>.parquet`) and is written once:
    locally to `_tmp/`, fsynced and renamed into place at `close()`; on an object store as one
    multipart upload that appears whole at `close()`. Nothing reads it until a commit names it.
    """

    def __init__(self, wh: Warehouse, rel: str, schema: pa.Schema, row_group_bytes: int = ROW_GROUP_BYTES):
        from pipeline.warehouse import vectors

        self.wh, self.rel, self.schema = wh, rel, schema
        self.final = wh.root / rel if not wh.remote else wh.store.uri(rel)
        self.row_group_bytes = row_group_bytes
        self.rows = 0
        self.record: FileRecord | None = None
        self._buffer: list[pa.Table] = []
        self._buffered_rows = self._buffered_bytes = 0
        vec = schema.field("vector") if "vector" in schema.names else None
        self._vector = _vector_spec(vec) if vec is not None else None
        options = vectors.writer_options(schema)
        if wh.remote:
            self.tmp = None
            self._output = wh.store.open_output(rel)
            sink = self._output.__enter__()
        else:
            tmp_dir = wh.root / "_tmp"
            tmp_dir.mkdir(exist_ok=True)
            self.tmp = tmp_dir / f"{rel.replace('/', '.')}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            self._output, sink = None, self.tmp
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(sink, schema, **options)

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
        """Finish the file and put it in place (locally: fsync, rename, fsync the folder)."""
        if self.record is not None:
            return self.record
        if self._writer is None:
            raise RuntimeError(f"{self.final}: close after abort")
        try:
            self._flush(final=True)
            self._writer.close()
            self._writer = None
            if self._output is not None:
                output, self._output = self._output, None
                output.__exit__(None, None, None)  # completes the upload
                size = self.wh.store.size(self.rel)
            else:
                with open(self.tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                self.final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.tmp, self.final)
                _fsync_dir(self.final.parent)
                size = self.final.stat().st_size
        except BaseException:
            self.abort()
            raise
        _maybe_kill("after_rename")
        self.record = FileRecord(self.rel, self.rows, size, self._vector, schema_hash(self.schema))
        return self.record

    def abort(self) -> None:
        """Drop the unfinished file; nothing reaches the table."""
        self._buffer = []
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._writer = None
        if self._output is not None:
            output, self._output = self._output, None
            try:
                output.__exit__(RuntimeError, RuntimeError("aborted"), None)  # aborts the upload
            except RuntimeError:
                pass
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.record is None and self._writer is not None:
            self.close()


def _vector_spec(field: pa.Field) -> str | None:
    """What a file's commit says of its `vector` column, so that views and `check` need not open the file:
    "float16[768]" (binary, decoded by the views), "list:float16[768]" (a fixed-size list, read as it is)."""
    from pipeline.warehouse import vectors

    dim, dtype = vectors.type_of(field)
    if dim < 0:
        return None
    return f"{dtype}[{dim}]" if vectors.is_binary(field) else f"list:{dtype}[{dim}]"


_WRITTEN: dict[str, list[dict]] = {}
_COMMIT_OBJECT = re.compile(r"(?P<stage>.+)/(?P<shard>-?\d+)\.(?P<gen>\d+)\.json")
MANIFEST_VERSION = 1


def _newer(rec: dict, cur: dict | None) -> bool:
    """Does commit `rec` supersede `cur` (same run, stage, shard)? Commit objects beat old log lines;
    among objects the higher generation wins unless it carries an older fencing token than the current
    one (a writer whose lease was taken over: its late commit never shadows the new holder's)."""
    if cur is None:
        return True
    g_new, g_cur = rec.get("generation"), cur.get("generation")
    if g_new is None or g_cur is None:
        if g_new is None and g_cur is None:  # two lines of old logs: the later one
            return rec["time"] >= cur["time"]
        return g_new is not None
    t_new, t_cur = rec.get("token"), cur.get("token")
    if t_new is not None and t_cur is not None and t_new < t_cur:
        return False
    return g_new > g_cur


class Warehouse:
    def __init__(self, root: str | os.PathLike):
        self.store = Store(root)
        self.remote = self.store.remote
        if self.remote:
            self.root = self.store.url  # a URL: read committed files through uri()/read_table()/parquet_file()
        else:
            self.root = self.store.path
            self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    @property
    def written(self) -> list[dict]:
        """Commit records this process created in this warehouse, in order (shared by every Warehouse object
        of the same root: a job checks and compacts what its stages committed)."""
        key = self.url if self.remote else str(self.root.resolve())
        return _WRITTEN.setdefault(key, [])

    # ---------------------------------------------------------------- paths
    def table_rel(self, table: str, run: str, shard: int, file_prefix: str = "part", writer: str | None = None,
                  **partitions: Any) -> str:
        """`<table>/run=<run>/[k=v/...]<file_prefix>-<shard>.<writer>.parquet` (relative): a new unique name
        per writer, so a file is written once and never replaced. Two writers of one table and shard
        (extract's corpus segments, the CTC labels) keep apart by their `file_prefix` too."""
        if not FILE_PREFIX.fullmatch(file_prefix):
            raise ValueError(f"file_prefix {file_prefix!r} is not usable in a file name: use letters, digits, '_', "
                             "'.', '-' (at most 60 characters, starting with a letter or digit)")
        for k, v in partitions.items():
            if not PARTITION_VALUE.fullmatch(str(v)):
                raise ValueError(f"{k}={v!r} is not usable as a folder name: no '/', '\\' or control characters, "
                                 "at most 100 characters, not starting with a dot")
        parts = [table, f"run={check_run_name(run)}"] + [f"{k}={v}" for k, v in partitions.items()]
        writer = writer or uuid.uuid4().hex[:10]
        return "/".join(parts + [f"{file_prefix}-{shard:05d}.{writer}.parquet"])

    def table_path(self, table: str, run: str, shard: int, file_prefix: str = "part", **partitions: Any) -> Path:
        """A local path for a new file of the table (see table_rel)."""
        return self.root / self.table_rel(table, run, shard, file_prefix, **partitions)

    def uri(self, rel: str) -> str:
        """What a reader opens for the file `rel`: an absolute local path or the object's URL."""
        return self.store.uri(rel)

    def parquet_file(self, rel: str) -> pq.ParquetFile:
        if not self.remote:
            return pq.ParquetFile(self.root / rel)
        return pq.ParquetFile(self.store.full(rel), filesystem=self.store.arrow_fs())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        if not self.remote:
            return pq.read_table(self.root / rel, columns=columns)
        return pq.read_table(self.store.full(rel), columns=columns, filesystem=self.store.arrow_fs())

    def read_metadata(self, rel: str) -> pq.FileMetaData:
        if not self.remote:
            return pq.read_metadata(self.root / rel)
        with self.store.fs.open(self.store.full(rel), "rb") as fh:
            return pq.read_metadata(fh)

    def file_version(self, rel: str) -> str:
        """What changes when the file `rel` changes: its name, for a file written once under a unique name
        (an object store); locally also its mtime (files of older warehouses were rewritten in place)."""
        return rel if self.remote else f"{rel}@{(self.root / rel).stat().st_mtime_ns}"

    def cache_dir(self, name: str) -> Path:
        """A local folder for what the warehouse caches (`_models`): under the root for a local warehouse;
        for an object store under $PIPELINE_CACHE (default ~/.cache/w2v2-layers), one folder per URL."""
        if not self.remote:
            return self.root / name
        base = Path(os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "w2v2-layers")
        return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.url) / name

    def _rel(self, path: Path | str) -> str:
        return Path(path).relative_to(self.root).as_posix() if not self.remote else str(path)

    # ---------------------------------------------------------------- writing
    def open_writer(self, table: str, run: str, shard: int, schema: pa.Schema, file_prefix: str = "part",
                    row_group_bytes: int = ROW_GROUP_BYTES, **partitions: Any) -> ShardWriter:
        """A streaming writer of one new shard file: `.write()` batches as they come, `.close()` puts the file
        in place and returns its FileRecord; an exception inside `with` drops it. At most `row_group_bytes`
        are buffered (one row group)."""
        rel = self.table_rel(table, run, shard, file_prefix, **partitions)
        return ShardWriter(self, rel, schema, row_group_bytes)

    def write(self, table: str, data: pa.Table, run: str, shard: int, file_prefix: str = "part",
              **partitions: Any) -> FileRecord:
        """Write one shard file, whole or not at all, under a new unique name."""
        with self.open_writer(table, run, shard, data.schema, file_prefix, **partitions) as writer:
            writer.write(data)
            return writer.close()

    def _commit_dir(self, run: str) -> str:
        return f"_commits/run={check_run_name(run)}"

    def generation(self, run: str, stage: str, shard: int) -> int:
        """The shard's latest commit generation (0: none): one listing of the shard's commit objects."""
        prefix = f"{self._commit_dir(run)}/{stage}"
        gens = [int(m["gen"]) for rel in self._list_shard(prefix, shard)
                if (m := _COMMIT_OBJECT.fullmatch(rel[len(self._commit_dir(run)) + 1:]))]
        return max(gens, default=0)

    def _list_shard(self, prefix: str, shard: int) -> list[str]:
        if not self.remote:
            folder = self.root / prefix
            head = f"{shard:05d}."
            try:
                return [f"{prefix}/{name}" for name in os.listdir(folder) if name.startswith(head)]
            except FileNotFoundError:
                return []
        self.store.fs.invalidate_cache(self.store.full(prefix))
        try:
            found = self.store.fs.find(self.store.full(prefix) + "/", prefix=f"{shard:05d}.")
        except FileNotFoundError:
            return []
        cut = len(self.store.base) + 1
        return [p[cut:] for p in found]

    def commit(self, run: str, stage: str, shard: int, files: Iterable[FileRecord], rank: int = 0,
               generation: int | None = None, **info: Any) -> dict:
        """Commit one shard: create its next commit object only if absent. `generation`: the one this
        writer saw when it started the shard (default: the latest now), so two writers of one shard
        race for the same object and exactly one wins; the loser's files are removed and it gets
        CommitConflict. Only committed files are ever read. Returns the record."""
        files = list(files)
        check_run_name(run)
        if "/" in stage or not stage:
            raise ValueError(f"stage {stage!r} cannot name a commit object")
        base = self.generation(run, stage, shard) if generation is None else generation
        lease = runlock.held(self._lock_root, run)
        record = {
            "run": run,
            "stage": stage,
            "shard": shard,
            "generation": base + 1,
            "token": lease.token if lease is not None else None,
            "rank": rank,
            "files": [f.as_dict() for f in files],
            "time": time.time(),
            **info,
        }
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        rel = f"{self._commit_dir(run)}/{stage}/{shard:05d}.{base + 1:06d}.json"
        _maybe_kill("before_commit")
        with runlock.fence(self._lock_root, run, f"commit shard {shard} of {stage}"):
            try:
                created = self.store.create(rel, data)
            except OSError as err:
                raise OSError(err.errno, f"could not write the commit record of shard {shard} of {stage} (run "
                                         f"{run!r}) to {self.store.uri(rel)} ({err}): nothing was committed; free "
                                         "space or fix the storage, then rerun") from err
        if not created:
            for f in files:
                self.store.delete(f.path)
            other = json.loads(self.store.read_bytes(rel) or b"{}")
            raise CommitConflict(
                f"run {run!r} in {self.url}: shard {shard} of {stage} was committed by another writer (generation "
                f"{base + 1}, token {other.get('token')}, rank {other.get('rank')}) while this one wrote it; this "
                "writer's files were removed and the other's stand. Two jobs wrote one run: hold its lock."
            )
        self.written.append(record)
        if base > 0:
            self._drop_superseded(rel.rsplit("/", 1)[0] + f"/{shard:05d}.{base:06d}.json", record)
        return record

    def _drop_superseded(self, previous_rel: str, record: dict) -> None:
        """Remove the files of the generation this commit superseded (a redone shard), unless this commit
        carries an older token than it (then it supersedes nothing). Best effort: a file left behind is
        only disk space, never read."""
        try:
            previous = json.loads(self.store.read_bytes(previous_rel) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not previous or not _newer(record, previous):
            return
        keep = {f["path"] for f in record["files"]}
        for f in previous.get("files", []):
            if f["path"] not in keep:
                try:
                    self.store.delete(f["path"])
                except OSError as err:
                    log.info("could not remove the superseded file %s: %s", f["path"], err)

    # ---------------------------------------------------------------- reading the commits
    def commit_runs(self) -> list[str]:
        """Runs with commits (or a manifest)."""
        names = set()
        for rel in self._listdir_names("_commits") + self._listdir_names("_manifests"):
            if rel.startswith("run="):
                names.add(rel[4:].removesuffix(".json"))
        return sorted(names)

    def _listdir_names(self, folder: str) -> list[str]:
        """Names directly under `folder` (one listing)."""
        if not self.remote:
            try:
                return os.listdir(self.root / folder)
            except FileNotFoundError:
                return []
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.store.fs.ls(self.store.full(folder), detail=False,
                                                                               refresh=True)]
        except FileNotFoundError:
            return []

    def manifest_rel(self, run: str) -> str:
        return f"_manifests/run={check_run_name(run)}.json"

    def _read_manifest(self, run: str, tagged: bool = False) -> tuple[dict, str | None]:
        """The run's manifest (empty when none) and, with `tagged`, its tag for a conditional replace."""
        if tagged:
            data, tag = self.store.read_tagged(self.manifest_rel(run))
        else:
            data, tag = self.store.read_bytes(self.manifest_rel(run)), None
        if data is None:
            return {"version": MANIFEST_VERSION, "records": [], "covered": {}, "logs": {}}, None
        try:
            manifest = json.loads(data)
            if manifest.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {manifest.get('version')}")
        except (ValueError, UnicodeDecodeError) as err:
            log.warning("run %r: manifest %s is unreadable (%s): reading every commit object instead",
                        run, self.store.uri(self.manifest_rel(run)), err)
            return {"version": MANIFEST_VERSION, "records": [], "covered": {}, "logs": {}}, tag
        return manifest, tag

    def _run_state(self, run: str) -> tuple[dict[tuple[str, int], dict], dict, dict]:
        """(latest record per (stage, shard), generations covered, old logs' sizes) of one run: the manifest
        plus the commit objects newer than it (one listing) and any old `.jsonl` log that grew."""
        manifest, _ = self._read_manifest(run)
        out = {(r["stage"], r["shard"]): r for r in manifest["records"]}
        covered: dict[str, int] = dict(manifest["covered"])
        logs: dict[str, int] = dict(manifest.get("logs", {}))
        prefix = self._commit_dir(run)
        objects, old_logs = [], []
        for rel in self.store.listdir(prefix):
            name = rel[len(prefix) + 1:]
            if "/" not in name and name.endswith(".jsonl"):
                old_logs.append(rel)
                continue
            m = _COMMIT_OBJECT.fullmatch(name)
            if m and int(m["gen"]) > covered.get(f"{m['stage']}/{int(m['shard'])}", 0):
                objects.append((int(m["gen"]), rel, m["stage"], int(m["shard"])))
        for rel in sorted(old_logs):
            data = self.store.read_bytes(rel) or b""
            if logs.get(rel) == len(data):
                continue  # compacted already
            logs[rel] = len(data)
            for line in data.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line (a crash mid-write): its shard is not committed
                key = (rec["stage"], rec["shard"])
                if _newer(rec, out.get(key)):
                    out[key] = rec
        for gen, rel, stage, shard in sorted(objects):
            try:
                rec = json.loads(self.store.read_bytes(rel) or b"")
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("run %r: commit object %s is unreadable: ignored", run, self.store.uri(rel))
                continue
            covered[f"{stage}/{shard}"] = max(covered.get(f"{stage}/{shard}", 0), gen)
            if _newer(rec, out.get((stage, shard))):
                out[(stage, shard)] = rec
        return out, covered, logs

    def commit_records(self, run: str | None = None, stage: str | None = None) -> dict[tuple[str, str, int], dict]:
        """Latest commit record per (run, stage, shard), files not verified: the run's manifest and the commit
        objects newer than it (plus old warehouses' `.jsonl` logs; a torn line is skipped)."""
        out: dict[tuple[str, str, int], dict] = {}
        for r in [check_run_name(run)] if run else self.commit_runs():
            records, _, _ = self._run_state(r)
            for (st, shard), rec in records.items():
                if stage is None or st == stage:
                    out[(r, st, shard)] = rec
        return out

    def compact(self, run: str) -> bool:
        """Fold the run's commit objects into its manifest (a conditional replace: one writer at a time; a
        compaction that lost the race leaves the other's, which readers complete from the objects). Commit
        objects stay: they are the shards' generation counters."""
        _, tag = self._read_manifest(run, tagged=True)
        records, covered, logs = self._run_state(run)
        manifest = {"version": MANIFEST_VERSION, "run": run, "time": time.time(), "covered": covered, "logs": logs,
                    "records": [records[k] for k in sorted(records)]}
        data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        done = self.store.replace(self.manifest_rel(run), data, tag)
        if not done:
            log.info("run %r: another writer compacted the manifest meanwhile; kept theirs", run)
        return done

    def damaged(self, run: str | None = None, records: dict | None = None) -> list[DamagedFile]:
        """Committed files that are missing, unreadable or hold another row count than their commit (one footer
        read per file: for resume and `check`, never for readers)."""
        records = self.commit_records(run) if records is None else records
        out = []
        for (run_, stage, shard), rec in sorted(records.items()):
            for f in rec["files"]:
                try:
                    found: int | None = self.read_metadata(f["path"]).num_rows
                    problem = f"{found} rows, {f['rows']} committed"
                except FileNotFoundError:
                    found, problem = None, "missing"
                except (OSError, pa.ArrowInvalid) as err:
                    found, problem = None, f"unreadable ({type(err).__name__}: {err})"
                if found != f["rows"]:
                    out.append(DamagedFile(run_, stage, shard, f["path"], f["rows"], found, problem))
        return out

    def commits(self, run: str | None = None, stage: str | None = None) -> dict[tuple[str, str, int], dict]:
        """Latest VALID commit per (run, stage, shard), for resume: a record whose files are missing or have
        another row count is dropped, so its shard is redone, and a warning per damaged run says so. This
        reads every named file's footer: readers use `commit_records` / `committed_files`."""
        records = self.commit_records(run, stage)
        bad = self.damaged(records=records)
        _warn_damaged(self.root, bad)
        hidden = {(d.run, d.stage, d.shard) for d in bad}
        return {k: r for k, r in records.items() if k not in hidden}

    def committed_files(self, table: str, run: str | None = None) -> list[str]:
        """The committed files of a table (relative paths), from the records: no file is opened."""
        files = {
            f["path"]
            for rec in self.commit_records(run).values()
            for f in rec["files"]
            if f["path"].split("/", 1)[0] == table
        }
        return sorted(files)

    def check_writable(self) -> None:
        """Before a job writes: an object store URL must answer and take writes (StoreError otherwise), and its
        prefix must be empty or a warehouse (tables, `_…` folders, views.sql): another dataset's prefix is
        refused, nothing written. A local folder is checked by the writes themselves."""
        if not self.remote:
            return
        from pipeline.warehouse.fs import describe_error
        from pipeline.warehouse.schemas import TABLES

        try:
            names = self._listdir_names("")
        except Exception as err:  # noqa: BLE001 - one line naming the URL and what to check
            raise StoreError(describe_error(self.url, err)) from err
        foreign = sorted(n for n in names if not n.startswith("_") and n != "views.sql" and n not in TABLES)
        if foreign:
            raise StoreError(f"warehouse {self.url}: the prefix holds other objects ({', '.join(foreign[:3])}"
                             f"{', …' if len(foreign) > 3 else ''}), not a warehouse: give an empty prefix or a "
                             "warehouse's (e.g. s3://bucket/features)")
        self.store.check_usable()

    # ---------------------------------------------------------------- run facts
    def facts_rel(self, run: str) -> str:
        return f"_runs/{check_run_name(run)}.json"

    def facts_path(self, run: str) -> Path:
        return self.root / self.facts_rel(run) if not self.remote else self.store.uri(self.facts_rel(run))

    def read_facts(self, run: str) -> dict | None:
        """The run's facts, None for a run without any; a damaged facts file is an error saying what to do."""
        data = self.store.read_bytes(self.facts_rel(run))
        if data is None:
            return None
        path = self.facts_path(run)
        try:
            text = data.decode()
            facts = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            facts, why = None, f"is not valid JSON ({err})" if data.strip() else "is empty"
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
        with runlock.fence(self._lock_root, check_run_name(run), "write the run's facts"):
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
            data = json.dumps(facts, indent=1, sort_keys=True).encode()
            if self.remote:
                self.store.put(self.facts_rel(run), data)
                return facts
            path = self.facts_path(run)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.root / "_tmp" / f"facts.{run}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.parent.mkdir(exist_ok=True)
            try:
                _append(tmp, data, f"the facts of run {run!r}")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        return facts

    def runs(self) -> list[str]:
        return sorted(name[:-5] for name in self._listdir_names("_runs") if name.endswith(".json"))

    def drop_run(self, run: str) -> None:
        """Remove every file of a run (data, commits, manifest, facts)."""
        with runlock.fence(self._lock_root, check_run_name(run), "drop the run"):
            self.store.delete(self.manifest_rel(run))
            for table in self._listdir_names(""):
                if table in ("_locks", "_tmp", "_models") or table.endswith(".sql"):
                    continue
                self.store.delete_tree(f"{table}/run={run}")
            self.store.delete(self.facts_rel(run))

    @property
    def _lock_root(self) -> Path | str:
        return self.root if not self.remote else self.url

    def lock(self, run: str, command: str | None = None, wait: bool = False,
             timeout_s: float | None = None) -> ContextManager[runlock.Lease]:
        """Hold the run's lock for a `with` block (see pipeline/warehouse/lock.py): RunLocked at once if another job
        holds it, or wait for it with `wait`. Commits, facts and drop_run check the lease as they write."""
        return runlock.hold(self._lock_root, check_run_name(run), command or runlock.command_line(), wait, timeout_s,
                            store=self.store)

    # ---------------------------------------------------------------- DuckDB
    def connect(self, database: str = ":memory:", runs: Iterable[str] | None = None,
                layers: Iterable[int] | None = None, exclude: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the views of `pipeline.warehouse.views.views_sql` (one definition, also written to
        `views.sql` for other clients) over the committed files of every run, or of `runs` only: DuckDB binds
        every file a view names at each query (~50 µs a file), so a caller that reads one run opens that run
        alone (and `layers`: per-layer tables' files of those layers only; pipeline.warehouse.scope proves which a
        query reads). `exclude`: files to leave out (`check` leaves damaged shards out). Also empty views, runs, run_geometry, frame_labels; old warehouses' clusterings get their `tier`
        (schemas.tiered_views). Files are read through this warehouse's filesystem (object stores included)."""
        from pipeline.warehouse import vectors
        from pipeline.warehouse.schemas import tiered_views
        from pipeline.warehouse.views import views_sql  # views.py imports this module

        con = duckdb.connect(database)
        self.store.register(con)
        con.execute(views_sql(self, runs=None if runs is None else sorted(set(runs)),
                              layers=None if layers is None else sorted({int(x) for x in layers}),
                              exclude=set(exclude) if exclude else None))
        vectors.register(con)
        tiered_views(con)
        return con
