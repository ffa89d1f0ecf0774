"""Opening the warehouse: does a query cost what its files cost, whatever else the warehouse holds?

A LibriSpeech-960 h-shaped warehouse of tiny vectors (4-d float16, 8 frames per file: the files, not
their bytes, are what opening costs): 281,241 utterances in 64-utterance shards = 4,395 shards x 14
layers = 61,530 frames files in one run, committed shard by shard and compacted into its manifest,
as `extract` leaves it. Beside it, a small run (14 layers x 20 shards = 280 files) queried with

    python -m pipeline sql "select count(*) from frames where run = 'target' and layer = 3"

in a warehouse where the rest holds 1x (one other run of 280 files) and in one where it holds 100x
(100 such runs, and the LibriSpeech-shaped run besides), interleaved. Also: `Warehouse.connect()` over every run and over one run, and a query on one layer of
the LibriSpeech-shaped run against DuckDB reading the same 4,395 files from a literal list (what
DuckDB needs for N files), all in one process, medians of `repeats`.

Standalone: `python -m bench.open [--shards 4395] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.warehouse import FileRecord, Warehouse, schema_hash, vectors
from pipeline.warehouse.schemas import frames_schema

LAYERS = 14  # wav2vec2-base: the CNN output and 12 transformer layers, + 1 (large models: 25)
LIBRISPEECH_SHARDS = 4395  # 281,241 utterances of train-960 / 64 per shard
SMALL_SHARDS = 20
FRAMES_PER_FILE = 8
SCHEMA = frames_schema(4, "float16")


def _template() -> bytes:
    """One frames file's bytes (8 frames of 4-d float16): every file of the warehouse holds these."""
    rows = FRAMES_PER_FILE
    table = pa.table({"utterance_id": [f"u{i // 4}" for i in range(rows)],
                      "frame": pa.array(np.arange(rows, dtype=np.int32) % 4),
                      "time_s": pa.array(np.arange(rows, dtype=np.float32) % 4 * 0.02),
                      "phone": ["a"] * rows, "word": ["w"] * rows,
                      "vector": vectors.encode(np.ones((rows, 4), np.float16))}, schema=SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, **vectors.writer_options(SCHEMA))
    return sink.getvalue()


def build_run(wh: Warehouse, run: str, shards: int) -> int:
    """`shards` x LAYERS files and one commit object per shard through Warehouse.commit, then the run's
    manifest (Warehouse.compact): the layout `extract` leaves. The files' bytes are one template written
    without fsync: the build is not what is measured."""
    blob, spec, digest = _template(), "float16[4]", schema_hash(SCHEMA)
    with _no_fsync():
        for shard in range(shards):
            records = []
            for layer in range(LAYERS):
                rel = wh.table_rel("frames", run, shard, layer=layer)
                path = wh.root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)
                records.append(FileRecord(rel, FRAMES_PER_FILE, len(blob), spec, digest))
            wh.commit(run, "extract", shard, records, items=FRAMES_PER_FILE // 4)
        wh.compact(run)
    return shards * LAYERS


@contextlib.contextmanager
def _no_fsync():
    import os

    real, os.fsync = os.fsync, lambda fd: None
    try:
        yield
    finally:
        os.fsync = real


def _cli_sql(root: Path, sql: str) -> float:
    """Wall seconds of `python -m pipeline sql SQL --format csv` in this process (imports excluded)."""
    from pipeline.cli import main

    out = io.TextIOWrapper(io.BytesIO())
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["sql", sql, "--format", "csv", "--warehouse", str(root)])
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"pipeline sql {sql!r} failed (exit {code})")
    return wall


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def measure(root: Path, shards: int = LIBRISPEECH_SHARDS, repeats: int = 3) -> dict:
    """Two warehouses: `1x` (the target run and one other run of as many files) and `100x` (the target, 100
    other runs, and the LibriSpeech-shaped run); the same query on both, interleaved, `repeats` times."""
    import duckdb

    built = time.perf_counter()
    small, big = Warehouse(root / "1x"), Warehouse(root / "100x")
    files = {"1x": build_run(small, "target", SMALL_SHARDS) + build_run(small, "other0", SMALL_SHARDS),
             "100x": build_run(big, "target", SMALL_SHARDS)}
    for i in range(100):
        files["100x"] += build_run(big, f"other{i}", SMALL_SHARDS)
    small_build_s = time.perf_counter() - built
    built = time.perf_counter()
    files["100x"] += build_run(big, "ls960", shards)
    ls_build_s = time.perf_counter() - built

    query = "select count(*) from frames where run = 'target' and layer = 3"
    _cli_sql(small.root, query), _cli_sql(big.root, query)  # warm: imports, DuckDB's first connection
    pairs = [(_cli_sql(small.root, query), _cli_sql(big.root, query)) for _ in range(max(5, repeats))]
    ratios = [b / a for a, b in pairs]

    layer_files = [big.uri(p) for p in big.committed_files("frames", "ls960") if "/layer=3/" in p]
    ls_query = "select count(*) from frames where run = 'ls960' and layer = 3"

    def bare() -> float:
        started = time.perf_counter()
        duckdb.connect().execute("select count(*) from read_parquet($1, hive_partitioning = true)",
                                 [layer_files]).fetchall()
        return time.perf_counter() - started

    ls_pairs = [(_cli_sql(big.root, ls_query), bare()) for _ in range(repeats)]
    connect_all = _median_time(lambda: Warehouse(big.root).connect().close(), repeats)
    connect_one = _median_time(lambda: Warehouse(big.root).connect(runs=["ls960"]).close(), repeats)
    records_s = _median_time(lambda: Warehouse(big.root).commit_records("ls960"), repeats)
    return {
        "files": files, "ls960_files": shards * LAYERS, "ls960_shards": shards, "layer_files": len(layer_files),
        "build_s": {"small_runs": small_build_s, "ls960": ls_build_s},
        "sql_one_run_layer_s": {"rest_1x": float(np.median([a for a, _ in pairs])),
                                "rest_100x": float(np.median([b for _, b in pairs])),
                                "ratio_100x_to_1x": float(np.median(ratios))},
        "sql_ls960_layer_s": float(np.median([a for a, _ in ls_pairs])),
        "duckdb_same_files_s": float(np.median([b for _, b in ls_pairs])),
        "ratio_to_duckdb": float(np.median([a / b for a, b in ls_pairs])),
        "connect_all_runs_s": connect_all, "connect_ls960_s": connect_one, "commit_records_ls960_s": records_s,
    }


