"""`encoding`: the frames files' vector encoding, write and read rates per core, one process.

40,000 x 768 float16 frame-like vectors (one layer of ~13 min of audio at 50 frames/s, wav2vec2-base
width) with the other frames columns, written as a Parquet file in memory:
  - before: `vector` as fixed_size_list<float16, 768>, every column zstd (the ShardWriter's settings
    before pipeline/warehouse/vectors.py);
  - now: `vector` as fixed_size_binary[1536] with vectors.writer_options (vector stored plain, the
    rest zstd); and the same with zstd on the vector too, to show what zstd buys there.
Read: the `vector` column of the file into a float16 numpy matrix (a view of the read buffer; what
FAISS assignment takes, converting batch by batch) and into float32 (numpy's float16 -> float32 cast,
measured alone beside it, is that read's ceiling: ~0.7-0.9 GB/s per core here, no SIMD half cast).
MB are the vectors' float16 bytes (n x D x 2); "per core" divides by the process's CPU seconds.
Writers in parallel threads (one file each) show the scaling where cores allow.
DuckDB: `select vector from frames` through Warehouse.connect()'s view (FLOAT[]), rows/s, with the
numpy pipeline_vector and with the pure-SQL macro any other client runs (on fewer rows: it is slow).
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import Context, check, check_line, median, timed
from bench.data import mixture

N_VECTORS, DIM = 40_000, 768
SQL_MACRO_ROWS = 2_000  # the pure-SQL decode runs at ~2,000 rows/s of 768-d here


def _frames_table(x: np.ndarray, binary: bool) -> pa.Table:
    from pipeline.warehouse import vectors
    from pipeline.warehouse.schemas import frames_schema

    n, dim = x.shape
    utterance = np.arange(n) // 500  # 10 s utterances
    columns = [pa.array([f"spk{u % 40:02d}/utt{u:05d}" for u in utterance], pa.string()),
               pa.array(np.arange(n) % 500, pa.int32()), pa.array((np.arange(n) % 500) * 0.02 + 0.0125, pa.float32()),
               pa.array(np.array(["a", "i:", "s", "t", None], object)[np.arange(n) // 7 % 5], pa.string()),
               pa.array(np.array(["w1", "w2", None], object)[np.arange(n) // 20 % 3], pa.string())]
    schema = frames_schema(dim, "float16")
    if binary:
        return pa.Table.from_arrays([*columns, vectors.encode(x, "float16")], schema=schema)
    schema = schema.set(schema.get_field_index("vector"), pa.field("vector", pa.list_(pa.float16(), dim)))
    return pa.Table.from_arrays([*columns, pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)],
                                schema=schema)


def _old_options(schema: pa.Schema) -> dict:
    from pipeline.warehouse import ZSTD_LEVEL

    return dict(compression="zstd", compression_level=ZSTD_LEVEL, write_statistics=True,
                use_dictionary=[name for name in schema.names if name != "vector"])


def _zstd_vector_options(schema: pa.Schema) -> dict:
    from pipeline.warehouse import ZSTD_LEVEL, vectors

    return {**vectors.writer_options(schema), "compression": "zstd", "compression_level": ZSTD_LEVEL}


def _write(table: pa.Table, options: dict) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **options) as writer:
        writer.write_table(table, row_group_size=64 * 1024)
    return sink.getvalue()


def _read_matrix(buf: pa.Buffer, dtype) -> np.ndarray:
    from pipeline.warehouse import vectors

    return vectors.matrix(pq.read_table(pa.BufferReader(buf), columns=["vector"]), dtype=dtype)


def _rate(mb: float, runs: list[tuple[float, float]]) -> dict:
    wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
    return {"wall_s": wall, "cpu_s": cpu, "mb_per_s": mb / wall, "mb_per_s_per_core": mb / max(cpu, 1e-9)}


def _threads(table: pa.Table, options: dict, threads: int, mb: float, repeats: int) -> dict:
    """`threads` writers at once, one file each (in memory): aggregate MB/s and MB per CPU second."""
    runs = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            list(pool.map(lambda _: _write(table, options), range(threads)))
            runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    out = _rate(mb * threads, runs)
    out["threads"] = threads
    return out


def _duckdb(x: np.ndarray, table: pa.Table, old_table: pa.Table, repeats: int) -> dict:
    """Rows/s of `select vector from frames` through the warehouse's view: binary vectors with the numpy
    function and with the pure-SQL macro, and list vectors as files before this encoding hold them."""
    import duckdb

    from pipeline.warehouse import Warehouse, vectors
    from pipeline.warehouse.views import views_sql

    with tempfile.TemporaryDirectory() as tmp:
        wh = Warehouse(Path(tmp))
        wh.commit("enc", "extract", 0, [wh.write("frames", table, "enc", 0, layer=0)])
        wh.commit("old", "extract", 0, [wh.write("frames", old_table, "old", 0, layer=0)])
        fast = wh.connect()
        vectors.register(fast)  # Warehouse.connect() does it too once it calls vectors.register
        sql = "select vector from frames where run = 'enc' and layer = 0"
        runs = [timed(lambda: fast.sql(sql).to_arrow_table()) for _ in range(repeats)]
        got = vectors.decode(runs[-1][2]["vector"])
        exact = bool(np.array_equal(got, x.astype(np.float32)))
        fast_s = median([r[0] for r in runs])
        old_sql = "select vector from frames where run = 'old' and layer = 0"
        old_s = median([timed(lambda: fast.sql(old_sql).to_arrow_table())[0] for _ in range(repeats)])
        script = duckdb.connect()
        script.execute(views_sql(wh))
        few = f"{sql} and frame < {SQL_MACRO_ROWS // 80}"  # 80 utterances of 500 frames
        sql_s, _, rows = timed(lambda: script.sql(few).to_arrow_table())
        count_s, _, _ = timed(lambda: fast.sql("select count(*), count(phone) from frames").fetchall())
    return {"rows": len(x), "numpy_function_rows_per_s": len(x) / fast_s, "numpy_function_exact": exact,
            "old_list_rows_per_s": len(x) / old_s,
            "sql_macro_rows": rows.num_rows, "sql_macro_rows_per_s": rows.num_rows / sql_s,
            "count_without_vector_s": count_s}


def encoding(ctx: Context | None = None) -> dict:
    repeats = ctx.plan.repeats if ctx is not None else 3
    x = mixture(N_VECTORS, DIM).astype(np.float16)
    mb = x.nbytes / 1e6
    from pipeline.warehouse import vectors

    old_table, new_table = _frames_table(x, binary=False), _frames_table(x, binary=True)
    cases = {"list_zstd (before)": (old_table, _old_options(old_table.schema)),
             "binary (now)": (new_table, vectors.writer_options(new_table.schema)),
             "binary_zstd": (new_table, _zstd_vector_options(new_table.schema))}
    result: dict = {"data": f"{N_VECTORS} x {DIM} float16 frame-like vectors (bench.data.mixture) with the frames "
                            f"columns, {mb:.1f} MB of vectors; Parquet in memory", "cases": {}, "checks": []}
    buffers = {}
    for name, (table, options) in cases.items():  # interleaved: every case once per repeat
        result["cases"][name] = {"write": [], "read_float32": [], "read_float16": []}
    for _ in range(repeats):
        for name, (table, options) in cases.items():
            wall, cpu, buffers[name] = timed(_write, table, options)
            result["cases"][name]["write"].append((wall, cpu))
            for key, dtype in (("read_float32", np.float32), ("read_float16", np.float16)):
                wall, cpu, got = timed(_read_matrix, buffers[name], dtype)
                result["cases"][name][key].append((wall, cpu))
                assert np.array_equal(got, x.astype(dtype)), name
    for name, runs in result["cases"].items():
        result["cases"][name] = {key: _rate(mb, value) for key, value in runs.items()}
        result["cases"][name]["file_mb"] = buffers[name].size / 1e6
    # the ceiling of any float16 -> float32 read: numpy's own cast of the matrix already in memory
    result["numpy_cast_float16_to_float32"] = _rate(mb, [timed(x.astype, np.float32)[:2] for _ in range(repeats)])
    threads = sorted({1, min(4, len(os.sched_getaffinity(0)))})
    result["threads"] = {n: _threads(new_table, vectors.writer_options(new_table.schema), n, mb, repeats)
                         for n in threads}
    result["duckdb"] = _duckdb(x, new_table, old_table, repeats)
    old, new, zstd = (result["cases"][k] for k in cases)
    result["zstd_saves_on_vectors"] = 1 - zstd["file_mb"] / new["file_mb"]
    result["checks"] = [
        check("write MB/s per core, binary vectors", new["write"]["mb_per_s_per_core"], ">=", 1000),
        check("read one layer into float16 numpy (as assign takes it), MB/s per core",
              new["read_float16"]["mb_per_s_per_core"], ">=", 2000),
        check("read into float32 / numpy's bare float16 -> float32 cast, per core",
              new["read_float32"]["mb_per_s_per_core"] / result["numpy_cast_float16_to_float32"]["mb_per_s_per_core"],
              ">=", 0.8),
        check("write speed-up over list<float16> + zstd", new["write"]["mb_per_s_per_core"]
              / old["write"]["mb_per_s_per_core"], ">=", 5),
    ]
    lines = [result["data"]]
    for name, r in result["cases"].items():
        lines.append(f"  {name}: write {r['write']['mb_per_s']:,.0f} MB/s ({r['write']['mb_per_s_per_core']:,.0f} "
                     f"per core), read to float32 {r['read_float32']['mb_per_s']:,.0f} MB/s "
                     f"({r['read_float32']['mb_per_s_per_core']:,.0f} per core), to float16 "
                     f"{r['read_float16']['mb_per_s']:,.0f} MB/s "
                     f"({r['read_float16']['mb_per_s_per_core']:,.0f} per core); "
                     f"file {r['file_mb']:.1f} MB")
    cast = result["numpy_cast_float16_to_float32"]
    lines.append(f"  numpy's float16 -> float32 cast alone (the float32 read's ceiling): {cast['mb_per_s']:,.0f} MB/s "
                 f"({cast['mb_per_s_per_core']:,.0f} per core)")
    lines.append(f"  zstd on the binary vectors saves {result['zstd_saves_on_vectors']:.1%} of the file")
    lines.append("  writers in threads (binary, one file each): " + ", ".join(
        f"{n}: {r['mb_per_s']:,.0f} MB/s ({r['mb_per_s_per_core']:,.0f} per core)"
        for n, r in result["threads"].items()))
    d = result["duckdb"]
    lines.append(f"  DuckDB view, select vector (FLOAT[]): numpy pipeline_vector {d['numpy_function_rows_per_s']:,.0f} "
                 f"rows/s (exact: {d['numpy_function_exact']}; list<float16> files before: "
                 f"{d['old_list_rows_per_s']:,.0f} rows/s), pure-SQL macro {d['sql_macro_rows_per_s']:,.0f} rows/s "
                 f"on {d['sql_macro_rows']} rows; count(*) without the vector "
                 f"{d['count_without_vector_s'] * 1e3:.0f} ms")
    result["summary"] = lines + [check_line(c) for c in result["checks"]]
    return result


if __name__ == "__main__":
    print("\n".join(encoding()["summary"]))
