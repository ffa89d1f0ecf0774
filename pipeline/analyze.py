"""Stage 3: per layer, k-means on a balanced SQL sample, assignment of every frame, metrics.

Memory is bounded by the sample and one batch of frames: every frame of the layer is streamed
through the centroids once, and only a (labels × clusters) contingency table is kept, from which
every metric is computed exactly.

Tables (Hive partitions after `run`):
    clusters/run/layer/k/part-<frames shard>   utterance_id, frame, cluster, distance
    centroids/run/layer/k/part-00000           cluster, size, vector
    metrics/run/layer/k/tier/subset/part-00000 metric, value, n
    cluster_labels/run/layer/k/tier/subset/... cluster, label, count, cluster_size, share
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import metrics as M
from pipeline.kmeans import assign, fit_kmeans
from pipeline.sql import query
from pipeline.warehouse import Warehouse, fingerprint

log = logging.getLogger(__name__)

SILENCE_LABELS = ("sil", "h#", "pau", "epi", "sp", "spn", "<blank>", "|")

METRICS_SCHEMA = pa.schema([("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64())])
CLUSTERS_SCHEMA = pa.schema(
    [("utterance_id", pa.string()), ("frame", pa.int32()), ("cluster", pa.int32()), ("distance", pa.float32())]
)
MAPPING_SCHEMA = pa.schema(
    [("cluster", pa.int32()), ("label", pa.string()), ("count", pa.int64()), ("cluster_size", pa.int64()), ("share", pa.float64())]
)


@dataclass
class AnalyzeConfig:
    """The parameters of `analyze`; the CLI's flags are these names."""

    run: str
    warehouse: str = "storage"
    layers: str = "all"
    k: int = 50
    tier: str = "phone"  # 'phone' or 'word': the frames column the clusters are scored against
    sample_per_label: int = 500  # balanced k-means training sample: at most this many frames per label
    seed: int = 0
    n_iter: int = 50
    no_silence: bool = False  # also score without silence labels (SILENCE_LABELS)
    silhouette_points: int = 5_000
    batch_frames: int = 65_536


def vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size or variable list column of equal-length vectors → float32 matrix (one copy)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(column), -1)


def majority_from_counts(counts: np.ndarray, names: np.ndarray) -> list[dict]:
    """Each non-empty cluster's majority label (ties: the label that sorts first)."""
    order = np.argsort(names.astype(str), kind="stable")
    counts, names = counts[order], names[order]
    out = []
    for cluster in range(counts.shape[1]):
        column = counts[:, cluster]
        size = int(column.sum())
        if size:
            best = int(np.argmax(column))  # first maximum: ties go to the label that sorts first
            out.append({"cluster": cluster, "label": str(names[best]), "count": int(column[best]),
                        "cluster_size": size, "share": float(column[best] / size)})
    return out


def layer_files(wh: Warehouse, run: str, layer: int, committed: list[str] | None = None) -> list[str]:
    """The committed frames files of one layer (pass `committed` to reuse one read of the log)."""
    prefix = f"frames/run={run}/layer={layer}/"
    return [p for p in (committed if committed is not None else wh.committed_files("frames", run)) if p.startswith(prefix)]


