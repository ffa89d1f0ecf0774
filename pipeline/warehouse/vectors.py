"""The one encoding of a `vector` column on disk: fixed-size binary, little-endian float16 or float32.

A Parquet `list<float16>` column is written value by value with repetition levels (~160 MB/s per
core with zstd here) and read back the same way (~480 MB/s); a `fixed_size_binary(itemsize * D)`
column is the numpy matrix's own bytes, written and read as one block per page (bench/encoding.py
measures both). The field's Arrow metadata says what the bytes are:

    vector: fixed_size_binary[1536]   metadata {b"pipeline.vector": b"float16[768]"}

Readers:
    numpy    matrix(pq.read_table(path)) -> float32 (n, D) (dtype=np.float16: the stored halves, no copy);
             decode(column, stored=field) for a column alone
    DuckDB   the views decode with `pipeline_vector(vector, 'float16')` into FLOAT[] (macro_sql(): pure SQL
             for any client; register(con): the same function, vectorized in numpy, for Warehouse.connect())
    polars   pl.read_parquet(path).with_columns(pl.col("vector").bin.reinterpret(
                 dtype=pl.Array(pl.Float16, D), endianness="little"))        (Array(Float16, D); .cast to Float32)
    pyarrow  the column is fixed_size_binary: matrix() above, or np.frombuffer(column.buffers()[1], "<f2")

Files written before this encoding hold `list<float16>` / `fixed_size_list<float16, D>`: decode()
reads those too, and the views read their `vector` as it is (already FLOAT[]).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pyarrow as pa

METADATA_KEY = b"pipeline.vector"
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
_SPEC = re.compile(r"(float16|float32)\[(\d+)\]")
_VALUE_TYPES = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}
SQL_FUNCTION = "pipeline_vector"  # pipeline_vector(blob, 'float16' | 'float32') -> FLOAT[]
_UDF = "pipeline_vector_numpy"  # the vectorized Python function register() points the macro at


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"vector dtype {dtype!r} is not stored: use one of {', '.join(DTYPES)}")
    return name


def field(dim: int, dtype: str = "float16", name: str = "vector") -> pa.Field:
    """The stored field: fixed-size binary of `dim` little-endian values, its metadata saying dtype[dim]."""
    dtype = _dtype_name(dtype)
    if int(dim) < 1:
        raise ValueError(f"a vector needs at least one value, got dim={dim}")
    return pa.field(name, pa.binary(DTYPES[dtype].itemsize * int(dim)),
                    metadata={METADATA_KEY: f"{dtype}[{int(dim)}]".encode()})


def encode(matrix: np.ndarray, dtype: str = "float16") -> pa.Array:
    """An (n, D) matrix as a fixed_size_binary array of the stored field's type. No copy when `matrix` is
    already C-contiguous little-endian `dtype`; otherwise one conversion (float32 model output → float16)."""
    dtype = _dtype_name(dtype)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be an (n, D) matrix, got shape {matrix.shape}")
    n, dim = matrix.shape
    if dim < 1:
        raise ValueError(f"a vector needs at least one value, got shape {matrix.shape}")
    flat = np.ascontiguousarray(matrix, dtype=DTYPES[dtype])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.itemsize * dim), n, [None, pa.py_buffer(flat)])


def type_of(field_or_type: pa.Field | pa.DataType) -> tuple[int, str]:
    """(D, value type) of a vector field: the binary encoding (from its metadata), or a fixed-size list as
    older files hold it; (-1, type) for a variable list or anything else (its width is not in the schema)."""
    typ = field_or_type.type if isinstance(field_or_type, pa.Field) else field_or_type
    if pa.types.is_fixed_size_binary(typ):
        spec = (field_or_type.metadata or {}).get(METADATA_KEY) if isinstance(field_or_type, pa.Field) else None
        match = _SPEC.fullmatch(spec.decode()) if spec else None
        if match is None:
            return -1, f"{typ} without {METADATA_KEY.decode()} metadata"
        dtype, dim = match[1], int(match[2])
        if DTYPES[dtype].itemsize * dim != typ.byte_width:
            return -1, f"{typ} whose metadata says {spec.decode()}"
        return dim, dtype
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size, _VALUE_TYPES.get(typ.value_type, str(typ.value_type))
    return -1, str(typ)


def is_binary(field_or_type: pa.Field | pa.DataType) -> bool:
    """Whether a `vector` field is stored in this module's encoding (else a list, read as it is)."""
    typ = field_or_type.type if isinstance(field_or_type, pa.Field) else field_or_type
    return pa.types.is_fixed_size_binary(typ)


