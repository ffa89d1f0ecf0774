"""Intervals by a bootstrap over speakers: contingency metrics, paired differences, probe accuracy.

Frames of one speaker are not independent, so the unit of resampling is the speaker: draw speakers
with replacement B times (seeded), rebuild the statistic from per-speaker sufficient statistics (a
labels × clusters table per speaker merges exactly by summing; a probe's correct/total counts per
speaker and label), recompute. No frame is touched again: 1,000 BCa resamples of every score for
13 layers (40 speakers, 40 labels × 50 clusters) take ~1.5–3 s on one loaded core (`_bench()` below).

Intervals (95 % by default) correct for the bootstrap's bias, which a plain percentile interval does
not (it can exclude the estimate for AMI):
  bca    bias-corrected and accelerated (Efron 1987): z0 from the share of resamples below the
         estimate, the acceleration from a jackknife over speakers (leave one speaker out);
  basic  reverse percentile: [2 θ̂ − q(1 − α/2), 2 θ̂ − q(α/2)].
BCa falls back to basic (and says so in `method`) when it is undefined: every resample on one side
of the estimate, a degenerate jackknife, or both adjusted levels beyond one outermost resample.

AMI's expected mutual information (EMI) costs 50–500 ms per table (scikit-learn's exact sum): far
too slow for 1,000 resamples. Each resample's EMI is the point estimate's exact EMI scaled by the
asymptotic EMI ≈ (R − 1)(C − 1) / 2N (R, C: non-empty labels and clusters; Vinh et al. 2010) of the
resample over that of the full table. EMI is ~1–3 % of MI at these sizes and moves by well under 1 %
of itself between resamples, so the interval's error is far below its width (tested against the
exact EMI; pass `exact_emi=True` to pay for the exact one).

A resample that draws a speaker twice counts the same frames twice: its N is that of the full data,
but it holds ~63 % of the distinct speakers, so on sparse tables its MI carries the plug-in bias of a
smaller sample, which AMI's EMI (computed for N independent frames) does not remove. Left alone, the
resampled AMI sits above the estimate (embedded run, 8 speakers, 40 labels × 50 clusters, 15 k frames:
mean 0.235 against 0.220, 997 of 1,000 resamples above, sd 0.0071 against a jackknife standard error of
0.0024) and both BCa and basic intervals miss the estimate. So each resample's EMI is taken at the
effective sample size of duplicated speakers, N_eff = N² / Σ_s w_s² n_s (w_s: the speaker's draws, n_s:
its frames; N_eff = N without duplicates, so the point estimate and the jackknife are unchanged):
EMI × N / N_eff. On the embedded run the resampled AMI then centres on the estimate (mean 0.2220, 29 %
below) with sd 0.0028, in line with the jackknife (`duplication_adjusted=False` turns this off).
MI, NMI, homogeneity and the other plug-in scores are resampled as they are: their bootstrap bias is the
estimator's own, which the basic and BCa intervals correct.

Edge cases give nulls with a reason, never an exception: one speaker (no speaker bootstrap: the
point estimate stays, the interval is null), a tier with fewer than two labels (every score null).
Pure numpy/scipy; point estimates come from `metrics.contingency_metrics` itself, so they equal the
`metrics` table's values exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr, ndtri, xlogy

from pipeline.algorithms import metrics as M

N_RESAMPLES = 1000
# Fewer speakers than this give a bootstrap distribution of a handful of atoms (2 speakers: 3 distinct
# resamples), whose quantiles are not an interval; the stages store no interval then (a reason instead).
MIN_SPEAKERS = 5
CONFIDENCE = 0.95
METHODS = ("bca", "basic")
# the contingency scores that get an interval (n, n_labels, n_clusters are counts, not estimates)
CONTINGENCY_SCORES = ("ami", "mi", "nmi", "homogeneity", "completeness", "v_measure",
                      "cluster_purity", "label_purity", "pnmi")
_CHUNK_CELLS = 1 << 22  # resampled tables scored per chunk: ≤ 4 M cells (32 MB of float64)
_EPS = np.finfo(np.float64).eps
_XLOGX_TABLE_MAX = 1 << 24  # counts up to 16 M use a lookup table of x log x (128 MB at most)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval. `value` is None when the score is undefined;
    `ci_low`/`ci_high` are None when no interval exists; `reason` says why in either case."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str | None  # "bca" | "basic" (the one actually used), None without interval
    n_resamples: int  # 0 without interval
    reason: str | None = None

    def as_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "method": self.method,
                "n_resamples": self.n_resamples, "reason": self.reason}


@dataclass(frozen=True)
class Difference:
    """θ(a) − θ(b) from one paired bootstrap (the same speakers drawn for both)."""

    a: float | None
    b: float | None
    diff: Interval  # diff.value = a − b
    significant: bool | None  # the interval excludes 0 (None without interval)


def null_interval(reason: str, value: float | None = None) -> Interval:
    return Interval(value, None, None, None, 0, reason)


# --------------------------------------------------------------------------- resampling and intervals

def resample_weights(n_speakers: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples × n_speakers) int: how often each speaker is drawn in each resample (each row
    sums to n_speakers). Pass the same matrix to two statistics to pair them."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_speakers, np.full(n_speakers, 1.0 / n_speakers), size=n_resamples).astype(np.int64)


def jackknife_weights(n_speakers: int) -> np.ndarray:
    """(n_speakers × n_speakers) int: row i leaves speaker i out."""
    return np.ones((n_speakers, n_speakers), np.int64) - np.eye(n_speakers, dtype=np.int64)


def interval(value: float | None, resampled: np.ndarray, jackknife: np.ndarray | None = None,
             method: str = "bca", confidence: float = CONFIDENCE) -> Interval:
    """The interval of `value` from its bootstrap replicates (`resampled`, 1-D) and, for BCa, its
    leave-one-out replicates (`jackknife`). Non-finite replicates are dropped."""
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}: use one of {', '.join(METHODS)}")
    if value is None or not math.isfinite(value):
        return null_interval("the score is undefined on the full data")
    theta = np.asarray(resampled, np.float64)
    theta = theta[np.isfinite(theta)]
    if theta.size < 2:
        return null_interval("fewer than two resamples gave a defined score", value)
    alpha = (1.0 - confidence) / 2.0
    if np.ptp(theta) <= 1e-12 * max(1.0, abs(value)):
        lo = hi = float(theta[0])
        return Interval(value, min(lo, value), max(hi, value), method, int(theta.size))
    if method == "bca":
        bounds = _bca_quantiles(value, theta, jackknife, alpha)
        if bounds is not None:
            lo, hi = np.quantile(theta, bounds)
            return Interval(value, float(lo), float(hi), "bca", int(theta.size))
    q_lo, q_hi = np.quantile(theta, [alpha, 1.0 - alpha])
    return Interval(value, float(2 * value - q_hi), float(2 * value - q_lo), "basic", int(theta.size))


def _bca_quantiles(value: float, theta: np.ndarray, jackknife: np.ndarray | None,
                   alpha: float) -> tuple[float, float] | None:
    share_below = (np.count_nonzero(theta < value) + 0.5 * np.count_nonzero(theta == value)) / theta.size
    if not 0.0 < share_below < 1.0:
        return None
    z0 = float(ndtri(share_below))
    accel = 0.0
    if jackknife is not None:
        jack = np.asarray(jackknife, np.float64)
        jack = jack[np.isfinite(jack)]
        if jack.size < 2:
            return None
        d = jack.mean() - jack
        denom = 6.0 * float(np.sum(d ** 2)) ** 1.5
        accel = float(np.sum(d ** 3)) / denom if denom > 0 else 0.0
    out = []
    for z_alpha in (ndtri(alpha), ndtri(1.0 - alpha)):
        shift = z0 + z_alpha
        denom = 1.0 - accel * shift
        if denom <= 0:
            return None
        out.append(float(ndtr(z0 + shift / denom)))
    if not all(0.0 <= q <= 1.0 for q in out) or any(math.isnan(q) for q in out):
        return None
    # both adjusted levels beyond the same outermost resample put both endpoints on one extreme
    # replicate, a zero-width interval: BCa is not informative there, basic is used
    if max(out) < 0.5 / theta.size or min(out) > 1.0 - 0.5 / theta.size:
        return None
    return out[0], out[1]


def paired_difference(a: Interval, b: Interval, resampled_a: np.ndarray, resampled_b: np.ndarray,
                      jackknife_a: np.ndarray | None = None, jackknife_b: np.ndarray | None = None,
                      method: str = "bca", confidence: float = CONFIDENCE) -> Difference:
    """a − b with the interval of the paired replicates (drawn with the same weights)."""
    if a.value is None or b.value is None:
        return Difference(a.value, b.value, null_interval(a.reason or b.reason or "a score is undefined"), None)
    jack = None if jackknife_a is None or jackknife_b is None else np.asarray(jackknife_a) - np.asarray(jackknife_b)
    diff = interval(a.value - b.value, np.asarray(resampled_a) - np.asarray(resampled_b), jack, method, confidence)
    if diff.ci_low is None:
        return Difference(a.value, b.value, diff, None)
    return Difference(a.value, b.value, diff, bool(diff.ci_low > 0 or diff.ci_high < 0))


# --------------------------------------------------------------------------- per-speaker contingency tables

class SpeakerTables:
    """Per-speaker labels × clusters frame counts, kept sparse: an (S × M) CSR matrix over the M cells
    that are non-zero for some speaker, with each cell's (label, cluster) index.

    Build with `from_dense` ((S, L, K) array: analyze's `_Contingency.counts` with `by=speaker`),
    `from_tables` (one 2-D table per speaker, dense or scipy sparse) or `from_frames` (per-frame arrays).
    """

    def __init__(self, by_speaker: sp.csr_array, cell_label: np.ndarray, cell_cluster: np.ndarray,
                 shape: tuple[int, int], speakers: Sequence | None = None):
        self.by_speaker = by_speaker
        self.cell_label, self.cell_cluster = cell_label, cell_cluster
        self.shape = shape
        n = by_speaker.shape[0]
        self.speakers = np.asarray(list(range(n)) if speakers is None else list(speakers), dtype=object)
        if self.speakers.size != n:
            raise ValueError(f"{n} speaker tables but {self.speakers.size} speaker names")

    @classmethod
    def from_dense(cls, counts, speakers: Sequence | None = None) -> SpeakerTables:
        c = np.asarray(counts)
        if c.ndim != 3:
            raise ValueError(f"per-speaker tables must be (speakers × labels × clusters), got shape {c.shape}")
        if c.dtype.kind not in "iu" or (c < 0).any():
            raise ValueError(f"per-speaker tables hold non-negative integer counts, got dtype {c.dtype}")
        flat = c.reshape(c.shape[0], -1)
        cells = np.flatnonzero(flat.any(axis=0))
        return cls(sp.csr_array(flat[:, cells].astype(np.int64)), cells // c.shape[2], cells % c.shape[2],
                   (c.shape[1], c.shape[2]), speakers)

    @classmethod
    def from_tables(cls, tables: Sequence, speakers: Sequence | None = None) -> SpeakerTables:
        if not len(tables):
            raise ValueError("no speaker tables given")
        coos = [sp.coo_array(t if sp.issparse(t) else np.asarray(t)) for t in tables]
        shape = coos[0].shape
        if any(t.shape != shape for t in coos) or len(shape) != 2:
            raise ValueError(f"every speaker table must be 2-D of one shape, got {sorted({t.shape for t in coos})}")
        if any(t.dtype.kind not in "iu" or (t.data < 0).any() for t in coos):
            raise ValueError("speaker tables hold non-negative integer counts")
        rows = np.concatenate([np.full(t.nnz, i) for i, t in enumerate(coos)])
        flat = np.concatenate([t.row.astype(np.int64) * shape[1] + t.col for t in coos])
        data = np.concatenate([t.data.astype(np.int64) for t in coos])
        cells, cell_idx = np.unique(flat, return_inverse=True)
        m = sp.coo_array((data, (rows, cell_idx.ravel())), shape=(len(coos), cells.size)).tocsr()
        m.sum_duplicates()
        m.eliminate_zeros()
        return cls(m, cells // shape[1], cells % shape[1], shape, speakers)

    @classmethod
    def from_frames(cls, speakers, labels, clusters) -> SpeakerTables:
        """From per-frame arrays (any sortable dtypes); speakers named in sorted order."""
        spk_names, s = np.unique(np.asarray(speakers), return_inverse=True)
        lab_names, li = np.unique(np.asarray(labels), return_inverse=True)
        clu_names, ci = np.unique(np.asarray(clusters), return_inverse=True)
        shape = (lab_names.size, clu_names.size)
        tables = [sp.coo_array((np.ones(int((s == i).sum()), np.int64), (li.ravel()[s == i], ci.ravel()[s == i])),
                               shape=shape) for i in range(spk_names.size)]
        return cls.from_tables(tables, spk_names)

    @property
    def n_speakers(self) -> int:
        return self.by_speaker.shape[0]

    def total(self) -> sp.csr_array:
        """The labels × clusters table of every speaker together."""
        sums = np.ravel(self.by_speaker.sum(axis=0))
        return sp.csr_array(sp.coo_array((sums, (self.cell_label, self.cell_cluster)), shape=self.shape))

    def aligned(self, speakers: Sequence) -> SpeakerTables:
        """The same tables with rows in the order of `speakers` (a speaker absent here gets zeros)."""
        speakers = list(speakers)
        position = {s: j for j, s in enumerate(speakers)}
        missing = [s for s in self.speakers.tolist() if s not in position]
        if missing:
            raise ValueError(f"speakers {missing[:5]} are in one set of tables but not the other: "
                             "pair tables of the same frames")
        pick = sp.csr_array((np.ones(self.n_speakers, np.int64),
                             ([position[s] for s in self.speakers.tolist()], np.arange(self.n_speakers))),
                            shape=(len(speakers), self.n_speakers))
        return SpeakerTables(sp.csr_array(pick @ self.by_speaker), self.cell_label, self.cell_cluster,
                             self.shape, speakers)

    def resampled_tables(self, weights: np.ndarray) -> np.ndarray:
        """(rows × M) int64 counts of the cells for each row of integer speaker weights."""
        w = np.asarray(weights, np.int64)
        return np.ascontiguousarray(np.asarray(self.by_speaker.T @ w.T).T)


def _scores_of_tables(tables: SpeakerTables, weights: np.ndarray, emi_point: float, g_point: float,
                      exact_emi: bool, duplication_adjusted: bool = False) -> dict[str, np.ndarray]:
    """Every contingency score of the table each weight row builds, vectorised over rows (with
    `duplication_adjusted`, AMI's EMI at the effective sample size of the draws: see the module's text)."""
    n_labels, n_clusters = tables.shape
    rows_per_chunk = max(1, _CHUNK_CELLS // max(1, n_labels * n_clusters))
    per_speaker = np.ravel(tables.by_speaker.sum(axis=1)).astype(np.float64) if duplication_adjusted else None
    parts = [_score_chunk(tables, weights[i:i + rows_per_chunk], emi_point, g_point, exact_emi, per_speaker)
             for i in range(0, len(weights), rows_per_chunk)]
    return {m: np.concatenate([p[m] for p in parts]) for m in CONTINGENCY_SCORES}


def _xlogx(values: np.ndarray) -> np.ndarray:
    """x log x elementwise (0 at 0) of integer counts: a table lookup, ~4x faster than logs."""
    top = int(values.max()) if values.size else 0
    if top > _XLOGX_TABLE_MAX:
        return xlogy(values, values)
    table = xlogy(np.arange(top + 1, dtype=np.float64), np.arange(top + 1, dtype=np.float64))
    return table[values]


def _score_chunk(tables: SpeakerTables, w: np.ndarray, emi_point: float, g_point: float,
                 exact_emi: bool, per_speaker: np.ndarray | None = None) -> dict[str, np.ndarray]:
    cells = tables.resampled_tables(w)  # b × M, int64
    b = cells.shape[0]
    n_labels, n_clusters = tables.shape
    dense = np.zeros((b, n_labels * n_clusters), np.int64)
    dense[:, tables.cell_label * n_clusters + tables.cell_cluster] = cells
    dense = dense.reshape(b, n_labels, n_clusters)
    n_int = dense.sum(axis=(1, 2))
    n = n_int.astype(np.float64)
    a_lab, b_clu = dense.sum(axis=2), dense.sum(axis=1)
    r, c = (a_lab > 0).sum(axis=1), (b_clu > 0).sum(axis=1)
    # entropies and MI from sums of x log x: H = log N − Σ x log x / N; MI = H(L) + H(C) − H(L, C)
    log_n = np.log(n)
    s_lab, s_clu = _xlogx(a_lab).sum(axis=1), _xlogx(b_clu).sum(axis=1)
    h_label = np.where(r > 1, log_n - s_lab / n, 0.0)
    h_cluster = np.where(c > 1, log_n - s_clu / n, 0.0)
    mi = np.maximum((_xlogx(cells).sum(axis=1) - s_lab - s_clu) / n + log_n, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        homogeneity = np.where(h_label > 0, mi / np.where(h_label > 0, h_label, 1.0), 1.0)
        completeness = np.where(h_cluster > 0, mi / np.where(h_cluster > 0, h_cluster, 1.0), 1.0)
        hc = homogeneity + completeness
        v = np.where(hc == 0, 0.0, 2 * homogeneity * completeness / np.where(hc == 0, 1.0, hc))
        mean_h = (h_label + h_cluster) / 2
        nmi = np.where((r == 1) & (c == 1), 1.0, np.where(mi == 0, 0.0, mi / np.where(mean_h > 0, mean_h, 1.0)))
        if exact_emi:
            emi = np.array([_exact_emi(dense[i]) for i in range(b)])
        else:
            g = (r - 1) * (c - 1) / (2.0 * n)
            emi = emi_point * g / g_point if g_point > 0 else np.zeros(b)
        if per_speaker is not None:  # N / N_eff = Σ w² n_s · N / N² (1 without duplicated speakers)
            wf = np.asarray(w, np.float64)
            emi = emi * ((wf ** 2) @ per_speaker) / np.maximum(n, 1.0)
        den = mean_h - emi
        den = np.where(den < 0, np.minimum(den, -_EPS), np.maximum(den, _EPS))
        num = mi - emi
        num = np.where(num < 0, np.minimum(num, -_EPS), np.maximum(num, _EPS))
        ami = np.where((r == 1) & (c == 1), 1.0, np.where((r == 1) | (c == 1), 0.0, num / den))
    return {"ami": ami, "mi": mi, "nmi": nmi, "homogeneity": homogeneity, "completeness": completeness,
            "v_measure": v, "cluster_purity": dense.max(axis=1).sum(axis=1) / n,
            "label_purity": dense.max(axis=2).sum(axis=1) / n, "pnmi": homogeneity}


def _emi_of_point(point: dict, c: sp.csr_array) -> float:
    """The full table's exact EMI, solved from its AMI = (MI − EMI) / (mean H − EMI) when that is
    well conditioned (saves a second exact sum), else computed."""
    if min(c.shape) < 2:
        return 0.0
    mean_h = (M._entropy(np.ravel(c.sum(axis=1))) + M._entropy(np.ravel(c.sum(axis=0)))) / 2
    ami, mi = point["ami"], point["mi"]
    if abs(1.0 - ami) > 1e-3:
        emi = (mi - ami * mean_h) / (1.0 - ami)
        if emi > 0 and abs(mi - emi) > 1e3 * _EPS and abs(mean_h - emi) > 1e3 * _EPS:
            return float(emi)
    return _exact_emi(c.toarray())


def _exact_emi(table: np.ndarray) -> float:
    c = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0].astype(np.int64)
    if min(c.shape) < 2:
        return 0.0
    return float(M.expected_mutual_information(sp.csr_array(c), int(c.sum())))


@dataclass(frozen=True)
class ContingencyReplicates:
    """Point estimates and replicates of every contingency score (or of a probe's accuracies:
    `probe_replicates`), kept so that two sets drawn with the same weights can be differenced
    (`paired_contingency_difference`, `paired_difference`)."""

    intervals: dict[str, Interval]
    resampled: dict[str, np.ndarray]  # score -> (n_resamples,)
    jackknife: dict[str, np.ndarray]  # score -> (n_speakers,)
    speakers: np.ndarray


def contingency_replicates(tables: SpeakerTables, n_resamples: int = N_RESAMPLES, seed: int = 0,
                           method: str = "bca", confidence: float = CONFIDENCE, exact_emi: bool = False,
                           weights: np.ndarray | None = None, point: dict | None = None,
                           duplication_adjusted: bool = True) -> ContingencyReplicates:
    """`bootstrap_contingency` with the replicates kept (pass `weights` from `resample_weights` to pair)."""
    total = tables.total()
    if total.sum() == 0:
        raise ValueError("no frames to score (every speaker table is empty)")
    point = M.contingency_metrics(total) if point is None else point
    if point["n_labels"] < 2:
        reason = f"the tier has {int(point['n_labels'])} label(s) on these frames; the scores need two or more"
        return ContingencyReplicates({m: null_interval(reason) for m in CONTINGENCY_SCORES}, {}, {}, tables.speakers)
    if tables.n_speakers < 2:
        reason = "one speaker: no speaker bootstrap"
        return ContingencyReplicates({m: null_interval(reason, point[m]) for m in CONTINGENCY_SCORES}, {}, {},
                                     tables.speakers)
    c = M._as_counts(total)
    emi_point = _emi_of_point(point, c)
    g_point = (c.shape[0] - 1) * (c.shape[1] - 1) / (2.0 * float(point["n"]))
    w = resample_weights(tables.n_speakers, n_resamples, seed) if weights is None else np.asarray(weights)
    resampled = _scores_of_tables(tables, w, emi_point, g_point, exact_emi, duplication_adjusted)
    jackknife = _scores_of_tables(tables, jackknife_weights(tables.n_speakers), emi_point, g_point, exact_emi,
                                  duplication_adjusted) \
        if method == "bca" else {}
    intervals = {m: interval(point[m], resampled[m], jackknife.get(m), method, confidence) for m in CONTINGENCY_SCORES}
    return ContingencyReplicates(intervals, resampled, jackknife, tables.speakers)


def bootstrap_contingency(tables: SpeakerTables, n_resamples: int = N_RESAMPLES, seed: int = 0,
                          method: str = "bca", confidence: float = CONFIDENCE,
                          exact_emi: bool = False, point: dict | None = None) -> dict[str, Interval]:
    """Every contingency score (CONTINGENCY_SCORES) with its speaker-bootstrap interval.

    Values equal `metrics.contingency_metrics(tables.total())`; pass that dict as `point` when it is
    already computed (it holds AMI's exact EMI, the costly part: 0.1–0.5 s per table). One speaker:
    values, null intervals; fewer than two labels: null values; both with a reason.
    """
    return contingency_replicates(tables, n_resamples, seed, method, confidence, exact_emi, point=point).intervals


def paired_contingency_difference(a: SpeakerTables, b: SpeakerTables, n_resamples: int = N_RESAMPLES,
                                  seed: int = 0, method: str = "bca", confidence: float = CONFIDENCE,
                                  ) -> dict[str, Difference]:
    """score(a) − score(b) for every contingency score, the same speakers drawn for both: two layers
    of one run, or one layer of two runs over the same frames. Speakers are matched by name."""
    b = b.aligned(a.speakers.tolist()) if b.speakers.tolist() != a.speakers.tolist() else b
    w = resample_weights(a.n_speakers, n_resamples, seed)
    ra = contingency_replicates(a, n_resamples, seed, method, confidence, weights=w)
    rb = contingency_replicates(b, n_resamples, seed, method, confidence, weights=w)
    out = {}
    for m in CONTINGENCY_SCORES:
        ia, ib = ra.intervals[m], rb.intervals[m]
        if m not in ra.resampled or m not in rb.resampled:
            reason = ia.reason or ib.reason
            value = None if ia.value is None or ib.value is None else ia.value - ib.value
            out[m] = Difference(ia.value, ib.value, null_interval(reason, value), None)
            continue
        out[m] = paired_difference(ia, ib, ra.resampled[m], rb.resampled[m], ra.jackknife.get(m),
                                   rb.jackknife.get(m), method, confidence)
    return out


# --------------------------------------------------------------------------- probe predictions

def bootstrap_probe(y_true, y_pred, speakers, n_resamples: int = N_RESAMPLES, seed: int = 0,
                    method: str = "bca", confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Accuracy and balanced accuracy (mean recall over the labels in y_true, as scikit-learn's
    `balanced_accuracy_score`) of a probe's test predictions, resampling test speakers.

    Inputs are per test frame. Returns {"probe_accuracy": …, "probe_balanced_accuracy": …}.
    """
    return {m: r.intervals[m] for r in [probe_replicates(y_true, y_pred, speakers, n_resamples, seed, method,
                                                          confidence)] for m in r.intervals}


def probe_replicates(y_true, y_pred, speakers, n_resamples: int = N_RESAMPLES, seed: int = 0,
                     method: str = "bca", confidence: float = CONFIDENCE) -> ContingencyReplicates:
    """`bootstrap_probe` with the replicates kept (weights over the sorted test speaker names), for
    `paired_difference` between two probes tested on the same speakers (two layers of one sample)."""
    y_true, y_pred = np.asarray(y_true, dtype=object).astype(str), np.asarray(y_pred, dtype=object).astype(str)
    spk = np.asarray(speakers, dtype=object).astype(str)
    if not (y_true.shape == y_pred.shape == spk.shape) or y_true.ndim != 1:
        raise ValueError(f"y_true, y_pred and speakers must be 1-D of one length, got {y_true.shape}, "
                         f"{y_pred.shape}, {spk.shape}")
    if y_true.size == 0:
        reason = "the probe has no test frames"
        return ContingencyReplicates({"probe_accuracy": null_interval(reason),
                                      "probe_balanced_accuracy": null_interval(reason)}, {}, {}, np.array([]))
    names, s = np.unique(spk, return_inverse=True)
    _, lab = np.unique(y_true, return_inverse=True)
    s, lab = s.ravel(), lab.ravel()
    n_spk, n_lab = int(s.max()) + 1, int(lab.max()) + 1
    correct = (y_true == y_pred).astype(np.float64)
    flat = s * n_lab + lab
    hits = np.bincount(flat, weights=correct, minlength=n_spk * n_lab).reshape(n_spk, n_lab)
    totals = np.bincount(flat, minlength=n_spk * n_lab).reshape(n_spk, n_lab).astype(np.float64)

    def scores(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, t = w @ hits, w @ totals
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = h.sum(axis=1) / t.sum(axis=1)
            recall = np.where(t > 0, h / np.where(t > 0, t, 1.0), np.nan)
            bal = np.nanmean(recall, axis=1)
        return acc, bal

    acc, bal = (float(v[0]) for v in scores(np.ones((1, n_spk))))
    names = names.astype(object)
    if n_spk < 2:
        reason = "one test speaker: no speaker bootstrap"
        return ContingencyReplicates({"probe_accuracy": null_interval(reason, acc),
                                      "probe_balanced_accuracy": null_interval(reason, bal)}, {}, {}, names)
    r_acc, r_bal = scores(resample_weights(n_spk, n_resamples, seed).astype(np.float64))
    j_acc, j_bal = scores(jackknife_weights(n_spk).astype(np.float64)) if method == "bca" else (None, None)
    intervals = {"probe_accuracy": interval(acc, r_acc, j_acc, method, confidence),
                 "probe_balanced_accuracy": interval(bal, r_bal, j_bal, method, confidence)}
    jack = {} if j_acc is None else {"probe_accuracy": j_acc, "probe_balanced_accuracy": j_bal}
    return ContingencyReplicates(intervals, {"probe_accuracy": r_acc, "probe_balanced_accuracy": r_bal}, jack, names)


def _bench(n_layers: int = 13, n_speakers: int = 40, n_labels: int = 40, k: int = 50,
           frames_per_speaker: int = 2000) -> float:
    """Seconds that `bootstrap_contingency` (1,000 resamples, BCa) adds to `n_layers` random layers
    whose point metrics the caller already has (analyze computes them anyway)."""
    import time

    rng = np.random.default_rng(0)
    layers = []
    for _ in range(n_layers):
        p = rng.dirichlet(np.full(n_labels * k, 0.3))
        counts = rng.multinomial(frames_per_speaker, p, size=n_speakers).reshape(n_speakers, n_labels, k)
        layers.append((SpeakerTables.from_dense(counts), M.contingency_metrics(counts.sum(axis=0))))
    t0 = time.perf_counter()
    for tables, point in layers:
        bootstrap_contingency(tables, point=point)
    return time.perf_counter() - t0
