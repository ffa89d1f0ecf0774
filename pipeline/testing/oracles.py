"""Slow, textbook forms of what the package computes fast, to check the fast code against."""

from __future__ import annotations

import numpy as np


def gram_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Kornblith et al.'s CKA from n × n Gram matrices: biased = HKH centring, debiased = U-centring."""
    def centre(gram):
        gram = gram.copy()
        n = len(gram)
        if debiased:
            np.fill_diagonal(gram, 0)
            means = gram.sum(axis=0) / (n - 2)
            means -= means.sum() / (2 * (n - 1))
            gram -= means[:, None] + means[None, :]
            np.fill_diagonal(gram, 0)
            return gram
        h = np.eye(n) - 1.0 / n
        return h @ gram @ h

    k, lm = centre(x @ x.T), centre(y @ y.T)
    return float((k * lm).sum() / (np.linalg.norm(k) * np.linalg.norm(lm)))
