"""Agreement between a labelling (phones, characters, CTC tokens) and a clustering of frames.

One contingency table per call (`cluster_metrics` builds it from per-frame arrays; streaming
callers accumulate it themselves and call `contingency_metrics`); every score is derived from it. Values equal scikit-learn's
functions (to 1e-12, tested) called as the original's `evaluate_clusters.py` calls them:
`f(labels_true=labels, labels_pred=clusters)`, AMI with `average_method='arithmetic'`, logs in nats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import mutual_info_score, silhouette_score

try:  # private, stable since scikit-learn 0.x; the fallback below keeps us correct if it moves
    from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information
except ImportError:  # pragma: no cover
    expected_mutual_information = None

# Integer labels spanning at most this many values are factorised with bincount (no sort).
_BINCOUNT_MAX_RANGE = 1 << 24
# Contingency tables up to this many cells are counted densely with bincount.
_DENSE_MAX_CELLS = 1 << 24


class ClusterMajority(NamedTuple):
    """One cluster's majority label: `count` of its `cluster_size` frames, `share` = count / size."""

    cluster: object
    label: object
    count: int
    cluster_size: int
    share: float


class Silhouette(NamedTuple):
    value: float
    n: int  # points actually scored


class _Table(NamedTuple):
    labels: np.ndarray  # sorted distinct labels (rows)
    clusters: np.ndarray  # sorted distinct clusters (columns)
    counts: sp.csr_array  # int64, labels x clusters, sorted indices


def _as_1d(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN; drop unlabelled frames before scoring")
    if a.dtype == object and (a == None).any():  # noqa: E711 (elementwise on object arrays)
        raise ValueError(f"{name} contains None; drop unlabelled frames before scoring")
    return a


def _factorize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, int64 codes), as np.unique(return_inverse=True) gives them."""
    if a.dtype.kind in "iub" and a.size:
        lo, hi = int(a.min()), int(a.max())
        if hi - lo < _BINCOUNT_MAX_RANGE:
            shifted = a.astype(np.int64) - lo
            present = np.flatnonzero(np.bincount(shifted, minlength=hi - lo + 1))
            lookup = np.full(hi - lo + 1, -1, dtype=np.int64)
            lookup[present] = np.arange(present.size)
            return (present + lo).astype(a.dtype), lookup[shifted]
    uniques, codes = np.unique(a, return_inverse=True)
    return uniques, codes.astype(np.int64).ravel()


def _table(labels, clusters) -> _Table:
    lab = _as_1d(labels, "labels")
    clu = _as_1d(clusters, "clusters")
    if lab.shape != clu.shape:
        raise ValueError(f"labels has {lab.size} frames but clusters has {clu.size}")
    if lab.size == 0:
        raise ValueError("no frames to score (labels and clusters are empty)")
    lab_values, li = _factorize(lab)
    clu_values, ci = _factorize(clu)
    shape = (lab_values.size, clu_values.size)
    if shape[0] * shape[1] <= _DENSE_MAX_CELLS:
        dense = np.bincount(li * shape[1] + ci, minlength=shape[0] * shape[1])
        counts = sp.csr_array(dense.reshape(shape).astype(np.int64))
    else:
        counts = sp.coo_array((np.ones(li.size, dtype=np.int64), (li, ci)), shape=shape).tocsr()
        counts.sum_duplicates()
    return _Table(lab_values, clu_values, counts)


def _entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of a labelling from its class counts; scikit-learn's `_entropy` exactly."""
    if counts.size == 1:
        return 0.0
    pi = counts.astype(np.float64)
    pi_sum = np.sum(pi)
    return float(-np.sum((pi / pi_sum) * (np.log(pi) - math.log(pi_sum))))


def _ami(mi: float, h_true: float, h_pred: float, counts: sp.csr_array, n: int) -> float:
    n_labels, n_clusters = counts.shape
    if n_labels == n_clusters == 1:
        return 1.0
    if n_labels == 1 or n_clusters == 1:
        return 0.0
    if expected_mutual_information is None:  # pragma: no cover
        from sklearn.metrics import adjusted_mutual_info_score

        rows, cols = counts.nonzero()
        lab = np.repeat(rows, counts[rows, cols])
        clu = np.repeat(cols, counts[rows, cols])
        return float(adjusted_mutual_info_score(lab, clu, average_method="arithmetic"))
    emi = expected_mutual_information(counts, n)
    eps = np.finfo("float64").eps
    denominator = float(np.mean([h_true, h_pred])) - emi
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    numerator = mi - emi
    numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
    return float(numerator / denominator)


def _as_counts(counts) -> sp.csr_array:
    """A labels x clusters count table without empty rows/columns, as int64 CSR (sorted indices)."""
    c = sp.csr_array(counts) if sp.issparse(counts) else sp.csr_array(np.asarray(counts))
    if c.ndim != 2:
        raise ValueError(f"a contingency table must be 2-D (labels x clusters), got shape {c.shape}")
    if c.dtype.kind not in "iu" or (c.data < 0).any():
        raise ValueError(f"a contingency table holds non-negative integer counts, got dtype {c.dtype}")
    c = c.astype(np.int64)
    c = c[np.ravel(c.sum(axis=1)) > 0][:, np.ravel(c.sum(axis=0)) > 0]  # empty clusters do not count
    if c.shape[0] == 0:
        raise ValueError("no frames to score (the contingency table sums to 0)")
    c = sp.csr_array(c)
    c.sum_duplicates()
    c.sort_indices()
    return c


