"""2-D maps of frame vectors: an exact streaming PCA, t-SNE and UMAP, and the balanced sample's size.

Pure: arrays in, arrays out (the `reduce` stage streams the layer's files and writes `reductions`).
"""

from __future__ import annotations

import warnings

import numpy as np


class StreamingPCA:
    """Exact PCA of a stream of batches in one pass: float64 sums of x and xᵀx (shifted by the first
    batch's mean, so large feature means do not cancel digits away), then one eigendecomposition.

    Memory is d² doubles (8 MB for d = 1024); the result does not depend on the batch size, and
    equals a full SVD of all frames to rounding. scikit-learn's IncrementalPCA approximates the same
    thing with an SVD per batch, at a higher cost. Attributes follow scikit-learn's PCA:
    components_, mean_, explained_variance_(ratio_), n_components_, n_samples_seen_.
    """

    def __init__(self, n_components: int):
        self.n_components = n_components
        self.n_samples_seen_ = 0
        self._shift = self._sum = self._gram = None

    def partial_fit(self, x: np.ndarray) -> "StreamingPCA":
        if self._shift is None:
            self._shift = x.astype(np.float64).mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._gram = np.zeros((len(self._shift), len(self._shift)))
        xs = x.astype(np.float64) - self._shift
        self.n_samples_seen_ += len(xs)
        self._sum += xs.sum(axis=0)
        self._gram += xs.T @ xs
        return self

    def finish(self) -> "StreamingPCA":
        n = self.n_samples_seen_
        if n < 2:
            raise ValueError(f"a PCA needs at least 2 frames, got {n}")
        mean = self._sum / n
        cov = (self._gram - n * np.outer(mean, mean)) / (n - 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0, None), vectors[:, order]
        k = min(self.n_components, len(values))
        components = vectors[:, :k].T
        signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])  # deterministic signs
        self.components_ = components * signs[:, None]
        self.mean_ = self._shift + mean
        self.explained_variance_ = values[:k]
        total = values.sum()
        self.explained_variance_ratio_ = values[:k] / total if total > 0 else np.zeros(k)
        self.n_components_ = k
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) - self.mean_) @ self.components_.T


def per_label_for(counts: dict[str, int], n: int) -> int:
    """The largest p with sum(min(count, p)) <= n: the balanced sample then has at most n frames."""
    if not counts or n <= 0:
        return 0
    lo, hi = 0, max(counts.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in counts.values()) <= n:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


def tsne_2d(z: np.ndarray, perplexity: float, seed: int) -> tuple[np.ndarray, dict]:
    """t-SNE of the rows of z → (float32 [n, 2], what ran). openTSNE (FFT-accelerated; bench `reduce`
    times it against scikit-learn's Barnes-Hut) when installed, else scikit-learn. The perplexity is
    capped at (n - 1) / 3, the most n points support."""
    perplexity = float(min(perplexity, max(1.0, (len(z) - 1) / 3)))
    try:
        import openTSNE

        emb = openTSNE.TSNE(n_components=2, perplexity=perplexity, initialization="pca", random_state=seed,
                            n_jobs=1, verbose=False).fit(z)
        return np.asarray(emb, np.float32), {"tsne_impl": f"openTSNE {openTSNE.__version__}", "perplexity": perplexity}
    except ImportError:
        import sklearn
        from sklearn.manifold import TSNE

        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method="barnes_hut",
                   random_state=seed).fit_transform(z)
        return emb.astype(np.float32), {"tsne_impl": f"scikit-learn {sklearn.__version__} barnes_hut",
                                        "perplexity": perplexity}


def umap_2d(z: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> tuple[np.ndarray, dict]:
    """UMAP of the rows of z → (float32 [n, 2], what ran); n_neighbors capped at n - 1."""
    import umap

    n_neighbors = int(min(n_neighbors, len(z) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that a random_state forces one thread: that is the point
        emb = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                        n_jobs=1).fit_transform(z)
    return emb.astype(np.float32), {"umap_impl": f"umap-learn {umap.__version__}", "n_neighbors": n_neighbors,
                                    "min_dist": min_dist}
