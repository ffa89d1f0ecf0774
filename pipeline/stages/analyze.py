"""Stage 3: per layer, k-means on a balanced SQL sample, assignment of every frame, metrics.

Memory is bounded by the sample and one batch of frames: every frame of the layer is streamed
through the centroids once, and only a (groups × labels × clusters) contingency table is kept, from
which every metric is computed exactly.

Labels: `phone` and `word` are columns of `frames`; any other tier (e.g. `ctc_greedy` from
`labels`) is read from `segments`, the interval holding each frame's centre. Beside the clustering
metrics, a linear probe (pipeline/algorithms/probe.py) per layer, trained and tested on disjoint speakers.
With `by` (an utterance attribute: speaker, gender, dialect…), every metric per group too, and a
cross-group test: k-means and the probe fitted on the other groups, scored on this one.

Everything is keyed by the label tier too: the k-means is trained on a sample balanced over the
tier's labels, so `--tier phone --k 50` and `--tier word --k 50` are two clusterings, each stored
beside the metrics and mappings it was scored with. `clusters` and `centroids` carry the tier as a
column and in the file name (not as a Hive folder: files written before tiers, `part-…`, sit in the
same folders and must stay readable in one view; `pipeline.warehouse.schemas.tiered_views` reads them).

Tables (Hive partitions after `run`):
    clusters/run/layer/k/<tier>-<frames shard> utterance_id, frame, cluster, distance, tier
    centroids/run/layer/k/<tier>-00000         cluster, size, vector, tier
    metrics/run/layer/k/tier/subset/part-00000 metric, value, n
    cluster_labels/run/layer/k/tier/subset/... cluster, label, count, cluster_size, share
    group_metrics/run/layer/k/tier/attribute/part-00000   group_value, metric, value, n   (with `by`)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.algorithms import metrics as M
from pipeline.algorithms.geometry import FrameGeometry, labels_at
from pipeline.algorithms.kmeans import assign, fit_kmeans
from pipeline.algorithms.phone_classes import SILENCE_LABELS
from pipeline.algorithms.probe import fit_score, speaker_disjoint_probe
from pipeline.sql import query, table_text
from pipeline.stages.inputs import chosen_layers, extracted_facts, require_tier
from pipeline.warehouse import Warehouse, fingerprint, keys
from pipeline.warehouse.schemas import (CLUSTER_LABELS, CLUSTERS, FRAME_TIERS, GROUP_METRICS, METRICS, centroids_schema,
                                        check_tier_name)

log = logging.getLogger(__name__)

# the tables' schemas under the names this module had for them (pipeline.warehouse.schemas declares them)
METRICS_SCHEMA, CLUSTERS_SCHEMA, GROUP_METRICS_SCHEMA, MAPPING_SCHEMA = METRICS, CLUSTERS, GROUP_METRICS, CLUSTER_LABELS
NO_GROUP = ""  # utterances without the --by attribute (and every utterance without --by)


@dataclass
class AnalyzeConfig:
    """The parameters of `analyze`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str
    warehouse: str = "storage"
    layers: str = "all"
    k: int = 50
    tier: str = field(default="phone", metadata={
        "help": "labels to score against: phone, word, or a segments tier (ctc_greedy, ctc_char, …)"})
    sample_per_label: int = 500  # balanced k-means training sample: at most this many frames per label
    seed: int = 0
    n_iter: int = 50
    no_silence: bool = field(default=False, metadata={
        "help": "also score without silence labels (sil, h#, pau, …)"})
    silhouette_points: int = field(default=5_000, metadata={"cli": False})
    batch_frames: int = field(default=65_536, metadata={"help": "frames per assignment batch (bounds memory)"})
    by: str | None = field(default=None, metadata={
        "help": "also score per group of this utterance attribute (speaker, gender, dialect, …) "
                "and run the cross-group test"})
    probe: bool = field(default=True, metadata={"flag": "--no-probe", "help": "skip the linear phone probe"})


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


