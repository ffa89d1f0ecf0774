"""Every on-disk table's schema, declared once. Writers pass these; readers trust them.

Bump SCHEMA_VERSION when a column changes meaning or type; a run records the version it was
written with and refuses to append rows under another one.
"""

from __future__ import annotations

import re

import pyarrow as pa

SCHEMA_VERSION = 1

# A label tier's name goes into file names and Hive partitions (`tier=<name>`): letters, digits,
# '_', '.', '-', starting with a letter (DuckDB reads a partition value that looks like a number
# or a date as one, and so also 'inf', 'infinity' and 'epoch', which it takes for dates).
TIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,49}")
TIER_NAMES_READ_AS_DATES = ("inf", "infinity", "epoch")
FRAME_TIERS = ("phone", "word")  # label columns of `frames`; any other tier is read from `segments`


def check_tier_name(tier: str) -> str:
    """`tier` if usable in paths and partitions, else a ValueError that says what is allowed."""
    if not isinstance(tier, str) or not TIER_NAME.fullmatch(tier) or tier.lower() in TIER_NAMES_READ_AS_DATES:
        raise ValueError(f"tier name {tier!r} is not usable in a file name or partition: use letters, digits, "
                         "'_', '.', '-', starting with a letter, at most 50 characters (and not "
                         f"{', '.join(TIER_NAMES_READ_AS_DATES)}), e.g. ctc_greedy or ipa_narrow")
    return tier

UTTERANCES = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("corpus", pa.string()),
        ("speaker", pa.string()),
        ("split", pa.string()),
        ("n_samples", pa.int64()),
        ("sample_rate_hz", pa.int32()),  # after resampling: always 16000
        ("source_sample_rate_hz", pa.int32()),
        ("source_channels", pa.int16()),
        ("duration_s", pa.float64()),
        ("text", pa.string()),
        ("metadata", pa.map_(pa.string(), pa.string())),
    ]
)

SEGMENTS = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("tier", pa.string()),
        ("idx", pa.int32()),
        ("label", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("source", pa.string()),
    ]
)

QUARANTINE = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def frames_schema(dim: int, dtype: str) -> pa.Schema:
    """One row per frame of one layer. `vector` is a fixed-size list (float16 halves the bytes)."""
    value_type = {"float16": pa.float16(), "float32": pa.float32()}[dtype]
    return pa.schema(
        [
            ("utterance_id", pa.string()),
            ("frame", pa.int32()),
            ("time_s", pa.float32()),  # frame centre: (hop * frame + receptive_field / 2) / 16000
            ("phone", pa.string()),  # label of the phone interval holding the centre; null outside
            ("word", pa.string()),
            ("vector", pa.list_(value_type, dim)),
        ]
    )


# attributes attached from a file (pipeline/stages/metadata.py); read before utterances.metadata
UTTERANCE_ATTRIBUTES = pa.schema([("utterance_id", pa.string()), ("key", pa.string()), ("value", pa.string())])

TABLES = {
    "utterances": UTTERANCES,
    "utterance_attributes": UTTERANCE_ATTRIBUTES,
    "segments": SEGMENTS,
    "quarantine": QUARANTINE,
}

# Hive partition columns of each table beyond `run` (they live in the path, not in the file).
PARTITIONS: dict[str, list[tuple[str, pa.DataType]]] = {"frames": [("layer", pa.int64())]}


def empty_view_schema(table: str) -> pa.Schema | None:
    """The columns a view shows before any file of `table` is committed."""
    schema = TABLES.get(table) or (frames_schema(1, "float32") if table == "frames" else None)
    if schema is None:
        return None
    if table == "frames":  # DuckDB reads fixed-size float16 lists as FLOAT[]
        schema = schema.set(schema.get_field_index("vector"), pa.field("vector", pa.list_(pa.float32())))
    for name, typ in [("run", pa.string()), *PARTITIONS.get(table, [])]:
        schema = schema.append(pa.field(name, typ))
    return schema

# Reason codes of the quarantine table; anything else is a bug.
REASONS = {
    "decode_error": "the bytes are not readable audio (corrupt, truncated, not audio)",
    "empty_audio": "the audio has zero samples",
    "too_short": "fewer samples than one frame's receptive field (400 at 16 kHz)",
    "non_finite": "NaN or Inf samples",
    "alignment_out_of_range": "an interval ends more than 10 ms past the audio end",
    "alignment_overlap": "two intervals of one tier overlap",
    "alignment_empty_label": "an interval without a label in a format that requires one",
    "alignment_bad_interval": "an interval with end <= start or a negative start",
    "missing_alignment": "audio without its alignment file in a format that has them",
    "missing_audio": "an alignment or transcript without its audio",
    "missing_id": "a row without a value in the id column(s)",
    "duplicate_id": "an utterance id seen earlier in the same stream",
    "model_error": "the model failed on this utterance (a deterministic error; out-of-memory is retried, never quarantined)",
    "prepare_error": "an unexpected error while reading or checking this item (the exception is in detail)",
    "not_a_regular_file": "the audio path is not a regular file (a device, a fifo, a folder)",
    "audio_too_large": "the audio file is larger than the size cap (PIPELINE_MAX_AUDIO_BYTES)",
    "duplicate_file": "two files of the corpus name one utterance (names differ only in case, or a.wav beside a.flac): which one is meant is ambiguous",
}

# Tables keyed by (run, layer, k) before they were keyed by tier too: their old files have no `tier`
# column (extra key columns beside `run`, `layer`, `k` in the value). An old row is read as tier
# 'phone' where its run(s), layer and k were never analysed on another tier (no such `metrics`), and
# left out otherwise: a later analysis on another tier overwrote the one file both tiers shared, so
# which tier it holds is unknown (rerun `analyze`).
UNTIERED = {"clusters": ("run",), "centroids": ("run",), "decoded": ("run",), "run_agreement": ("run", "other")}


def tiered_views(con) -> None:
    """Give the DuckDB views of UNTIERED tables a `tier` for every row (see above). Idempotent."""
    views = {name for (name,) in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    for name, run_columns in UNTIERED.items():
        if name not in views or f"_{name}_files" in views:
            continue
        columns = {c for (c,) in con.execute(f"select column_name from (describe {name})").fetchall()}
        con.execute(f"alter view {name} rename to _{name}_files")
        joins, misses = [], []
        if "metrics" in views:
            for i, column in enumerate(run_columns):
                joins.append(f"left join (select distinct run, layer, k from metrics where tier <> 'phone') o{i} "
                             f"on o{i}.run = t.{column} and o{i}.layer = t.layer and o{i}.k = t.k")
                misses.append(f"o{i}.run is null")
        legacy = " and ".join(misses) or "true"
        if "tier" in columns:
            select = "select t.* replace (coalesce(t.tier, 'phone') as tier)"
            keep = f"t.tier is not null or ({legacy})"
        else:
            select, keep = "select t.*, 'phone' as tier", legacy
        con.execute(f"create view {name} as {select} from _{name}_files t {' '.join(joins)} where {keep}")
