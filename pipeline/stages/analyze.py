"""Stage 3: per layer, k-means on a balanced SQL sample, assignment of every frame, metrics.

Memory is bounded by the sample and one batch of frames: every frame of the layer is streamed
through the centroids once, and only a (speakers × labels × clusters) contingency table is kept, from
which every metric is computed exactly, and its interval too: a bootstrap over speakers
(pipeline/algorithms/bootstrap.py) resamples the per-speaker tables, which merge exactly by summing,
so no frame is read twice (1,000 BCa resamples; basic where BCa is undefined; `ci_method` says which).

Labels: `phone` and `word` are columns of `frames`; any other tier (e.g. `ctc_greedy` from
`labels`) is read from `segments`, the interval holding each frame's centre. Beside the clustering
metrics, a linear probe (pipeline/algorithms/probe.py) per layer, trained and tested on disjoint speakers
(its interval: the test speakers resampled). With `by` (an utterance attribute: speaker, gender, dialect…),
every metric per group too, and a cross-group test: k-means and the probe fitted on the other groups,
scored on this one. Sample-based figures (silhouette, ami_shuffled_sample, kmeans_inertia) get no
interval (`null_reason` says so). With `seeds` N > 1, k-means is restarted with seeds seed … seed+N−1:
each metric's value is the mean over the restarts, `seed_sd` their standard deviation, and its interval
the bootstrap of that mean (the same speaker draws for every restart); `clusters`, `centroids` and
`cluster_labels` hold the first restart's clustering.

CCA (pipeline/algorithms/cca.py, projection-weighted, as Pasad et al. 2023): per layer, on every frame
of a seeded share of the utterances (about `cca_frames` frames, 10,000 by default), fitted on about
three quarters of the speakers and scored on the rest: `cca_phone` (frame vs one-hot phone), `cca_word` (word segment,
mean-pooled, vs one-hot word, words with ≥ `min_word_tokens` tokens) and `cca_mel` (frame vs the
log-mel layer -2 of the same frame, when extract stored it). Rows of `metrics` with k = 0.

Paired differences: for each two adjacent analysed layers L < L' (in the order analysed), every
contingency score's and CCA measure's θ(L) − θ(L') with a paired bootstrap interval (the same speakers
drawn for both layers) → table `metric_differences` (other_run = run).

Everything is keyed by the label tier too: the k-means is trained on a sample balanced over the
tier's labels, so `--tier phone --k 50` and `--tier word --k 50` are two clusterings, each stored
beside the metrics and mappings it was scored with. `clusters` and `centroids` carry the tier as a
column and in the file name (not as a Hive folder: files written before tiers, `part-…`, sit in the
same folders and must stay readable in one view; `pipeline.warehouse.schemas.tiered_views` reads them).

Tables (Hive partitions after `run`):
    clusters/run/layer/k/<tier>-<frames shard> utterance_id, frame, cluster, distance, tier
    centroids/run/layer/k/<tier>-00000         cluster, size, vector, tier
    metrics/run/layer/k/tier/subset/part-00000 metric, value, n, ci_low, ci_high, ci_method, n_resamples,
                                               null_reason, seed_sd, n_seeds   (CCA: k = 0)
    metric_differences/run/<k>-<tier>-<layer>  other_run, layer, other_layer, tier, k, metric, value, …
    cluster_labels/run/layer/k/tier/subset/... cluster, label, count, cluster_size, share
    group_metrics/run/layer/k/tier/attribute/part-00000   group_value, metric, value, n   (with `by`)
Commits: stage analyze.k<k>.<tier> per layer (its clustering, metrics and differences with the layer
before), analyze.k0.<tier> per layer (CCA rows and their differences), analyze.k<k>.<tier>.by.<attribute>.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from pipeline.algorithms import bootstrap as B
from pipeline.algorithms import cca as C
from pipeline.algorithms import metrics as M
from pipeline.algorithms.geometry import FrameGeometry, labels_at
from pipeline.algorithms.kmeans import assign, fit_kmeans
from pipeline.algorithms.logmel import MEL_LAYER
from pipeline.algorithms.phone_classes import SILENCE_LABELS
from pipeline.algorithms.probe import fit_score, speaker_disjoint_probe, split_speakers
from pipeline.sql import query, table_text
from pipeline.stages.inputs import chosen_layers, extracted_facts, require_tier
from pipeline.warehouse import Warehouse, fingerprint, keys
from pipeline.warehouse.vectors import decode as vectors  # noqa: F401 - the name reduce, compare, notebook import
from pipeline.warehouse.vectors import encode
from pipeline.warehouse.schemas import (CLUSTER_LABELS, CLUSTERS, FRAME_TIERS, GROUP_METRICS, METRIC_DIFFERENCES,
                                        METRICS, centroids_schema, check_tier_name)

log = logging.getLogger(__name__)

# the tables' schemas under the names this module had for them (pipeline.warehouse.schemas declares them)
METRICS_SCHEMA, CLUSTERS_SCHEMA, GROUP_METRICS_SCHEMA, MAPPING_SCHEMA = METRICS, CLUSTERS, GROUP_METRICS, CLUSTER_LABELS
NO_GROUP = ""  # utterances without the --by attribute (and every utterance without --by)
CCA_K = 0  # the `k` of metrics rows that are not a clustering's (the CCA measures)
CCA_METRICS = ("cca_phone", "cca_word", "cca_mel")
SAMPLE_BASED = ("silhouette", "ami_shuffled_sample", "kmeans_inertia")
COUNTS = ("n_labels", "n_clusters", "kmeans_train_points", "probe_train_frames")
REASON_SAMPLE = "sample-based metric: no interval"
REASON_COUNT = "a count: no interval"
REASON_NO_INTERVALS = "intervals off (--no-intervals)"


@dataclass
class AnalyzeConfig:
    """The parameters of `analyze`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str
    warehouse: str = "storage"
    layers: str = "all"
    k: int = 50
    tier: str = field(default="phone", metadata={
        "help": "labels to score against: phone, word, or a segments tier (ctc_greedy, ctc_char, …)"})
    sample_per_label: int = 500  # balanced k-means training sample: at most this many frames per label
    seed: int = 0
    n_iter: int = 50
    no_silence: bool = field(default=False, metadata={
        "help": "also score without silence labels (sil, h#, pau, …)"})
    silhouette_points: int = field(default=5_000, metadata={"cli": False})
    batch_frames: int = field(default=65_536, metadata={"help": "frames per assignment batch (bounds memory)"})
    by: str | None = field(default=None, metadata={
        "help": "also score per group of this utterance attribute (speaker, gender, dialect, …) "
                "and run the cross-group test"})
    probe: bool = field(default=True, metadata={"flag": "--no-probe", "help": "skip the linear phone probe"})
    seeds: int = field(default=1, metadata={
        "help": "k-means restarts (seeds seed … seed+N-1): each metric is their mean, seed_sd their spread"})
    intervals: bool = field(default=True, metadata={
        "flag": "--no-intervals", "help": "skip the speaker-bootstrap intervals and the paired layer differences"})
    n_resamples: int = field(default=B.N_RESAMPLES, metadata={"help": "bootstrap resamples per interval"})
    cca: bool = field(default=True, metadata={
        "flag": "--no-cca", "help": "skip the CCA measures (cca_phone, cca_word, cca_mel)"})
    cca_frames: int = field(default=10_000, metadata={  # 10,000 × 768 float32: 31 MB (and a float64 copy)
        "help": "frames (of whole utterances, a seeded share) the CCA measures use per layer"})
    min_word_tokens: int = field(default=C.MIN_WORD_TOKENS, metadata={
        "help": "cca_word: words with at least this many tokens"})

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: the number of k-means restarts must be 1 or more")
        if self.intervals and self.n_resamples < 2:
            raise ValueError(f"--n-resamples {self.n_resamples}: a bootstrap interval needs 2 or more (1000 is the "
                             "default), or pass --no-intervals")


