"""Every on-disk table's schema, declared once. Writers pass these; readers trust them.

Bump SCHEMA_VERSION when a column changes meaning or type; a run records the version it was
written with and refuses to append rows under another one.
"""

from __future__ import annotations

import re

import pyarrow as pa

from pipeline.warehouse import vectors

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


FRAMES = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float32()),  # frame centre: (hop * frame + receptive_field / 2) / 16000
        ("phone", pa.string()),  # label of the phone interval holding the centre; null outside
        ("word", pa.string()),
        ("vector", pa.list_(pa.float32())),  # stored as fixed-size binary (vectors.py): frames_schema
    ]
)

# attributes attached from a file (pipeline/stages/metadata.py); read before utterances.metadata
UTTERANCE_ATTRIBUTES = pa.schema([("utterance_id", pa.string()), ("key", pa.string()), ("value", pa.string())])

# ---------------------------------------------------------------- analyze (pipeline/stages/analyze.py)
CLUSTERS = pa.schema(
    [("utterance_id", pa.string()), ("frame", pa.int32()), ("cluster", pa.int32()), ("distance", pa.float32()),
     ("tier", pa.string())]
)
CENTROIDS = pa.schema(
    [("cluster", pa.int32()), ("size", pa.int64()),
     ("vector", pa.list_(pa.float32())),  # stored as fixed-size binary float32 (vectors.py): centroids_schema
     ("tier", pa.string())]
)
# value: null when undefined (null_reason says why). ci_low/ci_high: the 95 % interval (speaker bootstrap;
# ci_method 'bca' | 'basic', or 'speaker-grouped bca|basic' for the probe), null when none. seed_sd: the
# standard deviation over `--seeds N` k-means restarts (value is their mean; null with n_seeds 1).
# k = 0 rows are not clusterings: the CCA measures cca_phone, cca_word, cca_mel. Files written before
# intervals hold metric, value, n only: the rest reads as null.
METRICS = pa.schema([("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64()),
                     ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("ci_method", pa.string()),
                     ("n_resamples", pa.int64()), ("null_reason", pa.string()), ("seed_sd", pa.float64()),
                     ("n_seeds", pa.int64())])
# One paired comparison of a metric: two adjacent layers of one run (analyze; other_run = run) or one
# layer of two runs over the same frames (compare). diff = value − other_value; its 95 % interval from
# a paired bootstrap (the same speakers drawn for both); significant: the interval excludes 0.
METRIC_DIFFERENCES = pa.schema([
    ("other_run", pa.string()), ("layer", pa.int64()), ("other_layer", pa.int64()), ("tier", pa.string()),
    ("k", pa.int64()), ("metric", pa.string()), ("value", pa.float64()), ("other_value", pa.float64()),
    ("diff", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("significant", pa.bool_()),
    ("ci_method", pa.string()), ("n_resamples", pa.int64()), ("null_reason", pa.string()),
])
CLUSTER_LABELS = pa.schema(
    [("cluster", pa.int32()), ("label", pa.string()), ("count", pa.int64()), ("cluster_size", pa.int64()),
     ("share", pa.float64())]
)
GROUP_METRICS = pa.schema(
    [("group_value", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64())]
)

# ---------------------------------------------------------------- reduce (pipeline/stages/reduce.py)
REDUCTIONS = pa.schema([
    ("utterance_id", pa.string()),
    ("frame", pa.int32()),
    ("label", pa.string()),  # label of the sample's tier (phone by default)
    ("x", pa.float32()),
    ("y", pa.float32()),
])

# ---------------------------------------------------------------- compare (pipeline/stages/compare.py)
CKA = pa.schema([
    ("layer", pa.int64()),  # layer of run A
    ("other_layer", pa.int64()),  # layer of run B
    ("value", pa.float64()),  # linear CKA, biased HSIC estimator
    ("value_debiased", pa.float64()),  # linear CKA, unbiased HSIC estimator
    ("n", pa.int64()),  # frames in the sample
])
RUN_AGREEMENT = pa.schema([
    ("layer", pa.int64()),
    ("k", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("n", pa.int64()),  # frames both runs assigned
    ("tier", pa.string()),  # the label tier both clusterings were trained for
])

# ---------------------------------------------------------------- transcripts (pipeline/stages/transcripts.py)
DECODED = pa.schema([
    ("utterance_id", pa.string()),
    ("hypothesis", pa.string()),  # the clusters decoded through the majority mapping
    ("reference", pa.string()),  # the model's own greedy transcript
    ("n_edits", pa.int64()),
    ("n_reference_chars", pa.int64()),
    ("cer", pa.float64()),  # n_edits / n_reference_chars; NaN for an empty reference
    ("tier", pa.string()),  # the tier the clustering's k-means was trained for
])
FRAME_DISAGREEMENT = pa.schema([
    ("utterance_id", pa.string()),
    ("frame", pa.int32()),
    ("n_disagree", pa.int8()),
    ("n_references", pa.int8()),
])

# Every table, by its folder name. `frames` and `centroids` store `vector` as fixed-size binary of the
# layer's width (frames_schema, centroids_schema; pipeline/warehouse/vectors.py); here it is the FLOAT[]
# every reader of the views sees.
TABLES = {
    "utterances": UTTERANCES,
    "utterance_attributes": UTTERANCE_ATTRIBUTES,
    "segments": SEGMENTS,
    "quarantine": QUARANTINE,
    "frames": FRAMES,
    "clusters": CLUSTERS,
    "centroids": CENTROIDS,
    "metrics": METRICS,
    "metric_differences": METRIC_DIFFERENCES,
    "cluster_labels": CLUSTER_LABELS,
    "group_metrics": GROUP_METRICS,
    "reductions": REDUCTIONS,
    "cka": CKA,
    "run_agreement": RUN_AGREEMENT,
    "decoded": DECODED,
    "frame_disagreement": FRAME_DISAGREEMENT,
}

# Hive partition columns of each table beyond `run`, in path order (they live in the path, not in the file).
# `clusters`, `centroids` and `decoded` keep the tier in a column and the file name instead (see tiered_views).
_LAYER_K = [("layer", pa.int64()), ("k", pa.int64())]
PARTITIONS: dict[str, list[tuple[str, pa.DataType]]] = {
    "frames": [("layer", pa.int64())],
    "clusters": _LAYER_K,
    "centroids": _LAYER_K,
    "metrics": [*_LAYER_K, ("tier", pa.string()), ("subset", pa.string())],
    "cluster_labels": [*_LAYER_K, ("tier", pa.string()), ("subset", pa.string())],
    "group_metrics": [*_LAYER_K, ("tier", pa.string()), ("attribute", pa.string())],
    "reductions": [("layer", pa.int64()), ("method", pa.string())],
    "cka": [("other", pa.string())],
    "run_agreement": [("other", pa.string())],
    "decoded": _LAYER_K,
    "frame_disagreement": [("rule", pa.string())],
}
VECTOR_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


def _with_vector(schema: pa.Schema, dim: int, dtype: str) -> pa.Schema:
    return schema.set(schema.get_field_index("vector"), vectors.field(dim, dtype))


def frames_schema(dim: int, dtype: str) -> pa.Schema:
    """One row per frame of one layer. `vector`: `dim` little-endian float16 (or float32) values as
    fixed-size binary, its field metadata saying which (pipeline/warehouse/vectors.py)."""
    return _with_vector(FRAMES, dim, dtype)


def centroids_schema(dim: int) -> pa.Schema:
    """One row per cluster of one k-means: its centre as `dim` float32 values, stored as frames' vectors are."""
    return _with_vector(CENTROIDS, dim, "float32")


def empty_view_schema(table: str) -> pa.Schema:
    """The columns a view shows before any file of `table` is committed, as DuckDB shows them after: the
    file's, then `run` and the partitions sorted by name (DuckDB's order for Hive partitions); a
    stored vector reads as FLOAT[] through the views, as TABLES declares it."""
    schema = TABLES[table]
    for name, typ in sorted([("run", pa.string()), *PARTITIONS.get(table, [])], key=lambda column: column[0]):
        schema = schema.append(pa.field(name, typ))
    return schema


# What a reader needs beyond a column's name (the README's column table, `columns_markdown`).
COLUMN_NOTES = {
    ("utterances", "sample_rate_hz"): "16000",
    ("utterances", "metadata"): "map",
    ("utterance_attributes", "value"): "from `metadata`; read before `utterances.metadata`",
    ("frames", "vector"): "float16[D]; DuckDB reads FLOAT[]",
    ("centroids", "vector"): "float32[D]",
    ("metrics", "ci_low"): "95 %; null: see null_reason",
    ("metric_differences", "diff"): "value − other_value",
}


def columns_markdown() -> str:
    """The README's table of views and columns, key first (run, the partitions, tier), from TABLES:
    tests/test_schemas.py checks that the README holds exactly this text."""
    lines = ["| view | columns (key first) |", "|---|---|"]
    for table, schema in TABLES.items():
        key = ["run", *(name for name, _ in PARTITIONS.get(table, []))]
        rest = [name for name in schema.names if name not in key]
        if "tier" in rest:  # a tier kept in the file (clusters, centroids, decoded, run_agreement) is part of the key
            rest.remove("tier")
            key.append("tier")
        cells = [f"{name} ({COLUMN_NOTES[table, name]})" if (table, name) in COLUMN_NOTES else name for name in key + rest]
        lines.append(f"| `{table}` | {', '.join(cells)} |")
    return "\n".join(lines)


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
