"""k-means with FAISS Lloyd iterations (GPU when present), seeded with k-means++.

Two facts about FAISS that this module makes explicit:
- `faiss.Kmeans` trains on at most 256 points per centroid by default and drops the rest without
  saying so. Here nothing is dropped unless `max_points_per_centroid` asks for it; the drawn
  subset is ours (seeded), and `KMeansResult.n_train` says how many points were used.
- FAISS's default initialisation (k random points) lands far from a good optimum: on the
  original's fine-tuned 2-D PCA coordinates (180,710 points, k = 36) it ended 34 % above
  scikit-learn's k-means++ inertia (AMI 0.33 against 0.38), even with 10 restarts. So every run
  starts from k-means++ centroids (scikit-learn's greedy k-means++ on a bounded sample).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import faiss  # OMP_WAIT_POLICY=PASSIVE is set in pipeline/__init__.py, before libgomp loads
import numpy as np
from sklearn.cluster import kmeans_plusplus

# k-means++ runs on at most this many training points (+ 50 per centroid): ~0.1 s for k = 36 in 2-D.
KMEANS_PP_BASE_POINTS = 20_000
KMEANS_PP_POINTS_PER_CENTROID = 50
# Exact squared distances are recomputed in chunks of this many rows (32 MB at d = 1024).
_DISTANCE_CHUNK_ROWS = 8_192


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # float32, k x d
    inertia: float  # sum over the training points of the squared distance to their centroid
    n_train: int  # points the centroids were trained on
    iterations: int  # Lloyd iterations FAISS ran (it stops early once the objective is unchanged)
    init: str  # "k-means++"
    seed: int
    device: str  # "cpu" or "gpu"

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


_thread_limit: int | None = None  # set_threads(n) stores n here


def set_threads(n: int | None = None) -> int:
    """Cap FAISS's OpenMP threads at `n` for all later calls; None restores the default.

    Default: $OMP_NUM_THREADS when set, else one thread per usable CPU (`available_cpus`).
    FAISS's pool would otherwise size itself from the host's cores, oversubscribing a container
    limited by a CPU quota. The faiss-cpu wheel's OpenBLAS is the OpenMP build sharing that pool;
    inside a parallel region it runs single-threaded, so BLAS and FAISS threads never multiply.
    Returns the thread count now in force.
    """
    global _thread_limit
    if n is not None and n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    _thread_limit = n
    return _apply_threads()


def _apply_threads() -> int:
    n = _thread_limit
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    faiss.omp_set_num_threads(n)
    return n


def _num_gpus() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _use_gpu(gpu: bool | None) -> bool:
    n = _num_gpus()
    if gpu and n == 0:
        raise RuntimeError("gpu=True but FAISS sees no GPU: install faiss-gpu, or pass gpu=None/False")
    return bool(n) if gpu is None else bool(gpu)


def _as_float32_matrix(x, name: str = "x") -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must be an n x d matrix, got shape {a.shape}")
    return a


def _flat_index(centroids: np.ndarray, gpu: bool):
    index = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)  # replicas: each GPU holds all centroids
    index.add(centroids)
    return index


def _exact_squared_distances(x: np.ndarray, centroids: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    # FAISS returns |x|^2 - 2 x.c + |c|^2 in float32, which can cancel badly (and go negative)
    # when |x| is large against the distance; recomputing |x - c|^2 costs O(n d), search O(n k d).
    out = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], _DISTANCE_CHUNK_ROWS):
        diff = x[s:s + _DISTANCE_CHUNK_ROWS] - centroids[cluster[s:s + _DISTANCE_CHUNK_ROWS]]
        out[s:s + _DISTANCE_CHUNK_ROWS] = np.einsum("ij,ij->i", diff, diff)
    return out


def assign_batches(batches: Iterable[np.ndarray], centroids: np.ndarray,
                   gpu: bool | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Nearest centroid of every row, one (cluster int32, squared distance float32) per batch.

    Batches may be any float dtype (float16 from Parquet is fine); each is converted on its own,
    so memory stays bounded by the largest batch. The index is built once.
    """
    c = _as_float32_matrix(centroids, "centroids")
    _apply_threads()
    index = _flat_index(c, _use_gpu(gpu))
    for batch in batches:
        xb = _as_float32_matrix(batch, "batch")
        if xb.shape[1] != c.shape[1]:
            raise ValueError(f"batch has d = {xb.shape[1]} but the centroids have d = {c.shape[1]}")
        if xb.shape[0] == 0:
            yield np.empty(0, np.int32), np.empty(0, np.float32)
            continue
        _, nearest = index.search(xb, 1)
        cluster = nearest.ravel().astype(np.int32)
        yield cluster, _exact_squared_distances(xb, c, cluster)


