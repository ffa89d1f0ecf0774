"""How alike two runs are: linear CKA of their representations, ARI of their clusterings.

Linear CKA (Kornblith et al. 2019, centred kernel alignment) of two sample matrices X (n × d_A)
and Y (n × d_B) whose rows are the same frames. Each matrix is centred once; the linear kernel
needs no n × n Gram matrix: CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) with the biased HSIC estimator
(in [0, 1], the paper's figures), and the same from row norms for the unbiased HSIC estimator of
Song et al. 2012 (≈ 0 for unrelated representations even when n is small against the dimension;
may fall slightly below 0). Cost: n·d_A·d_B multiply-adds per pair (5,000 frames, 768 × 768: 2.9 G);
memory: the centred copies.

The adjusted Rand index of two clusterings is computed from their contingency table (pair counts),
as scikit-learn's `adjusted_rand_score` is.

Pure: numpy arrays in, numbers out (the `compare` stage samples the frames and writes the tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Centred:
    """One layer's sample matrix, centred once, with what every CKA of it needs."""

    x: np.ndarray  # n × d float32, column means (float64) removed
    gram_norm: float  # ‖XᵀX‖_F, float64 products
    row_sq: np.ndarray  # ‖x_i‖², float64
    total_sq: float  # Σ‖x_i‖² = tr(XXᵀ)

    @classmethod
    def of(cls, x: np.ndarray) -> "Centred":
        x = np.asarray(x, np.float32)
        xc = (x - x.mean(axis=0, dtype=np.float64)).astype(np.float32)
        x64 = xc.astype(np.float64)
        row_sq = np.einsum("ij,ij->i", x64, x64)
        return cls(xc, float(np.linalg.norm(x64.T @ x64)), row_sq, float(row_sq.sum()))

    @property
    def n(self) -> int:
        return self.x.shape[0]


def _debiased_hsic(xty: float, a: Centred, b: Centred) -> float:
    """n(n-3)·HSIC_unbiased (Song et al. 2012) of two centred linear kernels, without the kernels
    (Kornblith et al.'s feature-space form; the estimator does not change when features are centred)."""
    n = a.n
    return xty - n / (n - 2) * float(a.row_sq @ b.row_sq) + a.total_sq * b.total_sq / ((n - 1) * (n - 2))


def cka_pair(a: Centred, b: Centred) -> tuple[float, float]:
    """Linear CKA of two centred sample matrices of the same frames: (biased, debiased)."""
    if a.n != b.n:
        raise ValueError(f"CKA needs the same frames in both matrices, got {a.n} and {b.n} rows")
    # float64 products: the debiased estimator subtracts terms of nearly equal size; the float32
    # copies only halve the memory of the layers held
    xty = float(np.square(a.x.astype(np.float64).T @ b.x.astype(np.float64)).sum())  # ‖XᵀY‖²_F = tr(K_c L_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        biased = np.float64(xty) / (a.gram_norm * b.gram_norm)  # NaN for a constant layer
        self_a = _debiased_hsic(a.gram_norm ** 2, a, a)
        self_b = _debiased_hsic(b.gram_norm ** 2, b, b)
        debiased = _debiased_hsic(xty, a, b) / np.sqrt(self_a * self_b) if self_a > 0 and self_b > 0 else np.nan
    return float(biased), float(debiased)


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA of two n × d matrices whose rows are the same examples."""
    biased, unbiased = cka_pair(Centred.of(x), Centred.of(y))
    return unbiased if debiased else biased


def adjusted_rand_index(counts: np.ndarray) -> float:
    """ARI from a contingency table (scikit-learn's adjusted_rand_score, from pair counts)."""
    c = np.asarray(counts, np.float64)
    n = c.sum()
    sum_sq = float(np.square(c).sum())
    rows, cols = c.sum(axis=1), c.sum(axis=0)
    tp = sum_sq - n
    fp = float(np.square(cols).sum()) - sum_sq
    fn = float(np.square(rows).sum()) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))
