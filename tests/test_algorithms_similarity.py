"""pipeline.algorithms.similarity: linear CKA (biased and debiased, feature-space form) against the n × n
Gram form, and the adjusted Rand index against scikit-learn; no warehouse."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pipeline.algorithms.similarity import Centred, adjusted_rand_index, cka_pair, linear_cka
from pipeline.testing import gram_cka


def test_linear_cka_of_matrices_equals_the_gram_form_when_n_is_small_against_d():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 64))
    y = x[:, :32] @ rng.standard_normal((32, 48)) + 0.5 * rng.standard_normal((40, 48))
    for debiased in (False, True):
        assert linear_cka(x, y, debiased) == pytest.approx(gram_cka(x, y, debiased), abs=1e-6)
    assert np.isnan(linear_cka(x, np.ones((40, 5)))) and np.isnan(linear_cka(x, np.ones((40, 5)), debiased=True))
    noise = rng.standard_normal((40, 64))
    assert linear_cka(x, noise) > 0.5  # the biased estimator is inflated when n < d ...
    assert abs(linear_cka(x, noise, debiased=True)) < 0.1  # ... the debiased one is not


def test_cka_needs_the_same_frames_in_both_matrices():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="same frames in both matrices, got 10 and 11 rows"):
        cka_pair(Centred.of(rng.standard_normal((10, 3))), Centred.of(rng.standard_normal((11, 3))))


@pytest.mark.parametrize("seed", range(5))
def test_adjusted_rand_index_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 + seed * 3, 500)
    b = (a + rng.integers(0, 3, 500) * (seed % 2)) % 7
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)
    assert adjusted_rand_index(table) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
