"""`score`: the clustering metrics for any two columns of any table (a Parquet file or a view)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.algorithms.metrics import cluster_metrics
from pipeline.warehouse import Warehouse


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def score_table(table: str, labels: str, clusters: str, where: str | None = None,
                warehouse: str = "storage") -> list[dict]:
    """One row per metric. Rows with a null label or cluster are left out (and counted as such).

    `where` is a SQL condition written by the user on their own table (like `sql`'s queries)."""
    con = Warehouse(warehouse).connect()
    if Path(table).exists() or any(c in table for c in "*?/"):
        source = "read_parquet($path)"
        params = {"path": table}
    else:
        if table not in {r[0] for r in con.sql("select view_name from duckdb_views()").fetchall()}:
            raise ValueError(f"{table!r} is neither a Parquet file nor a view of the warehouse {warehouse}")
        source, params = _ident(table), {}
    condition = f"({where})" if where else "true"
    rel = con.sql(
        f"select {_ident(labels)}::varchar as label, {_ident(clusters)}::varchar as cluster "
        f"from {source} where {condition}",
        params=params,
    ).to_arrow_table()
    label, cluster = rel["label"], rel["cluster"]
    keep = label.is_valid().to_numpy(zero_copy_only=False) & cluster.is_valid().to_numpy(zero_copy_only=False)
    scores = cluster_metrics(label.to_numpy(zero_copy_only=False)[keep], cluster.to_numpy(zero_copy_only=False)[keep])
    n_null = int(len(keep) - keep.sum())
    return [{"metric": k, "value": float(v)} for k, v in scores.items()] + [
        {"metric": "rows_without_label_or_cluster", "value": float(n_null)}
    ]


@dataclass
class ScoreConfig:
    """The parameters of `score`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    table: str = field(metadata={"positional": True,
                                 "help": "a Parquet file (or glob) or the name of a warehouse view"})
    labels: str = field(metadata={"help": "column of reference labels"})
    clusters: str = field(metadata={"help": "column of cluster ids"})
    where: str | None = field(default=None, metadata={"help": "SQL condition selecting rows, e.g. \"label_id != 0\""})
    format: str = field(default="table", metadata={
        "choices": ("table", "csv", "json", "ndjson"), "help": "json: one array of rows; ndjson: one object per line"})
    warehouse: str = "storage"


@dataclass
class ScoreResult:
    """One row per metric (the CLI prints them in the chosen --format; `summary` is the table)."""

    rows: list[dict]

    def summary(self) -> str:
        import pyarrow as pa

        from pipeline.sql import table_text

        return table_text(pa.Table.from_pylist(self.rows))


def run(cfg: ScoreConfig) -> ScoreResult:
    return ScoreResult(score_table(cfg.table, cfg.labels, cfg.clusters, cfg.where, cfg.warehouse))
