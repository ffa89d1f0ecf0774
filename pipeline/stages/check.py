"""`python -m pipeline check [--run R]`: is the warehouse what its commits and facts say it is?

Three kinds of checks, each a named row of the report (run, pass/FAIL, count, one example):

- every committed file (the latest commit record of each shard) exists, is readable Parquet and
  holds the rows its record says (`committed_files_*`); readers open no file to validate it, so a
  damaged file fails the queries that read it (DuckDB names it) and resume redoes its shard;
- every run's facts file is readable JSON, the layers it records are the layers of every committed
  frames shard, and each layer's vectors have the dimension and dtype of the model (`facts_*`);
- every `sql/checks/*.sql` data test returns zero rows (duplicate keys, orphans, values out of
  range), run with each view restricted to the run when one is named.

A failure in one run never stops the checks of the others; the SQL tests run with the damaged shards
left out. A writing command ends with `check_written`, the cheap part on what it wrote: the files of
the commits it made and the facts against them, no SQL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from pipeline.warehouse.schemas import tiered_views
from pipeline.sql import SQL_DIR
from pipeline.algorithms.logmel import MEL_LAYER, N_MELS  # the log-mel layer -2 is N_MELS wide
from pipeline.warehouse import Warehouse, vectors

CHECKS_DIR = SQL_DIR / "checks"
ALL_RUNS = "*"  # the run column of a row that covers every run (a pass) or no run in particular
LAYER_CNN = -1  # conv feature encoder output: conv_dim wide; every other layer is hidden_size wide
EXAMPLE_CHARS = 160
VALUE_TYPES = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}  # as facts name them


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: a check on one run (or on all of them: run '*')."""

    check: str
    run: str
    ok: bool
    count: int  # offending rows, files or shards; 0 when ok
    example: str = ""  # the first offence, enough to find it