def majority_from_counts(counts: np.ndarray, names: np.ndarray) -> list[dict]:
    """Each non-empty cluster's majority label (ties: the label that sorts first)."""
    order = np.argsort(names.astype(str), kind="stable")
    counts, names = counts[order], names[order]
    out = []
    for cluster in range(counts.shape[1]):
        column = counts[:, cluster]
        size = int(column.sum())
        if size:
            best = int(np.argmax(column))  # first maximum: ties go to the label that sorts first
            out.append({"cluster": cluster, "label": str(names[best]), "count": int(column[best]),
                        "cluster_size": size, "share": float(column[best] / size)})
    return out


def layer_files(wh: Warehouse, run: str, layer: int, committed: list[str] | None = None) -> list[str]:
    """The committed frames files of one layer (pass `committed` to reuse one read of the log)."""
    prefix = f"frames/run={run}/layer={layer}/"
    return [p for p in (committed if committed is not None else wh.committed_files("frames", run)) if p.startswith(prefix)]


class _Contingency:
    """Streaming (group × label × cluster) counts; labels and groups get codes as they appear."""

    def __init__(self, k: int):
        self.k = k
        self.labels: dict[str, int] = {}
        self.groups: dict[str, int] = {}
        self.counts = np.zeros((0, 0, k), np.int64)

    def _codes(self, values: pa.Array, index: dict[str, int]) -> np.ndarray:
        encoded = values.dictionary_encode()
        local = np.array([index.setdefault(v, len(index)) for v in encoded.dictionary.to_pylist()], dtype=np.int64)
        indices = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where the value is null
        valid = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
        codes = np.full(len(values), -1, np.int64)
        codes[valid] = local[indices[valid].astype(np.int64)]
        return codes

    def add(self, labels: pa.Array, groups: pa.Array, cluster: np.ndarray) -> None:
        label_codes, group_codes = self._codes(labels, self.labels), self._codes(groups, self.groups)
        g, n_labels = max(len(self.groups), self.counts.shape[0]), max(len(self.labels), self.counts.shape[1])
        if (g, n_labels) != self.counts.shape[:2]:
            grown = np.zeros((g, n_labels, self.k), np.int64)
            grown[:self.counts.shape[0], :self.counts.shape[1]] = self.counts
            self.counts = grown
        keep = (label_codes >= 0) & (group_codes >= 0)
        flat = (group_codes[keep] * n_labels + label_codes[keep]) * self.k + cluster[keep]
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def names(self) -> np.ndarray:
        return np.array(list(self.labels), dtype=object)

    def speaker_tables(self, rows: np.ndarray) -> B.SpeakerTables:
        """The per-group (here: per-speaker) tables of the labels `rows`, groups sorted by name, empty ones left out."""
        names = np.array(list(self.groups), dtype=object)
        counts = self.counts[:, rows] if self.counts.size else np.zeros((0, int(rows.sum()), self.k), np.int64)
        order = [g for g in np.argsort(names.astype(str), kind="stable") if counts[g].any()]
        return B.SpeakerTables.from_dense(counts[order], names[order])


def _lookup(ids: pa.Array, mapping: dict[str, str]) -> pa.Array:
    """mapping[id] for each utterance id (NO_GROUP where it has none), one dictionary look-up per distinct id."""
    encoded = ids.dictionary_encode()
    values = pa.array([mapping.get(u, NO_GROUP) for u in encoded.dictionary.to_pylist()], pa.string())
    return values.take(encoded.indices)