def decode(column: pa.Array | pa.ChunkedArray, dtype=np.float32, stored: pa.Field | str | None = None) -> np.ndarray:
    """A vector column → (n, D) numpy matrix of `dtype` (float32 by default; np.float16 keeps the stored halves).

    Reads the binary encoding (`stored`: the column's field, or 'float16' / 'float32', says what its
    bytes are) and list or fixed-size-list columns (older files, DuckDB results) of equal lengths.
    Binary chunks are viewed in place: one copy at most, the conversion to `dtype`."""
    if isinstance(column, pa.ChunkedArray):
        chunks = column.chunks
        typ = column.type
    else:
        chunks, typ = [column], column.type
    if pa.types.is_fixed_size_binary(typ):
        return _decode_binary(chunks, typ, stored, np.dtype(dtype))
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)):
        raise ValueError(f"a vector column is fixed-size binary or a list of floats, got {typ}")
    column = pa.chunked_array(chunks, typ).combine_chunks() if len(chunks) != 1 else chunks[0]
    if len(column) == 0:
        return np.zeros((0, typ.list_size if pa.types.is_fixed_size_list(typ) else 0), dtype)
    if column.null_count:
        raise ValueError(f"{column.null_count} of {len(column)} vectors are null")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if flat.size % len(column):
        raise ValueError(f"vectors of different lengths ({flat.size} values in {len(column)} rows)")
    return flat.astype(dtype, copy=False).reshape(len(column), -1)


def matrix(table: pa.Table | pa.RecordBatch, name: str = "vector", dtype=np.float32) -> np.ndarray:
    """decode() of a table's vector column, its field telling the stored dtype: `matrix(pq.read_table(path))`."""
    return decode(table.column(name), dtype, stored=table.schema.field(name))


def _stored_dtype(typ: pa.DataType, stored: pa.Field | str | None) -> np.dtype:
    if isinstance(stored, pa.Field):
        dim, name = type_of(stored)
        if dim < 0:
            raise ValueError(f"the field {stored.name!r} is {name}: cannot tell float16 from float32")
        return DTYPES[name]
    if stored is None:
        raise ValueError(f"a {typ} vector column needs stored= (its field or 'float16' / 'float32'): "
                         "the bytes alone do not say their dtype")
    return DTYPES[_dtype_name(stored)]


def _decode_binary(chunks: list[pa.Array], typ: pa.DataType, stored, dtype: np.dtype) -> np.ndarray:
    value = _stored_dtype(typ, stored)
    if typ.byte_width % value.itemsize:
        raise ValueError(f"a {typ} column cannot hold {value.name} vectors ({typ.byte_width} bytes per row)")
    dim = typ.byte_width // value.itemsize
    n = sum(len(c) for c in chunks)
    views = []
    for chunk in chunks:
        if chunk.null_count:
            raise ValueError(f"{chunk.null_count} of {len(chunk)} vectors are null")
        data = chunk.buffers()[1]
        start = chunk.offset * typ.byte_width
        views.append(np.frombuffer(data, value, count=len(chunk) * dim, offset=start).reshape(len(chunk), dim)
                     if len(chunk) else np.zeros((0, dim), value))
    if len(views) == 1:
        return views[0].astype(dtype, copy=False)
    out = np.empty((n, dim), dtype)
    row = 0
    for v in views:
        out[row:row + len(v)] = v
        row += len(v)
    return out


