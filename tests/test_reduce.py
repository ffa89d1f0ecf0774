"""pipeline.stages.reduce: determinism, declared columns, streamed PCA equal to a full PCA, shared samples.
The algorithms alone are tested in test_algorithms_reduction.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages.reduce import REDUCTIONS_SCHEMA, _pca_cache, fit_pca, reduce, reduce_many
from pipeline.warehouse import Warehouse
from pipeline.testing import SYNTHETIC_PHONES as PHONES, make_frames_warehouse


def read_reduction(root: Path, run: str, layer: int, method: str) -> pa.Table:
    (path,) = [p for p in Warehouse(root).committed_files("reductions", run) if f"/layer={layer}/method={method}/" in p]
    return pq.read_table(root / path)


@pytest.fixture(scope="module")
def wh_root(tmp_path_factory) -> Path:
    return make_frames_warehouse(tmp_path_factory.mktemp("reduce") / "wh")


@pytest.mark.parametrize("method", ["pca", "tsne", pytest.param("umap", marks=pytest.mark.slow)])
def test_reduce_is_deterministic_and_writes_the_declared_columns(wh_root, method):
    a = reduce("syn", 1, method, warehouse=str(wh_root), n=150, seed=3)
    first = read_reduction(wh_root, "syn", 1, method)
    b = reduce("syn", 1, method, warehouse=str(wh_root), n=150, seed=3)
    second = read_reduction(wh_root, "syn", 1, method)
    assert first.schema.equals(REDUCTIONS_SCHEMA)
    assert first.equals(second)
    assert 0 < a["rows"] == b["rows"] == first.num_rows <= 150
    assert np.isfinite(first["x"].to_numpy()).all() and np.isfinite(first["y"].to_numpy()).all()
    assert first["x"].to_numpy().std() > 0
    rec = Warehouse(wh_root).commits("syn", f"reduce.{method}")[("syn", f"reduce.{method}", 1)]
    assert rec["params"]["seed"] == 3 and rec["params"]["n"] == 150 and rec["params"]["per_label"] == a["params"]["per_label"]
    assert {"perplexity": "tsne", "n_neighbors": "umap"}.keys() & rec["params"].keys() == (
        {"perplexity"} if method == "tsne" else {"n_neighbors"} if method == "umap" else set())
    # a rerun replaces its file: the view holds each frame once
    con = Warehouse(wh_root).connect()
    dup = con.sql("select count(*) - count(distinct (utterance_id, frame)) from reductions "
                  "where run = 'syn' and layer = 1 and method = $m", params={"m": method}).fetchall()[0][0]
    assert dup == 0


def test_other_seed_other_sample(wh_root):
    reduce("syn", 0, "pca", warehouse=str(wh_root), n=100, seed=0)
    a = read_reduction(wh_root, "syn", 0, "pca")
    reduce("syn", 0, "pca", warehouse=str(wh_root), n=100, seed=1)
    b = read_reduction(wh_root, "syn", 0, "pca")
    keys = lambda t: set(zip(t["utterance_id"].to_pylist(), t["frame"].to_pylist()))  # noqa: E731
    assert keys(a) != keys(b)


def test_the_same_frames_in_every_layer_and_method(wh_root):
    tables = []
    for layer, method in [(-1, "pca"), (2, "pca"), (2, "tsne")]:
        reduce("syn", layer, method, warehouse=str(wh_root), n=120, seed=5)
        tables.append(read_reduction(wh_root, "syn", layer, method))
    keys = [list(zip(t["utterance_id"].to_pylist(), t["frame"].to_pylist())) for t in tables]
    assert keys[0] == keys[1] == keys[2]
    assert None not in tables[0]["label"].to_pylist()  # unlabelled frames are never sampled


def test_sample_is_balanced_and_bounded(wh_root):
    info = reduce("syn", 2, "pca", warehouse=str(wh_root), n=80, seed=0)
    t = read_reduction(wh_root, "syn", 2, "pca")
    counts = {}
    for lab in t["label"].to_pylist():
        counts[lab] = counts.get(lab, 0) + 1
    assert t.num_rows <= 80
    assert max(counts.values()) <= info["params"]["per_label"]
    assert set(counts) == set(PHONES)


def _low_rank_warehouse(root: Path, dim: int = 12, rank: int = 2) -> tuple[Path, np.ndarray, dict]:
    rng = np.random.default_rng(7)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T * np.array([[6.0], [2.0]])[:rank]
    offset = rng.standard_normal(dim) * 4
    table = {}

    def vector(uid, f, layer):
        v = offset + rng.standard_normal(rank) @ basis + 0.01 * rng.standard_normal(dim)
        table[(uid, f)] = v.astype(np.float16).astype(np.float64)
        return v

    make_frames_warehouse(root, run="lowrank", layers=(3,), dim=dim, vector_fn=vector, n_shards=3)
    keys = sorted(table)
    return root, np.stack([table[k] for k in keys]), {k: i for i, k in enumerate(keys)}


def test_pca_recovers_the_variance_of_a_low_rank_dataset(tmp_path):
    root, x, index = _low_rank_warehouse(tmp_path / "wh")
    info = reduce("lowrank", 3, "pca", warehouse=str(root), n=10_000, pca_dims=5)
    assert info["params"]["pca_frames"] == len(x)  # fitted on every frame, not the sample
    assert info["explained_variance_2d"] > 0.999
    # coordinates equal a full (non-streamed) PCA's, up to the sign of each axis
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:2].T
    t = read_reduction(root, "lowrank", 3, "pca")
    rows = [index[k] for k in zip(t["utterance_id"].to_pylist(), t["frame"].to_pylist())]
    ours = np.column_stack([t["x"].to_numpy(), t["y"].to_numpy()]).astype(np.float64)
    for axis in range(2):
        sign = np.sign(ours[:, axis] @ ref[rows, axis])
        np.testing.assert_allclose(sign * ours[:, axis], ref[rows, axis], atol=2e-3 * np.abs(ref).max())
    assert info["explained_variance_2d"] == pytest.approx((s[:2] ** 2).sum() / (s ** 2).sum(), rel=1e-4)


def test_streamed_pca_in_tiny_batches_equals_one_batch(tmp_path):
    root, x, _ = _low_rank_warehouse(tmp_path / "wh")
    wh = Warehouse(root)
    fits = []
    for batch_frames in (7, 100_000):  # many batches with a short last one; one batch
        _pca_cache.clear()
        fits.append(fit_pca(wh, "lowrank", 3, n_components=3, batch_frames=batch_frames))
    small, whole = fits
    assert small.n_samples_seen_ == whole.n_samples_seen_ == len(x)
    np.testing.assert_allclose(small.explained_variance_ratio_, whole.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(small.components_, whole.components_, atol=1e-9)


def test_errors_name_the_problem(wh_root):
    with pytest.raises(ValueError, match="unknown reduction method 'tsen'"):
        reduce("syn", 1, "tsen", warehouse=str(wh_root))
    with pytest.raises(ValueError, match="no committed frames of layer 7.*extract"):
        reduce("syn", 7, "pca", warehouse=str(wh_root))


def test_reduce_many_layers_and_methods(wh_root):
    infos = reduce_many("syn", layers="-1,2", methods="pca", warehouse=str(wh_root), n=60)
    assert [(i["layer"], i["method"]) for i in infos] == [(-1, "pca"), (2, "pca")]
    with pytest.raises(ValueError, match="does not exist|were not extracted"):
        reduce_many("syn", layers="3", warehouse=str(wh_root))