def _segment_labels(con, root, run: str, tier: str, utterance_id: pa.Array, frame: pa.Array,
                    geometry: FrameGeometry, tokens: bool = False) -> pa.Array:
    """Label of the `tier` interval holding each frame centre (start inclusive, end exclusive), or null.
    Rows come sorted by utterance, as frames files are. Centres are recomputed in float64 from the
    frame index, exactly as extraction labels `phone` (the stored float32 `time_s` can round a centre
    that sits on a boundary to the wrong side). With `tokens`, the interval's id instead of its label:
    '<utterance>|<start_s>' (one id per segment, e.g. per word token)."""
    utt = np.asarray(utterance_id.to_pylist(), dtype=object)
    t = geometry.frame_centres_s(frame.to_numpy(zero_copy_only=False))
    out = np.full(len(utt), None, dtype=object)
    if not len(utt):
        return pa.array(out, pa.string())
    seg = query(root, "segments_of", {"run": run, "tier": tier, "utterances": sorted(set(utt))}, con=con)
    seg_utt = np.asarray(seg["utterance_id"].to_pylist(), dtype=object)
    starts, ends = seg["start_s"].to_numpy(), seg["end_s"].to_numpy()
    seg_labels = np.asarray(seg["label"].to_pylist(), dtype=object)
    if tokens:
        seg_labels = np.array([f"{u}|{float(s)!r}" for u, s in zip(seg_utt, starts)], dtype=object)
    cut = np.flatnonzero(np.r_[True, utt[1:] != utt[:-1], True])
    for a, b in zip(cut[:-1], cut[1:]):
        rows = np.flatnonzero(seg_utt == utt[a])
        if not len(rows):
            continue
        out[a:b] = labels_at(t[a:b], starts[rows], ends[rows], seg_labels[rows])
    return pa.array(out, pa.string())


# ------------------------------------------------------------------------------------------- metrics rows
def _row(metric: str, value, n, interval: B.Interval | None = None, reason: str | None = None,
         per_seed: list | None = None, method_prefix: str = "") -> dict:
    """One `metrics` row: value (None when undefined), its interval or why there is none, its seed spread."""
    sd = float(np.std(per_seed, ddof=1)) if per_seed is not None and len(per_seed) > 1 else None
    sd = sd if sd is not None and np.isfinite(sd) else None
    row = {"metric": metric, "value": None if value is None or not np.isfinite(value) else float(value),
           "n": int(n), "ci_low": None, "ci_high": None, "ci_method": None, "n_resamples": None,
           "null_reason": reason, "seed_sd": sd, "n_seeds": len(per_seed) if per_seed else 1}
    if interval is not None:
        row["null_reason"] = interval.reason
        if interval.ci_low is not None:
            row.update(ci_low=interval.ci_low, ci_high=interval.ci_high, ci_method=method_prefix + interval.method,
                       n_resamples=interval.n_resamples)
    if row["value"] is None and (value is not None or row["null_reason"] is None):
        row["null_reason"] = "undefined on these frames" + (f" ({row['null_reason']})" if row["null_reason"] else "")
    return row


@dataclass
class _Scored:
    """One contingency score of a layer with the bootstrap replicates its paired differences need."""

    interval: B.Interval
    resampled: np.ndarray | None = None
    jackknife: np.ndarray | None = None


def _contingency_scores(tables: list[_Contingency], rows: np.ndarray, cfg: AnalyzeConfig
                        ) -> tuple[list[dict], dict[str, _Scored], np.ndarray]:
    """Every contingency score of the labels `rows` (mean over the restarts' tables), with its speaker-bootstrap
    interval: the rows, the scores for paired differences, and the speakers resampled."""
    points = [M.contingency_metrics(t.counts.sum(axis=0)[rows]) for t in tables]
    n = int(points[0]["n"])
    scored: dict[str, _Scored] = {}
    speakers = np.array([], dtype=object)
    if cfg.intervals and n:
        reps = []
        for t, point in zip(tables, points):
            st = t.speaker_tables(rows)
            reps.append(B.contingency_replicates(st, cfg.n_resamples, cfg.seed, point=point))
        speakers = reps[0].speakers
        few = _too_few_speakers(len(speakers), "speakers")
        for m in B.CONTINGENCY_SCORES:
            first = reps[0].intervals[m]
            value = float(np.mean([p[m] for p in points]))
            if few and m in reps[0].resampled:
                scored[m] = _Scored(B.null_interval(few, value))
                continue
            if m not in reps[0].resampled:  # one speaker, or fewer than two labels: no replicates
                scored[m] = _Scored(replace(first, value=value) if first.value is not None else first)
                continue
            if len(reps) == 1:
                scored[m] = _Scored(first, reps[0].resampled[m], reps[0].jackknife.get(m))
                continue
            resampled = np.mean([r.resampled[m] for r in reps], axis=0)
            jack = np.mean([r.jackknife[m] for r in reps], axis=0) if reps[0].jackknife else None
            scored[m] = _Scored(B.interval(value, resampled, jack), resampled, jack)
    out = []
    for m in points[0]:
        if m == "n":
            continue
        per_seed = [p[m] for p in points]
        if m in scored:
            value = scored[m].interval.value
            out.append(_row(m, value, n, scored[m].interval, per_seed=per_seed))
        else:
            reason = REASON_COUNT if m in COUNTS else REASON_NO_INTERVALS if n else "no labelled frames"
            value = float(np.mean(per_seed))
            if m in B.CONTINGENCY_SCORES and points[0]["n_labels"] < 2:
                value, reason = None, f"the tier has {int(points[0]['n_labels'])} label(s) here; the scores need two"
            out.append(_row(m, value, n, reason=reason, per_seed=per_seed))
    return out, scored, speakers