def writer_options(schema: pa.Schema) -> dict:
    """pq.ParquetWriter keyword arguments for a table of `schema`: binary vectors stored plain (zstd saves
    ~8 % on them at a fifth of the write speed: bench/encoding.py), without a dictionary and without
    min/max statistics of kilobyte-long values; every other column zstd with statistics, and with a
    dictionary except a `vector` list (vectors never repeat: a dictionary took 2-3x the write time)."""
    from pipeline.warehouse import ZSTD_LEVEL  # the package's one compression level

    raw = {f.name for f in schema if is_binary(f)}
    paths = _column_paths(schema)  # Parquet's leaf columns: a list is `vector.list.element`, a map two leaves
    packed = [p for p in paths if p.split(".")[0] not in raw]
    return {
        "compression": {p: "zstd" if p in packed else "none" for p in paths},
        "compression_level": {p: ZSTD_LEVEL for p in packed} or None,
        "use_dictionary": [p for p in packed if p.split(".")[0] != "vector"],
        "write_statistics": packed,
        "store_schema": True,  # the Arrow schema, with the vector field's metadata, in the footer
    }


@functools.lru_cache(maxsize=256)
def _column_paths(schema: pa.Schema) -> tuple[str, ...]:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    parquet_schema = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return tuple(parquet_schema.column(i).path for i in range(len(parquet_schema)))


# ---------------------------------------------------------------- DuckDB


def _sql_ieee(u: str, exponent_bits: int, mantissa_bits: int) -> str:
    """SQL: the IEEE binary float whose bits are the integer expression `u` (float16: 5 and 10 bits, float32:
    8 and 23), as DOUBLE (exact): sign, biased exponent and mantissa decoded by hand, subnormals, ±0, ±inf
    and NaN included."""
    top, mantissa_max, bias = (1 << exponent_bits) - 1, (1 << mantissa_bits) - 1, (1 << (exponent_bits - 1)) - 1
    shift = bias + mantissa_bits  # value = mantissa_with_implicit_one * 2^(e - shift)
    e, m = f"(({u} >> {mantissa_bits}) & {top})", f"({u} & {mantissa_max})"
    magnitude = (f"case when {e} = 0 then {m}::double * pow(2.0::double, {1 - shift}) "
                 f"when {e} = {top} then (case when {m} = 0 then 'inf'::double else 'nan'::double end) "
                 f"else ({1 << mantissa_bits} + {m})::double * pow(2.0::double, {e} - {shift}) end")
    sign_bit = exponent_bits + mantissa_bits
    return f"(case when ({u} >> {sign_bit}) = 1 then -1.0::double else 1.0::double end) * {magnitude}"


def _sql_half(u: str) -> str:
    """SQL: the float16 whose 16 bits are the integer expression `u`, as DOUBLE (exact)."""
    return _sql_ieee(u, 5, 10)


def _sql_single(u: str) -> str:
    """SQL: the float32 whose 32 bits are the BIGINT expression `u`, as DOUBLE (exact)."""
    return _sql_ieee(u, 8, 23)


def macro_sql() -> str:
    """`pipeline_vector(blob, dtype)` in plain SQL for any DuckDB client: the stored bytes (hex(), little
    endian) → FLOAT[], sign, exponent and mantissa decoded by hand (subnormals, ±0, ±inf and NaN too)."""

    def values(width: int, to_double) -> str:  # hex() once, cut into values, each value's bytes reversed
        swapped = " || ".join(f"substr(x, {2 * k + 1}, 2)" for k in reversed(range(width)))
        return (f"list_transform(list_transform(regexp_extract_all(hex(b), '.{{{2 * width}}}'),\n"
                f"      lambda x: ('0x' || {swapped})::bigint),\n"
                f"      lambda u: ({to_double('u')})::float)")

    return (
        f"-- {SQL_FUNCTION}(vector, 'float16' | 'float32'): a stored vector as FLOAT[] "
        "(pipeline/warehouse/vectors.py)\n"
        f"create or replace macro {SQL_FUNCTION}(b, dtype) as case\n"
        f"  when dtype = 'float16' then {values(2, _sql_half)}\n"
        f"  when dtype = 'float32' then {values(4, _sql_single)}\n"
        f"  else error('{SQL_FUNCTION}: dtype must be float16 or float32, got ' || dtype) end;"
    )