def open_warehouse(ctx) -> dict:
    """bench.run entry: the measurement in ctx's scratch folder."""
    from bench.common import check, check_line

    r = measure(ctx.tmp / "open-wh", LIBRISPEECH_SHARDS, ctx.plan.repeats)
    r["checks"] = [
        check("one run and layer: rest of the warehouse 100x / 1x", r["sql_one_run_layer_s"]["ratio_100x_to_1x"],
              "<=", 1.2),
        check(f"one layer of the LibriSpeech-shaped run ({r['layer_files']} files): pipeline sql / DuckDB on the "
              "same file list", r["ratio_to_duckdb"], "<=", 1.5),
    ]
    r["summary"] = summary(r) + [check_line(c) for c in r["checks"]]
    return r


def summary(r: dict) -> list[str]:
    s = r["sql_one_run_layer_s"]
    return [
        f"warehouses of {r['files']['1x']:,} and {r['files']['100x']:,} frames files, the larger with a LibriSpeech-960 "
        f"h-shaped run of {r['ls960_shards']:,} shards x {LAYERS} layers = {r['ls960_files']:,} files (built in "
        f"{sum(r['build_s'].values()):.0f} s)",
        f"pipeline sql on one run and layer ({SMALL_SHARDS} files): {s['rest_1x'] * 1e3:.0f} ms beside 1x the other "
        f"files, {s['rest_100x'] * 1e3:.0f} ms beside 100x and the LibriSpeech-shaped run: ratio "
        f"{s['ratio_100x_to_1x']:.2f} (median of interleaved pairs)",
        f"pipeline sql on one layer of the LibriSpeech-shaped run ({r['layer_files']:,} files): "
        f"{r['sql_ls960_layer_s']:.2f} s; DuckDB alone on the same file list: {r['duckdb_same_files_s']:.2f} s "
        f"(ratio {r['ratio_to_duckdb']:.2f})",
        f"Warehouse.connect(): every run {r['connect_all_runs_s']:.2f} s, the LibriSpeech-shaped run alone "
        f"{r['connect_ls960_s']:.2f} s; its commit records (manifest + one listing) {r['commit_records_ls960_s'] * 1e3:.0f} ms",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.open", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=LIBRISPEECH_SHARDS, help="shards of the LibriSpeech-shaped run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scratch", type=Path, help="folder for the warehouse (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        r = measure(Path(tmp) / "wh", args.shards, args.repeats)
    print("\n".join(summary(r)))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
