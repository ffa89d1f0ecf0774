"""`reduce`: the maps of the `reduce` stage (openTSNE's t-SNE, UMAP) against scikit-learn's t-SNE,
the peer a user would otherwise run. No target: the times are stated, with the ratios to
scikit-learn. At the full plan's 50,000 points scikit-learn's t-SNE takes most of `make bench`'s
time; `--only` without `reduce` leaves it out."""

from __future__ import annotations

import numpy as np

from bench.common import Context, timed
from bench.data import mixture


def reduce_maps(ctx: Context) -> dict:
    """t-SNE (openTSNE, as `reduce` runs it) and UMAP of n frame-like vectors after the PCA to 50
    dimensions that `reduce` applies, against scikit-learn's Barnes-Hut t-SNE on the same 50-d data."""
    import sklearn
    from sklearn.manifold import TSNE

    from pipeline.algorithms.reduction import StreamingPCA, tsne_2d, umap_2d

    n, d = ctx.plan.reduce_points, 256  # d of the default model's layers
    x = mixture(n, d, seed=3)
    t_pca, _, pca = timed(lambda: StreamingPCA(50).partial_fit(x).finish())
    z = pca.transform(x).astype(np.float32)
    t_open, c_open, (_, open_info) = timed(tsne_2d, z, 30.0, 0)
    timed(umap_2d, z[:200], 15, 0.1, 0)  # numba compiles UMAP's kernels on first use: not part of the timing
    t_umap, c_umap, _ = timed(umap_2d, z, 15, 0.1, 0)
    t_sk, c_sk, _ = timed(lambda: TSNE(n_components=2, perplexity=30.0, init="pca", learning_rate="auto",
                                      method="barnes_hut", random_state=0).fit_transform(z))
    result = {"data": f"Gaussian mixture, {n} x {d} (400 uneven components; seed 3) -> PCA 50",
              "points": n, "pca_s": t_pca,
              "tsne_opentsne": {"wall_s": t_open, "cpu_s": c_open, **open_info},
              "umap": {"wall_s": t_umap, "cpu_s": c_umap, "n_neighbors": 15, "min_dist": 0.1},
              "tsne_sklearn": {"wall_s": t_sk, "cpu_s": c_sk, "impl": f"scikit-learn {sklearn.__version__} barnes_hut"},
              "ratio_sklearn_to_opentsne": t_sk / t_open, "ratio_sklearn_to_umap": t_sk / t_umap,
              "checks": []}
    result["summary"] = [
        result["data"],
        f"  t-SNE, openTSNE (reduce's): {t_open:.1f} s   UMAP: {t_umap:.1f} s (after numba's compile)   "
        f"t-SNE, scikit-learn Barnes-Hut: {t_sk:.1f} s",
        f"  scikit-learn t-SNE / openTSNE = {t_sk / t_open:.1f}x; scikit-learn t-SNE / UMAP = {t_sk / t_umap:.1f}x",
    ]
    return result