def _udf(blobs: pa.Array | pa.ChunkedArray, dtypes: pa.Array | pa.ChunkedArray) -> pa.Array:
    """register()'s pipeline_vector: the batch's bytes viewed as one numpy array, converted once."""
    if isinstance(blobs, pa.ChunkedArray):
        blobs = blobs.combine_chunks()
    if isinstance(dtypes, pa.ChunkedArray):
        dtypes = dtypes.combine_chunks()
    names = set(dtypes.unique().drop_null().to_pylist())
    if len(names) > 1:
        raise ValueError(f"{SQL_FUNCTION}: one dtype per column, got {sorted(names)}")
    value = DTYPES[_dtype_name(names.pop())] if names else DTYPES["float16"]
    if pa.types.is_fixed_size_binary(blobs.type):
        blobs = blobs.cast(pa.binary())
    n = len(blobs)
    offset_type = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
    offsets = np.frombuffer(blobs.buffers()[1], offset_type, count=n + 1,
                            offset=blobs.offset * np.dtype(offset_type).itemsize)
    lengths = np.diff(offsets)
    valid = np.asarray(blobs.is_valid(), bool) if blobs.null_count else np.ones(n, bool)
    widths = np.unique(lengths[valid])
    if len(widths) > 1 or (len(widths) and widths[0] % value.itemsize):
        raise ValueError(f"{SQL_FUNCTION}: vectors of {sorted(widths.tolist())} bytes in one column; "
                         f"{value.name} needs one width, a multiple of {value.itemsize}")
    if not valid.all() and lengths[~valid].any():
        raise ValueError(f"{SQL_FUNCTION}: a null vector holds bytes")  # never from DuckDB
    data = blobs.buffers()[2]
    flat = np.frombuffer(data, value, count=int(offsets[-1] - offsets[0]) // value.itemsize, offset=int(offsets[0])) \
        if data is not None and offsets[-1] > offsets[0] else np.zeros(0, value)
    list_offsets = pa.array((offsets - offsets[0]) // value.itemsize, pa.int32())
    return pa.ListArray.from_arrays(list_offsets, pa.array(flat.astype(np.float32), pa.float32()),
                                    mask=pa.array(~valid) if not valid.all() else None)


def register(con) -> None:
    """Make `pipeline_vector` on this DuckDB connection the vectorized numpy function (the views call it by
    name, so views created before keep working and get faster). Call it after running views.sql, whose
    pure-SQL macro of the same name would otherwise win: DuckDB looks up a macro before a Python function."""
    import duckdb
    import duckdb.sqltypes as types

    try:
        con.create_function(_UDF, _udf, [types.BLOB, types.VARCHAR], duckdb.list_type(types.FLOAT), type="arrow",
                            null_handling="special", side_effects=False)
    except duckdb.NotImplementedException:  # already registered on this connection
        pass
    con.execute(f"create or replace macro {SQL_FUNCTION}(b, dtype) as {_UDF}(b, dtype)")


def view_select(dtype: str, columns_expr: str = "*") -> str:
    """The select list of a view over files whose `vector` is stored as `dtype`: `vector` as FLOAT[]."""
    return f"{columns_expr} replace ({SQL_FUNCTION}(vector, '{_dtype_name(dtype)}') as vector)"