class _Contingency:
    """Streaming (group × label × cluster) counts; labels and groups get codes as they appear."""

    def __init__(self, k: int):
        self.k = k
        self.labels: dict[str, int] = {}
        self.groups: dict[str, int] = {}
        self.counts = np.zeros((0, 0, k), np.int64)

    def _codes(self, values: pa.Array, index: dict[str, int]) -> np.ndarray:
        encoded = values.dictionary_encode()
        local = np.array([index.setdefault(v, len(index)) for v in encoded.dictionary.to_pylist()], dtype=np.int64)
        indices = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where the value is null
        valid = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
        codes = np.full(len(values), -1, np.int64)
        codes[valid] = local[indices[valid].astype(np.int64)]
        return codes

    def add(self, labels: pa.Array, groups: pa.Array, cluster: np.ndarray) -> None:
        label_codes, group_codes = self._codes(labels, self.labels), self._codes(groups, self.groups)
        g, n_labels = max(len(self.groups), self.counts.shape[0]), max(len(self.labels), self.counts.shape[1])
        if (g, n_labels) != self.counts.shape[:2]:
            grown = np.zeros((g, n_labels, self.k), np.int64)
            grown[:self.counts.shape[0], :self.counts.shape[1]] = self.counts
            self.counts = grown
        keep = (label_codes >= 0) & (group_codes >= 0)
        flat = (group_codes[keep] * n_labels + label_codes[keep]) * self.k + cluster[keep]
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def names(self) -> np.ndarray:
        return np.array(list(self.labels), dtype=object)


def _segment_labels(con, root, run: str, tier: str, utterance_id: pa.Array, frame: pa.Array,
                    geometry: FrameGeometry) -> pa.Array:
    """Label of the `tier` interval holding each frame centre (start inclusive, end exclusive), or null.
    Rows come sorted by utterance, as frames files are. Centres are recomputed in float64 from the
    frame index, exactly as extraction labels `phone` (the stored float32 `time_s` can round a centre
    that sits on a boundary to the wrong side)."""
    utt = np.asarray(utterance_id.to_pylist(), dtype=object)
    t = geometry.frame_centres_s(frame.to_numpy(zero_copy_only=False))
    out = np.full(len(utt), None, dtype=object)
    if not len(utt):
        return pa.array(out, pa.string())
    seg = query(root, "segments_of", {"run": run, "tier": tier, "utterances": sorted(set(utt))}, con=con)
    seg_utt = np.asarray(seg["utterance_id"].to_pylist(), dtype=object)
    starts, ends = seg["start_s"].to_numpy(), seg["end_s"].to_numpy()
    seg_labels = np.asarray(seg["label"].to_pylist(), dtype=object)
    cut = np.flatnonzero(np.r_[True, utt[1:] != utt[:-1], True])
    for a, b in zip(cut[:-1], cut[1:]):
        rows = np.flatnonzero(seg_utt == utt[a])
        if not len(rows):
            continue
        out[a:b] = labels_at(t[a:b], starts[rows], ends[rows], seg_labels[rows])
    return pa.array(out, pa.string())