def _too_few_speakers(n: int, what: str) -> str | None:
    """The reason a speaker bootstrap over `n` speakers gives no interval, None when it can (or when n ≤ 1,
    which the bootstrap itself reports)."""
    if 1 < n < B.MIN_SPEAKERS:
        return f"{n} {what}: too few for a speaker bootstrap (at least {B.MIN_SPEAKERS})"
    return None


def _sample_scores(x: np.ndarray, sample_labels: np.ndarray, kms: list, cfg: AnalyzeConfig) -> list[dict]:
    """The figures of the balanced sample (no speaker bootstrap: null interval with the reason), mean over restarts."""
    per = {"silhouette": [], "ami_shuffled_sample": [], "kmeans_inertia": [], "kmeans_train_points": []}
    shuffled = np.random.default_rng(cfg.seed).permutation(sample_labels)
    n_sil = 0
    for km in kms:
        sample_clusters, _ = assign(x, km.centroids)
        sil = M.silhouette(x, sample_clusters, max_points=cfg.silhouette_points, seed=cfg.seed)
        n_sil = sil.n
        per["silhouette"].append(sil.value)
        per["ami_shuffled_sample"].append(M.cluster_metrics(shuffled, sample_clusters)["ami"])
        per["kmeans_inertia"].append(km.inertia)
        per["kmeans_train_points"].append(km.n_train)
    n = {"silhouette": n_sil, "ami_shuffled_sample": len(x), "kmeans_inertia": kms[0].n_train,
         "kmeans_train_points": kms[0].n_train}
    return [_row(m, float(np.mean(v)), n[m], reason=REASON_COUNT if m in COUNTS else REASON_SAMPLE, per_seed=v)
            for m, v in per.items()]


def _probe_scores(x: np.ndarray, labels: np.ndarray, speakers: list, cfg: AnalyzeConfig, layer: int
                  ) -> tuple[list[dict], dict[str, _Scored], list, float]:
    """The probe's rows, its accuracies with their replicates (for paired differences), the test speakers
    resampled, and the seconds its interval took."""
    try:
        p = speaker_disjoint_probe(x, labels, speakers, seed=cfg.seed)
    except ValueError as err:
        log.warning("run %s layer %s: no linear probe: %s", cfg.run, layer, err)
        return [], {}, [], 0.0
    t0 = time.perf_counter()
    scored, test_names = {}, []
    if cfg.intervals:
        test_speakers = np.asarray(speakers, dtype=object)[split_speakers(speakers, cfg.seed)]
        reps = B.probe_replicates(p.y_test, p.predicted, test_speakers, cfg.n_resamples, cfg.seed)
        few = _too_few_speakers(len(reps.speakers), "test speakers")
        test_names = reps.speakers.tolist()
        for m, iv in reps.intervals.items():
            scored[m] = _Scored(B.null_interval(few, iv.value)) if few else \
                _Scored(iv, reps.resampled.get(m), reps.jackknife.get(m))
    else:
        scored = {m: _Scored(B.null_interval(REASON_NO_INTERVALS, v)) for m, v in
                  (("probe_accuracy", p.accuracy), ("probe_balanced_accuracy", p.balanced_accuracy))}
    rows = [_row(m, s.interval.value, p.n_test, s.interval, method_prefix="speaker-grouped ")
            for m, s in scored.items()]
    rows += [_row("probe_chance", p.chance, p.n_test, reason="chance level: no interval"),
             _row("probe_train_frames", p.n_train, p.n_train, reason=REASON_COUNT)]
    return rows, scored, test_names, time.perf_counter() - t0


def _difference_rows(run: str, layer: int, other_layer: int, tier: str, k: int, a: dict[str, _Scored],
                     b: dict[str, _Scored], same_speakers: bool) -> list[dict]:
    """θ(layer) − θ(other_layer) for every score both layers have, from their paired replicates."""
    rows = []
    for metric in [m for m in a if m in b]:
        sa, sb = a[metric], b[metric]
        if sa.interval.value is None and sb.interval.value is None:
            continue  # nothing to compare (e.g. no log-mel layer, too few words): each row says why
        if not same_speakers:
            d = B.Difference(sa.interval.value, sb.interval.value, B.null_interval(
                "the two layers' scores come from other speakers: no paired interval"), None)
        elif sa.resampled is None or sb.resampled is None:
            value = None if sa.interval.value is None or sb.interval.value is None \
                else sa.interval.value - sb.interval.value
            d = B.Difference(sa.interval.value, sb.interval.value,
                             B.null_interval(sa.interval.reason or sb.interval.reason or "no interval", value), None)
        else:
            d = B.paired_difference(sa.interval, sb.interval, sa.resampled, sb.resampled, sa.jackknife, sb.jackknife)
        iv = d.diff
        rows.append({"other_run": run, "layer": layer, "other_layer": other_layer, "tier": tier, "k": k,
                     "metric": metric, "value": d.a, "other_value": d.b, "diff": iv.value,
                     "ci_low": iv.ci_low, "ci_high": iv.ci_high, "significant": d.significant,
                     "ci_method": iv.method, "n_resamples": iv.n_resamples or None, "null_reason": iv.reason})
    return rows


# ------------------------------------------------------------------------------------------- CCA
def cca_share(wh: Warehouse, run: str, layer: int, committed: list[str], cca_frames: int) -> float:
    """The share of utterances the CCA measures read: about `cca_frames` of the layer's frames (file footers only)."""
    total = sum(wh.parquet_file(p).metadata.num_rows for p in layer_files(wh, run, layer, committed))
    return 1.0 if total <= cca_frames else cca_frames / total


