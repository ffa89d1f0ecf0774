"""The vector encoding (pipeline/warehouse/vectors.py): exact round trips, old list files, the DuckDB macro
against the numpy function, a view over a warehouse holding both kinds of files, polars and pyarrow readers."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.warehouse import Warehouse, vectors
from pipeline.warehouse.schemas import centroids_schema, frames_schema
from pipeline.warehouse.views import views_sql

# float16 bit patterns worth checking one by one: ±0, the smallest and largest subnormal, the smallest
# normal, 1, the largest finite, ±inf, a quiet NaN and a negative NaN
HALF_EDGES = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00,
                       0x7E00, 0xFE01], np.uint16).view(np.float16)
SINGLE_EDGES = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x00800000, 0x3F800000, 0x7F7FFFFF, 0xFF7FFFFF,
                         0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001], np.uint32).view(np.float32)


def _random(dtype, n=37, dim=24, seed=0) -> np.ndarray:
    """Random vectors with every bit pattern class: any 16/32-bit word, NaNs included."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2 ** (8 * np.dtype(dtype).itemsize), size=(n, dim), dtype=np.uint64)
    return bits.astype(np.uint16 if dtype == np.float16 else np.uint32).view(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal values, -0 apart from 0, NaN where NaN (a NaN's payload is not a value)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b))
    assert np.array_equal(a[~nan], b[~nan]) and np.array_equal(np.signbit(a[~nan]), np.signbit(b[~nan]))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_encode_decode_is_exact_and_zero_copy(dtype):
    x = _random(np.dtype(dtype).type)
    column = vectors.encode(x, dtype)
    assert column.type == pa.binary(x.itemsize * x.shape[1]) and len(column) == len(x)
    assert np.array_equal(vectors.decode(column, np.dtype(dtype), stored=dtype).view(np.uint8), x.view(np.uint8))
    _same(vectors.decode(column, stored=dtype), x.astype(np.float32))
    assert np.shares_memory(vectors.decode(column, np.dtype(dtype), stored=dtype), x)  # no copy on the way back
    sliced = pa.chunked_array([column.slice(3, 10), column.slice(20)])  # offsets into the buffer, two chunks
    _same(vectors.decode(sliced, stored=dtype), np.concatenate([x[3:13], x[20:]]).astype(np.float32))


def test_float32_model_output_encodes_to_float16_like_numpy():
    x = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32) * 100
    _same(vectors.decode(vectors.encode(x, "float16"), np.float16, stored="float16"), x.astype(np.float16))


def test_parquet_round_trip_keeps_the_field_metadata(tmp_path):
    x = _random(np.float16, n=100, dim=16)
    schema = frames_schema(16, "float16")
    table = pa.table({name: pa.nulls(len(x), schema.field(name).type) for name in schema.names if name != "vector"})
    table = table.append_column(schema.field("vector"), vectors.encode(x, "float16"))
    assert table.schema.equals(schema, check_metadata=True)
    with pq.ParquetWriter(tmp_path / "f.parquet", schema, **vectors.writer_options(schema)) as w:
        w.write_table(table)
    back = pq.read_table(tmp_path / "f.parquet")
    assert vectors.type_of(back.schema.field("vector")) == (16, "float16")
    _same(vectors.matrix(back, dtype=np.float16), x)
    column = pq.ParquetFile(tmp_path / "f.parquet").metadata.row_group(0).column(schema.get_field_index("vector"))
    assert column.compression == "UNCOMPRESSED" and not column.is_stats_set
    assert vectors.type_of(centroids_schema(5).field("vector")) == (5, "float32")


def test_old_list_columns_decode_equal():
    x = np.random.default_rng(2).standard_normal((30, 6)).astype(np.float16)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 6)
    variable = pa.array([row.tolist() for row in x.astype(np.float32)], pa.list_(pa.float32()))
    for column in (fixed, variable, pa.chunked_array([fixed.slice(0, 7), fixed.slice(7)])):
        _same(vectors.decode(column), x.astype(np.float32))
    assert vectors.type_of(fixed.type) == (6, "float16") and vectors.type_of(variable.type)[0] == -1