def assign(x: np.ndarray, centroids: np.ndarray, batch_size: int = 65_536,
           gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (int32) and its squared L2 distance (float32) for every row of `x`.

    FAISS finds the nearest centroid (flat L2 index, GPU when present); the distance is then
    recomputed as |x - c|^2, which stays exact where FAISS's |x|^2 - 2 x.c + |c|^2 cancels.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(x)
    parts = list(assign_batches((x[s:s + batch_size] for s in range(0, n, batch_size)), centroids, gpu))
    if not parts:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _kmeans_pp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    n_sample = min(x.shape[0], KMEANS_PP_BASE_POINTS + KMEANS_PP_POINTS_PER_CENTROID * k)
    rng = np.random.default_rng(seed)
    sample = x if n_sample == x.shape[0] else x[np.sort(rng.choice(x.shape[0], n_sample, replace=False))]
    # float64: scikit-learn computes float32 distances by upcasting chunk by chunk, which made the
    # seeding 1.7x slower (10,000 x 768, k = 100: 1.9 s against 1.1 s). One BLAS thread: the sample
    # is small, and on a loaded 2-core machine a multi-threaded BLAS made the seeding 5-22x slower.
    with threadpool_limits(1, user_api="blas"):
        centers, _ = kmeans_plusplus(sample.astype(np.float64), n_clusters=k, random_state=seed)
    return np.ascontiguousarray(centers, dtype=np.float32)


def _lloyd(x: np.ndarray, init: np.ndarray, n_iter: int, seed: int, gpu: bool) -> tuple[np.ndarray, int]:
    k, d = init.shape
    km = faiss.Kmeans(
        d, k, niter=n_iter, nredo=1, seed=seed, verbose=False,
        max_points_per_centroid=math.ceil(x.shape[0] / k),  # k * this >= n: FAISS keeps every point
        min_points_per_centroid=1,  # no C++ warning on stderr for small inputs
        gpu=_num_gpus() if gpu else False,
    )
    km.train(x, init_centroids=init)
    return np.ascontiguousarray(km.centroids, dtype=np.float32), len(km.iteration_stats)


def fit_kmeans(x: np.ndarray, k: int, seed: int = 0, n_iter: int = 100, n_init: int = 1,
               max_points_per_centroid: int | None = None, gpu: bool | None = None) -> KMeansResult:
    """Euclidean k-means of the rows of `x` (n x d, converted to float32).

    Each of `n_init` restarts (restart r uses seed + r) draws k-means++ centroids from a sample
    of at most 20,000 + 50 k training points, then runs up to `n_iter` FAISS Lloyd iterations on
    all training points; the restart with the lowest inertia wins. Training uses every point
    unless `max_points_per_centroid` is given, in which case a seeded random subset of
    k * max_points_per_centroid points is drawn. GPU when FAISS sees one and `gpu` is not False.
    Deterministic for a given seed on CPU.
    """
    x = _as_float32_matrix(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if n_iter < 1 or n_init < 1:
        raise ValueError(f"n_iter and n_init must be >= 1, got {n_iter} and {n_init}")
    if max_points_per_centroid is not None and n > k * max_points_per_centroid:
        rng = np.random.default_rng(seed)
        x = x[np.sort(rng.choice(n, k * max_points_per_centroid, replace=False))]
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; drop those rows before clustering")
    use_gpu = _use_gpu(gpu)
    _apply_threads()

    best = None
    for r in range(n_init):
        init = _kmeans_pp(x, k, seed + r)
        centroids, iterations = _lloyd(x, init, n_iter, seed + r, use_gpu)
        _, dist = assign(x, centroids, gpu=use_gpu)
        inertia = float(dist.sum(dtype=np.float64))
        if best is None or inertia < best.inertia:
            best = KMeansResult(centroids, inertia, int(x.shape[0]), iterations, "k-means++", seed,
                                "gpu" if use_gpu else "cpu")
    return best
