"""The warehouse: Hive-partitioned Parquet tables, atomic writes, a commit log and DuckDB views.

Layout under the root (default `storage/`):

    <table>/run=<run>/[layer=<layer>/]part-<shard>.parquet   data, named by (run, layer, shard)
    segments/run=<run>/ctc_greedy-<shard>.parquet             a second writer of a table: its own file_prefix
    _runs/<run>.json                                          the run's facts, written once
    _commits/run=<run>/<stage>.rank<r>.jsonl                  one line per committed shard
    _tmp/                                                     files being written (outside globs)

Readers (the DuckDB views, resume) trust only files named by a commit record whose file still
exists with the recorded row count. A rerun rewrites the same file names, so it replaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.schemas import SCHEMA_VERSION, TABLES, empty_view_schema

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
FILE_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}$")
ZSTD_LEVEL = 3  # zstd gains ~7 % on float16 vectors; higher levels cost time for little more


class FactsMismatch(RuntimeError):
    """A run exists with other facts (model, layers, source…): appending would mix results."""


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the warehouse root, '/'-separated
    rows: int
    bytes: int


def check_run_name(run: str) -> str:
    if not RUN_NAME.match(run):
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Warehouse:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- paths
    def table_path(self, table: str, run: str, shard: int, file_prefix: str = "part", **partitions: Any) -> Path:
        """`<table>/run=<run>/[k=v/...]<file_prefix>-<shard>.parquet`. Two writers of one table and shard
        (extract's corpus segments, the CTC labels) keep apart by their `file_prefix`."""
        if not FILE_PREFIX.match(file_prefix):
            raise ValueError(f"file_prefix {file_prefix!r} is not usable in a file name: use letters, digits, '_', "
                             "'.', '-' (at most 60 characters, starting with a letter or digit)")
        parts = [f"run={check_run_name(run)}"] + [f"{k}={v}" for k, v in partitions.items()]
        return self.root.joinpath(table, *parts, f"{file_prefix}-{shard:05d}.parquet")

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ---------------------------------------------------------------- writing
    def write(self, table: str, data: pa.Table, run: str, shard: int, file_prefix: str = "part",
              **partitions: Any) -> FileRecord:
        """Write one shard file atomically: temp name outside the table's glob, fsync, rename."""
        final = self.table_path(table, run, shard, file_prefix, **partitions)
        tmp_dir = self.root / "_tmp"
        tmp_dir.mkdir(exist_ok=True)
        tmp = tmp_dir / (f"{table}.{run}.{'.'.join(map(str, partitions.values()))}.{file_prefix}.{shard}."
                         f"{os.getpid()}.tmp")
        pq.write_table(
            data,
            tmp,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            row_group_size=64 * 1024,
            write_statistics=True,
            # vectors never repeat: dictionary-encoding them took 2-3x the write time for larger files
            use_dictionary=[name for name in data.schema.names if name != "vector"],
        )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        _maybe_kill("after_rename")
        return FileRecord(self._rel(final), data.num_rows, final.stat().st_size)

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
        fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line from a crash: start on a fresh line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- reading the log
    def commits(self, run: str | None = None, stage: str | None = None) -> dict[tuple[str, str, int], dict]:
        """Latest valid commit per (run, stage, shard). A torn last line (a crash mid-write) is skipped;
        a record whose files are missing or have another row count is dropped, so its shard is redone."""
        base = self.root / "_commits"
        runs = [f"run={run}"] if run else [p.name for p in base.glob("run=*")] if base.exists() else []
        out: dict[tuple[str, str, int], dict] = {}
        for run_dir in runs:
            pattern = f"{stage}.rank*.jsonl" if stage else "*.jsonl"
            for log in sorted((base / run_dir).glob(pattern)):
                for line in log.read_bytes().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn write; the shard is not committed
                    key = (rec["run"], rec["stage"], rec["shard"])
                    if key not in out or rec["time"] >= out[key]["time"]:
                        out[key] = rec
        return {k: r for k, r in out.items() if self._files_intact(r["files"])}

    def _files_intact(self, files: list[dict]) -> bool:
        for f in files:
            path = self.root / f["path"]
            try:
                if pq.read_metadata(path).num_rows != f["rows"]:
                    return False
            except (OSError, pa.ArrowInvalid):
                return False
        return True

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
        path = self.facts_path(run)
        return json.loads(path.read_text()) if path.exists() else None

    def ensure_facts(self, run: str, facts: dict) -> dict:
        """Record the run's facts once; refuse to continue a run made under different facts.

        Facts may be extended (an `ingest` run later extracted with a model): keys present in
        both must be equal.
        """
        facts = {"schema_version": SCHEMA_VERSION, **facts}
        old = self.read_facts(run)
        if old is not None:
            clash = {k: (old[k], facts[k]) for k in facts.keys() & old.keys() if old[k] != facts[k] and k != "package_version"}
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
        tmp = self.root / "_tmp" / f"facts.{run}.{os.getpid()}.tmp"
        tmp.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps(facts, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return facts

    def runs(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "_runs").glob("*.json"))

    def drop_run(self, run: str) -> None:
        """Remove every file of a run (data, commits, facts)."""
        check_run_name(run)
        for table_dir in self.root.iterdir():
            target = table_dir / f"run={run}"
            if target.is_dir():
                shutil.rmtree(target)
        self.facts_path(run).unlink(missing_ok=True)

    # ---------------------------------------------------------------- DuckDB
    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per table over the committed files of every run."""
        con = duckdb.connect(database)
        con.execute(f"set file_search_path = '{self.root.as_posix()}'")
        commits = self.commits()
        tables: dict[str, set[str]] = {}
        for rec in commits.values():
            for f in rec["files"]:
                tables.setdefault(f["path"].split("/", 1)[0], set()).add(f["path"])
        for name in [*TABLES, "frames"]:
            tables.setdefault(name, set())
        for name, files in sorted(tables.items()):
            if files:
                paths = [(self.root / p).as_posix() for p in sorted(files)]
                con.execute(
                    f"create or replace view {name} as select * from read_parquet($paths, "
                    "hive_partitioning = true, union_by_name = true)".replace("$paths", _sql_list(paths))
                )
            else:
                schema = empty_view_schema(name)
                if schema is not None:
                    con.register(f"_empty_{name}", schema.empty_table())
                    con.execute(f"create or replace view {name} as select * from _empty_{name}")
        facts = [{"run": r, "facts": json.dumps(self.read_facts(r), sort_keys=True)} for r in self.runs()]
        runs_table = pa.Table.from_pylist(facts, schema=pa.schema([("run", pa.string()), ("facts", pa.string())]))
        con.register("_runs_table", runs_table)
        con.execute("create or replace view runs as select run, facts::json as facts from _runs_table")
        # frame geometry per run, for frame centres in SQL: (hop * frame + rf / 2) / rate, float64 as in Python
        con.execute("create or replace view run_geometry as select run, "
                    "(facts -> 'geometry' ->> 'hop_samples')::double as hop, "
                    "(facts -> 'geometry' ->> 'receptive_field_samples')::double as rf, "
                    "(facts -> 'geometry' ->> 'sample_rate_hz')::double as rate "
                    "from runs where (facts -> 'geometry') is not null")
        con.execute(FRAME_LABELS_MACRO)
        return con


# The label of every frame of a run on a tier, defined once for every query: `phone` and `word` are
# columns of `frames`; any other tier (ctc_greedy, ctc_char, …) is the `segments` interval holding
# the frame's centre, start inclusive, end exclusive, the centre computed in float64 from the frame
# index and the run's geometry exactly as extraction computes it for `phone`. Filter on `layer`.
FRAME_LABELS_MACRO = """
create or replace macro frame_labels(which_run, which_tier) as table
select
    f.layer, f.utterance_id, f.frame, f.time_s, f.phone, f.word,
    case which_tier when 'phone' then f.phone when 'word' then f.word else s.label end as label
from frames f
left join run_geometry g on g.run = f.run  -- a run without geometry still has phone and word
left join segments s
    on which_tier not in ('phone', 'word')
    and s.run = f.run and s.tier = which_tier and s.utterance_id = f.utterance_id
    and (g.hop * f.frame + g.rf / 2) / g.rate >= s.start_s and (g.hop * f.frame + g.rf / 2) / g.rate < s.end_s
where f.run = which_run
"""


def _sql_list(paths: list[str]) -> str:
    """A SQL list literal of file paths (paths are ours, but quote them properly anyway)."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
