"""Projection-weighted CCA (PWCCA) of a layer against phone, word and acoustic targets.

The layer-wise measure of Pasad et al. ("Comparative layer-wise analysis of self-supervised speech
models", ICASSP 2023; code: ankitapasad/layerwise-analysis, `codes/tools/cca_core.py`, after Google's
SVCCA and Morcos et al. 2018), fitted on some speakers and scored on the others:

  fit (train speakers)  each view is centred and reduced to its principal components that explain
        `variance_kept` of its variance (0.99 for vectors, as SVCCA; every non-degenerate component
        for one-hot targets, whose rare labels carry little variance); the PC scores are whitened with
        a ridge: 1 / sqrt(λ_i + ε · λ_max) (ε = `epsilon`, 1e-4 by default; Pasad et al. add ε to the
        diagonal of max-normalised covariances: the same ridge); the SVD of the whitened
        cross-covariance gives D = min(d_x, d_y) pairs of canonical directions.
  score (test speakers) both views are projected on the fitted directions; ρ_k is the Pearson
        correlation of pair k on the test frames (signed, so an overfit direction counts against the
        score rather than for it); PWCCA = Σ_k α_k ρ_k with Morcos's projection weights
        α_k ∝ Σ_j |⟨p_k, z_j⟩| (p_k: the test canonical variates of one view, orthonormalised by QR;
        z_j: that view's centred test columns), computed on the view with fewer retained dimensions,
        as Pasad et al. choose.
  interval   test speakers are resampled (speaker bootstrap, `bootstrap.interval`): the directions and
        the weights α stay fixed, the correlations ρ_k are recomputed from per-speaker sums (n, Σu,
        Σv, Σu², Σv², Σuv per direction), so no refit and no frame is touched per resample.

Targets: `cca_phone` (frame vs one-hot phone), `cca_word` (mean-pooled word token vs one-hot word,
words with ≥ `min_tokens` tokens, 5 by default), `cca_mel` (frame vs its log-mel frame,
`logmel.log_mel_frames`). Too few speakers, labels or words give a null score with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from pipeline.algorithms.bootstrap import (CONFIDENCE, N_RESAMPLES, Interval, interval, jackknife_weights,
                                           null_interval, resample_weights)
from pipeline.algorithms.probe import split_speakers

EPSILON = 1e-4
VARIANCE_KEPT = 0.99
MIN_WORD_TOKENS = 5
_RANK_TOL = 1e-10  # components with variance below this share of the largest are degenerate


@dataclass(frozen=True)
class CcaFit:
    """Canonical directions fitted on training rows: u = (x − mean_x) @ proj_x, v = (y − mean_y) @ proj_y."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    proj_x: np.ndarray  # d_x × D
    proj_y: np.ndarray  # d_y × D
    train_correlations: np.ndarray  # (D,), descending

    @property
    def n_directions(self) -> int:
        return self.proj_x.shape[1]


@dataclass(frozen=True)
class CcaScore:
    """A PWCCA score on held-out speakers with its speaker-bootstrap interval."""

    interval: Interval  # value, ci_low, ci_high, method, n_resamples, reason
    n_train: int = 0
    n_test: int = 0
    n_directions: int = 0
    # the bootstrap's replicates (weights `bootstrap.resample_weights(test speakers, n, seed)` over the
    # sorted test speaker names), for paired differences: `bootstrap.paired_difference`
    resampled: np.ndarray | None = field(default=None, compare=False, repr=False)
    jackknife: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def value(self) -> float | None:
        return self.interval.value


def _whitener(z: np.ndarray, variance_kept: float, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, d × r matrix) mapping centred rows to whitened principal-component scores."""
    mean = z.mean(axis=0)
    zc = z - mean
    cov = zc.T @ zc / max(1, z.shape[0] - 1)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    top = lam[0] if lam.size and lam[0] > 0 else 0.0
    keep = lam > _RANK_TOL * top if top > 0 else np.zeros(lam.size, bool)
    if variance_kept < 1.0 and keep.any():
        share = np.cumsum(lam[keep]) / lam[keep].sum()
        keep[np.flatnonzero(keep)[np.searchsorted(share, variance_kept) + 1:]] = False
    lam, vec = lam[keep], vec[:, keep]
    return mean, vec / np.sqrt(lam + epsilon * top)


def fit_cca(x, y, epsilon: float = EPSILON, variance_kept_x: float = VARIANCE_KEPT,
            variance_kept_y: float = VARIANCE_KEPT) -> CcaFit:
    """Regularised CCA of rows x (n × d_x) and y (n × d_y): whitened PCs, then one SVD."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"CCA needs two n × d matrices of the same rows, got {x.shape} and {y.shape}")
    mean_x, wx = _whitener(x, variance_kept_x, epsilon)
    mean_y, wy = _whitener(y, variance_kept_y, epsilon)
    if wx.shape[1] == 0 or wy.shape[1] == 0:
        raise ValueError("a view of the CCA has no variance on the training rows")
    cross = (x - mean_x).T @ (y - mean_y) / max(1, x.shape[0] - 1)  # d_x × d_y: cheaper than whitening rows
    u, s, vt = np.linalg.svd(wx.T @ cross @ wy, full_matrices=False)
    d = min(wx.shape[1], wy.shape[1])
    return CcaFit(mean_x, mean_y, wx @ u[:, :d], wy @ vt[:d].T, s[:d])