def analyze_layer(wh: Warehouse, cfg: AnalyzeConfig, layer: int, con, committed: list[str] | None = None,
                  groups: dict[str, str] | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    sample = query(wh.root, "balanced_sample", {"run": cfg.run, "layer": layer, "per_label": cfg.sample_per_label,
                                                "seed": cfg.seed, "tier": cfg.tier, "by": cfg.by or ""}, con=con)
    x = vectors(sample["vector"])
    if len(x) < cfg.k:
        raise ValueError(f"run {cfg.run!r} layer {layer}: the sample has {len(x)} labelled frames on tier "
                         f"{cfg.tier!r}, fewer than k={cfg.k}")
    km = fit_kmeans(x, cfg.k, seed=cfg.seed, n_iter=cfg.n_iter)
    table = _Contingency(cfg.k)
    files = []
    sizes = np.zeros(cfg.k, np.int64)
    own_column = cfg.tier in FRAME_TIERS
    columns = ["utterance_id", "frame", "vector"] + ([cfg.tier] if own_column else [])
    geometry = None if own_column else FrameGeometry(**wh.read_facts(cfg.run)["geometry"])
    for path in layer_files(wh, cfg.run, layer, committed):
        parts = []
        for batch in pq.ParquetFile(wh.root / path).iter_batches(batch_size=cfg.batch_frames, columns=columns):
            cluster, dist = assign(vectors(batch.column("vector")), km.centroids)
            sizes += np.bincount(cluster, minlength=cfg.k)
            labels = batch.column(cfg.tier) if own_column else _segment_labels(
                con, wh.root, cfg.run, cfg.tier, batch.column("utterance_id"), batch.column("frame"), geometry)
            ids = batch.column("utterance_id")
            group = pa.array([groups.get(u, NO_GROUP) for u in ids.to_pylist()], pa.string()) if groups is not None \
                else pa.nulls(len(batch), pa.string()).fill_null(NO_GROUP)
            table.add(labels, group, cluster)
            parts.append(pa.table({"utterance_id": ids, "frame": batch.column("frame"),
                                   "cluster": pa.array(cluster, pa.int32()), "distance": pa.array(dist, pa.float32()),
                                   "tier": pa.array([cfg.tier] * len(batch), pa.string())},
                                  schema=CLUSTERS_SCHEMA))
        shard = int(path.rsplit("part-", 1)[1].split(".")[0])
        clusters = pa.concat_tables(parts) if parts else CLUSTERS_SCHEMA.empty_table()
        files.append(wh.write("clusters", clusters, cfg.run, shard, file_prefix=cfg.tier, layer=layer, k=cfg.k))
    names = table.names()
    counts = table.counts.sum(axis=0) if table.counts.size else np.zeros((0, cfg.k), np.int64)
    centroid_table = pa.table({
        "cluster": pa.array(np.arange(cfg.k), pa.int32()),
        "size": pa.array(sizes),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(km.centroids.reshape(-1)), km.centroids.shape[1]),
        "tier": pa.array([cfg.tier] * cfg.k, pa.string()),
    }, schema=centroids_schema(km.centroids.shape[1]))
    files.append(wh.write("centroids", centroid_table, cfg.run, 0, file_prefix=cfg.tier, layer=layer, k=cfg.k))
    subsets = {"all": np.ones(len(names), bool)}
    if cfg.no_silence:
        subsets["no_silence"] = ~np.isin(names, SILENCE_LABELS)
    result = {}
    sample_clusters, _ = assign(x, km.centroids)
    sample_labels = np.asarray(sample["label"].to_pylist(), dtype=object)
    for subset, rows in subsets.items():
        n = int(counts[rows].sum())
        scores = {m: (v, n) for m, v in M.contingency_metrics(counts[rows]).items() if m not in ("n",)}
        if subset == "all":
            sil = M.silhouette(x, sample_clusters, max_points=cfg.silhouette_points, seed=cfg.seed)
            shuffled = np.random.default_rng(cfg.seed).permutation(sample_labels)
            scores |= {
                "silhouette": (sil.value, sil.n),
                "ami_shuffled_sample": (M.cluster_metrics(shuffled, sample_clusters)["ami"], len(x)),
                "kmeans_inertia": (km.inertia, km.n_train),
                "kmeans_train_points": (km.n_train, km.n_train),
            }
            if cfg.probe:
                scores |= _probe_scores(x, sample_labels, sample["speaker"].to_pylist(), cfg, layer)
            result = {k: v[0] for k, v in scores.items()}
        rows_out = [{"metric": m, "value": float(v[0]), "n": int(v[1])} for m, v in sorted(scores.items())]
        files.append(wh.write("metrics", pa.Table.from_pylist(rows_out, schema=METRICS_SCHEMA), cfg.run, 0,
                              layer=layer, k=cfg.k, tier=cfg.tier, subset=subset))
        mapping = majority_from_counts(counts[rows], names[rows])
        files.append(wh.write("cluster_labels", pa.Table.from_pylist(mapping, schema=MAPPING_SCHEMA), cfg.run, 0,
                              layer=layer, k=cfg.k, tier=cfg.tier, subset=subset))
        log.info("layer %s subset %s: %d frames scored", layer, subset, n)
    wh.commit(cfg.run, keys.analyze_stage(cfg.k, cfg.tier), keys.layer_shard(layer), files,
              params_sha256=fingerprint(cfg.__dict__), k=cfg.k, tier=cfg.tier, seconds=time.perf_counter() - t0)
    if cfg.by:
        rows_out = _group_rows(table, x, sample_labels, sample, cfg)
        record = wh.write("group_metrics", pa.Table.from_pylist(rows_out, schema=GROUP_METRICS_SCHEMA), cfg.run, 0,
                          layer=layer, k=cfg.k, tier=cfg.tier, attribute=cfg.by)
        wh.commit(cfg.run, keys.analyze_stage(cfg.k, cfg.tier, cfg.by), keys.layer_shard(layer), [record],
                  params_sha256=fingerprint(cfg.__dict__), k=cfg.k, tier=cfg.tier, by=cfg.by)
    return result


def _probe_scores(x: np.ndarray, labels: np.ndarray, speakers: list, cfg: AnalyzeConfig, layer: int) -> dict:
    try:
        p = speaker_disjoint_probe(x, labels, speakers, seed=cfg.seed)
    except ValueError as err:
        log.warning("run %s layer %s: no linear probe: %s", cfg.run, layer, err)
        return {}
    return {"probe_accuracy": (p.accuracy, p.n_test), "probe_balanced_accuracy": (p.balanced_accuracy, p.n_test),
            "probe_chance": (p.chance, p.n_test), "probe_train_frames": (p.n_train, p.n_train)}