def _in_share(utterance_ids: list[str], share: float, seed: int) -> np.ndarray:
    """A seeded hash picks whole utterances: each is in with probability `share`, the same in every layer."""
    if share >= 1.0:
        return np.ones(len(utterance_ids), bool)
    cut = int(share * 2 ** 64)
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{u}".encode()).digest()[:8], "big") < cut
                     for u in utterance_ids])


class _CcaFrames:
    """The frames the CCA measures use, collected while a layer streams by: vectors, phone, speaker, keys."""

    def __init__(self, share: float, seed: int):
        self.share, self.seed = share, seed
        self.parts: list[tuple] = []

    def add(self, batch: pa.RecordBatch, speakers: pa.Array) -> None:
        ids = batch.column("utterance_id")
        encoded = ids.dictionary_encode()
        chosen = _in_share(encoded.dictionary.to_pylist(), self.share, self.seed)
        keep = chosen[encoded.indices.to_numpy(zero_copy_only=False)]
        if not keep.any():
            return
        rows = pa.array(np.flatnonzero(keep))
        x = vectors(batch.column("vector").take(rows), stored=batch.schema.field("vector"))
        self.parts.append((x, batch.column("phone").take(rows), speakers.take(rows), ids.take(rows),
                           batch.column("frame").take(rows)))

    def arrays(self):
        if not self.parts:
            return None
        x = np.concatenate([p[0] for p in self.parts])
        cat = [pa.concat_arrays([p[i] for p in self.parts]) for i in range(1, 5)]
        return x, cat[0], np.asarray(cat[1].to_pylist(), dtype=object), cat[2], cat[3]


def _cca_scores(wh: Warehouse, con, cfg: AnalyzeConfig, layer: int, frames: _CcaFrames, mel: dict | None,
                geometry: FrameGeometry) -> dict[str, C.CcaScore]:
    """cca_phone, cca_word and (with the log-mel layer) cca_mel of one layer's collected frames."""
    got = frames.arrays()
    if got is None:
        return {m: C.CcaScore(B.null_interval("no frames in the CCA share")) for m in CCA_METRICS}
    x, phone, speakers, ids, frame = got
    n_resamples = cfg.n_resamples if cfg.intervals else 2
    kw = {"n_resamples": n_resamples, "seed": cfg.seed}
    out = {}
    labelled = phone.is_valid().to_numpy(zero_copy_only=False)
    out["cca_phone"] = C.cca_phone(x[labelled], np.asarray(phone.filter(pa.array(labelled)).to_pylist(), dtype=object),
                                   speakers[labelled], **kw)
    tokens = _segment_labels(con, wh.root, cfg.run, "word", ids, frame, geometry, tokens=True)
    words = _segment_labels(con, wh.root, cfg.run, "word", ids, frame, geometry)
    in_word = tokens.is_valid().to_numpy(zero_copy_only=False)
    if not in_word.any():
        out["cca_word"] = C.CcaScore(B.null_interval("no word segments (tier 'word') on these frames"))
    else:
        out["cca_word"] = C.cca_word(x[in_word], np.asarray(tokens.filter(pa.array(in_word)).to_pylist(), dtype=object),
                                     np.asarray(words.filter(pa.array(in_word)).to_pylist(), dtype=object),
                                     speakers[in_word], min_tokens=cfg.min_word_tokens, **kw)
    if mel is None:
        out["cca_mel"] = C.CcaScore(B.null_interval(
            f"run {cfg.run!r} has no log-mel layer ({MEL_LAYER}): extract it with --layers all or a list naming mel"))
    else:
        key = np.char.add(np.asarray(ids.to_pylist(), dtype=str), np.char.add("|", frame.to_numpy().astype(str)))
        pos = np.array([mel["index"].get(k, -1) for k in key])
        have = pos >= 0
        if not have.any():
            out["cca_mel"] = C.CcaScore(B.null_interval("the log-mel layer holds none of these frames"))
        else:
            out["cca_mel"] = C.cca_mel(x[have], mel["x"][pos[have]], speakers[have], **kw)
    try:
        few = _too_few_speakers(len(set(speakers[split_speakers(speakers, cfg.seed)])), "test speakers")
    except ValueError:  # one speaker: every score is null already, with that reason
        few = None
    few = REASON_NO_INTERVALS if not cfg.intervals else few
    if few:
        out = {m: C.CcaScore(B.null_interval(few, s.value) if s.value is not None else s.interval,
                             s.n_train, s.n_test, s.n_directions) for m, s in out.items()}
    for m, s in out.items():
        if s.value is None and not (m == "cca_mel" and mel is None):  # analyze() says that once
            log.warning("run %s layer %s: %s is null: %s", cfg.run, layer, m, s.interval.reason)
    return out


def _mel_frames(wh: Warehouse, cfg: AnalyzeConfig, committed: list[str], share: float) -> dict | None:
    """The log-mel layer's frames of the CCA share, by '<utterance>|<frame>' (None when extract stored none)."""
    files = layer_files(wh, cfg.run, MEL_LAYER, committed)
    if not files:
        return None
    keys_, parts = [], []
    for path in files:
        for batch in wh.parquet_file(path).iter_batches(batch_size=cfg.batch_frames,
                                                                  columns=["utterance_id", "frame", "vector"]):
            ids = batch.column("utterance_id")
            encoded = ids.dictionary_encode()
            keep = _in_share(encoded.dictionary.to_pylist(), share, cfg.seed)[encoded.indices.to_numpy(zero_copy_only=False)]
            if not keep.any():
                continue
            rows = pa.array(np.flatnonzero(keep))
            parts.append(vectors(batch.column("vector").take(rows), stored=batch.schema.field("vector")))
            keys_ += [f"{u}|{f}" for u, f in zip(ids.take(rows).to_pylist(), batch.column("frame").take(rows).to_pylist())]
    return {"index": {k: i for i, k in enumerate(keys_)},
            "x": np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)}


