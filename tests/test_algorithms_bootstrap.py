"""pipeline.algorithms.bootstrap: resampled scores equal metrics.py's, interval methods, pairing, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import balanced_accuracy_score

from pipeline.algorithms import bootstrap as B
from pipeline.algorithms import metrics as M


def speaker_counts(n_speakers=12, n_labels=8, k=10, frames=300, seed=0, concentration=0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n_labels * k, concentration))
    return rng.multinomial(frames, p, size=n_speakers).reshape(n_speakers, n_labels, k)


def test_every_resampled_score_equals_metrics_on_the_resampled_table():
    counts = speaker_counts()
    tables = B.SpeakerTables.from_dense(counts)
    w = B.resample_weights(tables.n_speakers, 5, seed=3)
    got = B._scores_of_tables(tables, w, 0.0, 0.0, exact_emi=True)
    for i in range(len(w)):
        ref = M.contingency_metrics(np.tensordot(w[i], counts, axes=1))
        for m in B.CONTINGENCY_SCORES:
            assert got[m][i] == pytest.approx(ref[m], abs=1e-12), m


def test_scaled_emi_is_close_to_the_exact_one_against_the_interval_width():
    counts = speaker_counts(frames=200, seed=1)
    tables = B.SpeakerTables.from_dense(counts)
    total = M._as_counts(counts.sum(axis=0))
    point = M.contingency_metrics(total)
    emi = B._emi_of_point(point, total)
    assert emi == pytest.approx(B._exact_emi(total.toarray()), rel=1e-9)
    g = (total.shape[0] - 1) * (total.shape[1] - 1) / (2.0 * total.sum())
    w = B.resample_weights(tables.n_speakers, 40, seed=0)
    exact = B._scores_of_tables(tables, w, emi, g, exact_emi=True)["ami"]
    scaled = B._scores_of_tables(tables, w, emi, g, exact_emi=False)["ami"]
    assert np.abs(exact - scaled).max() < 0.02 * exact.std()


def test_point_values_equal_metrics_and_intervals_bracket_them():
    counts = speaker_counts(n_speakers=20)
    got = B.bootstrap_contingency(B.SpeakerTables.from_dense(counts), n_resamples=400, seed=0)
    ref = M.contingency_metrics(counts.sum(axis=0))
    assert set(got) == set(B.CONTINGENCY_SCORES)
    for m, iv in got.items():
        assert iv.value == ref[m]
        assert iv.ci_low < iv.value < iv.ci_high, (m, iv)
        assert iv.method == "bca" and iv.n_resamples == 400 and iv.reason is None
    basic = B.bootstrap_contingency(B.SpeakerTables.from_dense(counts), n_resamples=400, method="basic")
    assert all(iv.method == "basic" and iv.ci_low < iv.value < iv.ci_high for iv in basic.values())


def test_intervals_are_seeded_and_narrow_with_more_speakers():
    few, many = speaker_counts(n_speakers=6, seed=2), speaker_counts(n_speakers=60, seed=2)
    a = B.bootstrap_contingency(B.SpeakerTables.from_dense(few), n_resamples=300, seed=7)
    assert a == B.bootstrap_contingency(B.SpeakerTables.from_dense(few), n_resamples=300, seed=7)
    b = B.bootstrap_contingency(B.SpeakerTables.from_dense(many), n_resamples=300, seed=7)
    assert b["ami"].ci_high - b["ami"].ci_low < a["ami"].ci_high - a["ami"].ci_low


def test_interval_methods_correct_a_biased_bootstrap():
    rng = np.random.default_rng(0)
    shifted = rng.normal(0.5, 1.0, 20_000)  # replicates biased up by 0.5: the interval must move down
    basic = B.interval(0.0, shifted, method="basic")
    bca = B.interval(0.0, shifted, jackknife=np.array([-1.0, 0.0, 1.0]), method="bca")  # symmetric: a = 0
    for iv in (basic, bca):
        assert iv.ci_low == pytest.approx(-2.46, abs=0.06) and iv.ci_high == pytest.approx(1.46, abs=0.06)
    assert bca.method == "bca" and basic.method == "basic"
    # every replicate above the estimate: BCa is undefined and falls back to basic
    assert B.interval(0.0, np.linspace(1, 2, 100)).method == "basic"
    assert B.interval(1.0, np.ones(50)) == B.Interval(1.0, 1.0, 1.0, "bca", 50)
    with pytest.raises(ValueError, match="percentile"):
        B.interval(0.0, shifted, method="percentile")


def test_tables_build_the_same_from_dense_sparse_and_frames():
    rng = np.random.default_rng(4)
    spk, lab, clu = rng.integers(0, 5, 2000), rng.integers(0, 6, 2000), rng.integers(0, 7, 2000)
    counts = np.zeros((5, 6, 7), np.int64)
    np.add.at(counts, (spk, lab, clu), 1)
    dense = B.SpeakerTables.from_dense(counts)
    sparse = B.SpeakerTables.from_tables([sp.csr_array(c) for c in counts])
    frames = B.SpeakerTables.from_frames(spk, lab, clu)
    for t in (dense, sparse, frames):
        assert t.n_speakers == 5 and (t.total().toarray() == counts.sum(axis=0)).all()
    assert B.bootstrap_contingency(dense, 200) == B.bootstrap_contingency(sparse, 200)
    with pytest.raises(ValueError, match="speakers × labels × clusters"):
        B.SpeakerTables.from_dense(counts[0])


def test_one_speaker_keeps_values_without_interval_and_one_label_gives_nulls():
    counts = speaker_counts(n_speakers=1)
    one = B.bootstrap_contingency(B.SpeakerTables.from_dense(counts))
    assert one["ami"].value == M.contingency_metrics(counts[0])["ami"]
    assert one["ami"].ci_low is None and "one speaker" in one["ami"].reason
    single_label = speaker_counts()[:, :1, :]
    nulls = B.bootstrap_contingency(B.SpeakerTables.from_dense(single_label))
    assert all(iv.value is None and iv.ci_low is None and "1 label" in iv.reason for iv in nulls.values())
    with pytest.raises(ValueError, match="no frames"):
        B.bootstrap_contingency(B.SpeakerTables.from_dense(np.zeros((3, 2, 2), np.int64)))


def test_paired_difference_of_a_table_with_itself_is_zero_and_not_significant():
    t = B.SpeakerTables.from_dense(speaker_counts())
    diff = B.paired_contingency_difference(t, t, n_resamples=200)
    for d in diff.values():
        assert d.diff.value == 0.0 and d.diff.ci_low == 0.0 and d.diff.ci_high == 0.0 and d.significant is False


def test_paired_difference_finds_a_better_clustering_and_matches_speakers_by_name():
    rng = np.random.default_rng(5)
    spk = rng.integers(0, 15, 6000)
    labels = rng.integers(0, 6, 6000)
    good = np.where(rng.random(6000) < 0.6, labels, rng.integers(0, 6, 6000))  # clusters that follow labels
    worse = np.where(rng.random(6000) < 0.5, labels, rng.integers(0, 6, 6000))
    a = B.SpeakerTables.from_frames(spk, labels, good)
    b = B.SpeakerTables.from_frames(spk, labels, worse)
    d = B.paired_contingency_difference(a, b, n_resamples=300)
    assert d["ami"].significant is True and d["ami"].diff.ci_low > 0
    assert d["ami"].diff.value == pytest.approx(d["ami"].a - d["ami"].b)
    # the same speakers in reverse order give the same answer
    reordered = B.SpeakerTables(b.by_speaker[np.arange(14, -1, -1)], b.cell_label, b.cell_cluster, b.shape,
                                b.speakers[::-1])
    assert B.paired_contingency_difference(a, reordered, n_resamples=300)["ami"] == d["ami"]
    stranger = B.SpeakerTables(b.by_speaker, b.cell_label, b.cell_cluster, b.shape, [f"x{i}" for i in range(15)])
    with pytest.raises(ValueError, match="same frames"):
        B.paired_contingency_difference(a, stranger)


def test_probe_intervals_match_the_scores_and_resample_speakers():
    rng = np.random.default_rng(6)
    y = rng.choice(list("abcde"), 3000)
    pred = np.where(rng.random(3000) < 0.7, y, rng.choice(list("abcde"), 3000))
    spk = rng.integers(0, 10, 3000)
    got = B.bootstrap_probe(y, pred, spk, n_resamples=300)
    acc, bal = got["probe_accuracy"], got["probe_balanced_accuracy"]
    assert acc.value == pytest.approx(np.mean(y == pred)) and bal.value == pytest.approx(balanced_accuracy_score(y, pred))
    assert acc.ci_low < acc.value < acc.ci_high and bal.ci_low < bal.value < bal.ci_high
    one = B.bootstrap_probe(y, pred, np.zeros(3000))
    assert one["probe_accuracy"].value == acc.value and one["probe_accuracy"].ci_low is None
    assert B.bootstrap_probe([], [], [])["probe_accuracy"].value is None


def test_duplicated_speakers_do_not_bias_resampled_ami():
    """Sparse tables (8 speakers, 30 labels × 40 clusters, 3,200 frames): a resample that draws a speaker
    twice inflates MI beyond what AMI's EMI for N independent frames removes, so plain resampled AMI
    sits above the estimate (every resample here) and the interval misses it. With EMI at the draws'
    effective sample size the replicates centre on the estimate, spread like the jackknife says."""
    rng = np.random.default_rng(0)
    s, n_labels, k = 8, 30, 40
    base = rng.dirichlet(np.full(n_labels * k, 0.3))
    counts = np.stack([rng.multinomial(400, 0.5 * base + 0.5 * rng.dirichlet(np.full(n_labels * k, 0.3)))
                       for _ in range(s)]).reshape(s, n_labels, k)
    tables = B.SpeakerTables.from_dense(counts)
    point = M.contingency_metrics(counts.sum(axis=0))
    plain = B.contingency_replicates(tables, 1000, 0, point=point, duplication_adjusted=False)
    assert (plain.resampled["ami"] > point["ami"]).mean() > 0.99
    assert not plain.intervals["ami"].ci_low <= point["ami"] <= plain.intervals["ami"].ci_high
    adjusted = B.contingency_replicates(tables, 1000, 0, point=point)
    res, jack = adjusted.resampled["ami"], adjusted.jackknife["ami"]
    jack_se = np.sqrt((s - 1) / s * ((jack - jack.mean()) ** 2).sum())
    assert 0.2 < (res > point["ami"]).mean() < 0.8
    assert 0.5 * jack_se < res.std() < 2 * jack_se
    iv = adjusted.intervals["ami"]
    assert iv.ci_low < point["ami"] < iv.ci_high
    # the jackknife has no duplicates: its replicates are the same either way; so are the plug-in scores
    assert np.array_equal(jack, plain.jackknife["ami"])
    assert np.array_equal(adjusted.resampled["mi"], plain.resampled["mi"])


def test_bca_with_both_levels_past_the_outermost_resample_falls_back_to_basic():
    theta = np.r_[-0.01, np.linspace(0.5, 1.5, 999)]  # 1 of 1,000 resamples below the estimate
    iv = B.interval(0.0, theta, jackknife=np.array([-1.0, 0.0, 1.0]))
    assert iv.method == "basic" and iv.ci_low < iv.ci_high