def analyze_layer(wh: Warehouse, cfg: AnalyzeConfig, layer: int, con, committed: list[str] | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    sample = query(wh.root, "balanced_sample", {"run": cfg.run, "layer": layer, "per_label": cfg.sample_per_label,
                                                "seed": cfg.seed, "tier": cfg.tier}, con=con)
    x = vectors(sample["vector"])
    if len(x) < cfg.k:
        raise ValueError(f"run {cfg.run!r} layer {layer}: the sample has {len(x)} labelled frames, fewer than k={cfg.k}")
    km = fit_kmeans(x, cfg.k, seed=cfg.seed, n_iter=cfg.n_iter)
    label_index: dict[str, int] = {}
    counts = np.zeros((0, cfg.k), np.int64)
    files = []
    sizes = np.zeros(cfg.k, np.int64)
    column = cfg.tier
    for path in layer_files(wh, cfg.run, layer, committed):
        parts = []
        for batch in pq.ParquetFile(wh.root / path).iter_batches(
            batch_size=cfg.batch_frames, columns=["utterance_id", "frame", column, "vector"]
        ):
            cluster, dist = assign(vectors(batch.column("vector")), km.centroids)
            sizes += np.bincount(cluster, minlength=cfg.k)
            encoded = batch.column(column).dictionary_encode()
            local = np.array([label_index.setdefault(lab, len(label_index)) for lab in encoded.dictionary.to_pylist()],
                             dtype=np.int64)
            indices = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where the label is null
            valid = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
            codes = np.full(len(batch), -1, np.int64)
            codes[valid] = local[indices[valid].astype(np.int64)]
            if len(label_index) > counts.shape[0]:
                counts = np.vstack([counts, np.zeros((len(label_index) - counts.shape[0], cfg.k), np.int64)])
            keep = codes >= 0
            np.add.at(counts, (codes[keep], cluster[keep]), 1)
            parts.append(pa.table({"utterance_id": batch.column("utterance_id"), "frame": batch.column("frame"),
                                   "cluster": pa.array(cluster, pa.int32()), "distance": pa.array(dist, pa.float32())},
                                  schema=CLUSTERS_SCHEMA))
        shard = int(path.rsplit("part-", 1)[1].split(".")[0])
        table = pa.concat_tables(parts) if parts else CLUSTERS_SCHEMA.empty_table()
        files.append(wh.write("clusters", table, cfg.run, shard, layer=layer, k=cfg.k))
    names = np.array(list(label_index), dtype=object)
    centroid_table = pa.table({
        "cluster": pa.array(np.arange(cfg.k), pa.int32()),
        "size": pa.array(sizes),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(km.centroids.reshape(-1)), km.centroids.shape[1]),
    })
    files.append(wh.write("centroids", centroid_table, cfg.run, 0, layer=layer, k=cfg.k))
    subsets = {"all": np.ones(len(names), bool)}
    if cfg.no_silence:
        subsets["no_silence"] = ~np.isin(names, SILENCE_LABELS)
    result = {}
    sample_clusters, _ = assign(x, km.centroids)
    for subset, rows in subsets.items():
        n = int(counts[rows].sum())
        scores = {m: (v, n) for m, v in M.contingency_metrics(counts[rows]).items() if m not in ("n",)}
        if subset == "all":
            sil = M.silhouette(x, sample_clusters, max_points=cfg.silhouette_points, seed=cfg.seed)
            shuffled = np.random.default_rng(cfg.seed).permutation(sample["label"].to_numpy(zero_copy_only=False))
            scores |= {
                "silhouette": (sil.value, sil.n),
                "ami_shuffled_sample": (M.cluster_metrics(shuffled, sample_clusters)["ami"], len(x)),
                "kmeans_inertia": (km.inertia, km.n_train),
                "kmeans_train_points": (km.n_train, km.n_train),
            }
            result = {k: v[0] for k, v in scores.items()}
        rows_out = [{"metric": m, "value": float(v[0]), "n": int(v[1])} for m, v in sorted(scores.items())]
        files.append(wh.write("metrics", pa.Table.from_pylist(rows_out, schema=METRICS_SCHEMA), cfg.run, 0,
                              layer=layer, k=cfg.k, tier=cfg.tier, subset=subset))
        mapping = majority_from_counts(counts[rows], names[rows])
        files.append(wh.write("cluster_labels", pa.Table.from_pylist(mapping, schema=MAPPING_SCHEMA), cfg.run, 0,
                              layer=layer, k=cfg.k, tier=cfg.tier, subset=subset))
        log.info("layer %s subset %s: %d frames scored", layer, subset, n)
    wh.commit(cfg.run, f"analyze.k{cfg.k}.{cfg.tier}", layer, files, params=fingerprint(cfg.__dict__),
              seconds=time.perf_counter() - t0)
    return result


def analyze(cfg: AnalyzeConfig) -> list[dict]:
    """k-means + metrics for every chosen layer of a run. Returns one row per layer."""
    from pipeline.model import parse_layers

    wh = Warehouse(cfg.warehouse)
    facts = wh.read_facts(cfg.run)
    if not facts or "layers" not in facts:
        raise ValueError(f"run {cfg.run!r} has no extracted frames in {cfg.warehouse}: run `extract` first")
    wanted = facts["layers"] if cfg.layers == "all" else parse_layers(cfg.layers, facts["model"]["num_layers"])
    missing = sorted(set(wanted) - set(facts["layers"]))
    if missing:
        raise ValueError(f"layers {missing} were not extracted for run {cfg.run!r} (it has {facts['layers']})")
    if cfg.tier not in ("phone", "word"):
        raise ValueError(f"--tier must be 'phone' or 'word' (the label columns of frames), got {cfg.tier!r}")
    con = wh.connect()
    committed = wh.committed_files("frames", cfg.run)
    rows = []
    for layer in wanted:
        rows.append({"layer": layer, **analyze_layer(wh, cfg, layer, con, committed)})
    return rows