def _cca_rows(scores: dict[str, C.CcaScore]) -> list[dict]:
    return [_row(m, s.value, s.n_test, s.interval) for m, s in sorted(scores.items())]


# ------------------------------------------------------------------------------------------- one layer
@dataclass
class _Carry:
    """What the next layer's paired differences need of the previous layer analysed."""

    layer: int | None = None
    scores: dict = field(default_factory=dict)  # metric -> _Scored (subset all)
    speakers: list = field(default_factory=list)
    cca: dict = field(default_factory=dict)  # metric -> _Scored
    probe: dict = field(default_factory=dict)  # probe_accuracy, probe_balanced_accuracy -> _Scored
    probe_speakers: list = field(default_factory=list)


def analyze_layer(wh: Warehouse, cfg: AnalyzeConfig, layer: int, con, committed: list[str] | None = None,
                  groups: dict[str, str] | None = None, speakers: dict[str, str] | None = None,
                  carry: _Carry | None = None, cca_share_: float | None = None, mel: dict | None = None
                  ) -> dict[str, float]:
    t0 = time.perf_counter()
    speakers = speakers or {}
    sample = query(wh.root, "balanced_sample", {"run": cfg.run, "layer": layer, "per_label": cfg.sample_per_label,
                                                "seed": cfg.seed, "tier": cfg.tier, "by": cfg.by or ""}, con=con)
    x = vectors(sample["vector"])
    if len(x) < cfg.k:
        raise ValueError(f"run {cfg.run!r} layer {layer}: the sample has {len(x)} labelled frames on tier "
                         f"{cfg.tier!r}, fewer than k={cfg.k}")
    kms = [fit_kmeans(x, cfg.k, seed=cfg.seed + i, n_iter=cfg.n_iter) for i in range(cfg.seeds)]
    km = kms[0]
    tables = [_Contingency(cfg.k) for _ in kms]  # groups: speakers
    table = _Contingency(cfg.k) if cfg.by and cfg.by != "speaker" else tables[0]  # groups: the --by attribute
    cca_frames = _CcaFrames(cca_share_, cfg.seed) if cfg.cca and cca_share_ else None
    files = []
    sizes = np.zeros(cfg.k, np.int64)
    own_column = cfg.tier in FRAME_TIERS
    columns = ["utterance_id", "frame", "vector"] + ([cfg.tier] if own_column else [])
    if cca_frames is not None and "phone" not in columns:
        columns.append("phone")
    geometry = FrameGeometry(**wh.read_facts(cfg.run)["geometry"])
    for path in layer_files(wh, cfg.run, layer, committed):
        parts = []
        for batch in wh.parquet_file(path).iter_batches(batch_size=cfg.batch_frames, columns=columns):
            cluster, dist = assign(vectors(batch.column("vector"), stored=batch.schema.field("vector")), km.centroids)
            sizes += np.bincount(cluster, minlength=cfg.k)
            labels = batch.column(cfg.tier) if own_column else _segment_labels(
                con, wh.root, cfg.run, cfg.tier, batch.column("utterance_id"), batch.column("frame"), geometry)
            ids = batch.column("utterance_id")
            speaker = _lookup(ids, speakers)
            tables[0].add(labels, speaker, cluster)
            if len(kms) > 1:
                v = vectors(batch.column("vector"), stored=batch.schema.field("vector"))
                for other_km, other_table in zip(kms[1:], tables[1:]):
                    other_table.add(labels, speaker, assign(v, other_km.centroids)[0])
            if table is not tables[0]:
                table.add(labels, _lookup(ids, groups) if groups is not None else speaker, cluster)
            if cca_frames is not None:
                cca_frames.add(batch, speaker)
            parts.append(pa.table({"utterance_id": ids, "frame": batch.column("frame"),
                                   "cluster": pa.array(cluster, pa.int32()), "distance": pa.array(dist, pa.float32()),
                                   "tier": pa.array([cfg.tier] * len(batch), pa.string())},
                                  schema=CLUSTERS_SCHEMA))
        shard = int(path.rsplit("part-", 1)[1].split(".")[0].split("-")[0])  # part-<shard>[-<writer>].parquet
        clusters = pa.concat_tables(parts) if parts else CLUSTERS_SCHEMA.empty_table()
        files.append(wh.write("clusters", clusters, cfg.run, shard, file_prefix=cfg.tier, layer=layer, k=cfg.k))
    t_pass = time.perf_counter() - t0
    names = tables[0].names()
    counts = tables[0].counts.sum(axis=0) if tables[0].counts.size else np.zeros((0, cfg.k), np.int64)
    centroid_table = pa.table({
        "cluster": pa.array(np.arange(cfg.k), pa.int32()),
        "size": pa.array(sizes),
        "vector": encode(km.centroids, "float32"),
        "tier": pa.array([cfg.tier] * cfg.k, pa.string()),
    }, schema=centroids_schema(km.centroids.shape[1]))
    files.append(wh.write("centroids", centroid_table, cfg.run, 0, file_prefix=cfg.tier, layer=layer, k=cfg.k))
    subsets = {"all": np.ones(len(names), bool)}
    if cfg.no_silence:
        subsets["no_silence"] = ~np.isin(names, SILENCE_LABELS)
    result = {}
    sample_labels = np.asarray(sample["label"].to_pylist(), dtype=object)
    t_intervals = 0.0
    scored, spk, probe, probe_speakers = {}, [], {}, []
    for subset, rows in subsets.items():
        n = int(counts[rows].sum())
        t1 = time.perf_counter()
        rows_out, subset_scored, subset_speakers = _contingency_scores(tables, rows, cfg)
        t_intervals += time.perf_counter() - t1
        if subset == "all":
            scored, spk = subset_scored, subset_speakers.tolist()
            rows_out += _sample_scores(x, sample_labels, kms, cfg)
            if cfg.probe:
                probe_rows, probe, probe_speakers, spent = _probe_scores(
                    x, sample_labels, sample["speaker"].to_pylist(), cfg, layer)
                rows_out += probe_rows
                t_intervals += spent
            for r in rows_out:
                integer = r["metric"] in ("kmeans_train_points", "probe_train_frames") and r["value"] is not None
                result[r["metric"]] = int(r["value"]) if integer else r["value"]
                if r["ci_low"] is not None:
                    result[r["metric"] + "_ci"] = (r["ci_low"], r["ci_high"])
        rows_out.sort(key=lambda r: r["metric"])
        files.append(wh.write("metrics", pa.Table.from_pylist(rows_out, schema=METRICS_SCHEMA), cfg.run, 0,
                              layer=layer, k=cfg.k, tier=cfg.tier, subset=subset))
        mapping = majority_from_counts(counts[rows], names[rows])
        files.append(wh.write("cluster_labels", pa.Table.from_pylist(mapping, schema=MAPPING_SCHEMA), cfg.run, 0,
                              layer=layer, k=cfg.k, tier=cfg.tier, subset=subset))
        log.info("layer %s subset %s: %d frames scored", layer, subset, n)
    if cfg.intervals and carry is not None and carry.layer is not None:
        diffs = _difference_rows(cfg.run, carry.layer, layer, cfg.tier, cfg.k, carry.scores, scored,
                                 carry.speakers == spk)
        # the balanced sample holds the same frames in every layer: the probe's test speakers match
        diffs += _difference_rows(cfg.run, carry.layer, layer, cfg.tier, cfg.k, carry.probe, probe,
                                  carry.probe_speakers == probe_speakers)
        files.append(_write_differences(wh, cfg, layer, cfg.k, diffs))
    wh.commit(cfg.run, keys.analyze_stage(cfg.k, cfg.tier), keys.layer_shard(layer), files,
              params_sha256=fingerprint(cfg.__dict__), k=cfg.k, tier=cfg.tier, seconds=time.perf_counter() - t0,
              intervals_s=round(t_intervals, 3), pass_s=round(t_pass, 3))
    cca_scored = {}
    if cca_frames is not None:
        t1 = time.perf_counter()
        cca = _cca_scores(wh, con, cfg, layer, cca_frames, mel, geometry)
        cca_rows = _cca_rows(cca)
        result |= {r["metric"]: r["value"] for r in cca_rows}
        result |= {r["metric"] + "_ci": (r["ci_low"], r["ci_high"]) for r in cca_rows if r["ci_low"] is not None}
        cca_files = [wh.write("metrics", pa.Table.from_pylist(cca_rows, schema=METRICS_SCHEMA), cfg.run, 0,
                              layer=layer, k=CCA_K, tier=cfg.tier, subset="all")]
        cca_scored = {m: _Scored(s.interval, s.resampled, s.jackknife) for m, s in cca.items()}
        if cfg.intervals and carry is not None and carry.layer is not None:
            # CcaScore's replicates are drawn over its sorted test speakers: the same in both layers when
            # the layers hold the same frames (they do: every layer of a run is extracted from one pass)
            diffs = _difference_rows(cfg.run, carry.layer, layer, cfg.tier, CCA_K, carry.cca, cca_scored, True)
            cca_files.append(_write_differences(wh, cfg, layer, CCA_K, diffs))
        wh.commit(cfg.run, keys.analyze_stage(CCA_K, cfg.tier), keys.layer_shard(layer), cca_files,
                  params_sha256=fingerprint(cfg.__dict__), k=CCA_K, tier=cfg.tier,
                  seconds=round(time.perf_counter() - t1, 3))
    if carry is not None:
        carry.layer, carry.scores, carry.speakers, carry.cca = layer, scored, spk, cca_scored
        carry.probe, carry.probe_speakers = probe, probe_speakers
    if cfg.by:
        rows_out = _group_rows(table, x, sample_labels, sample, cfg)
        record = wh.write("group_metrics", pa.Table.from_pylist(rows_out, schema=GROUP_METRICS_SCHEMA), cfg.run, 0,
                          layer=layer, k=cfg.k, tier=cfg.tier, attribute=cfg.by)
        wh.commit(cfg.run, keys.analyze_stage(cfg.k, cfg.tier, cfg.by), keys.layer_shard(layer), [record],
                  params_sha256=fingerprint(cfg.__dict__), k=cfg.k, tier=cfg.tier, by=cfg.by)
    return result


