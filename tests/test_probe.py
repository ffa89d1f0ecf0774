"""Linear probe: speaker-disjoint split, a separable label read back, a shuffled label at chance."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.algorithms.probe import fit_score, speaker_disjoint_probe, split_speakers


def test_split_holds_out_whole_speakers_deterministically():
    speakers = np.repeat([f"s{i}" for i in range(8)], 5)
    test = split_speakers(speakers, seed=0)
    held = set(speakers[test])
    assert held and held.isdisjoint(set(speakers[~test]))
    assert len(held) == 2  # a quarter of 8
    assert (split_speakers(speakers, seed=0) == test).all()
    assert any((split_speakers(speakers, seed=s) != test).any() for s in range(1, 5))


def test_split_needs_two_speakers():
    with pytest.raises(ValueError, match="at least two speakers"):
        split_speakers(["a", "a", "a"])


def _data(n=1200, d=16, labels=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, n)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, :labels] += 4.0 * np.eye(labels, dtype=np.float32)[y]
    return x, np.array([f"p{v}" for v in y], dtype=object), np.array([f"spk{i % 6}" for i in range(n)], dtype=object)


def test_probe_reads_a_linear_label_and_not_a_shuffled_one():
    x, y, speakers = _data()
    good = speaker_disjoint_probe(x, y, speakers)
    assert good.balanced_accuracy > 0.95
    assert good.n_train + good.n_test == len(y)
    assert good.chance == pytest.approx(0.25)
    shuffled = speaker_disjoint_probe(x, np.random.default_rng(1).permutation(y), speakers)
    assert abs(shuffled.balanced_accuracy - 0.25) < 0.08


def test_unseen_test_labels_count_as_errors():
    x, y, _ = _data()
    train = y != "p3"
    score = fit_score(x[train], y[train], x, y)
    assert score.accuracy == pytest.approx(np.mean(y != "p3"), abs=0.05)
    assert score.n_labels == 4
