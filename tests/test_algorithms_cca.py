"""pipeline.algorithms.cca: planted correlations, scikit-learn's CCA, PWCCA targets and their edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import CCA

from pipeline.algorithms import cca as C

RHO = np.array([0.9, 0.6, 0.3])


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x: 3 latent coordinates + 5 noise; y: each latent with correlation RHO_k + 2 noise columns.
    The population canonical correlations are exactly RHO, then 0, 0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = np.hstack([z, rng.normal(size=(n, 5))]) @ rng.normal(size=(8, 8))  # a random mix changes nothing
    y = np.hstack([RHO * z + np.sqrt(1 - RHO ** 2) * rng.normal(size=(n, 3)), rng.normal(size=(n, 2))])
    return x, y


def test_held_out_canonical_correlations_recover_the_planted_ones():
    x, y = planted(40_000)
    fit = C.fit_cca(x[:20_000], y[:20_000], epsilon=0.0, variance_kept_x=1.0, variance_kept_y=1.0)
    assert fit.n_directions == 5
    np.testing.assert_allclose(fit.train_correlations[:3], RHO, atol=0.02)
    held_out = C.canonical_correlations(fit, x[20_000:], y[20_000:])
    np.testing.assert_allclose(held_out[:3], RHO, atol=0.02)
    assert np.abs(held_out[3:]).max() < 0.05


def test_training_correlations_equal_scikit_learns_cca():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    y = x[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(200, 3))
    a, b = CCA(n_components=3, max_iter=5000, tol=1e-12).fit(x, y).transform(x, y)
    expected = [np.corrcoef(a[:, k], b[:, k])[0, 1] for k in range(3)]
    got = C.fit_cca(x, y, epsilon=0.0, variance_kept_x=1.0, variance_kept_y=1.0).train_correlations
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # held-out projections of the training rows give the same correlations
    fit = C.fit_cca(x, y, epsilon=0.0, variance_kept_x=1.0, variance_kept_y=1.0)
    np.testing.assert_allclose(C.canonical_correlations(fit, x, y), got, atol=1e-9)


def test_pwcca_of_a_view_with_a_rotation_of_itself_is_one_and_of_noise_near_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 6)) * np.arange(1, 7)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    spk = np.repeat(np.arange(20), 100)
    same = C.pwcca(x[:2000], x[:2000] @ q, x[2000:], x[2000:] @ q, spk, n_resamples=200)
    assert same.value == pytest.approx(1.0, abs=1e-6)
    noise = rng.normal(size=(4000, 4))
    unrelated = C.pwcca(x[:2000], noise[:2000], x[2000:], noise[2000:], spk, n_resamples=200)
    assert abs(unrelated.value) < 0.05
    assert unrelated.interval.ci_low < unrelated.value < unrelated.interval.ci_high


def test_pwcca_interval_brackets_the_score_and_is_seeded():
    x, y = planted(6000, seed=3)
    spk = np.repeat(np.arange(30), 100)
    a = C.pwcca(x[:3000], y[:3000], x[3000:], y[3000:], spk, n_resamples=300, seed=4)
    assert a == C.pwcca(x[:3000], y[:3000], x[3000:], y[3000:], spk, n_resamples=300, seed=4)
    assert a.interval.ci_low < a.value < a.interval.ci_high and a.interval.method == "bca"
    assert (a.n_train, a.n_test) == (3000, 3000)
    one = C.pwcca(x[:3000], y[:3000], x[3000:], y[3000:], np.zeros(3000))
    assert one.value == a.value and one.interval.ci_low is None and "one test speaker" in one.interval.reason


def frames_with_phones(n_speakers=12, per_speaker=300, n_phones=6, dim=16, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_phones, dim))
    phones = rng.integers(0, n_phones, n_speakers * per_speaker)
    speakers = np.repeat([f"s{i}" for i in range(n_speakers)], per_speaker)
    x = signal * means[phones] + rng.normal(size=(phones.size, dim))
    return x, np.array([f"p{p}" for p in phones]), speakers


def test_cca_phone_grows_with_the_phone_signal_in_the_frames():
    weak = C.cca_phone(*frames_with_phones(signal=0.2), n_resamples=200)
    strong = C.cca_phone(*frames_with_phones(signal=2.0), n_resamples=200)
    assert 0 <= weak.value < strong.value <= 1
    assert strong.n_directions == 5  # 6 phones: 5 non-degenerate one-hot components
    assert strong.interval.ci_low < strong.value < strong.interval.ci_high


def test_cca_phone_and_mel_give_reasons_not_errors_on_degenerate_input():
    x, phones, speakers = frames_with_phones()
    one_speaker = C.cca_phone(x, phones, np.full(phones.size, "s0"))
    assert one_speaker.value is None and "two speakers" in one_speaker.interval.reason
    one_label = C.cca_phone(x, np.full(phones.size, "a"), speakers)
    assert one_label.value is None and "1 label" in one_label.interval.reason
    assert C.cca_mel(x, x[:, :4], np.full(phones.size, "s0")).value is None
    with pytest.raises(ValueError, match="cca_phone needs"):
        C.cca_phone(x, phones[:-1], speakers)


def test_cca_mel_scores_frames_against_an_acoustic_view():
    rng = np.random.default_rng(5)
    mel = rng.normal(size=(3000, 10))
    x = np.hstack([mel[:, :5] @ rng.normal(size=(5, 5)), rng.normal(size=(3000, 7))])
    speakers = np.repeat([f"s{i}" for i in range(10)], 300)
    score = C.cca_mel(x + 0.1 * rng.normal(size=x.shape), mel, speakers, n_resamples=200)
    assert 0.2 < score.value < 1.0 and score.n_directions == 10


def test_cca_word_pools_tokens_and_needs_frequent_words():
    rng = np.random.default_rng(6)
    vocabulary = np.array(["yes", "no", "maybe", "rare"])
    rows, ids, words, speakers = [], [], [], []
    centres = rng.normal(size=(4, 8)) * 2
    for t in range(600):
        w = rng.integers(0, 3) if t < 598 else 3  # "rare": 2 tokens, below min_tokens
        n_frames = rng.integers(3, 8)
        rows.append(centres[w] + rng.normal(size=(n_frames, 8)))
        ids += [f"tok{t}"] * n_frames
        words += [vocabulary[w]] * n_frames
        speakers += [f"s{t % 10}"] * n_frames
    x = np.vstack(rows)
    score = C.cca_word(x, ids, words, speakers, n_resamples=200)
    assert score.n_train + score.n_test == 598  # tokens, not frames; the rare word's two are left out
    assert score.value > 0.5 and score.n_directions == 2
    names, pooled, first = C.mean_pool(x, ids)
    assert names[0] == "tok0" and np.allclose(pooled[0], x[:ids.count("tok0")].mean(axis=0)) and first[0] == 0
    too_rare = C.cca_word(x, ids, words, speakers, min_tokens=1000)
    assert too_rare.value is None and "min_tokens" in too_rare.interval.reason


def test_replicates_of_two_layers_pair_into_a_difference():
    x, phones, speakers = frames_with_phones(signal=2.0, seed=7)
    rng = np.random.default_rng(8)
    noisier = x + 3.0 * rng.normal(size=x.shape)
    a, b = C.cca_phone(x, phones, speakers, n_resamples=300), C.cca_phone(noisier, phones, speakers, n_resamples=300)
    from pipeline.algorithms.bootstrap import paired_difference

    d = paired_difference(a.interval, b.interval, a.resampled, b.resampled, a.jackknife, b.jackknife)
    assert d.diff.value == pytest.approx(a.value - b.value) and d.diff.value > 0 and d.significant is True