@dataclass
class CheckReport:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def table(self) -> str:
        """A fixed-width table: check, run, status, count, example."""
        rows = [("check", "run", "status", "count", "example")] + [
            (r.check, r.run, "pass" if r.ok else "FAIL", str(r.count), _shorten(r.example)) for r in self.results
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        a, b, c, d = widths
        lines = [f"{name:<{a}}  {run:<{b}}  {status:<{c}}  {count:>{d}}  {example}".rstrip()
                 for name, run, status, count, example in rows]
        n_bad = len(self.failures)
        lines.append(f"{len(self.results) - n_bad} passed, {n_bad} failed")
        return "\n".join(lines)

    def summary(self) -> str:
        return self.table()

    def __str__(self) -> str:
        return self.table()


class CheckFailed(RuntimeError):
    """What a command wrote is not what its commits and facts say; the message holds the report."""


def check(warehouse: str | os.PathLike | Warehouse, run: str | None = None) -> CheckReport:
    """Every check on the whole warehouse, or on one run. `.ok` is False on any failure."""
    wh = _open(warehouse)
    records = wh.commit_records(run)
    if run is not None and not records and run not in _facts_runs(wh):
        known = sorted(_facts_runs(wh) | {key[0] for key in wh.commit_records()})
        raise ValueError(f"no run {run!r} in {wh.root} (runs: {', '.join(known) or 'none'})")
    damaged = wh.damaged(records=records)
    hidden = {(d.run, d.stage, d.shard) for d in damaged}
    exclude = {f["path"] for key in hidden for f in records[key]["files"]}  # as resume sees them: not done
    return CheckReport([*file_checks(wh, records, run, damaged), *facts_checks(wh, records, run),
                        *sql_checks(wh, run, exclude)])


def check_written(warehouse: str | os.PathLike | Warehouse, run: str,
                  stages: Iterable[str] | None = None, written: Iterable[dict] | None = None) -> CheckReport:
    """The check a writing command runs at its end: the files of its commit records (`stages` of
    `run`; every stage of the run when None) and the run's facts against its frames; with `written`
    (the records the job committed: Warehouse.written), those records only, so the check costs what
    the job wrote, not what the run holds. No SQL, nothing of other runs. Raises CheckFailed naming
    the run, the files and what to do."""
    wh = _open(warehouse)
    wanted = None if stages is None else set(stages)
    if written is None:
        records = wh.commit_records(run)
    else:
        records = {(rec["run"], rec["stage"], rec["shard"]): rec for rec in written if rec["run"] == run}
    own = {key: rec for key, rec in records.items() if wanted is None or key[1] in wanted}
    report = CheckReport([*file_checks(wh, own, run), *facts_checks(wh, records, run)])
    if not report.ok:
        raise CheckFailed(
            f"run {run!r} in {wh.root}: what was just written fails {len(report.failures)} check(s):\n"
            f"{report.table()}\n"
            f"Run `python -m pipeline check --run {run}` for the whole run. A damaged file: rerun the same command "
            "to redo its shard; facts that disagree with the frames: rerun with --overwrite (or another --run name)."
        )
    return report


def _open(warehouse: str | os.PathLike | Warehouse) -> Warehouse:
    from pipeline.warehouse.fs import is_remote

    if isinstance(warehouse, Warehouse):
        return warehouse
    if is_remote(warehouse):
        return Warehouse(warehouse)
    if not Path(warehouse).is_dir():
        raise FileNotFoundError(f"no warehouse at {warehouse}: pass --warehouse DIR (the folder `extract` wrote)")
    return Warehouse(warehouse)


# ---------------------------------------------------------------- committed files


FILE_CHECKS = {  # check name: which problem of Warehouse.damaged it reports
    "committed_files_exist": lambda d: d.problem == "missing",
    "committed_files_readable": lambda d: d.rows_found is None and d.problem != "missing",
    "committed_files_row_count": lambda d: d.rows_found is not None,
}


def file_checks(wh: Warehouse, records: dict, run: str | None = None, damaged: list | None = None) -> list[CheckResult]:
    """Every file of the given commit records exists, reads as Parquet and has its committed rows
    (`damaged`: Warehouse.damaged of those records, when already known)."""
    damaged = wh.damaged(records=records) if damaged is None else damaged
    out = []
    for name, matches in FILE_CHECKS.items():
        found = [d for d in damaged if matches(d)]
        by_run: dict[str, list] = {}
        for d in found:
            by_run.setdefault(d.run, []).append(d)
        out += [CheckResult(name, r, False, len(ds), f"{ds[0].path}: {ds[0].problem} (stage {ds[0].stage}, shard "
                            f"{ds[0].shard}; rerun the stage to redo it)") for r, ds in sorted(by_run.items())]
        if not by_run:
            out.append(CheckResult(name, run or ALL_RUNS, True, 0))
    return out


# ---------------------------------------------------------------- facts against frames


def facts_checks(wh: Warehouse, records: dict, run: str | None = None) -> list[CheckResult]:
    """Per run: its facts file is readable; its recorded layers are those of every committed frames
    shard; every frames file's vectors have the dimension and dtype the facts give for its layer."""
    runs = {run} if run else {key[0] for key in records} | _facts_runs(wh)
    by_run: dict[str, list[dict]] = {r: [] for r in runs}
    for (r, _, _), rec in sorted(records.items()):
        if r in by_run:
            by_run[r].append(rec)
    facts = {r: _read_facts(wh, r, has_records=bool(by_run[r])) for r in sorted(by_run)}
    out = []
    for name, problems_of in (("facts_readable", None), ("facts_layers_match_frames", _layers_problems),
                              ("facts_dims_match_frames", _dims_problems)):
        failed = []
        for r, (recorded, error) in facts.items():
            if problems_of is None:
                problems = [error] if error else []
            else:
                problems = problems_of(wh, recorded, by_run[r]) if recorded is not None else []
            if problems:
                failed.append(CheckResult(name, r, False, len(problems), problems[0]))
        out += failed or [CheckResult(name, run or ALL_RUNS, True, 0)]
    return out


def _facts_runs(wh: Warehouse) -> set[str]:
    return set(wh.runs())


def _read_facts(wh: Warehouse, run: str, has_records: bool) -> tuple[dict | None, str | None]:
    """The run's facts, or None and what is wrong with its facts file."""
    rel = wh.facts_rel(run)
    data = wh.store.read_bytes(rel)
    if data is None:
        return None, (f"{rel}: missing, but the run has commits; rerun its first stage with --overwrite"
                      if has_records else None)
    try:
        facts = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        what = "empty file" if not data else f"not JSON ({err})"
        return None, f"{rel}: {what}; rerun the run's first stage with --overwrite, or drop the run"
    if not isinstance(facts, dict):
        return None, f"{rel}: holds a {type(facts).__name__}, not an object of facts; rerun with --overwrite"
    return facts, None


def _frames_layers(rec: dict) -> dict[int, list[str]]:
    """Frames files of one commit record by layer (from the `layer=L` folder of each path)."""
    out: dict[int, list[str]] = {}
    for f in rec["files"]:
        parts = f["path"].split("/")
        if parts[0] == "frames":
            layer = next((p.split("=", 1)[1] for p in parts if p.startswith("layer=")), None)
            if layer is not None:
                out.setdefault(int(layer), []).append(f["path"])
    return out


def _layers_problems(wh: Warehouse, facts: dict, records: list[dict]) -> list[str]:
    """One problem per commit whose frames files do not hold exactly the layers the facts record."""
    recorded = facts.get("layers")
    problems = []
    for rec in records:
        layers = sorted(_frames_layers(rec))
        if not layers:
            continue
        if recorded is None:
            problems.append(f"facts record no layers, but {rec['stage']} shard {rec['shard']} committed frames of "
                            f"layers {layers}; rerun extract with --overwrite")
        elif layers != sorted(recorded):
            problems.append(f"facts record layers {sorted(recorded)}, but {rec['stage']} shard {rec['shard']} "
                            f"committed frames of layers {layers} (two writers of one run?); rerun extract with "
                            "--overwrite")
    return problems


def _dims_problems(wh: Warehouse, facts: dict, records: list[dict]) -> list[str]:
    """One problem per frames file whose vectors are not of the facts' width and dtype. Without model
    dimensions in the facts, every file of a layer must have the width of the layer's first file."""
    model = facts.get("model") or {}
    expected: dict[int, tuple[int | None, str | None]] = {}
    problems = []
    for rec in records:
        for layer, paths in sorted(_frames_layers(rec).items()):
            width = N_MELS if layer == MEL_LAYER else model.get("conv_dim" if layer == LAYER_CNN else "hidden_size")
            specs = {f["path"]: f.get("vector") for f in rec["files"]}
            for path in paths:
                found = _spec_type(specs.get(path)) or _vector_type(wh, path)
                if found is None:
                    continue  # missing or unreadable: committed_files_* report it
                want = expected.setdefault(layer, (width if width is not None else found[0], facts.get("dtype")))
                if found[0] != want[0] or (want[1] is not None and found[1] != want[1]):
                    problems.append(f"{path}: vectors {found[1]}[{found[0]}], the facts say {want[1] or '?'}"
                                    f"[{want[0]}] for layer {layer}; rerun extract with --overwrite")
    return problems


def _spec_type(spec: str | None) -> tuple[int, str] | None:
    """(width, value type) from a commit record's `vector` ("float16[768]", "list:float16[768]"), else None."""
    if not spec:
        return None
    dtype, _, dim = spec.removeprefix("list:").rstrip("]").partition("[")
    return int(dim), dtype


def _vector_type(wh: Warehouse, path: str) -> tuple[int, str] | None:
    """(width, value type) of a frames file's `vector` column from its footer, or None when it cannot be
    read (files committed before records said it)."""
    try:
        return vectors.type_of(wh.parquet_file(path).schema_arrow.field("vector"))
    except (OSError, KeyError, pa.ArrowInvalid):
        return None


# ---------------------------------------------------------------- SQL data tests


def run_sql_checks(wh: Warehouse, run: str | None = None, con=None,
                   exclude: set[str] | None = None) -> dict[str, pa.Table | Exception]:
    """Every `sql/checks/*.sql` by name: the offending rows (none on a healthy warehouse), or the
    error that stopped the query. With `run`, every view holding a `run` column shows that run only.
    `con`: a connection of `wh.connect()` to reuse (it is changed: views are added)."""
    con = con or wh.connect(runs=None if run is None else [run], exclude=exclude)
    tiered_views(con)  # clusters, centroids, decoded as every reader sees them: a tier on every row
    if run is not None:
        _restrict_to_run(con, run)
    out: dict[str, pa.Table | Exception] = {}
    for path in sorted(CHECKS_DIR.glob("*.sql")):
        try:
            out[path.stem] = con.sql(path.read_text()).to_arrow_table()
        except Exception as err:  # noqa: BLE001 - reported as that check's failure; the others go on
            out[path.stem] = err
    return out


def _restrict_to_run(con, run: str) -> None:
    """Shadow each view with a `run` column by one filtered to `run`, in a schema searched first
    (views a check creates land there too, beside the shadows)."""
    con.execute("set variable check_run = ?", [run])
    con.execute("create schema if not exists only_run")
    names = [n for (n,) in con.execute("select view_name from duckdb_views() where schema_name = 'main' "
                                       "and not internal").fetchall()]
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        if "run" in con.sql(f"select * from main.{quoted} limit 0").columns:
            con.execute(f"create or replace view only_run.{quoted} as "
                        f"select * from main.{quoted} where run = getvariable('check_run')")
    con.execute("set search_path = 'only_run,main'")


def sql_checks(wh: Warehouse, run: str | None = None, exclude: set[str] | None = None) -> list[CheckResult]:
    """The SQL data tests as report rows: one FAIL row per run with offending rows, else one pass row.
    `exclude`: files left out of the views (the damaged shards, as resume leaves them out)."""
    scope = run or ALL_RUNS
    try:
        results = run_sql_checks(wh, run, exclude=exclude)
    except Exception as err:  # noqa: BLE001 - the warehouse cannot be opened: every SQL check fails
        return [CheckResult("sql_checks", scope, False, 0, f"cannot open the warehouse's views: {err}")]
    out = []
    for name, rows in results.items():
        if isinstance(rows, Exception):
            out.append(CheckResult(name, scope, False, 0, f"query failed: {' '.join(str(rows).split())}"))
            continue
        if rows.num_rows == 0:
            out.append(CheckResult(name, scope, True, 0))
            continue
        groups: dict[str, list[dict]] = {}
        for row in rows.to_pylist():
            groups.setdefault(str(row["run"]) if "run" in row and row["run"] is not None else ALL_RUNS,
                              []).append(row)
        out += [CheckResult(name, r, False, len(found), _describe(found[0])) for r, found in sorted(groups.items())]
    return out


def _describe(row: dict) -> str:
    """`problem` first, then the row's other values (no run, nulls or vectors)."""
    ordered = sorted(row.items(), key=lambda kv: kv[0] != "problem")
    return ", ".join(f"{k}={v}" for k, v in ordered
                     if k != "run" and v is not None and not isinstance(v, (list, bytes)))


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


@dataclass
class CheckConfig:
    """The parameters of `check`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str | None = field(default=None, metadata={"help": "only this run (default: every run)"})
    warehouse: str = "storage"


def run(cfg: CheckConfig) -> CheckReport:
    return check(cfg.warehouse, run=cfg.run)