def _write_differences(wh: Warehouse, cfg: AnalyzeConfig, layer: int, k: int, rows: list[dict]):
    return wh.write("metric_differences", pa.Table.from_pylist(rows, schema=METRIC_DIFFERENCES), cfg.run,
                    keys.layer_shard(layer), file_prefix=f"k{k}-{cfg.tier}")


def _group_rows(table: _Contingency, x: np.ndarray, labels: np.ndarray, sample: pa.Table, cfg: AnalyzeConfig) -> list[dict]:
    """Per group of `cfg.by`: the layer's clustering scored on the group's frames, and the cross-group
    test on the balanced sample: k-means and the probe fitted on the other groups, scored on this one,
    against the same fitted on this group alone (k-means) or on its other speakers (probe)."""
    out = []
    sample_groups = np.asarray(sample["grp"].to_pylist(), dtype=object)
    speakers = np.asarray(sample["speaker"].to_pylist(), dtype=object)
    for group, g in table.groups.items():
        if group == NO_GROUP or g >= table.counts.shape[0]:
            continue
        counts = table.counts[g]
        n = int(counts.sum())
        for metric, value in M.contingency_metrics(counts[counts.sum(axis=1) > 0]).items():
            if metric != "n":
                out.append({"group_value": group, "metric": metric, "value": float(value), "n": n})
        mine = sample_groups == group
        rest = ~mine & (sample_groups != None)  # noqa: E711 (element-wise comparison with None)
        if mine.sum() < 2 or rest.sum() < cfg.k:
            continue
        k_mine = min(cfg.k, int(mine.sum()))
        within = fit_kmeans(x[mine], k_mine, seed=cfg.seed, n_iter=cfg.n_iter)
        transfer = fit_kmeans(x[rest], cfg.k, seed=cfg.seed, n_iter=cfg.n_iter)
        for metric, km in (("ami_within", within), ("ami_transfer", transfer)):
            value = M.cluster_metrics(labels[mine], assign(x[mine], km.centroids)[0])["ami"]
            out.append({"group_value": group, "metric": metric, "value": float(value), "n": int(mine.sum())})
        if cfg.probe:
            try:
                p = fit_score(x[rest], labels[rest], x[mine], labels[mine], seed=cfg.seed)
                out.append({"group_value": group, "metric": "probe_balanced_accuracy_transfer",
                            "value": p.balanced_accuracy, "n": p.n_test})
                p = speaker_disjoint_probe(x[mine], labels[mine], speakers[mine], seed=cfg.seed)
                out.append({"group_value": group, "metric": "probe_balanced_accuracy_within",
                            "value": p.balanced_accuracy, "n": p.n_test})
            except ValueError as err:
                log.info("group %s: probe skipped: %s", group, err)
    return out