def _group_rows(table: _Contingency, x: np.ndarray, labels: np.ndarray, sample: pa.Table, cfg: AnalyzeConfig) -> list[dict]:
    """Per group of `cfg.by`: the layer's clustering scored on the group's frames, and the cross-group
    test on the balanced sample: k-means and the probe fitted on the other groups, scored on this one,
    against the same fitted on this group alone (k-means) or on its other speakers (probe)."""
    out = []
    sample_groups = np.asarray(sample["grp"].to_pylist(), dtype=object)
    speakers = np.asarray(sample["speaker"].to_pylist(), dtype=object)
    for group, g in table.groups.items():
        if group == NO_GROUP or g >= table.counts.shape[0]:
            continue
        counts = table.counts[g]
        n = int(counts.sum())
        for metric, value in M.contingency_metrics(counts[counts.sum(axis=1) > 0]).items():
            if metric != "n":
                out.append({"group_value": group, "metric": metric, "value": float(value), "n": n})
        mine = sample_groups == group
        rest = ~mine & (sample_groups != None)  # noqa: E711 (element-wise comparison with None)
        if mine.sum() < 2 or rest.sum() < cfg.k:
            continue
        k_mine = min(cfg.k, int(mine.sum()))
        within = fit_kmeans(x[mine], k_mine, seed=cfg.seed, n_iter=cfg.n_iter)
        transfer = fit_kmeans(x[rest], cfg.k, seed=cfg.seed, n_iter=cfg.n_iter)
        for metric, km in (("ami_within", within), ("ami_transfer", transfer)):
            value = M.cluster_metrics(labels[mine], assign(x[mine], km.centroids)[0])["ami"]
            out.append({"group_value": group, "metric": metric, "value": float(value), "n": int(mine.sum())})
        if cfg.probe:
            try:
                p = fit_score(x[rest], labels[rest], x[mine], labels[mine], seed=cfg.seed)
                out.append({"group_value": group, "metric": "probe_balanced_accuracy_transfer",
                            "value": p.balanced_accuracy, "n": p.n_test})
                p = speaker_disjoint_probe(x[mine], labels[mine], speakers[mine], seed=cfg.seed)
                out.append({"group_value": group, "metric": "probe_balanced_accuracy_within",
                            "value": p.balanced_accuracy, "n": p.n_test})
            except ValueError as err:
                log.info("group %s: probe skipped: %s", group, err)
    return out


def analyze(cfg: AnalyzeConfig) -> list[dict]:
    """k-means + metrics for every chosen layer of a run. Returns one row per layer."""
    check_tier_name(cfg.tier)
    wh = Warehouse(cfg.warehouse)
    wanted = chosen_layers(extracted_facts(wh, cfg.run), cfg.run, cfg.layers)
    con = wh.connect()
    require_tier(wh, [cfg.run], cfg.tier, con)
    groups = None
    if cfg.by:
        found = query(wh.root, "utterance_groups", {"run": cfg.run, "by": cfg.by}, con=con)
        groups = {u: g for u, g in zip(found["utterance_id"].to_pylist(), found["grp"].to_pylist()) if g is not None}
        if not groups:
            raise ValueError(f"no utterance of run {cfg.run!r} has attribute {cfg.by!r}: use speaker, split, corpus "
                             "or a key of the utterances' metadata (see `python -m pipeline sql run_overview`)")
    committed = wh.committed_files("frames", cfg.run)
    rows = []
    for layer in wanted:
        rows.append({"layer": layer, **analyze_layer(wh, cfg, layer, con, committed, groups)})
    return rows


@dataclass
class AnalyzeResult:
    """One row of metrics per layer, and with `--by` the per-group table (group_metrics_wide)."""

    rows: list[dict]
    by: str | None = None
    groups: pa.Table | None = None

    SHOWN = ("layer", "ami", "nmi", "homogeneity", "completeness", "cluster_purity", "pnmi", "silhouette",
             "ami_shuffled_sample", "probe_balanced_accuracy", "kmeans_train_points")

    def summary(self) -> str:
        text = table_text(pa.Table.from_pylist([{k: r.get(k) for k in self.SHOWN} for r in self.rows]))
        if self.groups is not None:
            text += f"\nper {self.by} (table group_metrics):\n" + table_text(self.groups)
        return text


def run(cfg: AnalyzeConfig) -> AnalyzeResult:
    rows = analyze(cfg)
    groups = None
    if cfg.by:
        groups = query(cfg.warehouse, "group_metrics_wide", {"run": cfg.run, "k": cfg.k, "tier": cfg.tier, "by": cfg.by})
    return AnalyzeResult(rows, cfg.by, groups)