def _projections(fit: CcaFit, x, y) -> tuple[np.ndarray, np.ndarray]:
    return ((np.asarray(x, np.float64) - fit.mean_x) @ fit.proj_x,
            (np.asarray(y, np.float64) - fit.mean_y) @ fit.proj_y)


def canonical_correlations(fit: CcaFit, x, y) -> np.ndarray:
    """Pearson correlation of each pair of canonical variates on the rows (x, y) (e.g. held out)."""
    u, v = _projections(fit, x, y)
    return _correlations(*_moments(u, v))


def _moments(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(6 × D) sums: n, Σu, Σv, Σu², Σv², Σuv per direction."""
    n = np.full(u.shape[1], float(u.shape[0]))
    return np.stack([n, u.sum(0), v.sum(0), (u * u).sum(0), (v * v).sum(0), (u * v).sum(0)])


def _correlations(n, su, sv, suu, svv, suv) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = suv - su * sv / n
        var_u, var_v = suu - su * su / n, svv - sv * sv / n
        return np.where((var_u > 0) & (var_v > 0), cov / np.sqrt(np.maximum(var_u * var_v, 1e-300)), 0.0)


def projection_weights(variates: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Morcos et al.'s α: how much of the view's (centred) columns each canonical variate accounts for."""
    q, _ = np.linalg.qr(variates - variates.mean(axis=0))
    alpha = np.abs(q.T @ (view - view.mean(axis=0))).sum(axis=1)
    total = alpha.sum()
    return alpha / total if total > 0 else np.full(alpha.size, 1.0 / alpha.size)


def pwcca(x_train, y_train, x_test, y_test, speakers_test=None, n_resamples: int = N_RESAMPLES, seed: int = 0,
          method: str = "bca", confidence: float = CONFIDENCE, epsilon: float = EPSILON,
          variance_kept_x: float = VARIANCE_KEPT, variance_kept_y: float = VARIANCE_KEPT) -> CcaScore:
    """PWCCA fitted on (x_train, y_train), scored on (x_test, y_test), with a bootstrap over the test
    rows' speakers (`speakers_test`; no interval when None or a single speaker)."""
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on the loaded 2-core machine threaded OpenBLAS made eigh of a 768 × 768
    # covariance 12x slower (4.3 s against 0.36 s), as probe.py found for its fit
    with threadpool_limits(1, user_api="blas"):
        return _pwcca(x_train, y_train, x_test, y_test, speakers_test, n_resamples, seed, method, confidence,
                      epsilon, variance_kept_x, variance_kept_y)


def _pwcca(x_train, y_train, x_test, y_test, speakers_test, n_resamples, seed, method, confidence, epsilon,
           variance_kept_x, variance_kept_y) -> CcaScore:
    x_test, y_test = np.asarray(x_test, np.float64), np.asarray(y_test, np.float64)
    n_train, n_test = len(x_train), len(x_test)
    if n_test < 2:
        return CcaScore(null_interval(f"{n_test} held-out row(s): CCA needs two or more"), n_train, n_test)
    try:
        fit = fit_cca(x_train, y_train, epsilon, variance_kept_x, variance_kept_y)
    except ValueError as err:
        return CcaScore(null_interval(str(err)), n_train, n_test)
    u, v = _projections(fit, x_test, y_test)
    rho = _correlations(*_moments(u, v))
    x_side = fit.proj_x.shape[0] <= fit.proj_y.shape[0]  # dimensions kept; the smaller view weights
    alpha = projection_weights(u, x_test) if x_side else projection_weights(v, y_test)
    value = float(alpha @ rho)
    if speakers_test is None:
        return CcaScore(null_interval("no test speakers given: no speaker bootstrap", value), n_train, n_test,
                        fit.n_directions)
    names, s = np.unique(np.asarray(speakers_test, dtype=object).astype(str), return_inverse=True)
    if names.size < 2:
        return CcaScore(null_interval("one test speaker: no speaker bootstrap", value), n_train, n_test,
                        fit.n_directions)
    s = s.ravel()
    per_speaker = np.stack([_moments(u[s == i], v[s == i]) for i in range(names.size)])  # S × 6 × D

    def scores(w: np.ndarray) -> np.ndarray:
        sums = np.einsum("bs,skd->bkd", w.astype(np.float64), per_speaker)
        return _correlations(*sums.transpose(1, 0, 2)) @ alpha

    resampled = scores(resample_weights(names.size, n_resamples, seed))
    jackknife = scores(jackknife_weights(names.size)) if method == "bca" else None
    return CcaScore(interval(value, resampled, jackknife, method, confidence), n_train, n_test, fit.n_directions,
                    resampled, jackknife)


def _one_hot(labels: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    out = np.zeros((labels.size, vocabulary.size))
    out[np.arange(labels.size), np.searchsorted(vocabulary, labels)] = 1.0
    return out


def _split(speakers, seed: int) -> np.ndarray | str:
    try:
        return split_speakers(speakers, seed)
    except ValueError:
        names = sorted({str(s) for s in speakers})
        return f"{len(names)} speaker(s) {names[:3]}: a speaker-disjoint train/test split needs at least two speakers"


def _labelled_pwcca(x: np.ndarray, labels: np.ndarray, speakers: np.ndarray, seed: int, what: str,
                    **kw) -> CcaScore:
    test = _split(speakers, seed)
    if isinstance(test, str):
        return CcaScore(null_interval(test))
    vocabulary = np.unique(labels[~test])
    if vocabulary.size < 2:
        return CcaScore(null_interval(f"the training speakers have {vocabulary.size} {what}(s); CCA needs two or more"))
    seen = test & np.isin(labels, vocabulary)  # a test label never trained on has no target column
    return pwcca(x[~test], _one_hot(labels[~test], vocabulary), x[seen], _one_hot(labels[seen], vocabulary),
                 speakers[seen], seed=seed, variance_kept_y=1.0, **kw)


def cca_phone(x, labels, speakers, seed: int = 0, **kw) -> CcaScore:
    """PWCCA of frames (n × d) against their one-hot phone, train/test split by speaker
    (`probe.split_speakers`, the probe's split). Test frames whose phone no training frame has are
    dropped. `kw`: n_resamples, method, confidence, epsilon, variance_kept_x."""
    x = np.asarray(x)
    labels = np.asarray(labels, dtype=object).astype(str)
    speakers = np.asarray(speakers, dtype=object).astype(str)
    if not (x.ndim == 2 and x.shape[0] == labels.size == speakers.size):
        raise ValueError(f"cca_phone needs x (n × d), labels (n) and speakers (n), got {x.shape}, "
                         f"{labels.shape}, {speakers.shape}")
    return _labelled_pwcca(x, labels, speakers, seed, "label", **kw)


def mean_pool(x, token_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids in first-seen order, mean vector of each token's rows, each token's first row)."""
    ids = np.asarray(token_ids, dtype=object).astype(str)
    names, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    token = rank[inverse.ravel()]
    member = sp.csr_array((np.ones(token.size), (token, np.arange(token.size))), shape=(names.size, token.size))
    sizes = np.bincount(token, minlength=names.size)
    return names[order], (member @ np.asarray(x, np.float64)) / sizes[:, None], first[order]


def cca_word(x, token_ids, words, speakers, min_tokens: int = MIN_WORD_TOKENS, seed: int = 0, **kw) -> CcaScore:
    """PWCCA of word tokens (frames mean-pooled per `token_ids`, e.g. utterance + word start) against
    their one-hot word, for words with at least `min_tokens` tokens in the data given; split by speaker.
    Frames are per row of x; `words` and `speakers` per frame (constant within a token)."""
    x = np.asarray(x)
    words = np.asarray(words, dtype=object).astype(str)
    speakers = np.asarray(speakers, dtype=object).astype(str)
    if not (x.ndim == 2 and x.shape[0] == words.size == speakers.size == len(token_ids)):
        raise ValueError(f"cca_word needs x (n × d), token_ids, words and speakers (n each), got {x.shape}, "
                         f"{len(token_ids)}, {words.shape}, {speakers.shape}")
    if x.shape[0] == 0:
        return CcaScore(null_interval("no word frames"))
    _, pooled, first = mean_pool(x, token_ids)
    token_words, token_speakers = words[first], speakers[first]
    vocabulary, counts = np.unique(token_words, return_counts=True)
    frequent = np.isin(token_words, vocabulary[counts >= min_tokens])
    n_words = int((counts >= min_tokens).sum())
    if n_words < 2:
        return CcaScore(null_interval(f"{n_words} word(s) have {min_tokens} or more tokens; cca_word needs two "
                                      "(lower min_tokens or use more utterances)"))
    return _labelled_pwcca(pooled[frequent], token_words[frequent], token_speakers[frequent], seed, "word", **kw)


def cca_mel(x, mel, speakers, seed: int = 0, **kw) -> CcaScore:
    """PWCCA of frames (n × d) against the log-mel frames of the same rows (n × 80), split by speaker."""
    x, mel = np.asarray(x), np.asarray(mel)
    speakers = np.asarray(speakers, dtype=object).astype(str)
    if not (x.ndim == 2 and mel.ndim == 2 and x.shape[0] == mel.shape[0] == speakers.size):
        raise ValueError(f"cca_mel needs x (n × d), mel (n × m) and speakers (n), got {x.shape}, {mel.shape}, "
                         f"{speakers.shape}")
    test = _split(speakers, seed)
    if isinstance(test, str):
        return CcaScore(null_interval(test))
    return pwcca(x[~test], mel[~test], x[test], mel[test], speakers[test], seed=seed, **kw)