def test_mistakes_are_clear_errors():
    column = vectors.encode(np.zeros((2, 4), np.float16), "float16")
    with pytest.raises(ValueError, match="needs stored="):
        vectors.decode(column)
    with pytest.raises(ValueError, match="dtype 'float64' is not stored"):
        vectors.encode(np.zeros((2, 4)), "float64")
    with pytest.raises(ValueError, match=r"\(n, D\) matrix"):
        vectors.encode(np.zeros(4), "float16")
    with pytest.raises(ValueError, match="different lengths"):
        vectors.decode(pa.array([[1.0, 2.0], [1.0]]))
    bare = pa.field("vector", pa.binary(8))
    assert vectors.type_of(bare)[0] == -1
    with pytest.raises(ValueError, match="cannot tell float16 from float32"):
        vectors.decode(column, stored=bare)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sql_macro_equals_the_numpy_function(dtype):
    edges = HALF_EDGES if dtype == "float16" else SINGLE_EDGES
    x = np.concatenate([_random(edges.dtype.type, n=40, dim=len(edges), seed=3), edges[None, :]])
    table = pa.table({"v": vectors.encode(x, dtype)}).append_column("null_v", pa.nulls(len(x), pa.binary()))
    sql = f"select pipeline_vector(v, '{dtype}') as v, pipeline_vector(null_v, '{dtype}') as n from t"
    plain = duckdb.connect()
    plain.execute(vectors.macro_sql())
    fast = duckdb.connect()
    fast.execute(vectors.macro_sql())
    vectors.register(fast)
    plain.register("t", table)
    fast.register("t", table)
    assert "pipeline_vector_numpy" in fast.sql("select * from duckdb_functions() where function_name = "
                                               "'pipeline_vector_numpy'").fetchall()[0]
    by_sql, by_numpy = plain.sql(sql).to_arrow_table(), fast.sql(sql).to_arrow_table()
    assert by_sql.schema.field("v").type == by_numpy.schema.field("v").type == pa.list_(pa.float32())
    _same(vectors.decode(by_sql["v"]), x.astype(np.float32))
    _same(vectors.decode(by_numpy["v"]), x.astype(np.float32))
    assert by_sql["n"].null_count == by_numpy["n"].null_count == len(x)


def _frames_file(wh: Warehouse, run: str, shard: int, x: np.ndarray, binary: bool):
    """One frames file of layer 0, its vectors binary (today's extract) or a float16 fixed-size list (before)."""
    n, dim = x.shape
    keys = {"utterance_id": pa.array([f"u{shard}"] * n), "frame": pa.array(np.arange(n), pa.int32()),
            "time_s": pa.array(np.arange(n) * 0.02, pa.float32()), "phone": pa.nulls(n, pa.string()),
            "word": pa.nulls(n, pa.string())}
    if binary:
        schema, vector = frames_schema(dim, "float16"), vectors.encode(x, "float16")
    else:
        schema = frames_schema(dim, "float16")
        schema = schema.set(schema.get_field_index("vector"), pa.field("vector", pa.list_(pa.float16(), dim)))
        vector = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
    return wh.write("frames", pa.Table.from_arrays([*keys.values(), vector], schema=schema), run, shard, layer=0)


def test_view_over_old_and_new_files_reads_float_lists(tmp_path):
    wh = Warehouse(tmp_path)
    old, new = (np.random.default_rng(s).standard_normal((20, 12)).astype(np.float16) for s in (4, 5))
    new[0, :len(HALF_EDGES)] = HALF_EDGES[:12]
    wh.commit("r", "extract", 0, [_frames_file(wh, "r", 0, old, binary=False)])
    wh.commit("r", "extract", 1, [_frames_file(wh, "r", 1, new, binary=True)])
    script = duckdb.connect()
    script.execute(views_sql(wh))  # what any DuckDB client gets: the pure-SQL macro
    fast = wh.connect()
    vectors.register(fast)  # idempotent: Warehouse.connect() registers it too
    sql = "select utterance_id, frame, vector from frames order by utterance_id, frame"
    for con in (script, fast):
        assert dict(con.sql("describe frames").fetchall()[i][:2] for i in range(8))["vector"] == "FLOAT[]"
        got = con.sql(sql).to_arrow_table()
        _same(vectors.decode(got["vector"]), np.concatenate([old, new]).astype(np.float32))
        assert con.sql("select count(*), sum(len(vector)) from frames").fetchall() == [(40, 40 * 12)]
    assert "pipeline_vector" in views_sql(wh) and views_sql(wh).count("read_parquet") == 2


def test_polars_reads_the_documented_way(tmp_path):
    pl = pytest.importorskip("polars")
    x = _random(np.float16, n=9, dim=5)
    schema = frames_schema(5, "float16")
    table = pa.table({"id": pa.array(range(9))}).append_column(schema.field("vector"), vectors.encode(x, "float16"))
    pq.write_table(table, tmp_path / "f.parquet")
    df = pl.read_parquet(tmp_path / "f.parquet").with_columns(
        pl.col("vector").bin.reinterpret(dtype=pl.Array(pl.Float16, 5), endianness="little"))
    assert df.schema["vector"] == pl.Array(pl.Float16, 5)
    _same(df["vector"].to_numpy(), x)
