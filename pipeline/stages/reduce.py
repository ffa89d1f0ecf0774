"""Stage 4: 2-D maps of one layer's frames (PCA, t-SNE, UMAP) → the `reductions` table.

PCA is fitted on every frame of the layer, streamed file by file (exact, one pass: sums of x and
xᵀx; memory is one batch + d²), so its axes describe the whole layer, not the sample. The maps
themselves are drawn for a balanced sample (`sql/balanced_sample.sql`: at most `per_label` frames
per label, picked by a seeded hash), the same frames for every layer and method of a run, so maps
can be set side by side. t-SNE and UMAP run on the sample's PCA coordinates (`pca_dims`, 50 by
default), the usual pre-reduction that removes noise dimensions and makes the neighbour search
cheap. The algorithms are pure functions in `pipeline.algorithms.reduction`; this stage streams,
samples, writes and commits.

Table (Hive partitions after `run`):
    reductions/run/layer/method/part-00000   utterance_id, frame, label, x, y
The commit record (`reduce.<method>`, shard = layer) holds every parameter and the PCA's
explained variance.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.algorithms.reduction import StreamingPCA, per_label_for, tsne_2d, umap_2d
from pipeline.sql import query
from pipeline.stages.analyze import layer_files
from pipeline.stages.inputs import chosen_layers, extracted_facts
from pipeline.warehouse import Warehouse, fingerprint, keys
from pipeline.warehouse.vectors import decode as vectors
from pipeline.warehouse.schemas import REDUCTIONS, check_tier_name

log = logging.getLogger(__name__)

METHODS = ("pca", "tsne", "umap")
REDUCTIONS_SCHEMA = REDUCTIONS  # the name this module had (pipeline.warehouse.schemas declares it)
PCA_BATCH_FRAMES = 16_384  # 16k × 1024-d as float64 = 128 MB per step

_pca_cache: dict[str, StreamingPCA] = {}


def fit_pca(wh: Warehouse, run: str, layer: int, n_components: int = 50,
            batch_frames: int = PCA_BATCH_FRAMES) -> StreamingPCA:
    """PCA of every committed frame of one layer, streamed file by file (memory: one batch + d²).

    Cached per process by the layer's files (paths and modification times), so the t-SNE and UMAP
    of a layer reuse the PCA fitted for it."""
    files = layer_files(wh, run, layer)
    if not files:
        raise ValueError(f"run {run!r} has no committed frames of layer {layer} in {wh.root}: run `extract` first")
    key = fingerprint([wh.uri(""), run, layer, n_components, [wh.file_version(f) for f in files]])
    if key in _pca_cache:
        return _pca_cache[key]
    pca = StreamingPCA(n_components)
    for path in files:
        for batch in wh.parquet_file(path).iter_batches(batch_size=batch_frames, columns=["vector"]):
            pca.partial_fit(vectors(batch.column("vector"), stored=batch.schema.field("vector")))
    if pca.n_samples_seen_ < 2:
        raise ValueError(f"run {run!r} layer {layer}: {pca.n_samples_seen_} frames, too few for a PCA")
    _pca_cache[key] = pca.finish()
    return _pca_cache[key]


def reduce(run: str, layer: int, method: str, warehouse: str = "storage", n: int = 5000, seed: int = 0,
           per_label: int | None = None, tier: str = "phone", pca_dims: int = 50, perplexity: float = 30.0,
           n_neighbors: int = 15, min_dist: float = 0.1) -> dict:
    """2-D coordinates of a balanced sample of one layer's frames → `reductions` (run, layer, method).

    n: the sample's size bound (per_label is derived from it; per_label given wins).
    PCA is fitted on every frame of the layer; t-SNE / UMAP run on the sample's first `pca_dims`
    PCA coordinates. The same (run, n or per_label, seed, tier) picks the same frames for every
    layer and method. Deterministic given seed. Returns what was done (rows, parameters, seconds).
    """
    if method not in METHODS:
        raise ValueError(f"unknown reduction method {method!r}: use one of {', '.join(METHODS)}")
    check_tier_name(tier)
    wh = Warehouse(warehouse)
    t0 = time.perf_counter()
    pca = fit_pca(wh, run, layer, pca_dims)
    t_pca = time.perf_counter() - t0
    con = wh.connect(runs=[run], layers=[layer])
    if per_label is None:
        counts = query(wh.root, "report_label_counts", {"run": run, "layer": layer, "tier": tier}, con=con)
        per_label = per_label_for(dict(zip(counts["label"].to_pylist(), counts["n_frames"].to_pylist())), n)
    sample = query(wh.root, "balanced_sample", {"run": run, "layer": layer, "per_label": per_label, "seed": seed, "by": "",
                                                "tier": tier}, con=con)
    if sample.num_rows < 3:
        raise ValueError(f"run {run!r} layer {layer}: the balanced sample has {sample.num_rows} labelled frames; "
                         f"a map needs at least 3 (are the frames labelled on tier {tier!r}?)")
    z = pca.transform(vectors(sample["vector"])).astype(np.float32)
    t1 = time.perf_counter()
    params: dict = {"n": n, "per_label": per_label, "seed": seed, "tier": tier, "pca_dims": int(pca.n_components_),
                    "pca_frames": int(pca.n_samples_seen_)}
    if method == "pca":
        xy = z[:, :2] if z.shape[1] >= 2 else np.column_stack([z[:, 0], np.zeros(len(z), np.float32)])
    elif method == "tsne":
        xy, extra = tsne_2d(z, perplexity, seed)
        params |= extra
    else:
        xy, extra = umap_2d(z, n_neighbors, min_dist, seed)
        params |= extra
    evr = [float(v) for v in pca.explained_variance_ratio_]
    table = pa.table({
        "utterance_id": sample["utterance_id"],
        "frame": sample["frame"].cast(pa.int32()),
        "label": sample["label"].cast(pa.string()),
        "x": pa.array(xy[:, 0], pa.float32()),
        "y": pa.array(xy[:, 1], pa.float32()),
    }, schema=REDUCTIONS_SCHEMA)
    files = [wh.write("reductions", table, run, 0, layer=layer, method=method)]
    seconds = {"pca_fit_s": round(t_pca, 3), "embed_s": round(time.perf_counter() - t1, 3),
               "total_s": round(time.perf_counter() - t0, 3)}
    info = {"params": params, "explained_variance_2d": sum(evr[:2]), "explained_variance_pca_dims": sum(evr),
            **seconds}
    wh.commit(run, keys.reduce_stage(method), keys.layer_shard(layer), files, params_sha256=fingerprint(params), **info)
    log.info("reduce %s layer %s %s: %d frames in %.1f s", run, layer, method, table.num_rows, seconds["total_s"])
    return {"run": run, "layer": layer, "method": method, "rows": table.num_rows, "path": files[0].path, **info}


def reduce_many(run: str, layers: str = "all", methods: str = "pca", warehouse: str = "storage", **kwargs) -> list[dict]:
    """`reduce` for several layers ('all', '-1,6,12', '8-12') and methods ('pca,tsne,umap') of a run."""
    wanted = chosen_layers(extracted_facts(Warehouse(warehouse), run), run, layers)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    return [reduce(run, layer, method, warehouse=warehouse, **kwargs) for method in names for layer in wanted]


@dataclass
class ReduceConfig:
    """The parameters of `reduce`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str
    layers: str = "all"
    methods: str = field(default="pca", metadata={"help": "comma list of pca, tsne, umap"})
    warehouse: str = "storage"
    n: int = field(default=5000, metadata={"help": "frames in the map (a balanced sample)"})
    seed: int = 0
    tier: str = field(default="phone", metadata={"help": "phone, word, or a segments tier (ctc_greedy, …)"})
    pca_dims: int = field(default=50, metadata={"help": "PCA pre-reduction before t-SNE/UMAP"})
    perplexity: float = 30.0
    n_neighbors: int = 15
    min_dist: float = 0.1


@dataclass
class ReduceResult:
    maps: list[dict]  # what `reduce` returned for each (method, layer)

    def summary(self) -> str:
        """One JSON line per map: its scalar facts."""
        return "\n".join(json.dumps({k: v for k, v in info.items() if not isinstance(v, (list, dict))}, default=str)
                         for info in self.maps)


def run(cfg: ReduceConfig) -> ReduceResult:
    return ReduceResult(reduce_many(**asdict(cfg)))