def _utterance_map(wh: Warehouse, con, run: str, by: str) -> dict[str, str]:
    found = query(wh.root, "utterance_groups", {"run": run, "by": by}, con=con)
    return {u: g for u, g in zip(found["utterance_id"].to_pylist(), found["grp"].to_pylist()) if g is not None}


def analyze(cfg: AnalyzeConfig) -> list[dict]:
    """k-means + metrics for every chosen layer of a run, with intervals, CCA measures and the paired
    differences of adjacent layers. Returns one row per layer."""
    check_tier_name(cfg.tier)
    wh = Warehouse(cfg.warehouse)
    wanted = chosen_layers(extracted_facts(wh, cfg.run), cfg.run, cfg.layers)
    con = wh.connect(runs=[cfg.run])  # this run's files only: opening costs nothing per other run's file
    require_tier(wh, [cfg.run], cfg.tier, con)
    groups = None
    if cfg.by:
        groups = _utterance_map(wh, con, cfg.run, cfg.by)
        if not groups:
            raise ValueError(f"no utterance of run {cfg.run!r} has attribute {cfg.by!r}: use speaker, split, corpus "
                             "or a key of the utterances' metadata (see `python -m pipeline sql run_overview`)")
    speakers = _utterance_map(wh, con, cfg.run, "speaker")
    if cfg.intervals and len(set(speakers.values())) < 2:
        log.warning("run %s has %d speaker(s): no speaker bootstrap, the intervals are null", cfg.run,
                    len(set(speakers.values())))
    committed = wh.committed_files("frames", cfg.run)
    share = mel = None
    if cfg.cca and wanted:
        share = cca_share(wh, cfg.run, wanted[0], committed, cfg.cca_frames)
        mel = _mel_frames(wh, cfg, committed, share)
        if mel is None:
            log.info("run %s has no log-mel layer (%d): cca_mel is null (extract with --layers all to store it)",
                     cfg.run, MEL_LAYER)
    carry = _Carry()
    rows = []
    for layer in wanted:
        rows.append({"layer": layer, **analyze_layer(wh, cfg, layer, con, committed, groups, speakers, carry, share,
                                                     mel)})
    return rows


@dataclass
class AnalyzeResult:
    """One row of metrics per layer (with its 95 % intervals), and with `--by` the per-group table."""

    rows: list[dict]
    by: str | None = None
    groups: pa.Table | None = None

    SHOWN = ("layer", "ami", "nmi", "homogeneity", "completeness", "cluster_purity", "pnmi", "silhouette",
             "ami_shuffled_sample", "probe_balanced_accuracy", "kmeans_train_points")
    WITH_INTERVALS = ("ami", "nmi", "pnmi", "cluster_purity", "probe_balanced_accuracy", "cca_phone", "cca_word",
                      "cca_mel")

    def summary(self) -> str:
        text = table_text(pa.Table.from_pylist([{k: r.get(k) for k in self.SHOWN} for r in self.rows]))
        shown = [k for k in self.WITH_INTERVALS if any(r.get(k) is not None for r in self.rows)]
        if shown:
            table = pa.Table.from_pylist([{"layer": r["layer"], **{k: _with_interval(r, k) for k in shown}}
                                          for r in self.rows])
            text += ("\nvalue [95 % interval] (bootstrap over speakers; none: see null_reason in table metrics; "
                     "cca_*: CCA on held-out speakers, rows k = 0):\n" + table_text(table))
        if self.groups is not None:
            text += f"\nper {self.by} (table group_metrics):\n" + table_text(self.groups)
        return text


def _with_interval(row: dict, key: str) -> str | None:
    """A metric as the summary shows it: '0.123 [0.110, 0.140]' with an interval, the bare value without."""
    value = row.get(key)
    if value is None:
        return None
    ci = row.get(key + "_ci")
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def run(cfg: AnalyzeConfig) -> AnalyzeResult:
    rows = analyze(cfg)
    groups = None
    if cfg.by:
        groups = query(cfg.warehouse, "group_metrics_wide", {"run": cfg.run, "k": cfg.k, "tier": cfg.tier, "by": cfg.by})
    return AnalyzeResult(rows, cfg.by, groups)
