"""Stage 6: model against model on the same utterances → tables `cka` and `run_agreement`.

Two runs of one corpus through two models (pre-trained and fine-tuned, wav2vec2 and HuBERT, …) are
compared in two ways (the measures are pure functions in `pipeline.algorithms.similarity`):

- **linear CKA** between every layer of run A and every layer of run B, on the same frames: a
  deterministic sample of at most `n` (utterance_id, frame) keys both runs hold
  (`sql/compare_shared_keys.sql`, keys only), whose vectors are then fetched layer by layer
  (`sql/compare_vectors.sql`). `value` is CKA with the biased HSIC estimator, `value_debiased`
  with the unbiased one. Memory: run B's centred layers plus one layer of A (5,000 × 768 float32
  = 15 MB per layer).
- **clustering agreement** per layer present in both runs: the k-means clusters of A against those
  of B (same k: `k`, or the largest k both runs analysed; same label tier: `tier`, or every tier
  both runs clustered with that k, since each tier's k-means is its own) on every frame both runs
  assigned, from a cluster × cluster contingency counted in SQL (`sql/compare_contingency.sql`) and
  scored with `pipeline.algorithms.metrics.contingency_metrics` (AMI, NMI, MI, homogeneity, completeness,
  v-measure, purities; A's clusters are the rows) plus the adjusted Rand index.
- **paired differences** per layer and tier both runs clustered with k: every contingency score of A's
  clusters against the labels minus B's, on the frames both runs assigned, with a paired bootstrap
  interval over speakers (the same speakers drawn for both runs: `bootstrap.paired_contingency_difference`
  on per-speaker tables from `sql/compare_speaker_contingency.sql`) → table `metric_differences`.

The runs must share utterances (same ids with the same sample count) and frame geometry (the
`geometry` facts in `_runs/<run>.json`), else this stops with an error that says which.

Tables (Hive partitions `run` = A, `other` = B; a rerun replaces them):
    cka/run=A/other=B/part-00000.parquet             layer, other_layer, value, value_debiased, n
    run_agreement/run=A/other=B/part-00000.parquet   layer, k, metric, value, n, tier
    metric_differences/run=A/compare-…parquet         other_run (= B), layer, other_layer, tier, k, metric, value,
                                                     other_value, diff, ci_low, ci_high, significant, …
committed as stage `compare.<B>` of run A (parameters, k, tiers, n, timings in the commit record).

CLI (flags = the parameters of `compare`):
    python -m pipeline compare --runs A,B [--n N] [--seed S] [--k K] [--tier T] [--n-resamples B]
                               [--no-intervals] [--warehouse DIR]
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from pipeline.algorithms import bootstrap as B
from pipeline.algorithms import metrics as M
from pipeline.algorithms.similarity import Centred, adjusted_rand_index, cka_pair
from pipeline.sql import query
from pipeline.warehouse.vectors import decode as vectors
from pipeline.stages.inputs import extracted_facts
from pipeline.warehouse import Warehouse, check_run_name, fingerprint, keys
from pipeline.warehouse.schemas import CKA, METRIC_DIFFERENCES, RUN_AGREEMENT, check_tier_name

log = logging.getLogger(__name__)

CKA_SCHEMA, AGREEMENT_SCHEMA = CKA, RUN_AGREEMENT  # the names this module had (pipeline.warehouse.schemas)
AGREEMENT_METRICS = ("ami", "nmi", "ari", "mi", "homogeneity", "completeness", "v_measure", "cluster_purity",
                     "label_purity")
# Below this many multiply-adds per layer pair, BLAS runs on one thread: with torch's and FAISS's
# OpenMP pools loaded, OpenBLAS's own threads made small products many times slower than one thread.
# Larger products keep BLAS's default threads.
SMALL_PRODUCT = 1 << 26


# ------------------------------------------------------------------------------------------- inputs
def _pair(runs) -> tuple[str, str]:
    parts = [runs] if isinstance(runs, str) else runs
    names = [r.strip() for part in parts for r in str(part).split(",") if r.strip()]
    if len(names) != 2:
        raise ValueError(f"compare takes two runs (A,B), got {names}")
    return check_run_name(names[0]), check_run_name(names[1])


def check_comparable(wh: Warehouse, run: str, other: str, con) -> dict:
    """Same frame geometry, shared utterances with the same audio length; returns the overlap."""
    geometry = {r: (wh.read_facts(r) or {}).get("geometry") for r in (run, other)}
    if geometry[run] != geometry[other]:
        raise ValueError(f"runs {run!r} and {other!r} have different frame geometry ({run}: {geometry[run]}, "
                         f"{other}: {geometry[other]}): frame i is not the same stretch of audio in both, "
                         "so frames cannot be paired")
    shared = query(wh.root, "compare_shared_utterances", {"run": run, "other": other}, con=con).to_pylist()[0]
    if shared["n_shared"] == 0:
        raise ValueError(f"runs {run!r} ({shared['n_run']} utterances) and {other!r} ({shared['n_other']}) share no "
                         "utterance id: compare needs the same corpus extracted with both models")
    if shared["n_mismatched"]:
        raise ValueError(f"runs {run!r} and {other!r} share {shared['n_shared']} utterance ids but "
                         f"{shared['n_mismatched']} of them have other audio lengths, e.g. "
                         f"{', '.join(shared['mismatched_examples'])}: these are not the same recordings "
                         "(another corpus or split with the same ids?)")
    return shared


def clusterings(wh: Warehouse, run: str) -> dict[tuple[int, str], set[int]]:
    """{(k, tier): layers} of the committed k-means of a run (from the commit log, no data read).
    The commit naming the clusters is `analyze.k<k>.<tier>`; `….<tier>.by.<attribute>` ones name group metrics."""
    out: dict[tuple[int, str], set[int]] = {}
    for (_, stage, shard), rec in wh.commits(run).items():
        key = keys.parse_analyze(stage)
        if key and any(f["path"].startswith("clusters/") for f in rec["files"]):
            out.setdefault((key.k, rec.get("tier") or key.tier), set()).add(keys.shard_layer(shard))
    return out


def analysed(wh: Warehouse, run: str) -> dict[int, set[int]]:
    """{k: layers} of the committed k-means of a run, any tier (from the commit log, no data read)."""
    out: dict[int, set[int]] = {}
    for (k, _), layers in clusterings(wh, run).items():
        out.setdefault(k, set()).update(layers)
    return out


def common_tiers(wh: Warehouse, run: str, other: str, k: int, tier: str | None) -> list[str]:
    """The tiers both runs clustered with k: [`tier`] (an error if one lacks it), or all of them."""
    have = {r: {t for (k_, t) in clusterings(wh, r) if k_ == k} for r in (run, other)}
    both = sorted(have[run] & have[other])
    if tier is None:
        return both
    if tier not in both:
        raise ValueError(f"tier {tier!r} is not clustered with k = {k} in both runs ({run}: {sorted(have[run])}, "
                         f"{other}: {sorted(have[other])}); run `python -m pipeline analyze --k {k} --tier {tier}` "
                         "on both first")
    return [tier]


def common_k(wh: Warehouse, run: str, other: str, k: int | None) -> int | None:
    """`k` if both runs have it (else an error), or the largest k both analysed (None if none)."""
    ks = {r: analysed(wh, r) for r in (run, other)}
    both = set(ks[run]) & set(ks[other])
    if k is None:
        return max(both) if both else None
    if k not in both:
        raise ValueError(f"k = {k} is not analysed for both runs ({run}: k in {sorted(ks[run])}, "
                         f"{other}: k in {sorted(ks[other])}); run `python -m pipeline analyze --k {k}` first")
    return k


# ------------------------------------------------------------------------------------------- stages
def _layer_sample(wh: Warehouse, con, run: str, layer: int, sampled: pa.Table) -> Centred:
    got = query(wh.root, "compare_vectors", {"run": run, "layer": layer}, con=con)
    if got.num_rows != sampled.num_rows or not (got["utterance_id"].equals(sampled["utterance_id"])
                                                and got["frame"].equals(sampled["frame"])):
        raise ValueError(f"run {run!r} layer {layer}: {got.num_rows} of the {sampled.num_rows} sampled frames found; "
                         "every extracted layer should hold the same frames (run the sql/checks)")
    return Centred.of(vectors(got["vector"]))


def max_dim(wh: Warehouse, run: str) -> int:
    """The widest layer of a run (the model facts' hidden and conv widths; 1024 if unknown)."""
    model = extracted_facts(wh, run).get("model", {})
    return max(model.get("hidden_size", 0), model.get("conv_dim", 0)) or 1024


def cka_matrix(wh: Warehouse, con, run: str, other: str, n: int, seed: int) -> pa.Table:
    """Linear CKA of every layer of `run` × every layer of `other` on one shared sample of ≤ n frames."""
    layers = {r: sorted(extracted_facts(wh, r)["layers"]) for r in (run, other)}
    sampled = query(wh.root, "compare_shared_keys", {"run": run, "layer": layers[run][0], "other": other,
                                                     "other_layer": layers[other][0], "n": n, "seed": seed}, con=con)
    if sampled.num_rows < 4:
        raise ValueError(f"runs {run!r} and {other!r} share {sampled.num_rows} frames; CKA needs at least 4")
    con.register("compare_keys", sampled)
    t0 = time.perf_counter()
    rows = []
    with threadpool_limits(1 if sampled.num_rows * max_dim(wh, run) * max_dim(wh, other) < SMALL_PRODUCT else None,
                           user_api="blas"):
        others = {layer: _layer_sample(wh, con, other, layer, sampled) for layer in layers[other]}
        for layer in layers[run]:
            a = _layer_sample(wh, con, run, layer, sampled)
            for other_layer, b in others.items():
                biased, debiased = cka_pair(a, b)
                rows.append({"layer": layer, "other_layer": other_layer, "value": biased,
                             "value_debiased": debiased, "n": sampled.num_rows})
    log.info("CKA %s × %s: %d × %d layers on %d frames in %.1f s", run, other, len(layers[run]), len(others),
             sampled.num_rows, time.perf_counter() - t0)
    return pa.Table.from_pylist(rows, schema=CKA_SCHEMA)


def agreement(wh: Warehouse, con, run: str, other: str, k: int, tier: str = "phone") -> pa.Table:
    """Per layer both runs clustered with k for `tier`: agreement of the two clusterings on every shared frame."""
    cells = query(wh.root, "compare_contingency", {"run": run, "other": other, "k": k, "tier": tier}, con=con)
    layer = cells["layer"].to_numpy()
    a, b = cells["cluster"].to_numpy().astype(np.int64), cells["other_cluster"].to_numpy().astype(np.int64)
    counts = cells["n_frames"].to_numpy().astype(np.int64)
    rows = []
    for value in np.unique(layer):
        pick = layer == value
        table = np.zeros((a[pick].max() + 1, b[pick].max() + 1), np.int64)
        np.add.at(table, (a[pick], b[pick]), counts[pick])
        scores = M.contingency_metrics(table) | {"ari": adjusted_rand_index(table)}
        n = int(table.sum())
        rows += [{"layer": int(value), "k": k, "metric": m, "value": float(scores[m]), "n": n, "tier": tier}
                 for m in AGREEMENT_METRICS]
    return pa.Table.from_pylist(rows, schema=AGREEMENT_SCHEMA)


def _speaker_tables(speaker: np.ndarray, label: np.ndarray, cluster: np.ndarray, counts: np.ndarray,
                    speakers: np.ndarray, labels: np.ndarray, k: int) -> B.SpeakerTables:
    """Per-speaker labels × clusters tables (speakers and labels: the sorted names given) of labelled cells."""
    keep = label != None  # noqa: E711 (element-wise comparison with None)
    s = np.searchsorted(speakers, speaker[keep].astype(str))
    lab = np.searchsorted(labels, label[keep].astype(str))
    flat = (s * len(labels) + lab) * k + cluster[keep].astype(np.int64)
    dense = np.bincount(flat, weights=counts[keep], minlength=len(speakers) * len(labels) * k)
    return B.SpeakerTables.from_dense(dense.reshape(len(speakers), len(labels), k).astype(np.int64), speakers)


def differences(wh: Warehouse, con, run: str, other: str, k: int, tier: str = "phone",
                n_resamples: int = B.N_RESAMPLES, seed: int = 0) -> pa.Table:
    """Per layer both runs clustered with k for `tier`: every contingency score of run minus other on the
    frames both assigned, with its paired speaker-bootstrap interval (rows of `metric_differences`)."""
    cells = query(wh.root, "compare_speaker_contingency", {"run": run, "other": other, "k": k, "tier": tier}, con=con)
    layer = cells["layer"].to_numpy()
    speaker = np.asarray(cells["speaker"].to_pylist(), dtype=object)
    sides = [(np.asarray(cells[lab].to_pylist(), dtype=object), cells[clu].to_numpy())
             for lab, clu in (("label", "cluster"), ("other_label", "other_cluster"))]
    counts = cells["n_frames"].to_numpy().astype(np.float64)
    rows = []
    for value in np.unique(layer):
        pick = layer == value
        speakers = np.unique(speaker[pick].astype(str))
        labels = np.unique(np.concatenate([lab[pick][lab[pick] != None].astype(str) for lab, _ in sides]))  # noqa: E711
        if len(labels) == 0:
            continue
        a, b = (_speaker_tables(speaker[pick], lab[pick], clu[pick], counts[pick], speakers, labels, k)
                for lab, clu in sides)
        few = 1 < len(speakers) < B.MIN_SPEAKERS
        for metric, d in B.paired_contingency_difference(a, b, n_resamples, seed).items():
            if few:
                reason = f"{len(speakers)} speakers: too few for a speaker bootstrap (at least {B.MIN_SPEAKERS})"
                d = B.Difference(d.a, d.b, B.null_interval(reason, d.diff.value), None)
            rows.append({"other_run": other, "layer": int(value), "other_layer": int(value), "tier": tier, "k": k,
                         "metric": metric, "value": d.a, "other_value": d.b, "diff": d.diff.value,
                         "ci_low": d.diff.ci_low, "ci_high": d.diff.ci_high, "significant": d.significant,
                         "ci_method": d.diff.method, "n_resamples": d.diff.n_resamples or None,
                         "null_reason": d.diff.reason})
    return pa.Table.from_pylist(rows, schema=METRIC_DIFFERENCES)


def compare(runs=("A", "B"), warehouse: str = "storage", n: int = 5000, seed: int = 0, k: int | None = None,
            tier: str | None = None, n_resamples: int = B.N_RESAMPLES, intervals: bool = True) -> dict:
    """Compare run A with run B on the same utterances → tables `cka` and `run_agreement` (under run A).

    runs: (A, B) or "A,B". n: frames in the CKA sample (at most; every shared frame if fewer).
    seed: picks the sample. k: the k-means of both runs to compare (default: the largest k both
    analysed; none: CKA only). tier: the label tier whose k-means to compare (default: every tier
    both runs clustered with k). n_resamples: of the paired bootstrap of `metric_differences` (intervals:
    False skips that table). Returns what was written: the tables and the parameters.
    """
    run, other = _pair(runs)
    if n < 4:
        raise ValueError(f"n = {n}: CKA needs a sample of at least 4 frames")
    if tier is not None:
        check_tier_name(tier)
    t0 = time.perf_counter()
    wh = Warehouse(warehouse)
    for name in (run, other):
        extracted_facts(wh, name)
    con = wh.connect(runs=[run, other])
    shared = check_comparable(wh, run, other, con)
    k = common_k(wh, run, other, k)
    tiers = common_tiers(wh, run, other, k, tier) if k is not None else []
    cka = cka_matrix(wh, con, run, other, n, seed)
    t_cka = time.perf_counter() - t0
    agree = pa.concat_tables([AGREEMENT_SCHEMA.empty_table()] + [agreement(wh, con, run, other, k, t) for t in tiers])
    files = [wh.write("cka", cka, run, 0, other=other), wh.write("run_agreement", agree, run, 0, other=other)]
    t1 = time.perf_counter()
    diffs = None
    if intervals and k is not None:
        diffs = pa.concat_tables([METRIC_DIFFERENCES.empty_table()]
                                 + [differences(wh, con, run, other, k, t, n_resamples, seed) for t in tiers])
        files.append(wh.write("metric_differences", diffs, run, 0, file_prefix="compare"))
    params = {"run": run, "other": other, "n": n, "seed": seed, "k": k, "tiers": tiers}
    seconds = {"cka_s": round(t_cka, 3), "differences_s": round(time.perf_counter() - t1, 3),
               "total_s": round(time.perf_counter() - t0, 3)}
    n_frames = cka["n"][0].as_py()
    wh.commit(run, keys.compare_stage(other), 0, files, params=params,
              params_sha256=fingerprint({**params, "n_resamples": n_resamples, "intervals": intervals}), k=k,
              n_resamples=n_resamples if intervals else None,
              frames=n_frames, shared_utterances=shared["n_shared"], **seconds)
    log.info("compare %s with %s: %d frames, k = %s, %.1f s", run, other, n_frames, k, seconds["total_s"])
    return {**params, "frames": n_frames, "shared_utterances": shared["n_shared"], "cka": cka,
            "agreement": agree, "differences": diffs, **seconds}


@dataclass
class CompareConfig:
    """The parameters of `compare`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    runs: str = field(metadata={"help": "A,B: two runs of the same corpus"})
    warehouse: str = "storage"
    n: int = field(default=5000, metadata={"help": "shared frames in the CKA sample (seeded)"})
    seed: int = 0
    k: int | None = field(default=None, metadata={
        "help": "clusterings to compare (default: the largest k both runs analysed)"})
    tier: str | None = field(default=None, metadata={
        "help": "clusterings of this tier only (default: every tier both runs clustered)"})
    n_resamples: int = field(default=B.N_RESAMPLES, metadata={
        "help": "resamples of the paired speaker bootstrap (table metric_differences)"})
    intervals: bool = field(default=True, metadata={
        "flag": "--no-intervals", "help": "skip the paired differences (table metric_differences)"})


@dataclass
class CompareResult:
    """What `compare` wrote: its parameters, counts and timings, and the tables `cka` and `run_agreement`."""

    out: dict

    def summary(self) -> str:
        from pipeline.sql import table_text

        o = self.out
        text = (f"compare {o['run']} vs {o['other']}: {o['frames']} frames of {o['shared_utterances']} shared "
                f"utterances, k = {o['k']}, {o['total_s']:.1f} s\n" + table_text(o["cka"], max_rows=20))
        if o["agreement"] is not None and o["agreement"].num_rows:
            text += "\n" + table_text(o["agreement"], max_rows=60)
        d = o.get("differences")
        if d is not None and d.num_rows:
            shown = d.select(["layer", "tier", "metric", "value", "other_value", "diff", "ci_low", "ci_high",
                              "significant"]).filter(pc.is_in(d["metric"], pa.array(["ami", "nmi", "pnmi"])))
            text += (f"\n{o['run']} − {o['other']} per layer (table metric_differences, 95 % paired bootstrap over "
                     "speakers; significant: the interval excludes 0):\n" + table_text(shown, max_rows=60))
        return text


def run(cfg: CompareConfig) -> CompareResult:
    return CompareResult(compare(**asdict(cfg)))