def contingency_metrics(counts) -> dict[str, float]:
    """The scores of `cluster_metrics` from a labels x clusters table of frame counts.

    For streaming: accumulate the table batch by batch (dense numpy or scipy sparse, integer),
    then score it once. All-zero rows and columns (labels never seen, empty clusters) are
    dropped first, so the result equals `cluster_metrics` on the frames the table counts.
    """
    c = _as_counts(counts)
    n = int(c.sum())
    label_counts = np.ravel(c.sum(axis=1))
    cluster_counts = np.ravel(c.sum(axis=0))
    h_label, h_cluster = _entropy(label_counts), _entropy(cluster_counts)
    mi = float(mutual_info_score(None, None, contingency=c))

    homogeneity = mi / h_label if h_label else 1.0
    completeness = mi / h_cluster if h_cluster else 1.0
    hc = homogeneity + completeness
    v_measure = 0.0 if hc == 0.0 else 2.0 * homogeneity * completeness / hc
    if c.shape == (1, 1):
        nmi = 1.0
    elif mi == 0:
        nmi = 0.0
    else:
        nmi = float(mi / np.mean([h_label, h_cluster]))

    return {
        "ami": _ami(mi, h_label, h_cluster, c, n),
        "mi": mi,
        "nmi": nmi,
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "v_measure": float(v_measure),
        "cluster_purity": float(c.max(axis=0).sum() / n),
        "label_purity": float(c.max(axis=1).sum() / n),
        "pnmi": float(homogeneity),
        "n": float(n),
        "n_labels": float(c.shape[0]),
        "n_clusters": float(c.shape[1]),
    }


def cluster_metrics(labels, clusters) -> dict[str, float]:
    """Every agreement score of `clusters` (predicted) against `labels` (reference), per frame.

    `labels` and `clusters` are 1-D and of any sortable dtype (ints or strings); the caller drops
    unlabelled frames first (None / NaN raise). Returns:
      ami, mi (nats), nmi (arithmetic), homogeneity, completeness, v_measure: scikit-learn's values;
      cluster_purity: sum over clusters of its largest label count / n (the reference's `purity`;
        HuBERT calls it "phone purity");
      label_purity: sum over labels of its largest cluster count / n (HuBERT's "cluster purity");
      pnmi: I(label; cluster) / H(label) (HuBERT's phone-normalised MI; equals homogeneity, 1.0
        when there is a single label, as scikit-learn's homogeneity);
      n, n_labels, n_clusters (as floats).
    """
    return contingency_metrics(_table(labels, clusters).counts)


def _scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def majority_mapping(labels, clusters) -> list[ClusterMajority]:
    """Each cluster's most frequent label, clusters in sorted order.

    Ties go to the smallest label in sort order, so the mapping is deterministic.
    """
    table = _table(labels, clusters)
    return majority_mapping_from_contingency(table.counts, table.labels, table.clusters)


def majority_mapping_from_contingency(counts, labels, clusters=None) -> list[ClusterMajority]:
    """`majority_mapping` from a labels x clusters count table.

    `labels` names the rows; `clusters` names the columns (default 0..k-1). Ties go to the
    earliest row, so pass rows in label order for the same tie-breaking as `majority_mapping`.
    Empty clusters (all-zero columns) are left out.
    """
    by_cluster = sp.csc_array(counts if sp.issparse(counts) else np.asarray(counts))
    by_cluster.sum_duplicates()
    by_cluster.sort_indices()
    n_rows, n_cols = by_cluster.shape
    if len(labels) != n_rows or (clusters is not None and len(clusters) != n_cols):
        raise ValueError(f"a {n_rows} x {n_cols} table needs {n_rows} labels and {n_cols} clusters, "
                         f"got {len(labels)} and {'default' if clusters is None else len(clusters)}")
    out = []
    for j in range(n_cols):
        start, end = by_cluster.indptr[j], by_cluster.indptr[j + 1]
        rows, col = by_cluster.indices[start:end], by_cluster.data[start:end]
        size = int(col.sum())
        if size == 0:
            continue
        best = int(np.argmax(col))  # first maximum = earliest row (indices are sorted)
        cluster = j if clusters is None else _scalar(clusters[j])
        out.append(ClusterMajority(cluster, _scalar(labels[rows[best]]), int(col[best]), size,
                                   float(col[best]) / size))
    return out


def silhouette(vectors, clusters, max_points: int = 10_000, seed: int = 0) -> Silhouette:
    """Euclidean silhouette on at most `max_points` frames drawn without replacement (seeded).

    Returns the value and the number of frames scored; NaN when the sample holds fewer than two
    clusters or every frame is its own cluster (silhouette undefined).
    """
    x = np.asarray(vectors)
    clu = _as_1d(clusters, "clusters")
    if x.ndim != 2 or x.shape[0] != clu.size:
        raise ValueError(f"vectors must be n x d with n = {clu.size} clusters, got {x.shape}")
    n = clu.size
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        x, clu = x[idx], clu[idx]
    n_distinct = np.unique(clu).size
    if not 2 <= n_distinct <= clu.size - 1:
        return Silhouette(float("nan"), int(clu.size))
    return Silhouette(float(silhouette_score(x, clu, metric="euclidean")), int(clu.size))
