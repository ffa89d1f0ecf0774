"""pipeline.algorithms.kmeans: recovery of blobs, no silent subsampling, exact assignment, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score

from pipeline.algorithms import kmeans
from pipeline.algorithms.kmeans import assign, assign_batches, fit_kmeans


def blobs(n_per: int = 400, k: int = 5, d: int = 8, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, size=(k, d))
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + rng.normal(0, spread, size=(truth.size, d))
    return x.astype(np.float32), truth


def brute_force(x, centroids):
    d2 = ((x[:, None, :].astype(np.float64) - centroids[None, :, :].astype(np.float64)) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1)


def test_recovers_well_separated_blobs():
    x, truth = blobs()
    result = fit_kmeans(x, 5, seed=0)
    cluster, _ = assign(x, result.centroids)
    assert adjusted_mutual_info_score(truth, cluster) == pytest.approx(1.0, abs=1e-12)
    assert result.centroids.shape == (5, 8) and result.centroids.dtype == np.float32
    assert (result.init, result.device, result.k) == ("k-means++", "cpu", 5)
    assert 1 <= result.iterations <= 100


def test_trains_on_every_point_unless_asked():
    # 1,200 points per centroid: FAISS's default would silently train on 256 of them
    x, _ = blobs(n_per=1_200, k=4, d=3, spread=1.0, seed=1)
    result = fit_kmeans(x, 4, seed=0)
    assert result.n_train == x.shape[0]
    # a converged Lloyd fixed point over ALL points: each centroid is the mean of its members
    cluster, dist = assign(x, result.centroids)
    means = np.stack([x[cluster == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(result.centroids, means, atol=1e-4)
    assert result.inertia == pytest.approx(dist.sum(dtype=np.float64), rel=1e-9)


def test_subsampling_is_explicit():
    x, _ = blobs(n_per=300, k=4, d=3, seed=2)
    result = fit_kmeans(x, 4, seed=0, max_points_per_centroid=50)
    assert result.n_train == 200
    assert fit_kmeans(x, 4, seed=0, max_points_per_centroid=1_000).n_train == x.shape[0]


def test_same_seed_same_result():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3_000, 4)).astype(np.float32)  # no structure: init matters
    a, b = fit_kmeans(x, 12, seed=7), fit_kmeans(x, 12, seed=7)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia and a.iterations == b.iterations
    c = fit_kmeans(x, 12, seed=8)
    assert not np.array_equal(a.centroids, c.centroids)


def test_more_restarts_never_worse():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2_000, 2)).astype(np.float32)
    one = fit_kmeans(x, 10, seed=0, n_init=1)
    three = fit_kmeans(x, 10, seed=0, n_init=3)  # restart 0 is the n_init=1 run
    assert three.inertia <= one.inertia


def test_inertia_is_sum_over_training_points():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1_500, 6)).astype(np.float32)
    result = fit_kmeans(x, 9, seed=1)
    _, d2 = brute_force(x, result.centroids)
    assert result.inertia == pytest.approx(d2.sum(), rel=1e-5)


def test_assign_equals_numpy_argmin():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3_001, 5)).astype(np.float32)
    centroids = rng.normal(size=(17, 5)).astype(np.float32)
    cluster, dist = assign(x, centroids, batch_size=256)  # 12 batches and a remainder
    idx, d2 = brute_force(x, centroids)
    assert cluster.dtype == np.int32 and dist.dtype == np.float32
    np.testing.assert_array_equal(cluster, idx)
    np.testing.assert_allclose(dist, d2, rtol=1e-5, atol=1e-6)


def test_assign_distances_survive_large_offsets():
    # |x|^2 - 2 x.c + |c|^2 in float32 cancels catastrophically here; ours recomputes |x - c|^2
    rng = np.random.default_rng(7)
    x = (1_000.0 + rng.normal(0, 0.01, size=(500, 4))).astype(np.float32)
    centroids = np.array([[1_000.0] * 4, [1_001.0] * 4], dtype=np.float32)
    cluster, dist = assign(x, centroids)
    _, d2 = brute_force(x, centroids)
    assert (cluster == 0).all()
    assert (dist >= 0).all()
    np.testing.assert_allclose(dist, d2, rtol=1e-3, atol=1e-9)


def test_assign_batches_equals_assign():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2_000, 3)).astype(np.float16)  # float16 as stored in Parquet
    centroids = rng.normal(size=(7, 3)).astype(np.float32)
    whole = assign(x, centroids)
    pieces = list(assign_batches([x[:700], x[700:701], x[701:701], x[701:]], centroids))
    assert [p[0].size for p in pieces] == [700, 1, 0, 1_299]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), whole[1])


def test_assign_refuses_dimension_mismatch():
    with pytest.raises(ValueError, match="d = 3"):
        assign(np.zeros((4, 3), np.float32), np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("k", [0, 11])
def test_k_must_fit_the_data(k):
    with pytest.raises(ValueError, match="k must be"):
        fit_kmeans(np.zeros((10, 2), np.float32), k)


def test_non_finite_input_is_refused():
    x = np.zeros((50, 2), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_kmeans(x, 2)


def test_thread_count_defaults_to_available_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= kmeans.set_threads() == kmeans.available_cpus()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert kmeans.set_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    try:
        assert kmeans.set_threads(1) == 1
        x, _ = blobs(n_per=50, k=2, d=2)
        fit_kmeans(x, 2)  # a later call keeps the caller's cap
        assert kmeans.faiss.omp_get_max_threads() == 1
    finally:
        kmeans.set_threads(None)
    assert kmeans.faiss.omp_get_max_threads() == kmeans.available_cpus()


@pytest.mark.skipif(kmeans._num_gpus() > 0, reason="a GPU is present")
def test_gpu_true_without_gpu_explains():
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        fit_kmeans(np.zeros((10, 2), np.float32), 2, gpu=True)


@pytest.mark.gpu
@pytest.mark.skipif(kmeans._num_gpus() == 0, reason="FAISS sees no GPU")
def test_gpu_matches_cpu_on_blobs():
    x, truth = blobs(n_per=2_000, k=6, d=16, seed=9)
    gpu = fit_kmeans(x, 6, seed=0, gpu=True)
    cpu = fit_kmeans(x, 6, seed=0, gpu=False)
    assert gpu.device == "gpu" and cpu.device == "cpu"
    assert gpu.n_train == x.shape[0]
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-4)
    cluster, dist = assign(x, gpu.centroids, gpu=True)
    assert adjusted_mutual_info_score(truth, cluster) == pytest.approx(1.0)
    np.testing.assert_array_equal(cluster, assign(x, gpu.centroids, gpu=False)[0])
