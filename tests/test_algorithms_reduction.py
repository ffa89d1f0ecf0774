"""pipeline.algorithms.reduction: the streaming PCA against scikit-learn, the balanced sample's size,
t-SNE and UMAP on fewer points than their defaults assume; no warehouse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.algorithms.reduction import StreamingPCA, per_label_for, tsne_2d, umap_2d


def test_streaming_pca_equals_scikit_learn_despite_a_large_mean():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 20)) * np.linspace(0.1, 3, 20) + 1e4).astype(np.float32)  # mean ≫ spread
    ours = StreamingPCA(5)
    for part in np.array_split(x, 17):
        ours.partial_fit(part)
    ours.finish()
    ref = PCA(5, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(ours.components_ @ ref.components_.T), np.eye(5), atol=1e-6)
    np.testing.assert_allclose(np.abs(ours.transform(x[:50])), np.abs(ref.transform(x[:50])), atol=1e-3)


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.integers(1, 500), min_size=1, max_size=30),
       st.integers(1, 5000))
def test_per_label_gives_the_largest_sample_within_n(counts, n):
    p = per_label_for(counts, n)
    size = sum(min(c, p) for c in counts.values())
    if size > n:  # only when even one frame per label is more than n
        assert p == 1 and len(counts) > n
    elif p < max(counts.values()):
        assert sum(min(c, p + 1) for c in counts.values()) > n


def test_a_pca_needs_two_frames():
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        StreamingPCA(2).partial_fit(np.ones((1, 3))).finish()


def test_tsne_caps_the_perplexity_to_the_points_and_is_seeded():
    z = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    xy, info = tsne_2d(z, perplexity=30.0, seed=0)
    assert xy.shape == (40, 2) and xy.dtype == np.float32 and info["perplexity"] == 13.0
    np.testing.assert_array_equal(tsne_2d(z, 30.0, 0)[0], xy)


@pytest.mark.slow
def test_umap_caps_the_neighbours_to_the_points_and_is_seeded():
    z = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    xy, info = umap_2d(z, n_neighbors=15, min_dist=0.1, seed=0)
    assert xy.shape == (12, 2) and xy.dtype == np.float32 and info["n_neighbors"] == 11
    np.testing.assert_array_equal(umap_2d(z, 15, 0.1, 0)[0], xy)
